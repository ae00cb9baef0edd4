"""The engine process: jobs run on its main thread; a fault or a crash fails only the run that caused it,
with a clear error, and the next run works; Stop reaches a running job."""

from __future__ import annotations

import threading
import time

import pytest

from specviz.app.worker import ProcessEngine, ThreadEngine


@pytest.fixture(scope="module")
def engine():
    eng = ProcessEngine(registry="engine_faults")
    yield eng
    eng.close()


def test_jobs_run_on_the_engine_process_main_thread_and_stream(engine):
    seen = []
    assert engine.call("echo", {"x": 3}, seen.append) == 3 and seen == [{"seen": 3}]
    assert engine.call("on_main_thread", {}) is True
    assert ThreadEngine(registry="engine_faults").call("on_main_thread", {}) is (
        threading.current_thread() is threading.main_thread()
    )


def test_a_fault_and_a_crash_fail_only_their_run(engine):
    with pytest.raises(RuntimeError, match="injected fault"):
        engine.call("boom", {})
    assert engine.call("echo", {"x": 1}) == 1
    before = engine.restarts
    with pytest.raises(RuntimeError, match=r"engine process stopped \(exit code 3\)"):
        engine.call("crash", {})
    assert engine.call("echo", {"x": 2}) == 2 and engine.restarts == before + 1
    with pytest.raises(ValueError, match="unknown engine job"):
        engine.call("__import__", {})
    assert engine.in_flight.count == 0


def test_stop_reaches_a_running_job(engine):
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    start = time.time()
    assert engine.call("until_cancelled", {}, cancel=cancel) is True
    assert time.time() - start < 10
