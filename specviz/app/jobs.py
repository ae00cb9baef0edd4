"""What the app asks of the engine, as functions of plain data (strings, numbers, JSON-able dicts).

They run where `specviz.app.worker` puts them: on the main thread of the engine process (the default), or
in a server thread. Each takes `cancel` (a threading.Event: Stop, a closed page, the run deadline)
and `emit` (sends a progress payload to the waiting handler: Compare's and Batch's progress bars, between timed
runs). Results are JSON-able, so nothing but data crosses the process boundary; the UI draws its plots from the
traces it gets back.

Every timed trace says where it ran (`meta["engine"]`, `engine_note`), whether it was this process's first run of
its method on its pair (`cold_start`: `first_run`) and what else took the CPU meanwhile (`trace.disturbance`,
specviz.engine.quiet); the trace cache keeps neither a cold start nor a disturbed run (specviz.app.trace_cache).
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from typing import Callable

from specviz.analysis import metrics
from specviz.analysis.categories import first_per_task
from specviz.analysis.divergence import annotate
from specviz.analysis.exactness import exactness
from specviz.api import fits_context, method_class, run, run_batch
from specviz.app.worker import InFlight
from specviz.bench.matrix import run_matrix
from specviz.engine.decoder import context_limit
from specviz.methods.base import common_values
from specviz.models.cache import CACHE
from specviz.models.hub import pair_names
from specviz.models.pair import load_pair

JOBS = ("warm", "single", "playground", "batch", "compare", "batch_compare", "exactness_lab", "health")
_RUNNING = InFlight()  # engine runs executing in this process now
_TIMED: set[tuple] = set()  # (target, draft, method) this process has run before: its later runs are not cold
WARM_PROMPT = "def add(a, b):\n"  # the warm-up's untimed runs (`warm`): any short prompt
WARM_TOKENS = 8
WARM_METHODS = ("autoregressive", "draft_model")  # the page's defaults and the start-up measurement's method


def pair_for(target: str | None, draft: str | None):
    target, draft = pair_names(target, draft)
    return load_pair(target, draft, device=os.environ.get("SPECVIZ_DEVICE") or None)


def first_run(pair, method: str) -> bool:
    """True the first time this process runs `method` on `pair` (and marks it run): that run is the process's
    cold start for it, paying one-time work the next runs do not (the first forwards' kernels and buffers, a lazy
    calibration), so its timing is never the one the trace cache keeps."""
    key = (pair.target_name, pair.draft_name, method)
    cold = key not in _TIMED
    _TIMED.add(key)
    return cold


def engine_note(queued_s: float | None = None, cold: bool = False) -> dict:
    """Where a run ran, how many runs shared the engine and whether it was a cold start (`first_run`): shown
    beside its measured figures."""
    running = _RUNNING.count
    where = "engine process, main thread" if threading.current_thread() is threading.main_thread() else "server thread"
    note = {"where": where, "runs_at_once": running, "pid": os.getpid()}
    if queued_s is not None:
        note["queued_s"] = round(max(0.0, queued_s), 3)
    if cold:
        note["cold_start"] = True
    return note


class Running:
    def __enter__(self):
        _RUNNING.add(1)

    def __exit__(self, *exc):
        _RUNNING.add(-1)


def warm(target: str = "embedded", *, cancel: threading.Event, emit: Callable) -> str:
    """Load the pair, then make a short untimed run of each of WARM_METHODS: the cold starts of this process
    (`first_run`) happen here, not in the first run a visitor or the start-up measurement makes."""
    pair = pair_for(target, None)
    for method in WARM_METHODS:
        if pair.draft is None and method_class(method).needs_draft:
            continue
        first_run(pair, method)
        run(method, pair, WARM_PROMPT, max_new_tokens=WARM_TOKENS, cancel=cancel)
    return pair.describe()


def traced(
    runner: Callable, method: str, target: str, draft: str | None, first, params: dict, cancel: threading.Event
) -> str:
    """One run (`specviz.run` or `run_batch`) on the engine, noted with where it ran: its trace as JSON."""
    pair = pair_for(target, draft)
    with Running():
        cold = first_run(pair, method)
        trace = runner(pair, first, cancel=cancel, **params)
        trace.meta["engine"] = engine_note(cold=cold)
    return trace.to_json()


def single(
    method: str, target: str, draft: str | None, prompt: str, params: dict, *, cancel: threading.Event, emit: Callable
) -> str:
    return traced(
        lambda pair, prompt_, **kw: run(method, pair, prompt_, **kw), method, target, draft, prompt, params, cancel
    )


def playground(
    method: str,
    target: str,
    draft: str | None,
    prompt: str,
    params: dict,
    submitted_at: float | None = None,
    *,
    cancel: threading.Event,
    emit: Callable,
) -> dict:
    """The Playground's (and the Race's) run, then the autoregressive run of the same prompt: each measured
    alone, nothing else working in this process while it is timed (no streamer: the page replays the
    measured timeline afterwards). A greedy difference is classified (tie or bug); the measured figures
    against the baseline are stored in the trace."""
    queued = time.time() - submitted_at if submitted_at else None
    pair = pair_for(target, draft)
    with Running():
        note = engine_note(queued, cold=first_run(pair, method))
        trace = run(method, pair, prompt, cancel=cancel, **params)
    trace.meta["engine"] = note
    baseline = trace
    if method != "autoregressive":
        with Running():
            cold = first_run(pair, "autoregressive")
            baseline = run("autoregressive", pair, prompt, cancel=cancel, **common_values(params))
        baseline.meta["engine"] = engine_note(cold=cold)
        if not params.get("temperature") and trace.output_ids != baseline.output_ids:
            annotate(pair, trace, baseline)  # greedy must be equal: a difference is classified, tie or bug, and shown
        figures = metrics.compare(trace, baseline)
        trace.meta["against_autoregressive"] = {
            k: figures.get(k) for k in ("speedup", "alpha", "c", "v", "tau", "mean_drafts_per_round")
        }
    return {"trace": trace.to_json(), "baseline": baseline.to_json()}


def batch(
    method: str, target: str, draft: str | None, prompts: list, params: dict, *, cancel: threading.Event, emit: Callable
) -> str:
    return traced(
        lambda pair, prompts_, **kw: run_batch(method, pair, prompts_, **kw),
        method,
        target,
        draft,
        prompts,
        params,
        cancel,
    )


def compare(
    specs: list,
    prompts: list,
    repeats: int,
    target: str,
    draft: str | None,
    per_task: int | None = None,
    *,
    cancel: threading.Event,
    emit: Callable,
) -> dict:
    """Methods x prompts, interleaved per prompt (the bench's own loop): the frame as JSON records. `per_task`: the
    prompts are a question file's; the first `per_task` of each task that fit the target's context are run."""
    pair = pair_for(target, draft)
    passed_over = 0
    if per_task:
        tokens = max(s[2].get("max_new_tokens", 64) for s in specs)
        prompts, passed_over = first_per_task(prompts, per_task, lambda p: fits_context(pair, p["prompt"], tokens))
        if not prompts:
            raise ValueError(
                f"no question of the file fits the target's context ({context_limit(pair.target)} tokens) "
                f"with {tokens} new tokens"
            )
    with Running():
        frame = run_matrix(pair, [tuple(s) for s in specs], prompts, int(repeats), progress=False)
    return {"frame": frame.to_json(orient="records"), "passed_over": passed_over}


def batch_compare(
    batch_size: int,
    prompts: list,
    max_new_tokens: int,
    gamma: int,
    include_naive: bool,
    target: str,
    draft: str | None,
    *,
    cancel: threading.Event,
    emit: Callable,
) -> dict:
    """EQSPEC vs EXSPEC (and batched AR, and the naive mode if asked) on the same prompts."""
    pair = pair_for(target, draft)
    common = {"max_new_tokens": int(max_new_tokens), "batch_size": int(batch_size)}
    variants = [("batch_autoregressive", {}), ("eqspec", {"gamma": int(gamma)}), ("exspec", {"gamma": int(gamma)})]
    if include_naive:
        variants.append(("eqspec", {"gamma": int(gamma), "realign": "naive"}))
    sizes = sorted({1, int(batch_size)})
    with Running():
        reference = [run("autoregressive", pair, p, max_new_tokens=int(max_new_tokens)).output_ids for p in prompts]
        rows, equivalence, traces = [], [], {}
        for i, (size, (name, extra)) in enumerate((s, v) for s in sizes for v in variants):
            emit({"progress": (i + 1) / (len(variants) * len(sizes)), "desc": f"{name} batch {size}"})
            trace = run_batch(name, pair, prompts, cancel=cancel, **{**common, **extra, "batch_size": size})
            label = name + (" (NAIVE: broken on purpose)" if extra.get("realign") == "naive" else "")
            equal = [r.output_ids == ref for r, ref in zip(trace.rows, reference)]
            rows.append(
                {
                    "method": label,
                    "batch_size": size,
                    "tokens_per_s": round(trace.meta["throughput"], 1),
                    "realign_share": round(trace.meta["realign_seconds"] / trace.wall_time, 3)
                    if trace.wall_time
                    else 0.0,
                    "rounds": trace.meta["rounds"],
                    "realigned_rounds": trace.meta["realigned_rounds"],
                    "rows_equal_to_autoregressive": f"{sum(equal)}/{len(equal)}",
                }
            )
            if size == int(batch_size):
                traces[label] = trace.to_json()
                equivalence += [
                    {"method": label, "row": j, "equal": "yes" if e else "NO", "text": trace.rows[j].text[:60]}
                    for j, e in enumerate(equal)
                ]
    return {"rows": rows, "equivalence": equivalence, "traces": traces}


def exactness_lab(
    method: str,
    target: str,
    draft: str | None,
    prompt: str,
    n: int,
    tokens: int,
    params: dict,
    broken: bool,
    seed: int = 0,
    *,
    cancel: threading.Event,
    emit: Callable,
) -> dict:
    """The Exactness lab: `method` and plain autoregressive sampling against the target's exact law, and
    (if asked) the BROKEN-on-purpose rule under the same test. Results are plain dicts (specviz.analysis.exactness)."""
    pair = pair_for(target, draft)
    with Running():
        emit({"progress": 0.05, "desc": f"{method}: {n} samples + {n} autoregressive"})
        real = exactness(method, pair, prompt, n=int(n), tokens=int(tokens), seed=int(seed), **params)
        bad = None
        if broken and not cancel.is_set():
            emit({"progress": 0.6, "desc": f"{method}, BROKEN on purpose: {n} samples"})
            bad = exactness(
                method,
                pair,
                prompt,
                n=int(n),
                tokens=int(tokens),
                seed=int(seed),
                broken=True,
                reference=False,
                **params,
            )
    return {"real": real, "broken": bad}


def health(*, cancel: threading.Event, emit: Callable) -> dict:

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return {
        "models_cached": [k[0] for k in CACHE.keys()],
        "engine_pid": os.getpid(),
        "engine_peak_rss_mb": round(peak / (1 << 20) if sys.platform == "darwin" else peak / 1024, 1),
    }
