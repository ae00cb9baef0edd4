"""The page's way to the engine: the one Service (trace cache, admission queue, engine workers) and what a
waiting handler shows (its place, the estimate, where its result came from).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable, Generator, Iterator

import gradio as gr

from specviz.app.admission import Admission, AdmissionConfig
from specviz.app.pool import EnginePool, PoolConfig
from specviz.app.serving import Job, Service, Update
from specviz.app.trace_cache import TraceCache, label
from specviz.engine.trace import Trace
from specviz.views import render

try:  # Hugging Face ZeroGPU: a GPU is attached only while a decorated function runs
    import spaces  # type: ignore
except ImportError:  # everywhere else the app runs unchanged
    spaces = None

log = logging.getLogger("specviz.app")


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
        return (
            f"queued: {ordinal(place.position)} in line ({place.waiting} waiting), about "
            f"{max(1, round(place.estimate_s))} s before it starts"
        )
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


def queued_result(job: Job, request: gr.Request | None, fresh: bool = False) -> tuple[Any, Update]:
    """A job's result for an API endpoint that returns once (the page's tabs show their wait: `awaited`)."""
    last = None
    for last in submit(job, request, fresh):
        pass
    return last.result, last


def awaited(job: Job, request: gr.Request | None, outputs: int, fresh: bool = False) -> Generator[tuple, None, tuple]:
    """A handler's wait, as `got, update = yield from awaited(...)`: while the job waits or runs it yields
    `outputs` Nones (the last result is cleared: a skip is an update, for which Gradio builds a new component and
    its config, a third of a waiting answer's cost when a class clicks at once) and the status (its place, the
    estimate, then "running"), and returns (result, update). The page shows no progress bar or timer: nothing
    animates beside a timed run (the status changes a few times)."""
    last = None
    for last in submit(job, request, fresh):
        if last.state != "done" and last.changed:
            yield (None,) * outputs + (status_html(queue_text(last), last.state, last),)
    return last.result, last


def done_html(update: Update, what: str) -> str:
    """The status once a result is shown: when it was measured, and by what."""
    when = time.strftime("%H:%M:%S", time.localtime(update.measured_at)) if update.measured_at else "now"
    return status_html(f"{what}, measured at {when}", "done", update)


def status_html(text: str, state: str, update: Update | None = None) -> str:
    """The answer shown in the tokens view while a request waits (data-* for scripts and tests)."""
    place = update.place if update is not None else None
    data = (
        f' data-position="{place.position}" data-waiting="{place.waiting}" data-estimate-s="{place.estimate_s:.2f}"'
        if place is not None
        else ""
    )
    return f'<div class="sv-queue" role="status" data-state="{state}"{data}>{render.esc(text)}</div>'


def with_served(trace_json: str, update: Update) -> str:
    """The trace as this request got it: when it was measured and whether from the cache (API callers read meta)."""
    trace = Trace.from_json(trace_json)
    trace.meta["served"] = {"from": update.served, "measured_at": update.measured_at}
    return trace.to_json()
