"""How a visitor's request reaches the engine: the trace cache, one shared measurement per identical
request, a place in the queue (`specviz.app.admission`), and a worker of the pool (`specviz.app.pool`).

`Service.submit` is a generator of `Update`s a handler turns into what the page shows: within a fraction
of a second the request's place and estimated wait (or the cached answer), then the result. Each
measurement runs in a thread of its own (a `Flight`), so the handlers that watch it may come and go: a
closed page stops watching, and the run is cancelled only when nobody watches it any more.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

from specviz.app.admission import Admission, Place, Ticket
from specviz.engine import quiet

POLL_SECONDS = 0.25  # how often a waiting handler re-reads its place (its page updates only on a change)
HEARTBEAT_SECONDS = 1.0  # longest time between two yields of a waiting handler
SETTLE_SECONDS = 0.2  # between telling a page its run starts and starting it (the page draws that meanwhile)
# ... and while requests keep arriving (a class clicking at once), until none came for SETTLE_SECONDS, at most this
# long: the server answers the burst (places and estimates) before the run takes the cores, and the run is not
# timed beside that work. Measured: 32 clicks at once got their first answer after p95 1.6 s when the first run
# started 0.2 s after the first click (scripts/load_test.py --parts c; docs/serving.md).
SETTLE_MAX_SECONDS = 1.0
# A generator handler must yield that often: Gradio stops (Stop, a closed page) a sync generator only between
# two of its yields, and waits for that before it answers the cancel request.
# The start-up measurement (`Service.wait_idle`) starts a run only after this many seconds with no request, no run
# queued or running and the machine's CPUs quiet (specviz.engine.quiet: everyone's share of them at most the
# threshold that calls a run disturbed): long enough to see a page load or the server's own start-up, short enough
# to be done soon after.
IDLE_SECONDS = 3.0
IDLE_PATIENCE_SECONDS = 300.0  # ... and gives up after this long without such a quiet stretch


@dataclass(frozen=True)
class Job:
    """One engine job as the app asks for it."""

    name: str  # a function of specviz.app.jobs
    kwargs: dict[str, Any]
    kind: str  # what the wait estimate learns per (e.g. "playground:draft_model")
    units: float  # the run's size in that kind's units (tokens, samples, ...)
    cache_key: str | None = None  # None: never served from the cache nor shared
    priority: int = 0  # 0 visitors; 1 the start-up warm-up (waits behind every visitor)


@dataclass(frozen=True)
class Update:
    state: str  # "queued" | "running" | "done"
    place: Place | None = None  # queued: position and estimated wait
    result: Any = None  # done: the job's result
    served: str = ""  # done: "cache" (stored), "shared" (an identical request's run), "engine" (this request's run)
    measured_at: float | None = None  # done: epoch seconds when the engine finished measuring it
    worker: str = ""  # running/done: which engine worker
    progress: dict | None = None  # running: the job's last progress message ({"progress", "desc"})
    changed: bool = True  # queued/running: differs from the update before (else only a heartbeat)


@dataclass
class Flight:
    """One measurement in progress and everyone waiting for it."""

    job: Job
    ticket: Ticket
    order: int  # when it was started, among all flights: a later measurement is never replaced by an earlier one
    watchers: int = 1
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    measured_at: float | None = None
    worker: str = ""
    progress: dict | None = None  # the job's last progress message (between its timed runs)


class Service:
    def __init__(self, pool, admission: Admission, cache=None) -> None:
        self.pool = pool
        self.admission = admission
        self.cache = cache  # specviz.app.trace_cache.TraceCache or None
        self._flights: dict[str, Flight] = {}  # cache key -> the newest measurement of it in progress
        self._order = itertools.count(1)
        self._lock = threading.Lock()

    def submit(self, job: Job, session: str = "", fresh: bool = False) -> Iterator[Update]:
        """Updates until the result. Raises `admission.Refused` before taking a place, or the run's error."""
        if job.cache_key and not fresh and self.cache is not None:
            entry = self.cache.get(job.cache_key)
            if entry is not None:
                yield Update("done", result=entry.value, served="cache", measured_at=entry.measured_at)
                return
        flight, leader = self._join(job, session, fresh)
        try:
            shown: Any = None
            said = 0.0  # when this request last yielded
            while not flight.done.wait(0 if shown is None else POLL_SECONDS):
                if flight.ticket.admitted.is_set():
                    update = Update("running", worker=flight.worker, progress=flight.progress)
                else:
                    update = Update("queued", place=self.admission.place(flight.ticket))
                view = (update.state, update.place.position if update.place else 0, id(update.progress))
                # a change is yielded at once; otherwise a heartbeat every HEARTBEAT_SECONDS (a handler's chance
                # to notice Stop or a closed page), so 32 waiting pages cost the server little
                if view != shown or time.monotonic() - said >= HEARTBEAT_SECONDS:
                    yield replace(update, changed=view != shown)
                    shown, said = view, time.monotonic()
            if flight.error is not None:
                raise flight.error
            yield Update(
                "done",
                result=flight.result,
                served="engine" if leader else "shared",
                measured_at=flight.measured_at,
                worker=flight.worker,
            )
        finally:
            self._leave(flight)

    def _join(self, job: Job, session: str, fresh: bool) -> tuple[Flight, bool]:
        with self._lock:
            flight = self._flights.get(job.cache_key) if job.cache_key and not fresh else None
            if flight is not None and not flight.done.is_set():
                flight.watchers += 1
                if job.priority < flight.ticket.priority:  # a visitor joined the warm-up's run: it waits no more
                    self.admission.promote(flight.ticket, job.priority)
                return flight, False
            ticket = self.admission.enter(session, job.kind, job.units, job.priority)  # may refuse: nothing taken
            flight = Flight(job=job, ticket=ticket, order=next(self._order))
            if job.cache_key:
                self._flights[job.cache_key] = flight
        threading.Thread(target=self._fly, args=(flight,), name="specviz-flight", daemon=True).start()
        return flight, True

    def _leave(self, flight: Flight) -> None:
        with self._lock:
            flight.watchers -= 1
            if flight.watchers <= 0 and not flight.done.is_set():
                flight.cancel.set()  # nobody waits for it any more: free its place, stop its run
                if not flight.ticket.admitted.is_set():  # a running one frees its worker when the engine stops
                    self.admission.release(flight.ticket)

    def _fly(self, flight: Flight) -> None:
        job, ticket = flight.job, flight.ticket
        started = None
        try:
            while not self.admission.wait(ticket, POLL_SECONDS):
                if flight.cancel.is_set():
                    raise RuntimeError("cancelled while waiting")
            if flight.cancel.is_set():
                raise RuntimeError("cancelled before it started")
            flight.worker = self.pool.describe(ticket.worker)
            started = time.perf_counter()  # the worker is this run's from here: the wait estimate learns from it
            # the page that is told "running now" draws that before the run is timed, not during its first steps
            self._settle()
            flight.result = self.pool.call(
                ticket.worker,
                job.name,
                job.kwargs,
                cancel=flight.cancel,
                on_message=lambda payload: setattr(flight, "progress", payload),
            )
            flight.measured_at = time.time()
            if job.cache_key and self.cache is not None and not flight.cancel.is_set():
                self.cache.put(job.cache_key, flight.result, flight.measured_at, flight.order)
        except BaseException as exc:  # noqa: BLE001 - every watcher of this run gets its error
            flight.error = exc
        finally:
            self.admission.release(
                ticket, None if started is None or flight.error is not None else time.perf_counter() - started
            )
            with self._lock:
                if job.cache_key and self._flights.get(job.cache_key) is flight:
                    del self._flights[job.cache_key]
            flight.done.set()

    def _settle(self) -> None:
        """Wait SETTLE_SECONDS, and then until no request has arrived for SETTLE_SECONDS (SETTLE_MAX_SECONDS at
        most)."""
        start = time.monotonic()
        time.sleep(SETTLE_SECONDS)
        while time.monotonic() - start < SETTLE_MAX_SECONDS:
            silent = time.monotonic() - getattr(self.admission, "last_arrival", 0.0)
            if silent >= SETTLE_SECONDS:
                return
            time.sleep(min(SETTLE_SECONDS - silent, SETTLE_MAX_SECONDS - (time.monotonic() - start)) + 0.005)

    def busy(self) -> bool:
        """A run queued or running."""
        queue = self.admission.snapshot()
        return queue["running"] + queue["waiting"] > 0

    def wait_idle(
        self,
        seconds: float = IDLE_SECONDS,
        patience: float = IDLE_PATIENCE_SECONDS,
        stop: threading.Event | None = None,
    ) -> bool:
        """Block until, for `seconds` on end, no request arrived, no run was queued or running and the machine's
        CPUs were quiet (everyone's share of them, this process included, at most quiet.disturbed_share(cpus); where the
        CPUs cannot be read, the requests alone decide). True then; False after `patience` seconds without such
        a stretch, or once `stop` is set. The start-up measurement waits so: what it measures is kept."""
        deadline = time.monotonic() + patience
        stop = stop or threading.Event()
        while time.monotonic() < deadline and not stop.is_set():
            start, arrival = quiet.read(), getattr(self.admission, "last_arrival", 0.0)
            wait = min(seconds, max(0.0, deadline - time.monotonic()))
            if self.busy():
                stop.wait(min(wait, POLL_SECONDS * 4))
                continue
            if stop.wait(wait):
                return False
            window = quiet.since(start)
            cpus_quiet = window.busy_share is None or window.busy_share <= window.threshold
            if (
                window.wall_s >= seconds
                and cpus_quiet
                and not self.busy()
                and getattr(self.admission, "last_arrival", 0.0) == arrival
            ):
                return True
        return False

    def call(self, job: Job, session: str = "", fresh: bool = False) -> tuple[Any, Update]:
        """The result without the updates (API endpoints that return once): (result, the final update)."""
        last = None
        for last in self.submit(job, session, fresh):
            pass
        return last.result, last
