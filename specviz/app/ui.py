"""The Gradio app over the engine's traces: Playground, Compare, Batch, Step through, Learn.

Handlers validate nothing themselves: the engine boundary (`specviz.api`, `specviz.models.pair`) raises
ValueError with a clear message, which becomes a `gr.Error` in the page and in the API. Engine work runs
as jobs of `specviz.app.jobs` on the engine process's main thread (`specviz.app.worker`); this process
holds no models and draws everything from the traces it gets back. Per-user data lives in `gr.State`,
never in globals. Every run has a cancel flag: the Stop button, a closed page and the time limit all set it.
"""
from __future__ import annotations

import functools
import io
import json
import logging
import os
import tempfile
import threading
import traceback
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
import pandas as pd

from specviz.app import requests as app_requests
from specviz.app.admission import Admission, AdmissionConfig
from specviz.app.pool import EnginePool, PoolConfig
from specviz.app.serving import Job, Service, Update
from specviz.app.trace_cache import TraceCache, label
from specviz.bench.matrix import summary
from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts
from specviz.engine.trace import MAX_TRACE_BYTES, Trace
from specviz.methods import METHODS
from specviz.methods.base import COMMON_PARAMS, Param
from specviz.models.hub import CURATED_PAIRS, EMBEDDED, EMBEDDED_DIR, allowlist, load_tokenizer
from specviz.shown import shown
from specviz.speedup import HeterogeneousCosts
from specviz.views import page_style, plots, render
from specviz.views.headlines import ROWS, cell, load_summary, provenance

try:  # Hugging Face ZeroGPU: a GPU is attached only while a decorated function runs
    import spaces  # type: ignore
except ImportError:  # everywhere else the app runs unchanged
    spaces = None

log = logging.getLogger("specviz.app.ui")
CONCURRENCY = int(os.environ.get("SPECVIZ_CONCURRENCY", "4"))  # handlers at once of events that need no engine
ENGINE_EVENTS = 80  # handlers of engine events admitted at once: they wait in specviz.app.admission's queue (64 places)
GRADIO_QUEUE = 256  # Gradio's own queue (requests beyond these wait for a handler thread)
PREWARM_ENV = "SPECVIZ_PREWARM"  # 0: no background measurement of the bundled examples after start-up
SINGLE = [name for name, cls in METHODS.items() if not cls.batch and name != "hf_assisted"] + ["hf_assisted"]
BATCH = [name for name, cls in METHODS.items() if cls.batch]
COMMON = {p.name for p in COMMON_PARAMS}
EXAMPLES = [p["prompt"] for p in load_prompts(DEFAULT_PROMPTS)]
DOWNLOAD_DIR = Path(tempfile.gettempdir()) / "specviz-traces"


_SERVICES: dict[bool, Service] = {}  # in_thread() -> the service (tests switch SPECVIZ_ENGINE within one process)
_SERVICE_LOCK = threading.Lock()


def in_thread() -> bool:
    """ZeroGPU (its `@spaces.GPU` must run in this process) and SPECVIZ_ENGINE=thread: the engine runs in this
    server's threads, and the page says that its timings share the process."""
    return spaces is not None or os.environ.get("SPECVIZ_ENGINE") == "thread"


def service() -> Service:
    """The app's one way to the engine: the trace cache, the queue and the engine workers (built on first use)."""
    threaded = in_thread()
    with _SERVICE_LOCK:
        if threaded not in _SERVICES:
            pool = EnginePool(PoolConfig.from_env(in_thread=threaded), wrap=gpu if spaces is not None else None)
            _SERVICES[threaded] = Service(pool, Admission(AdmissionConfig.from_env(pool.size)), TraceCache.from_env())
        return _SERVICES[threaded]


def gpu(fn: Callable) -> Callable:
    """@spaces.GPU where ZeroGPU exists; the function itself elsewhere."""
    return spaces.GPU(fn) if spaces is not None else fn


def method_params() -> dict[str, Param]:
    """Every method-specific parameter by name (the first spec seen gives the control's range)."""
    found: dict[str, Param] = {}
    for cls in METHODS.values():
        for p in cls.PARAMS:
            found.setdefault(p.name, p)
    return found


PARAMS = method_params()


# The app's own defaults where they differ from the API's: a visitor's prompt usually ends in a newline,
# and healing it is what makes the embedded target continue the line's block (specviz.engine.healing).
UI_DEFAULTS = {"heal_prompt": True}


def control(p: Param, visible: bool = False) -> gr.components.Component:
    label = f"{p.name}: {p.help}" if p.help else p.name
    if p.kind is bool:
        return gr.Checkbox(value=bool(UI_DEFAULTS.get(p.name, p.default)), label=label, visible=visible)
    if p.choices:
        return gr.Dropdown(choices=list(p.choices), value=p.default, label=label, visible=visible)
    if p.kind is int and not p.optional and p.low is not None and p.high is not None and p.high - p.low <= 64:
        return gr.Slider(p.low, p.high, value=p.default, step=1, label=label, visible=visible)
    return gr.Number(value=p.default, label=label + (" (empty = default)" if p.optional else ""), visible=visible,
                     precision=0 if p.kind is int else None)


def friendly(fn: Callable) -> Callable:
    """ValueError -> gr.Error with its message; anything else -> a short gr.Error, logged; never a crash."""
    import functools
    import inspect

    def convert(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, ValueError):
            return gr.Error(str(exc))
        if "out of memory" in str(exc).lower():
            return gr.Error("the device ran out of memory: try a smaller model, fewer tokens or a smaller batch")
        log.error("handler %s failed:\n%s", fn.__name__, traceback.format_exc())
        return gr.Error(f"internal error ({type(exc).__name__}): {str(exc)[:200]}")

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the boundary of the server
                raise convert(exc) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise convert(exc) from None
    return wrapper


def collect_params(method: str, common: dict[str, Any], specific: dict[str, Any]) -> dict[str, Any]:
    """Only the parameters this method has (the engine validates their values)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {shown(method)}; choose one of: {', '.join(METHODS)}")
    names = {p.name for p in METHODS[method].PARAMS}
    params = {k: v for k, v in common.items() if k in COMMON}
    params.update({k: v for k, v in specific.items() if k in names and v is not None and v != ""})
    return params


def parse_params(params_json: str | dict | None) -> dict[str, Any]:
    if isinstance(params_json, dict):
        return params_json
    if not params_json or not str(params_json).strip():
        return {}
    try:
        value = json.loads(params_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f"params must be a JSON object, e.g. {{\"gamma\": 4}}: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("params must be a JSON object, e.g. {\"gamma\": 4}")
    return value


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


def where_measured(trace: Trace) -> str:
    """Beside every measured figure: where the run ran and whether it had the engine to itself."""
    note = trace.meta.get("engine") or {}
    if not note:
        return ""
    alone = note.get("runs_at_once", 1) <= 1
    text = f", {note.get('where', 'engine')}, " + ("alone" if alone else f"sharing the engine with {note['runs_at_once'] - 1} other run(s)")
    if note.get("where") == "server thread":
        text += " (an in-process engine: its timings share the process with the page and other requests)"
    if note.get("queued_s"):
        text += f", after {note['queued_s']:.2f} s in the queue"
    return text


def run_status(trace: Trace, served: str = "") -> str:
    return (f"{trace.new_tokens} tokens in {trace.wall_time:.2f} s (measured{where_measured(trace)}) - "
            f"finish: {trace.rows[0].finish_reason}" + (f" - {served}" if served else ""))


def result_figures(trace: Trace, baseline: Trace | None, costs: tuple[float, float, float] | None = None) -> tuple:
    """(timeline, histogram, per-position, stats, mirror figure) of a finished run."""
    stats = plots.stats_table(trace, baseline) if baseline is not None else pd.DataFrame(columns=["metric", "value"])
    mirror = (plots.mirror_timelines(trace, HeterogeneousCosts(*costs) if costs else None)
              if trace.method == "mirror" else plots.empty_figure("Mirror-SD timelines", "run mirror to see measured vs modeled lanes"))
    return (plots.token_timeline(trace), plots.acceptance_histogram(trace), plots.position_acceptance(trace), stats,
            mirror)


# ----------------------------------------------------------------------------- handlers
def session_of(request: gr.Request | None) -> str:
    """The browser session (each gradio_client is one too): the per-session cap counts its runs."""
    return str(getattr(request, "session_hash", None) or "")


def ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def queue_text(update: Update) -> str:
    """A waiting request's answer: its place and the estimated wait, or where it runs."""
    if update.state == "queued" and update.place is not None:
        place = update.place
        return (f"queued: {ordinal(place.position)} in line ({place.waiting} waiting), about "
                f"{max(1, round(place.estimate_s))} s before it starts")
    if update.state == "running":
        desc = (update.progress or {}).get("desc")
        return f"running now on the engine ({update.worker})" + (f": {desc}" if desc else "")
    return ""


def served_text(update: Update) -> str:
    """Beside a result: when it was measured and whether this request ran it."""
    text = label(update.measured_at, update.served)
    return text + (" (press 'Measure again' for a new run)" if update.served == "cache" else "")


def submit(job: Job, request: gr.Request | None, fresh: bool = False) -> Iterator[Update]:
    yield from service().submit(job, session_of(request), fresh)


def queued_result(job: Job, request: gr.Request | None, progress: gr.Progress | None = None,
                  fresh: bool = False) -> tuple[Any, Update]:
    """A job's result for a handler that returns once: its place, then the run's progress, on the bar."""
    last = None
    for last in submit(job, request, fresh):
        if progress is not None and last.state != "done" and last.changed:
            fraction = (last.progress or {}).get("progress", 0.0) if last.state == "running" else 0.0
            progress(fraction, desc=queue_text(last))
    return last.result, last


def status_html(text: str, state: str, update: Update | None = None) -> str:
    """The answer shown in the tokens view while a request waits (data-* for scripts and tests)."""
    place = update.place if update is not None else None
    data = (f' data-position="{place.position}" data-waiting="{place.waiting}" data-estimate-s="{place.estimate_s:.2f}"'
            if place is not None else "")
    return f'<div class="sv-queue" role="status" data-state="{state}"{data}>{render.esc(text)}</div>'


def with_served(trace_json: str, update: Update) -> str:
    """The trace as this request got it: when it was measured and whether from the cache (API callers read meta)."""
    trace = Trace.from_json(trace_json)
    trace.meta["served"] = {"from": update.served, "measured_at": update.measured_at}
    return trace.to_json()


RENDERED_ENTRIES = 32  # finished Playground results whose figures and downloads are kept, drawn once each
_RENDERED: OrderedDict[tuple, tuple] = OrderedDict()
_RENDERED_LOCK = threading.Lock()


def rendered(result: dict, key: str | None, measured_at: float | None, costs: tuple) -> tuple:
    """(trace, figures, trace JSON, download files) of one measured result, drawn once: a class clicking the
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
            drawn.append((trace, result_figures(trace, baseline, costs), result["trace"], save_downloads(trace)))
    return drawn[0]


def playground_views(result: dict, update: Update, costs, key: str | None = None) -> tuple:
    trace, figures, trace_json, files = rendered(result, key, update.measured_at, costs)
    status = run_status(trace, served_text(update))
    return ((render.replay_html(trace, status=status, measured_at=update.measured_at),) + figures
            + (trace_json, files))


def playground(request: gr.Request, fresh: bool, inputs: tuple) -> Iterator[tuple]:
    """The Playground's run: its place in the queue at once, then the measured trace sent once and replayed in
    the browser at the pace the run had (nothing streams while it is timed)."""
    (prompt, target, draft, method, max_new_tokens, temperature, top_k, top_p, seed, heal_prompt, *rest) = inputs
    *specific_values, cost_t, cost_d, cost_c = rest
    specific = dict(zip(PARAMS, specific_values))
    common = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                  heal_prompt=heal_prompt)
    job = app_requests.traced_job("playground", method, target, draft, prompt, collect_params(method, common, specific))
    skip = tuple(gr.skip() for _ in range(7))  # every output but the tokens view
    for update in submit(job, request, fresh):
        if update.state != "done":
            yield (status_html(queue_text(update), update.state, update) if update.changed else gr.skip(),) + skip
    yield playground_views(update.result, update, (cost_t, cost_d, cost_c), job.cache_key)


def playground_run(request: gr.Request, *inputs):
    yield from playground(request, False, inputs)


def playground_measure_again(request: gr.Request, *inputs):
    yield from playground(request, True, inputs)


MIRROR_COSTS = (0.5, 0.4, 0.05)  # the Playground's default modeled Mirror-SD costs: target layer, drafter step, transfer (ms)
RACE_MAX_SECONDS = 60.0  # a longer pair of runs plays faster, and says so
RACE_DEFAULT_TOKENS = 96


def race(request: gr.Request, prompt, method, max_new_tokens, target, draft, fresh=False):
    """Autoregressive vs a method on the same prompt: each run measured alone in the engine, then the two
    measured timelines sent once and played back together by the browser at the pace they had."""
    if method not in METHODS or METHODS[method].batch or method == "autoregressive":
        raise ValueError("choose a speculative single-sequence method to race against autoregressive")
    job = app_requests.traced_job("playground", method, target, draft, prompt,
                                  {"max_new_tokens": int(max_new_tokens), "heal_prompt": UI_DEFAULTS["heal_prompt"]})
    for update in submit(job, request, fresh):
        if update.state != "done":
            yield status_html(queue_text(update), update.state, update) if update.changed else gr.skip()
    trace = Trace.from_json(update.result["trace"])
    baseline = Trace.from_json(update.result["baseline"])
    yield render.race_html(trace, baseline, max_seconds=RACE_MAX_SECONDS, served=served_text(update),
                           measured_at=update.measured_at)


def race_measure_again(request: gr.Request, prompt, method, max_new_tokens, target, draft):
    yield from race(request, prompt, method, max_new_tokens, target, draft, fresh=True)


def exactness_lab(request: gr.Request, prompt, method, temperature, top_k, top_p, n, tokens, seed, with_broken, target,
                  draft, progress=gr.Progress()):
    """Exactness lab: is what the method samples distributed as the target's own law?"""
    params = {"temperature": float(temperature), "top_k": int(top_k or 0), "top_p": float(top_p)}
    job = app_requests.exactness_job(method, target, draft, prompt, int(n), int(tokens), params, bool(with_broken),
                                     int(seed))
    got, update = queued_result(job, request, progress)
    real, broken = got["real"], got["broken"]
    return plots.exactness_figure(real, broken), plots.exactness_table(real, broken)


def playground_api(request: gr.Request, prompt: str, method: str = "draft_model", params_json: str = "{}",
                   target: str = EMBEDDED, draft: str = "") -> tuple[str, str]:
    """API: one run -> (generated text, trace JSON). params_json holds method and common parameters, and
    "measure_again": true to bypass the trace cache (the trace's meta["served"] says where it came from)."""
    params = parse_params(params_json)
    fresh = bool(params.pop("measure_again", False))
    job = app_requests.traced_job("single", method, target, draft, prompt, params)
    trace_json, update = queued_result(job, request, fresh=fresh)
    trace_json = with_served(trace_json, update)
    return Trace.from_json(trace_json).text, trace_json


def compare_methods(request: gr.Request, methods, prompt_source, pasted, n_prompts, max_new_tokens, repeats, target,
                    draft, progress=gr.Progress()):
    """Methods x prompts, interleaved per prompt (the bench's own loop, in the engine)."""
    if not methods:
        raise ValueError("choose at least one method to compare")
    unknown = [m for m in methods if m not in METHODS or METHODS[m].batch]
    if unknown:
        raise ValueError(f"not single-sequence methods: {', '.join(map(str, unknown))}")
    if prompt_source == "pasted":
        texts = [line for line in (pasted or "").splitlines() if line.strip()]
        if not texts:
            raise ValueError("paste at least one prompt (one per line)")
        prompts = [{"id": str(i + 1), "category": "pasted", "prompt": t.replace("\\n", "\n")} for i, t in enumerate(texts[:32])]
    else:
        prompts = load_prompts(DEFAULT_PROMPTS)[: int(n_prompts)]
    common = {"max_new_tokens": int(max_new_tokens)}
    specs = [(m, m, dict(common)) for m in methods]
    job = app_requests.compare_job(specs, prompts, int(repeats), int(max_new_tokens), target, draft)
    got, update = queued_result(job, request, progress)
    frame = pd.read_json(io.StringIO(got), orient="records")

    table = summary(frame).reset_index().round(3)
    figs = plots.compare_figures(frame)
    return table, figs["speedup"], figs["tau"], figs["tokens_per_s"], figs["equal"]


def batch_compare(request: gr.Request, batch_size, n_prompts, max_new_tokens, gamma, include_naive, target, draft,
                  progress=gr.Progress()):
    """EQSPEC vs EXSPEC (and batched AR, and the naive mode if asked) on the same prompts."""
    prompts = [p["prompt"] for p in load_prompts(DEFAULT_PROMPTS)[: int(n_prompts)]]
    if not prompts:
        raise ValueError("choose at least one prompt")
    job = app_requests.batch_compare_job(int(batch_size), prompts, int(max_new_tokens), int(gamma), bool(include_naive),
                                         target, draft)
    got, update = queued_result(job, request, progress)
    frame = pd.DataFrame(got["rows"])
    traces = {label: Trace.from_json(text) for label, text in got["traces"].items()}
    shown = traces.get("eqspec") or next(iter(traces.values()))
    ex = traces.get("exspec")
    return (frame, plots.batch_timeline(shown), plots.batch_timeline(ex) if ex else plots.empty_figure("EXSPEC"),
            plots.throughput_figure(frame.assign(method=frame["method"].str.split(" ").str[0])), pd.DataFrame(got["equivalence"]))


def batch_api(request: gr.Request, prompts_json: str, method: str = "eqspec", params_json: str = "{}",
              target: str = EMBEDDED, draft: str = "") -> tuple[str, str]:
    """API: a batch run -> (texts as a JSON list, trace JSON)."""
    try:
        prompts = json.loads(prompts_json) if isinstance(prompts_json, str) else prompts_json
    except json.JSONDecodeError as exc:
        raise ValueError(f"prompts must be a JSON list of strings: {exc}") from None
    trace_json, _ = queued_result(app_requests.batch_job(method, target, draft, prompts, parse_params(params_json)),
                                  request)
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
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    svc = service()
    state = svc.pool.call(0, "health", {}, immediate=True)
    queue = svc.admission.snapshot()
    return json.dumps({"ok": True, "runs_in_flight": queue["running"] + queue["waiting"], "queue": queue,
                       "trace_cache": svc.cache.stats(), "models_cached": state["models_cached"],
                       "engine": svc.pool.kind, "engine_workers": svc.pool.size, "engine_pid": state["engine_pid"],
                       "engine_peak_rss_mb": state["engine_peak_rss_mb"], "peak_rss_mb": round(peak_mb, 1)})


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
    note = (f'<div class="sv-note">round {index + 1} of {len(steps)} - previous / next: the buttons or the '
            "left / right arrow keys</div>")
    return note + render.explainer_html(trace, steps[index], decode=decode), gr.update(maximum=len(steps) - 1, value=index)


def step_move(trace_json: str, step: float, delta: int) -> int:
    if not trace_json:
        return 0
    last = max(0, len(render.rounds(Trace.from_json(trace_json))) - 1)
    return min(max(int(step) + delta, 0), last)


def method_changed(method: str) -> list:
    names = {p.name: p for p in METHODS[method].PARAMS} if method in METHODS else {}
    doc = (METHODS[method].__doc__ or "").strip().split("\n")[0] if method in METHODS else ""
    updates = [gr.update(visible=True, value=names[name].default) if name in names else gr.update(visible=False)
               for name in PARAMS]
    return [gr.update(value=f"**{METHODS[method].title}**. {doc}" if method in METHODS else "")] + updates + \
        [gr.update(visible=method == "mirror")]


# ----------------------------------------------------------------------------- layout
LEARN_TEMPLATE = """
### Speculative decoding in one paragraph
A cheap **drafter** guesses the next γ tokens; the expensive **target** checks all of them in one forward
pass. Greedy: drafts are kept while they equal the target's own choice, then the target's token is
emitted (a *correction*, or a *bonus* when every draft passed). Sampling: each draft is kept with
probability min(1, p/q), and a rejection resamples from norm(max(0, p − q)) — so the output follows the
target's distribution **exactly** (Leviathan et al. 2023; Chen et al. 2023). With acceptance rate α and
cost ratio c, the expected speedup is (1 − α^(γ+1)) / ((1 − α)(γc + 1)).

| method | paper | idea | headline result (paper, their hardware) | measured here (embedded pair) |
| --- | --- | --- | --- | --- |
| `draft_model` | Leviathan et al. 2023, *Fast Inference from Transformers via Speculative Decoding* | a separate small drafter | 2–3× on T5-XXL, identical outputs | {draft_model} |
| `kangaroo` | Liu et al. 2024, *Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting* | the target's first layers + a small adapter draft; drafting stops when confidence < η | up to 1.68× on Spec-Bench with 88.7 % fewer extra parameters than Medusa | {kangaroo} |
| `sorted` | Kavehzadeh et al. 2024, *S2D: Sorted Speculative Decoding* | one SoFT-trained drafter whose layer prefixes are drafters; per-token choice by confidence; serves several targets | one drafter for many targets, beating per-target drafters on average | {sorted} |
| VocabTrim | Goel et al. 2025, *VocabTrim* | drafter LM head cut to the K tokens the target emits most | up to 16 % memory-bound speedup on Llama-3.2-3B | {vocabtrim} |
| `mirror` | Mirror-SD 2025, *Mirror Speculative Decoding* | an early exit of the target launches drafter branches that run in parallel with the target's remaining layers | 2.8–5.8× wall-time speedup on heterogeneous accelerators | {mirror} |
| `eqspec` / `exspec` | *Batch Speculative Decoding Done Right* | realign padding, positions, masks and KV caches after every ragged round; or group same-length rows | up to 3× throughput at batch 8 on GPU, outputs equal to non-batched decoding | {batch} |

{provenance}

**What is not included here**: Mirror-SD's *speculative streaming* (a drafter emitting several tokens
per forward through extra heads) is not implemented; specviz's Mirror-SD drafter emits one token per
forward. Timings labelled MODELED re-time a measured trace under cost parameters you set; everything
else is MEASURED on the machine serving this page.
"""


def learn_markdown() -> str:
    """The Learn tab: each paper's headline beside what this project measured on the shipped models."""
    summary = load_summary(EMBEDDED_DIR)
    text = LEARN_TEMPLATE.replace("{provenance}", provenance(summary))
    for key in ROWS:
        text = text.replace("{" + key + "}", cell(key, summary).replace("|", "\\|"))
    return text


def explorer_figure(alpha, gamma, c, v, points):
    return plots.speedup_explorer(float(alpha), int(gamma), float(c), float(v), points)


def add_explorer_point(trace_json, alpha, gamma, c, v, points):
    """After a Playground run: its measured speedup joins this session's points (the last 20 kept)."""
    point = plots.explorer_point(Trace.from_json(trace_json)) if trace_json else None
    points = (list(points or []) + [point])[-20:] if point else list(points or [])
    return points, explorer_figure(alpha, gamma, c, v, points)


STEP_KEYS_JS = """
  document.addEventListener("keydown", (e) => {
    const view = document.querySelector("#step-explainer");
    if (!view || !view.offsetParent || ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName)) return;
    if (e.key === "ArrowRight") document.querySelector("#step-next")?.click();
    if (e.key === "ArrowLeft") document.querySelector("#step-prev")?.click();
  });
"""
# run once when the page loads: arrow keys in Step through, the replay of measured runs, accessibility fixes
PAGE_JS = page_style.page_js("() => {" + STEP_KEYS_JS + "}", "() => {" + render.REPLAY_JS + "}", page_style.A11Y_JS)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="specviz: see speculative decoding", analytics_enabled=False) as demo:
        gr.Markdown("# specviz\nSee speculative decoding token by token: what was drafted, what the target kept, "
                    "and what it cost. Every method here is lossless: greedy output equals the target's own.")
        trace_state = gr.State("")
        with gr.Row():
            target = gr.Textbox(value=EMBEDDED, label="target model (embedded, a local path or a Hugging Face id)", scale=2)
            draft = gr.Textbox(value="", label="drafter (empty: the pair's own; must share the target's tokenizer)", scale=2)
        gr.Markdown("Curated public pairs (need the network): " + "; ".join(f"`{t}` + `{d}` ({w})" for t, d, w in CURATED_PAIRS),
                    elem_classes="sv-note")
        with gr.Tabs():
            with gr.Tab("Playground", id="playground"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(value=EXAMPLES[0], lines=5, label="prompt", elem_id="prompt")
                        gr.Examples(EXAMPLES[:8], inputs=prompt, label="example prompts")
                        with gr.Row():
                            run_btn = gr.Button("Run", variant="primary", elem_id="run")
                            again_btn = gr.Button("Measure again", elem_id="measure-again")
                            stop_btn = gr.Button("Stop", elem_id="stop")
                    with gr.Column(scale=1):
                        method = gr.Dropdown(SINGLE, value="draft_model", label="method", elem_id="method")
                        method_doc = gr.Markdown()
                        specific = [control(p, visible=p.name in {q.name for q in METHODS["draft_model"].PARAMS})
                                    for p in PARAMS.values()]
                        with gr.Accordion("sampling and length", open=False):
                            common = [control(p, visible=True) for p in COMMON_PARAMS]
                        with gr.Accordion("Mirror-SD modeled costs (ms)", open=False, visible=False) as mirror_box:
                            costs = [gr.Number(value, label=label) for value, label in
                                     zip(MIRROR_COSTS, ("target layer (ms)", "drafter step (ms)",
                                                        "transfer of candidates (ms)"))]
                gr.HTML(render.legend_html())
                tokens = gr.HTML(elem_id="tokens")
                timeline = gr.Plot(label="token timeline (measured)")
                with gr.Row():
                    hist = gr.Plot(label="tokens per round")
                    pos = gr.Plot(label="acceptance by position")
                stats = gr.Dataframe(label="against the autoregressive run of the same prompt", interactive=False, elem_id="stats")
                mirror_plot = gr.Plot(label="Mirror-SD: measured vs MODELED")
                files = gr.File(label="download this run's trace (JSON, CSV, Chrome trace for Perfetto)", file_count="multiple")
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    methods = gr.CheckboxGroup(SINGLE, value=["draft_model", "kangaroo"], label="methods (autoregressive is always run)")
                    with gr.Column():
                        source = gr.Radio(["bundled", "pasted"], value="bundled", label="prompts")
                        n_prompts = gr.Slider(1, 16, value=3, step=1, label="bundled prompts to use")
                        c_tokens = gr.Slider(8, 256, value=48, step=8, label="max new tokens")
                        c_repeats = gr.Slider(1, 5, value=1, step=1, label="repeats (median)")
                pasted = gr.Textbox(lines=3, label="pasted prompts, one per line (\\n for a newline)")
                compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
                c_table = gr.Dataframe(label="median per method (measured)", interactive=False, elem_id="compare-table")
                with gr.Row():
                    c_speed, c_tau = gr.Plot(), gr.Plot()
                with gr.Row():
                    c_tps, c_equal = gr.Plot(), gr.Plot()
            with gr.Tab("Batch", id="batch"):
                with gr.Row():
                    b_size = gr.Slider(1, 32, value=4, step=1, label="batch size")
                    b_prompts = gr.Slider(1, 16, value=4, step=1, label="prompts")
                    b_tokens = gr.Slider(4, 128, value=24, step=4, label="max new tokens")
                    b_gamma = gr.Slider(1, 8, value=3, step=1, label="gamma")
                    b_naive = gr.Checkbox(value=True, label="also run the NAIVE mode (broken on purpose: positions not realigned)")
                batch_btn = gr.Button("Run batch", variant="primary", elem_id="batch-run")
                b_table = gr.Dataframe(label="throughput, time realigning, equivalence (measured)", interactive=False,
                                       elem_id="batch-table")
                b_eq_timeline = gr.Plot(label="EQSPEC rows")
                b_ex_timeline = gr.Plot(label="EXSPEC rows")
                b_tput = gr.Plot(label="throughput vs batch size")
                b_rows = gr.Dataframe(label="per-row equivalence with single-sequence autoregressive", interactive=False)
            with gr.Tab("Step through", id="step"):
                gr.Markdown("Replay the last Playground run (or a loaded trace) one verification round at a time.")
                with gr.Row():
                    step_prev = gr.Button("< previous round", elem_id="step-prev", scale=0)
                    step_slider = gr.Slider(0, 200, value=0, step=1, label="round", elem_id="step-slider")
                    step_next = gr.Button("next round >", elem_id="step-next", scale=0)
                step_html = gr.HTML(elem_id="step-explainer")
                with gr.Accordion("load a saved trace", open=False):
                    upload = gr.File(label=f"trace JSON (at most {MAX_TRACE_BYTES // 1_000_000} MB)", file_types=[".json"])
                    load_btn = gr.Button("Load trace")
                    loaded_html = gr.HTML()
                    loaded_plot = gr.Plot()
            with gr.Tab("Exactness", id="exactness-tab"):
                with gr.Column(elem_id="exactness"):
                    gr.Markdown("Speculative sampling claims to leave the output distribution exactly the target's. "
                                "Test it: draw N continuations of the first tokens with a method and N with plain "
                                "autoregressive sampling, and compare both with the target's EXACT probabilities (its top "
                                "tokens at each step enumerated, the rest binned as 'other'): total-variation distance and "
                                "a chi-square test. The BROKEN variant draws a rejected token from p instead of the residual "
                                "max(0, p - q): the same test exposes its bias.")
                    with gr.Row():
                        e_prompt = gr.Textbox(value="def f(x):", lines=2, label="prompt", scale=2)
                        e_method = gr.Dropdown([m for m in SINGLE if m not in ("autoregressive", "hf_assisted")],
                                               value="draft_model", label="method")
                    with gr.Row():
                        e_temp = gr.Number(1.0, label="temperature (> 0)")
                        e_topk = gr.Number(0, label="top_k (0 = off)", precision=0)
                        e_topp = gr.Number(1.0, label="top_p")
                        e_n = gr.Slider(100, 5000, value=5000, step=100, label="N samples per sampler", elem_id="e-n")
                        e_tokens = gr.Slider(1, 3, value=2, step=1, label="tokens per sample")
                        e_seed = gr.Number(0, label="seed", precision=0)
                        e_broken = gr.Checkbox(True, label="also run the BROKEN-on-purpose rule")
                    exact_btn = gr.Button("Test exactness", variant="primary", elem_id="exactness-run")
                    e_table = gr.Dataframe(label="against the target's exact law", interactive=False, elem_id="exactness-table")
                    e_plot = gr.Plot(label="empirical shares vs the exact law", elem_id="exactness-plot")
            with gr.Tab("Race", id="race-tab"):
                with gr.Column(elem_id="race"):
                    gr.Markdown("The same prompt by autoregressive decoding and by a speculative method, side by side: "
                                "tokens appear at the pace each run really had, with both clocks and the running speedup.")
                    with gr.Row():
                        r_prompt = gr.Textbox(value=EXAMPLES[1], lines=3, label="prompt", scale=3)
                        with gr.Column(scale=1):
                            r_method = gr.Dropdown([m for m in SINGLE if m != "autoregressive"], value="draft_model",
                                                   label="method")
                            r_tokens = gr.Slider(8, 256, value=RACE_DEFAULT_TOKENS, step=8, label="max new tokens")
                    with gr.Row():
                        race_btn = gr.Button("Race", variant="primary", elem_id="race-run")
                        race_again = gr.Button("Measure again", elem_id="race-again")
                    race_out = gr.HTML(elem_id="race-html")
            with gr.Tab("Explorer", id="explorer-tab"):
                with gr.Column(elem_id="explorer"):
                    gr.Markdown("The expected speedup of speculative decoding (Leviathan et al. 2023) for an i.i.d. "
                                "acceptance rate alpha, gamma drafts per round, a draft step costing c target steps and a "
                                "verification costing v target steps: (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + v)). "
                                "The curve is MODELED; every Playground run of this session appears as a MEASURED point "
                                "(at its mean drafts per round), so the gap between model and measurement shows.")
                    with gr.Row():
                        x_alpha = gr.Slider(0.0, 1.0, value=0.8, step=0.01, label="alpha (acceptance rate)", elem_id="x-alpha")
                        x_gamma = gr.Slider(1, 16, value=4, step=1, label="gamma (drafts per round)", elem_id="x-gamma")
                        x_c = gr.Slider(0.0, 1.0, value=0.15, step=0.01, label="c (draft step / target step)", elem_id="x-c")
                        x_v = gr.Slider(1.0, 3.0, value=1.2, step=0.05, label="v (verify / target step)", elem_id="x-v")
                    x_plot = gr.Plot(label="expected speedup vs gamma", elem_id="explorer-plot")
                    x_points = gr.State([])
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(learn_markdown())

        method.change(method_changed, method, [method_doc] + specific + [mirror_box], api_visibility="private")
        demo.load(method_changed, method, [method_doc] + specific + [mirror_box], api_visibility="private")
        # Every event that needs the engine is admitted by Gradio at once (ENGINE_EVENTS) and waits in
        # specviz.app.admission's queue, which answers with its place and estimated wait.
        engine_events = dict(concurrency_limit=ENGINE_EVENTS, concurrency_id="engine")
        # Playground and Race show their own answer (place, then the replay): no spinner or timer beside a timed run
        replayed = dict(engine_events, show_progress="hidden")
        playground_io = ([prompt, target, draft, method] + common + specific + costs,
                         [tokens, timeline, hist, pos, stats, mirror_plot, trace_state, files])
        run_event = run_btn.click(friendly(playground_run), *playground_io, api_visibility="undocumented",
                                  api_name="playground_stream", **replayed)
        again_event = again_btn.click(friendly(playground_measure_again), *playground_io, api_visibility="undocumented",
                                      api_name="playground_measure_again", **replayed)
        stop_btn.click(None, None, None, cancels=[run_event, again_event])
        exact_btn.click(friendly(exactness_lab), [e_prompt, e_method, e_temp, e_topk, e_topp, e_n, e_tokens, e_seed, e_broken,
                                                  target, draft], [e_plot, e_table], api_name="exactness", **engine_events)
        race_io = ([r_prompt, r_method, r_tokens, target, draft], race_out)
        race_btn.click(friendly(race), *race_io, api_visibility="undocumented", api_name="race", **replayed)
        race_again.click(friendly(race_measure_again), *race_io, api_visibility="undocumented",
                         api_name="race_measure_again", **replayed)
        explorer_inputs = [x_alpha, x_gamma, x_c, x_v, x_points]
        for event in (run_event, again_event):
            event.then(add_explorer_point, [trace_state] + explorer_inputs, [x_points, x_plot], api_visibility="private")
        for slider in (x_alpha, x_gamma, x_c, x_v):
            slider.change(explorer_figure, explorer_inputs, x_plot, api_visibility="private")
        demo.load(explorer_figure, explorer_inputs, x_plot, api_visibility="private")
        trace_state.change(step_view, [trace_state, step_slider], [step_html, step_slider], api_visibility="private")
        step_slider.change(friendly(step_view), [trace_state, step_slider], [step_html, step_slider], api_visibility="private")
        step_prev.click(lambda t, s: step_move(t, s, -1), [trace_state, step_slider], step_slider, api_visibility="private")
        step_next.click(lambda t, s: step_move(t, s, 1), [trace_state, step_slider], step_slider, api_visibility="private")
        compare_btn.click(friendly(compare_methods), [methods, source, pasted, n_prompts, c_tokens, c_repeats, target, draft],
                          [c_table, c_speed, c_tau, c_tps, c_equal], api_name="compare", **engine_events)
        batch_btn.click(friendly(batch_compare), [b_size, b_prompts, b_tokens, b_gamma, b_naive, target, draft],
                        [b_table, b_eq_timeline, b_ex_timeline, b_tput, b_rows], api_name="batch", **engine_events)
        load_btn.click(friendly(load_trace), upload, [loaded_html, loaded_plot, trace_state], api_visibility="private",
                       api_name="upload_trace")
        # plain API endpoints (gradio_client): strings in, strings out
        api_in = [gr.Textbox(visible=False) for _ in range(5)]
        api_out = [gr.Textbox(visible=False) for _ in range(2)]
        gr.Button(visible=False).click(friendly(playground_api), api_in, api_out, api_name="playground", **engine_events)
        gr.Button(visible=False).click(friendly(batch_api), api_in, api_out, api_name="batch_run", **engine_events)
        gr.Button(visible=False).click(friendly(load_trace_api), api_in[:1], api_out[:1], api_name="load_trace")
        gr.Button(visible=False).click(health, None, api_out[:1], api_name="health", queue=False)
    return demo


def warm_engines(target: str = EMBEDDED) -> str:
    """Every engine worker loads the pair before the server answers (the first request is fast, missing assets
    fail at start-up)."""
    svc = service()
    return "; ".join(svc.pool.call(w, "warm", {"target": target}) for w in range(svc.pool.size))


def prewarm_jobs() -> list[Job]:
    """The bundled examples as the page sends them with its default settings (Playground, and Race's default)."""
    page = {"heal_prompt": UI_DEFAULTS["heal_prompt"]}
    jobs = [app_requests.traced_job("playground", "draft_model", EMBEDDED, "", p, page, app_requests.WARMUP_PRIORITY)
            for p in EXAMPLES[:8]]
    jobs.append(app_requests.traced_job("playground", "draft_model", EMBEDDED, "", EXAMPLES[1],
                                        {**page, "max_new_tokens": RACE_DEFAULT_TOKENS}, app_requests.WARMUP_PRIORITY))
    return jobs


def prewarm() -> None:
    """Measure the bundled examples once, one at a time, behind every visitor's run (their cache entries)."""
    for job in prewarm_jobs():
        try:
            result, update = service().call(job)
            rendered(result, job.cache_key, update.measured_at, MIRROR_COSTS)  # drawn too, as the page asks
        except Exception:  # noqa: BLE001 - a warm-up failure only costs a cache entry
            log.warning("warm-up run failed:\n%s", traceback.format_exc())


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    demo = build_demo()
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=GRADIO_QUEUE)
    if os.environ.get(PREWARM_ENV, "1") != "0":
        threading.Thread(target=prewarm, name="specviz-prewarm", daemon=True).start()
    demo.launch(server_name=host, server_port=port, theme=page_style.theme(), css=render.CSS + render.REPLAY_CSS,
                js=PAGE_JS, show_error=True, ssr_mode=False, footer_links=["api"],
                max_file_size=f"{MAX_TRACE_BYTES // 1_000_000}mb", max_threads=ENGINE_EVENTS + 2 * CONCURRENCY)
