"""A measurement knows whether it was disturbed: a run beside busy processes is marked so and never cached, the
first run of a fresh engine process is never cached, the page names the disturbance instead of "alone", and the
start-up measurement waits for an idle server and a quiet machine. Only the spinning-processes test reads this
machine's CPUs; the others decide on fabricated readings (this machine need not be quiet)."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import time

import pytest

from specviz.app import handlers, jobs, ui
from specviz.app.admission import Admission, AdmissionConfig
from specviz.app.serving import Job, Service, Update
from specviz.app.trace_cache import TraceCache
from specviz.engine import quiet
from specviz.engine.quiet import Reading, between
from specviz.engine.trace import RowResult, Trace

PROMPT = "def add(a, b):\n"


def never(**kwargs):
    raise AssertionError("no job should run")


@pytest.fixture
def embedded(monkeypatch, embedded_pair):
    """The engine jobs run here on the embedded pair, in a process that has run nothing yet (a fresh engine)."""
    monkeypatch.setattr(jobs, "pair_for", lambda target, draft: embedded_pair)
    monkeypatch.setattr(jobs, "_TIMED", set())
    return embedded_pair


def fake_cpus(monkeypatch, share: dict) -> None:
    """quiet.read from fabricated clocks: 2 CPUs, everyone's busy share `share["now"]`, this process using none."""
    ticks = {"busy": 0.0, "total": 0.0, "wall": time.perf_counter()}
    lock = threading.Lock()

    def read(stat_path: str = quiet.STAT_PATH) -> Reading:
        with lock:
            now = time.perf_counter()
            step = 200 * (now - ticks["wall"])
            ticks["busy"] += step * share["now"]
            ticks["total"] += step
            ticks["wall"] = now
            return Reading(now, 0.0, int(ticks["busy"]), int(ticks["total"]), cpus=2)

    monkeypatch.setattr(quiet, "read", read)


def quiet_clocks(monkeypatch) -> None:
    """Every run measured as if it had the machine to itself (the busy ticks are exactly its own time)."""

    def read(stat_path: str = quiet.STAT_PATH) -> Reading:
        wall, own = time.perf_counter(), time.process_time()
        return Reading(wall, own, busy_ticks=round(own * 100), total_ticks=round(wall * 200), cpus=2)

    monkeypatch.setattr(quiet, "read", read)


# ----------------------------------------------------------------------------- the engine's runs
def test_a_run_beside_spinning_processes_is_marked_disturbed_and_the_cache_refuses_it(embedded):
    if quiet.read().busy_ticks is None:
        pytest.skip("no /proc/stat here: the disturbance is unknown")
    jobs.first_run(embedded, "autoregressive")  # not a cold start: the cache refuses it for the disturbance alone
    spinners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(max(2, len(quiet.allowed_cpus() or [0, 1])))
    ]  # one per CPU: the run has to share every core with them
    try:
        time.sleep(0.5)  # they are spinning before the run starts
        result = jobs.single("autoregressive", "embedded", None, PROMPT, {"max_new_tokens": 48}, cancel=None, emit=None)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    record = Trace.from_json(result).disturbance
    assert record["disturbed"] is True and record["others_share"] > 0.3, record
    cache = TraceCache()
    cache.put("k", result, time.time())
    assert "k" not in cache and cache.stats()["refused"] == 1


def test_the_first_run_of_a_fresh_engine_process_is_not_cached(embedded, monkeypatch):
    quiet_clocks(monkeypatch)
    cache = TraceCache()
    args = ("draft_model", "embedded", None, PROMPT, {"max_new_tokens": 8})
    first = jobs.playground(*args, cancel=threading.Event(), emit=None)
    cold = Trace.from_json(first["trace"])
    assert cold.meta["engine"]["cold_start"] is True and not cold.disturbance["disturbed"]
    assert Trace.from_json(first["baseline"]).meta["engine"]["cold_start"] is True
    cache.put("k", first, time.time())
    assert "k" not in cache
    second = jobs.playground(*args, cancel=threading.Event(), emit=None)
    assert "cold_start" not in Trace.from_json(second["trace"]).meta["engine"]
    cache.put("k", second, time.time())
    assert "k" in cache
    assert "cold start" in handlers.where_measured(cold)


def test_the_warm_up_makes_the_cold_starts_itself(embedded, monkeypatch):
    quiet_clocks(monkeypatch)
    jobs.warm("embedded", cancel=threading.Event(), emit=None)
    args = ("draft_model", "embedded", None, PROMPT, {"max_new_tokens": 8})
    result = jobs.playground(*args, cancel=threading.Event(), emit=None)
    for side in ("trace", "baseline"):
        assert "cold_start" not in Trace.from_json(result[side]).meta["engine"]
    cache = TraceCache()
    cache.put("k", result, time.time())
    assert "k" in cache


# ----------------------------------------------------------------------------- what the page says
def measured(others_share: float, method: str = "draft_model", cold: bool = False) -> Trace:
    busy = round(200 * others_share) + 50
    trace = Trace(method=method, params={}, rows=[RowResult("p", [1], [2] * 64, "x", "length")], wall_time=7.45)
    trace.disturbance = between(Reading(0.0, 0.0, 0, 0, 2), Reading(1.0, 0.5, busy, 200, 2)).to_dict()
    trace.meta["engine"] = {"where": "engine process, main thread", "runs_at_once": 1} | (
        {"cold_start": True} if cold else {}
    )
    return trace


def test_the_page_names_a_disturbance_and_never_calls_that_run_alone():
    busy, calm = measured(0.62), measured(0.02)
    status = handlers.run_status(busy, "measured at 14:03:22 for this request", measured(0.0, "autoregressive"))
    assert "while other processes used 62 % of the CPU" in status and "alone" not in status
    assert "not kept in the cache" in status
    assert "alone (other processes used 2 % of the CPU)" in handlers.run_status(calm)
    baseline = handlers.run_status(calm, "", measured(0.4, "autoregressive"))
    assert "the autoregressive baseline was measured while other processes used 40 % of the CPU" in baseline
    race = handlers.disturbance_note(calm, measured(0.4, "autoregressive"))
    assert race.startswith("DISTURBED: the autoregressive run was measured while other processes used 40 %")
    assert handlers.disturbance_note(calm, measured(0.0, "autoregressive")) == ""
    unknown = measured(0.0)
    unknown.disturbance = between(Reading(0.0, 0.0, None, None, 2), Reading(1.0, 0.5, None, None, 2)).to_dict()
    assert "alone (other processes' use of the CPU unknown)" in handlers.run_status(unknown)


# ----------------------------------------------------------------------------- the start-up measurement
class Pool:
    size, kind = 1, "fake"

    def __init__(self, jobs_: dict):
        self.jobs = jobs_

    def describe(self, worker: int) -> str:
        return "worker 1 of 1"

    def call(self, worker, name, kwargs, on_message=None, cancel=None, immediate=False):
        return self.jobs[name](**kwargs)


def make_service(jobs_: dict | None = None) -> Service:
    return Service(Pool(jobs_ or {"run": never}), Admission(AdmissionConfig(workers=1)), TraceCache())


def test_the_start_up_measurement_waits_for_quiet_cpus(monkeypatch):
    share = {"now": 0.9}
    fake_cpus(monkeypatch, share)
    svc = make_service()
    start = time.monotonic()
    assert svc.wait_idle(seconds=0.2, patience=0.7) is False  # busy CPUs all along: it gives up
    assert time.monotonic() - start >= 0.6
    share["now"] = 0.05
    start = time.monotonic()
    assert svc.wait_idle(seconds=0.2, patience=2.0) is True
    assert 0.2 <= time.monotonic() - start < 1.0


def test_the_start_up_measurement_waits_while_requests_arrive(monkeypatch):
    fake_cpus(monkeypatch, {"now": 0.0})
    svc = make_service()
    stop = threading.Event()

    def visitors() -> None:  # a request every 0.1 s: places taken and freed, never a quiet 0.3 s
        while not stop.wait(0.1):
            svc.admission.release(svc.admission.enter("visitor", "run", 1))

    thread = threading.Thread(target=visitors, daemon=True)
    thread.start()
    try:
        assert svc.wait_idle(seconds=0.3, patience=1.0) is False
    finally:
        stop.set()
        thread.join()
    assert svc.wait_idle(seconds=0.3, patience=2.0) is True
    ticket = svc.admission.enter("visitor", "run", 1)  # a run in flight: not idle
    assert svc.wait_idle(seconds=0.1, patience=0.5) is False
    svc.admission.release(ticket)


class WarmService:
    """What prewarm sees of the service: it is idle `idle` times, and keeps the `kept`-th measurement."""

    def __init__(self, idle: int, kept: int):
        self.idle, self.kept, self.calls, self.cache = idle, kept, [], set()

    def wait_idle(self) -> bool:
        self.idle -= 1
        return self.idle >= 0

    def call(self, job: Job):
        self.calls.append(job)
        if len(self.calls) == self.kept:
            self.cache.add(job.cache_key)
        return {"n": len(self.calls)}, Update("done", served="engine", measured_at=time.time())


def test_prewarm_measures_again_a_run_the_cache_did_not_keep_and_stops_when_never_idle(monkeypatch):
    drawn = []
    ids = itertools.count()
    examples = [Job("playground", {"submitted_at": 0.0}, "k", 1, f"key{next(ids)}") for _ in range(2)]
    monkeypatch.setattr(ui, "prewarm_jobs", lambda: examples)
    monkeypatch.setattr(ui, "rendered", lambda result, key, at, costs: drawn.append((key, result["n"])))
    svc = WarmService(idle=10, kept=2)
    monkeypatch.setattr(ui, "service", lambda: svc)
    ui.prewarm()
    # the first example's first run was not kept (a cold start or disturbed): measured again, then kept and drawn
    assert [j.cache_key for j in svc.calls[:2]] == ["key0", "key0"] and drawn[0] == ("key0", 2)
    assert all(j.kwargs["submitted_at"] > 0 for j in svc.calls)  # queued from when it was sent, not start-up
    # the second example was never kept: WARM_TRIES runs, nothing drawn
    assert [j.cache_key for j in svc.calls[2:]] == ["key1"] * ui.WARM_TRIES and len(drawn) == 1
    never_idle = WarmService(idle=0, kept=1)
    monkeypatch.setattr(ui, "service", lambda: never_idle)
    ui.prewarm()
    assert never_idle.calls == []
