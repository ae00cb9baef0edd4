"""The tabs' handlers and the API endpoints: each turns a visitor's inputs into an engine job, waits in the
queue with a visible place, and draws the trace that comes back (figures, downloads, HTML).
"""

from __future__ import annotations

import functools
import io
import json
import resource
import sys
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator

import gradio as gr
import pandas as pd

from specviz.analysis.categories import task_of, task_table
from specviz.app import requests as app_requests
from specviz.app.bridge import (
    awaited,
    done_html,
    queue_text,
    queued_result,
    served_text,
    service,
    status_html,
    submit,
    with_served,
)
from specviz.app.controls import PARAMS, UI_DEFAULTS, collect_params, parse_params
from specviz.app.serving import Update
from specviz.bench.matrix import summary
from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts
from specviz.engine.quiet import Disturbance
from specviz.engine.trace import MAX_TRACE_BYTES, Trace
from specviz.methods import METHODS
from specviz.models.hub import EMBEDDED, EMBEDDED_DIR, allowlist, load_tokenizer
from specviz.speedup import HeterogeneousCosts
from specviz.views import plots, render

DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "specviz-traces"


def save_downloads(trace: Trace) -> list[str]:
    """JSON, CSV and Chrome-trace files of one run, in a directory of their own."""
    DOWNLOAD_DIR.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{trace.method}-", dir=DOWNLOAD_DIR))
    (folder / "trace.json").write_text(trace.to_json())
    frame = trace.to_frame()
    frame["info"] = frame["info"].map(json.dumps)
    frame.to_csv(folder / "trace.csv", index=False)
    (folder / "trace.chrome.json").write_text(json.dumps(trace.to_chrome_trace()))
    return [str(folder / name) for name in ("trace.json", "trace.csv", "trace.chrome.json")]


NOT_KEPT = "not kept in the cache"


def where_measured(trace: Trace) -> str:
    """Beside every measured figure: where the run ran, whether it had the engine to itself, what else took the
    machine's CPU meanwhile (specviz.engine.quiet) and whether it was the engine process's cold start. A run
    disturbed by other processes is never called "alone": the disturbance is named instead."""
    note = trace.meta.get("engine") or {}
    if not note:
        return ""
    disturbance = Disturbance.from_dict(trace.disturbance)
    if note.get("runs_at_once", 1) > 1:
        company = f"sharing the engine with {note['runs_at_once'] - 1} other run(s)"
    elif disturbance is not None and disturbance.disturbed:
        company = f"while {disturbance.words()}: disturbed, {NOT_KEPT}"
    else:
        company = "alone" + (f" ({disturbance.words()})" if disturbance is not None else "")
    text = f", {note.get('where', 'engine')}, {company}"
    if note.get("where") == "server thread":
        text += " (an in-process engine: its timings share the process with the page and other requests)"
    if note.get("cold_start"):
        text += f", the first {trace.method} run of this engine process (its cold start: {NOT_KEPT})"
    if note.get("queued_s"):
        text += f", after {note['queued_s']:.2f} s in the queue"
    return text


def baseline_note(baseline: Trace) -> str:
    """What made the autoregressive baseline (and so the speedup) not this engine's alone, or ""."""
    note = baseline.meta.get("engine") or {}
    disturbance = Disturbance.from_dict(baseline.disturbance)
    said = []
    if disturbance is not None and disturbance.disturbed:
        said.append(f"measured while {disturbance.words()}")
    if note.get("cold_start"):
        said.append("the first autoregressive run of this engine process (its cold start)")
    if not said:
        return ""
    return f"the autoregressive baseline was {' and '.join(said)}: the speedup is disturbed, {NOT_KEPT}"


def disturbance_note(trace: Trace, baseline: Trace | None = None) -> str:
    """One sentence naming what disturbed a pair of runs (a Race), or "" when both were the engine's alone."""
    said = []
    for run in (trace, baseline) if baseline is not None and baseline is not trace else (trace,):
        disturbance = Disturbance.from_dict(run.disturbance)
        if disturbance is not None and disturbance.disturbed:
            said.append(f"the {run.method} run was measured while {disturbance.words()}")
        if (run.meta.get("engine") or {}).get("cold_start"):
            said.append(f"the {run.method} run was the first of this engine process (its cold start)")
    return f"DISTURBED: {'; '.join(said)}; {NOT_KEPT}" if said else ""


def run_status(trace: Trace, served: str = "", baseline: Trace | None = None) -> str:
    extra = baseline_note(baseline) if baseline is not None and baseline is not trace else ""
    return (
        f"{trace.new_tokens} tokens in {trace.wall_time:.2f} s (measured{where_measured(trace)}) - "
        f"finish: {trace.rows[0].finish_reason}" + (f" - {extra}" if extra else "") + (f" - {served}" if served else "")
    )


def result_figures(trace: Trace, baseline: Trace | None, costs: tuple[float, float, float] | None = None) -> tuple:
    """(timeline, histogram, per-position, stats, mirror figure) of a finished run."""
    stats = plots.stats_table(trace, baseline) if baseline is not None else pd.DataFrame(columns=["metric", "value"])
    mirror = (
        plots.mirror_timelines(trace, HeterogeneousCosts(*costs) if costs else None)
        if trace.method == "mirror"
        else plots.empty_figure("Mirror-SD timelines", "run mirror to see measured vs modeled lanes")
    )
    return (
        plots.token_timeline(trace),
        plots.acceptance_histogram(trace),
        plots.position_acceptance(trace),
        stats,
        mirror,
    )


RENDERED_ENTRIES = 32  # finished Playground results whose figures and downloads are kept, drawn once each
_RENDERED: OrderedDict[tuple, tuple] = OrderedDict()
_RENDERED_LOCK = threading.Lock()


def rendered(result: dict, key: str | None, measured_at: float | None, costs: tuple) -> tuple:
    """(trace, baseline, figures, trace JSON, download files) of one measured result, drawn once: a class clicking the
    same example is served its figures, not 32 drawings of them (a drawing costs 0.2-0.3 s of this process).
    Requests for a result being drawn wait for that drawing."""
    memo = (key, measured_at, tuple(costs)) if key else None
    with _RENDERED_LOCK:
        if memo in _RENDERED:
            _RENDERED.move_to_end(memo)
        else:
            _RENDERED[memo] = (threading.Lock(), [])
            while len(_RENDERED) > RENDERED_ENTRIES:
                _RENDERED.popitem(last=False)
        lock, drawn = _RENDERED[memo]
    with lock:
        if not drawn:
            trace, baseline = Trace.from_json(result["trace"]), Trace.from_json(result["baseline"])
            drawn.append(
                (trace, baseline, result_figures(trace, baseline, costs), result["trace"], save_downloads(trace))
            )
    return drawn[0]


def prompt_pieces(trace: Trace) -> list[str] | None:
    """The prompt's tokens' texts when a token of the run was copied by prompt lookup (the page points at its
    source); None otherwise, or where this server has no tokenizer for the target."""
    if not trace.rows or not render.copy_sources(trace.events):
        return None
    tokenizer = tokenizer_for(trace.target_name)
    return None if tokenizer is None else [tokenizer.decode([i]) for i in trace.rows[0].prompt_ids]


def playground_views(result: dict, update: Update, costs, key: str | None = None) -> tuple:
    trace, baseline, figures, trace_json, files = rendered(result, key, update.measured_at, costs)
    status = run_status(trace, served_text(update), baseline)
    html = render.replay_html(trace, status=status, measured_at=update.measured_at, pieces=prompt_pieces(trace))
    return (html,) + figures + (trace_json, files)


def playground(request: gr.Request, fresh: bool, inputs: tuple) -> Iterator[tuple]:
    """The Playground's run: its place in the queue at once, then the measured trace sent once and replayed in
    the browser at the pace the run had (nothing streams while it is timed)."""
    (prompt, target, draft, method, max_new_tokens, temperature, top_k, top_p, seed, heal_prompt, *rest) = inputs
    *specific_values, cost_t, cost_d, cost_c = rest
    specific = dict(zip(PARAMS, specific_values))
    common = dict(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        heal_prompt=heal_prompt,
    )
    job = app_requests.traced_job("playground", method, target, draft, prompt, collect_params(method, common, specific))
    # While it waits, the last run's figures and downloads are cleared (None) and the trace state kept (skip): a
    # skip of a component is an update, for which Gradio builds a new component and its config, about a third of a
    # waiting answer's cost when a class clicks at once (py-spy on the load test's burst); None costs nothing.
    skip = (None,) * 5 + (gr.skip(), None)  # timeline, histogram, positions, stats, Mirror plot | trace | files
    for update in submit(job, request, fresh):
        if update.state != "done":
            yield (status_html(queue_text(update), update.state, update) if update.changed else gr.skip(),) + skip
    yield playground_views(update.result, update, (cost_t, cost_d, cost_c), job.cache_key)


def playground_run(request: gr.Request, *inputs):
    yield from playground(request, False, inputs)


def playground_measure_again(request: gr.Request, *inputs):
    yield from playground(request, True, inputs)


MIRROR_COSTS = (
    0.5,
    0.4,
    0.05,
)  # the Playground's default modeled Mirror-SD costs: target layer, drafter step, transfer (ms)
RACE_MAX_SECONDS = 60.0  # a longer pair of runs plays faster, and says so
RACE_DEFAULT_TOKENS = 96


def race(request: gr.Request, prompt, method, max_new_tokens, target, draft, fresh=False):
    """Autoregressive vs a method on the same prompt: each run measured alone in the engine, then the two
    measured timelines sent once and played back together by the browser at the pace they had."""
    if method not in METHODS or METHODS[method].batch or method == "autoregressive":
        raise ValueError("choose a speculative single-sequence method to race against autoregressive")
    job = app_requests.traced_job(
        "playground",
        method,
        target,
        draft,
        prompt,
        {"max_new_tokens": int(max_new_tokens), "heal_prompt": UI_DEFAULTS["heal_prompt"]},
    )
    for update in submit(job, request, fresh):
        if update.state != "done":
            yield status_html(queue_text(update), update.state, update) if update.changed else gr.skip()
    trace = Trace.from_json(update.result["trace"])
    baseline = Trace.from_json(update.result["baseline"])
    served = "; ".join(t for t in (disturbance_note(trace, baseline), served_text(update)) if t)
    yield render.race_html(trace, baseline, max_seconds=RACE_MAX_SECONDS, served=served, measured_at=update.measured_at)


def race_measure_again(request: gr.Request, prompt, method, max_new_tokens, target, draft):
    yield from race(request, prompt, method, max_new_tokens, target, draft, fresh=True)


def exactness_lab(
    request: gr.Request,
    prompt,
    method,
    temperature,
    top_k,
    top_p,
    n,
    tokens,
    seed,
    with_broken,
    target,
    draft,
    params_json="{}",
):
    """Exactness lab: is what the method samples distributed as the target's own law? `params_json`: the method's
    own parameters (the hybrid's `lookup`, a gamma...)."""
    params = {
        **parse_params(params_json),
        "temperature": float(temperature),
        "top_k": int(top_k or 0),
        "top_p": float(top_p),
    }
    job = app_requests.exactness_job(
        method, target, draft, prompt, int(n), int(tokens), params, bool(with_broken), int(seed)
    )
    got, update = yield from awaited(job, request, 2)
    real, broken = got["real"], got["broken"]
    yield (
        plots.exactness_figure(real, broken),
        plots.exactness_table(real, broken),
        done_html(update, f"{method}: {int(n)} samples against the exact law"),
    )


def playground_api(
    request: gr.Request,
    prompt: str,
    method: str = "draft_model",
    params_json: str = "{}",
    target: str = EMBEDDED,
    draft: str = "",
) -> tuple[str, str]:
    """API: one run -> (generated text, trace JSON). params_json holds method and common parameters, and
    "measure_again": true to bypass the trace cache (the trace's meta["served"] says where it came from)."""
    params = parse_params(params_json)
    fresh = bool(params.pop("measure_again", False))
    job = app_requests.traced_job("single", method, target, draft, prompt, params)
    trace_json, update = queued_result(job, request, fresh=fresh)
    trace_json = with_served(trace_json, update)
    return Trace.from_json(trace_json).text, trace_json


QUESTION_FILE_MAX_BYTES = 2_000_000  # Spec-Bench's 480 questions are 0.7 MB
QUESTION_FILE_MAX_PROMPTS = 1000


def read_question_file(file) -> list[dict]:
    """An uploaded question file (ours or Spec-Bench's JSONL), size-capped and checked line by line."""
    path = (
        file
        if isinstance(file, (str, Path))
        else (file.get("path") if isinstance(file, dict) else getattr(file, "name", None))
    )
    if not path:
        raise ValueError("upload a question file first (JSONL: Spec-Bench's {question_id, category, turns} lines)")
    size = Path(path).stat().st_size
    if size > QUESTION_FILE_MAX_BYTES:
        raise ValueError(f"the question file is {size / 1e6:.1f} MB; at most {QUESTION_FILE_MAX_BYTES / 1e6:.0f} MB")
    prompts = load_prompts(path)
    if len(prompts) > QUESTION_FILE_MAX_PROMPTS:
        raise ValueError(f"the question file holds {len(prompts)} questions; at most {QUESTION_FILE_MAX_PROMPTS}")
    return prompts


def question_tasks(file):
    """After an upload: the file's tasks (MT-bench's sub-categories as one), all chosen, and what was found."""
    if not file:
        return gr.update(choices=[], value=[]), ""
    prompts = read_question_file(file)
    counts: dict[str, int] = {}
    for p in prompts:
        counts[task_of(p["category"])] = counts.get(task_of(p["category"]), 0) + 1
    found = ", ".join(f"{task} ({n})" for task, n in counts.items())
    return (
        gr.update(choices=list(counts), value=list(counts)),
        f"{len(prompts)} questions in {len(counts)} tasks: {found}. Choose tasks; each runs its first N that fit.",
    )


def compare_methods(
    request: gr.Request,
    methods,
    prompt_source,
    pasted,
    n_prompts,
    max_new_tokens,
    repeats,
    target,
    draft,
    question_file=None,
    tasks=None,
):
    """Methods x prompts, interleaved per prompt (the bench's own loop, in the engine). From an uploaded question
    file: the first N questions of each chosen task that fit the target's context, and a table by task."""
    if not methods:
        raise ValueError("choose at least one method to compare")
    unknown = [m for m in methods if m not in METHODS or METHODS[m].batch]
    if unknown:
        raise ValueError(f"not single-sequence methods: {', '.join(map(str, unknown))}")
    if prompt_source == "pasted":
        texts = [line for line in (pasted or "").splitlines() if line.strip()]
        if not texts:
            raise ValueError("paste at least one prompt (one per line)")
        prompts = [
            {"id": str(i + 1), "category": "pasted", "prompt": t.replace("\\n", "\n")} for i, t in enumerate(texts[:32])
        ]
    per_task = None
    if prompt_source == "uploaded file":
        chosen = set(tasks or [])
        if not chosen:
            raise ValueError("choose at least one task of the uploaded file")
        prompts = [p for p in read_question_file(question_file) if task_of(p["category"]) in chosen]
        per_task = int(n_prompts)
    elif prompt_source != "pasted":
        prompts = load_prompts(DEFAULT_PROMPTS)[: int(n_prompts)]
    common = {"max_new_tokens": int(max_new_tokens)}
    specs = [(m, m, dict(common)) for m in methods]
    job = app_requests.compare_job(specs, prompts, int(repeats), int(max_new_tokens), target, draft, per_task)
    got, update = yield from awaited(job, request, 6)
    frame = pd.read_json(io.StringIO(got["frame"]), orient="records")

    table = plots.dashes(summary(frame).reset_index().round(3))  # a figure the method does not define: —
    figs = plots.compare_figures(frame)
    by_task = task_table(frame)
    by_task = (
        by_task.reset_index().round(3)
        if by_task is not None
        else pd.DataFrame(columns=["task", "method", "prompts", "speedup", "tau", "alpha"])
    )
    if got.get("passed_over"):
        gr.Info(
            f"{got['passed_over']} questions were passed over: longer than the target's context with the new tokens"
        )
    yield (
        table,
        figs["speedup"],
        figs["tau"],
        figs["tokens_per_s"],
        figs["equal"],
        by_task,
        done_html(update, f"{len(methods)} methods x {frame['prompt_id'].nunique()} prompts"),
    )


def batch_compare(request: gr.Request, batch_size, n_prompts, max_new_tokens, gamma, include_naive, target, draft):
    """EQSPEC vs EXSPEC (and batched AR, and the naive mode if asked) on the same prompts."""
    prompts = [p["prompt"] for p in load_prompts(DEFAULT_PROMPTS)[: int(n_prompts)]]
    if not prompts:
        raise ValueError("choose at least one prompt")
    job = app_requests.batch_compare_job(
        int(batch_size), prompts, int(max_new_tokens), int(gamma), bool(include_naive), target, draft
    )
    got, update = yield from awaited(job, request, 5)
    frame = pd.DataFrame(got["rows"])
    traces = {label: Trace.from_json(text) for label, text in got["traces"].items()}
    shown = traces.get("eqspec") or next(iter(traces.values()))
    ex = traces.get("exspec")
    yield (
        frame,
        plots.batch_timeline(shown),
        plots.batch_timeline(ex) if ex else plots.empty_figure("EXSPEC"),
        plots.throughput_figure(frame.assign(method=frame["method"].str.split(" ").str[0])),
        pd.DataFrame(got["equivalence"]),
        done_html(update, f"batch of {int(batch_size)}"),
    )


def batch_api(
    request: gr.Request,
    prompts_json: str,
    method: str = "eqspec",
    params_json: str = "{}",
    target: str = EMBEDDED,
    draft: str = "",
) -> tuple[str, str]:
    """API: a batch run -> (texts as a JSON list, trace JSON)."""
    try:
        prompts = json.loads(prompts_json) if isinstance(prompts_json, str) else prompts_json
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompts must be a JSON list of strings: {exc}") from None
    trace_json, _ = queued_result(
        app_requests.batch_job(method, target, draft, prompts, parse_params(params_json)), request
    )
    return json.dumps([r.text for r in Trace.from_json(trace_json).rows]), trace_json


def load_trace(file) -> tuple:
    """Upload: size-capped, schema-checked, then shown like a fresh run (no baseline)."""
    if file is None:
        raise ValueError("choose a trace JSON file saved from specviz")
    path = file if isinstance(file, str) else getattr(file, "name", None) or file.get("path")
    trace = Trace.read(path, MAX_TRACE_BYTES)
    if trace.method in METHODS and METHODS[trace.method].batch:
        html = render.trace_html(trace, status=f"batch trace: row 0 of {len(trace.rows)} shown")
    else:
        html = render.trace_html(trace, status=f"loaded {trace.method} trace ({trace.new_tokens} tokens)")
    return html, plots.token_timeline(trace), trace.to_json()


def load_trace_api(trace_json: str) -> str:
    """API: validate a trace JSON string; returns a one-line summary."""
    if isinstance(trace_json, str) and len(trace_json.encode()) > MAX_TRACE_BYTES:
        raise ValueError(f"trace is over {MAX_TRACE_BYTES / 1e6:.0f} MB")
    trace = Trace.from_json(trace_json)
    return f"{trace.method}: {len(trace.rows)} row(s), {trace.new_tokens} tokens, {len(trace.events)} events"


def health() -> str:
    """API: the server's state as JSON: runs in flight (queued or running), the queue, the trace cache, models
    the first engine worker holds, peak resident memory of the server and of that engine process."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    svc = service()
    state = svc.pool.call(0, "health", {}, immediate=True)
    queue = svc.admission.snapshot()
    return json.dumps(
        {
            "ok": True,
            "runs_in_flight": queue["running"] + queue["waiting"],
            "queue": queue,
            "trace_cache": svc.cache.stats(),
            "models_cached": state["models_cached"],
            "engine": svc.pool.kind,
            "engine_workers": svc.pool.size,
            "engine_pid": state["engine_pid"],
            "engine_peak_rss_mb": state["engine_peak_rss_mb"],
            "peak_rss_mb": round(peak_mb, 1),
        }
    )


@functools.lru_cache(maxsize=8)
def tokenizer_for(target_name: str):
    """The tokenizer that names a trace's top-k ids (the drafted tokens carry their own text): the embedded
    one, or a local target's where this server may read it; None shows ids."""
    base = (target_name or "").split("[:")[0]
    try:
        if base == EMBEDDED:
            return load_tokenizer(str(EMBEDDED_DIR / "target"))
        allowed = allowlist()
        if Path(base).is_dir() and (allowed is None or base in allowed):
            return load_tokenizer(base)
    except (ValueError, OSError):
        pass
    return None


def step_view(trace_json: str, step: float) -> tuple:
    """The Step through explainer for one round (a fresh run or an uploaded trace)."""
    if not trace_json:
        return '<div class="sv-note">run the Playground (or load a trace) first</div>', gr.update()
    trace = Trace.from_json(trace_json)
    steps = render.rounds(trace)
    if not steps:
        return '<div class="sv-note">this trace has no rounds</div>', gr.update()
    index = min(max(int(step), 0), len(steps) - 1)
    tok = tokenizer_for(trace.target_name)
    decode = (lambda i: tok.decode([i], skip_special_tokens=False)) if tok is not None else None
    note = (
        f'<div class="sv-note">round {index + 1} of {len(steps)} - previous / next: the buttons or the '
        "left / right arrow keys</div>"
    )
    return note + render.explainer_html(trace, steps[index], decode=decode), gr.update(
        maximum=len(steps) - 1, value=index
    )


def step_move(trace_json: str, step: float, delta: int) -> int:
    if not trace_json:
        return 0
    last = max(0, len(render.rounds(Trace.from_json(trace_json))) - 1)
    return min(max(int(step) + delta, 0), last)
