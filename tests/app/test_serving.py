"""The way a request reaches the engine: the admission queue (places, size-aware estimates, the per-session cap,
a full queue), the serving layer (cache hits labelled, measure-again, one shared run for identical requests, a
failing run failing only itself, a closed page freeing its place) and the pool of engine workers (two real
engine processes on this CPU, for correctness, not timing)."""

from __future__ import annotations

import threading
import time

import pytest

from specviz.app.admission import Admission, AdmissionConfig, Refused, RunCosts
from specviz.app.pool import EnginePool, PoolConfig
from specviz.app.serving import Job, Service
from specviz.app.trace_cache import TraceCache


class FakePool:
    """Engine workers that run a Python function per job name (jobs gate on events the test sets)."""

    def __init__(self, size: int = 1, jobs: dict | None = None):
        self.size = size
        self.jobs = jobs or {}
        self.calls: list[tuple[int, str]] = []
        self.kind = "fake"

    def describe(self, worker: int) -> str:
        return f"worker {worker + 1} of {self.size}"

    def call(self, worker, name, kwargs, on_message=None, cancel=None, immediate=False):
        self.calls.append((worker, name))
        return self.jobs[name](cancel=cancel, **kwargs)


def gated(gate: threading.Event, value="done"):
    def job(cancel=None, **kwargs):
        while not gate.wait(0.01):
            if cancel is not None and cancel.is_set():
                return "cancelled"
        return kwargs.get("value", value)

    return job


def job(name="run", key=None, units=10.0, priority=0, **kwargs) -> Job:
    return Job(name, kwargs, kind=name, units=units, cache_key=key, priority=priority)


def consume(updates, into: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(updates), daemon=True)
    thread.start()
    return thread


def wait_until(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


# ----------------------------------------------------------------------------- admission
def test_places_and_estimates_follow_the_size_of_every_run_ahead():
    costs = RunCosts()
    costs.observe("short", 10, 1.0)  # 0.1 s per unit
    costs.observe("long", 10, 5.0)  # 0.5 s per unit
    queue = Admission(AdmissionConfig(workers=1, per_session=10), costs)
    running = queue.enter("a", "short", 10)  # admitted at once: 1 s
    waiting = [queue.enter("b", "long", 10), queue.enter("c", "short", 20), queue.enter("d", "short", 10)]
    assert running.admitted.is_set() and not any(t.admitted.is_set() for t in waiting)
    places = [queue.place(t) for t in waiting]
    assert [p.position for p in places] == [1, 2, 3] and all(p.waiting == 3 for p in places)
    expected = [1.0, 1.0 + 5.0, 1.0 + 5.0 + 2.0]  # the running run's remainder, then each run ahead by its size
    for place, want in zip(places, expected):
        assert want - 0.2 <= place.estimate_s <= want + 0.01, (place, want)
    queue.release(running, seconds=1.0)
    assert waiting[0].admitted.is_set() and queue.place(waiting[0]).position == 0
    assert queue.place(waiting[2]).position == 2


def test_two_workers_halve_the_wait():
    costs = RunCosts()
    costs.observe("run", 1, 2.0)
    queue = Admission(AdmissionConfig(workers=2, per_session=10), costs)
    first, second = queue.enter("a", "run", 1), queue.enter("b", "run", 1)
    assert {first.worker, second.worker} == {0, 1}
    third, fourth = queue.enter("c", "run", 1), queue.enter("d", "run", 1)
    assert queue.place(third).estimate_s == pytest.approx(2.0, abs=0.2)
    assert queue.place(fourth).estimate_s == pytest.approx(2.0, abs=0.2)  # the other worker frees up as soon


def test_the_estimate_learns_from_measured_runs():
    costs = RunCosts()
    assert costs.estimate("playground:draft_model", 64) == pytest.approx(64 * RunCosts.PRIOR_S_PER_UNIT)
    costs.observe("playground:draft_model", 64, 0.64)
    assert costs.estimate("playground:draft_model", 128) == pytest.approx(1.28)
    assert costs.estimate("never:seen", 10) == pytest.approx(0.1)  # the mean of the kinds measured


def test_a_session_is_refused_its_fourth_run_before_it_takes_a_place():
    queue = Admission(AdmissionConfig(workers=1, per_session=3, max_waiting=64))
    mine = [queue.enter("me", "run", 1) for _ in range(3)]
    with pytest.raises(Refused, match=r"already has 3 runs queued or running \(at most 3\)"):
        queue.enter("me", "run", 1)
    assert queue.snapshot()["waiting"] == 2  # the refused run took no place
    queue.enter("someone else", "run", 1)
    queue.release(mine[1])  # a cancelled (or closed) page frees its place
    queue.enter("me", "run", 1)


def test_a_full_queue_says_so_and_when_to_retry():
    queue = Admission(AdmissionConfig(workers=1, per_session=100, max_waiting=2))
    for i in range(3):
        queue.enter(f"s{i}", "run", 1)
    with pytest.raises(Refused, match=r"the queue is full \(2 runs waiting.*try again in about \d+ s"):
        queue.enter("late", "run", 1)


def test_the_warm_up_waits_behind_visitors_until_a_visitor_wants_its_run():
    queue = Admission(AdmissionConfig(workers=1, per_session=10))
    busy = queue.enter("a", "run", 1)
    warm = queue.enter("", "run", 1, priority=1)
    visitor = queue.enter("b", "run", 1)
    assert queue.place(visitor).position == 1 and queue.place(warm).position == 2
    queue.promote(warm, 0)  # a visitor now waits for the warm-up's run: it takes its place by submission order
    assert queue.place(warm).position == 1 and queue.place(visitor).position == 2
    queue.release(busy)
    assert warm.admitted.is_set()


# ----------------------------------------------------------------------------- serving
def service(jobs: dict, workers: int = 1, cache: TraceCache | None = None, per_session: int = 3) -> Service:
    return Service(
        FakePool(workers, jobs),
        Admission(AdmissionConfig(workers=workers, per_session=per_session)),
        cache if cache is not None else TraceCache(),
    )


def test_the_first_answer_is_the_place_in_the_queue_and_a_cached_answer_is_labelled():
    gate = threading.Event()
    svc = service({"run": gated(gate)})
    blocker: list = []
    consume(svc.submit(job(value="first")), blocker)
    wait_until(lambda: blocker and blocker[0].state == "running")
    t0 = time.monotonic()
    updates = svc.submit(job(key="k", value="keyed"), session="s")
    first = next(updates)
    assert time.monotonic() - t0 < 1.0 and first.state == "queued" and first.place.position == 1
    gate.set()
    last = list(updates)[-1]
    assert last.state == "done" and last.result == "keyed" and last.served == "engine" and last.measured_at
    again = list(svc.submit(job(key="k", value="other")))
    assert len(again) == 1 and again[0].served == "cache" and again[0].result == "keyed"
    assert again[0].measured_at == last.measured_at


def test_measure_again_bypasses_the_cache_and_replaces_the_entry():
    svc = service({"run": lambda cancel=None, value=None: value})
    assert svc.call(job(key="k", value="one"))[0] == "one"
    result, update = svc.call(job(key="k", value="two"), fresh=True)
    assert result == "two" and update.served == "engine"
    result, update = svc.call(job(key="k", value="three"))
    assert result == "two" and update.served == "cache"


def test_identical_requests_in_flight_share_one_run():
    gate, runs = threading.Event(), []

    def run(cancel=None, value=None):
        runs.append(1)
        gate.wait(5)
        return value

    svc = service({"run": run})
    results: list[list] = [[] for _ in range(32)]
    threads = [consume(svc.submit(job(key="same", value="v"), session=f"user{i}"), results[i]) for i in range(32)]
    wait_until(lambda: runs)
    time.sleep(0.1)
    gate.set()
    for t in threads:
        t.join(5)
    finals = [r[-1] for r in results]
    assert len(runs) == 1 and all(f.result == "v" for f in finals)
    assert sorted(f.served for f in finals) == ["engine"] + ["shared"] * 31


def test_a_failing_run_fails_only_itself():
    def run(cancel=None, value=None):
        if value == "boom":
            raise RuntimeError("injected fault")
        return value

    svc = service({"run": run})
    with pytest.raises(RuntimeError, match="injected fault"):
        svc.call(job(key="bad", value="boom"))
    assert svc.call(job(key="good", value="fine"))[0] == "fine"
    assert svc.admission.snapshot()["running"] == 0 and svc.cache.get("bad") is None


def test_a_closed_page_frees_its_place_and_stops_its_run():
    gate = threading.Event()
    svc = service({"run": gated(gate)})
    running = svc.submit(job(value="a"), session="s")
    assert next(running).state == "running"
    waiting = svc.submit(job(value="b"), session="s")
    assert next(waiting).state == "queued"
    waiting.close()  # the page closed while it waited
    assert svc.admission.snapshot()["waiting"] == 0
    running.close()  # ... and while it ran: the engine is told to stop
    wait_until(lambda: svc.admission.snapshot()["running"] == 0)
    gate.set()


# ----------------------------------------------------------------------------- the pool
def test_pool_config_one_worker_on_a_cpu_one_per_named_device(monkeypatch):
    monkeypatch.delenv("SPECVIZ_ENGINE_WORKERS", raising=False)
    monkeypatch.delenv("SPECVIZ_ENGINE_DEVICES", raising=False)
    assert PoolConfig.from_env().devices == (None,)  # this machine has no GPU: one worker, alone on the cores
    monkeypatch.setenv("SPECVIZ_ENGINE_DEVICES", "cuda:0, cuda:2")
    assert PoolConfig.from_env().devices == ("cuda:0", "cuda:2")
    assert PoolConfig.from_env(in_thread=True) == PoolConfig(devices=(None,), in_thread=True)


@pytest.mark.slow  # two engine processes start
def test_two_engine_processes_run_side_by_side_and_give_the_runs_alone_results():
    """Two real engine workers (spawned processes) on this CPU: correctness only (they share the cores)."""
    from specviz.api import run
    from specviz.engine.trace import Trace
    from specviz.models.pair import load_pair

    pool = EnginePool(PoolConfig(devices=("cpu", "cpu")))
    svc = Service(pool, Admission(AdmissionConfig(workers=2, per_session=8)), TraceCache())
    prompts = ["def f(x):\n", "class A:\n", "import os\n", "for i in range(3):\n"]
    try:
        results: list[list] = [[] for _ in prompts]
        threads = [
            consume(
                svc.submit(
                    Job(
                        "single",
                        dict(
                            method="draft_model", target="embedded", draft=None, prompt=p, params={"max_new_tokens": 12}
                        ),
                        kind="single",
                        units=12,
                    ),
                    session="s",
                ),
                results[i],
            )
            for i, p in enumerate(prompts)
        ]
        for t in threads:
            t.join(240)
        workers = {r[-1].worker for r in results}
        assert workers == {"worker 1 of 2 (cpu)", "worker 2 of 2 (cpu)"}
        pids = {Trace.from_json(r[-1].result).meta["engine"]["pid"] for r in results}
        assert len(pids) == 2
        pair = load_pair("embedded")
        for prompt, r in zip(prompts, results):
            assert (
                Trace.from_json(r[-1].result).output_ids
                == run("draft_model", pair, prompt, max_new_tokens=12).output_ids
            )
    finally:
        pool.close()
