"""Where the app's engine work runs: on the MAIN thread of a separate engine process.

Why a process: measured on 2 CPU cores, one draft_model run took 0.315 s on a process's main thread
and 0.48-0.51 s on any other thread (PyTorch's intra-op thread team is slow to wake for the engine's
many tiny ops from a non-main thread), and Gradio runs handlers on worker threads, so the app showed
every speedup too small. The engine process also keeps a crashing run (a segfault, an out-of-memory
kill) away from the server: the run gets a clear error and the process is started again.

One engine process runs one job at a time, so every timed run on a CPU server runs alone (docs/timings.md:
"Timings in the app"). `ThreadEngine` runs the same jobs in the calling thread: ZeroGPU (whose
`@spaces.GPU` must run in the server process), `SPECVIZ_ENGINE=thread`, and tests that patch the engine.

Protocol (pickled tuples over one Pipe): parent -> child ("job", id, name, kwargs) | ("cancel", id);
child -> parent ("msg", id, payload) | ("done", id, result) | ("error", id, type name, message).
Only functions listed in the registry module's JOBS can be called.
"""

from __future__ import annotations

import builtins
import importlib
import itertools
import multiprocessing as mp
import os
import queue
import threading
from typing import Any, Callable

import torch

from specviz.shown import shown

REGISTRY = "specviz.app.jobs"
RUN_SECONDS_ENV = "SPECVIZ_RUN_SECONDS"


def run_seconds() -> float:
    return float(os.environ.get(RUN_SECONDS_ENV, "120"))


def resolve(registry: str, name: str) -> Callable:
    module = importlib.import_module(registry)
    if name not in getattr(module, "JOBS", ()):
        raise ValueError(f"unknown engine job {shown(name)}")
    return getattr(module, name)


def run_job(fn: Callable, kwargs: dict, cancel: threading.Event, emit: Callable[[Any], None]) -> Any:
    """One job under the run deadline: past RUN_SECONDS its cancel flag is set (the engine stops at its next round)."""
    timer = threading.Timer(run_seconds(), cancel.set)
    timer.daemon = True
    timer.start()
    try:
        return fn(**kwargs, cancel=cancel, emit=emit)
    finally:
        timer.cancel()


def rebuild_error(type_name: str, message: str) -> Exception:
    """The child's exception, as the same built-in type where there is one (the UI words errors by type)."""
    if type_name == "OutOfMemoryError":
        return torch.OutOfMemoryError(message)
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            return cls(message)
        except TypeError:
            pass
    return RuntimeError(f"{type_name}: {message}")


class InFlight:
    """Jobs submitted and not finished yet (queued or running): the health endpoint reports it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.count += n


class ThreadEngine:
    """Jobs in the calling thread."""

    kind = "thread"

    def __init__(self, registry: str = REGISTRY):
        self.registry = registry
        self.in_flight = InFlight()

    def call(
        self,
        name: str,
        kwargs: dict,
        on_message: Callable[[Any], None] | None = None,
        cancel: threading.Event | None = None,
        immediate: bool = False,
    ) -> Any:
        fn = resolve(self.registry, name)
        if not immediate:
            self.in_flight.add(1)
        try:
            return run_job(fn, kwargs, cancel or threading.Event(), on_message or (lambda payload: None))
        finally:
            if not immediate:
                self.in_flight.add(-1)

    def close(self) -> None:
        pass


def serve(conn, registry: str, env: dict[str, str] | None = None) -> None:
    """The engine process: a listener thread takes jobs and cancels; the main thread runs jobs in order.
    `env` (a pool worker's device) is set before any job imports the engine."""
    os.environ.update(env or {})
    jobs: queue.Queue = queue.Queue()
    flags: dict[int, threading.Event] = {}
    send_lock = threading.Lock()

    def send(message: tuple) -> None:
        with send_lock:
            conn.send(message)

    def listen() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                jobs.put(None)  # the server went away: stop
                return
            if message[0] == "job":
                flags[message[1]] = threading.Event()
                jobs.put(message[1:])
            elif message[0] == "cancel" and message[1] in flags:
                flags[message[1]].set()
            elif message[0] == "now":  # a quick read (health) answered at once, not queued behind runs
                job_id, name, kwargs = message[1:]
                try:
                    send(
                        (
                            "done",
                            job_id,
                            resolve(registry, name)(**kwargs, cancel=threading.Event(), emit=lambda p: None),
                        )
                    )
                except Exception as exc:  # noqa: BLE001
                    send(("error", job_id, type(exc).__name__, str(exc)[:2000]))

    threading.Thread(target=listen, name="specviz-engine-listener", daemon=True).start()
    while (job := jobs.get()) is not None:
        job_id, name, kwargs = job
        try:
            fn = resolve(registry, name)
            result = run_job(fn, kwargs, flags[job_id], lambda payload, i=job_id: send(("msg", i, payload)))
            send(("done", job_id, result))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the one run that caused it
            send(("error", job_id, type(exc).__name__, str(exc)[:2000]))
        finally:
            flags.pop(job_id, None)


class ProcessEngine:
    """Jobs on the main thread of a spawned engine process, started on first use and again after a crash."""

    kind = "process"

    def __init__(self, registry: str = REGISTRY, env: dict[str, str] | None = None):
        self.registry = registry
        self.env = dict(env or {})  # set in the child before its first job (a pool worker's SPECVIZ_DEVICE)
        self.in_flight = InFlight()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._waiting: dict[int, queue.Queue] = {}
        self._proc = None
        self._conn = None
        self.restarts = 0

    def _ensure(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                return
            if self._proc is not None:
                self.restarts += 1
            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(
                target=serve, args=(child, self.registry, self.env), name="specviz-engine", daemon=True
            )
            self._proc.start()  # the child inherits this process's environment
            child.close()
            self._conn = parent
            threading.Thread(
                target=self._read, args=(parent, self._proc), name="specviz-engine-reader", daemon=True
            ).start()

    def _read(self, conn, proc) -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            box = self._waiting.get(message[1])
            if box is not None:
                box.put(message)
        proc.join(timeout=5)
        code = proc.exitcode
        for job_id, box in list(self._waiting.items()):  # every run still waiting on the dead process fails clearly
            box.put(
                (
                    "error",
                    job_id,
                    "RuntimeError",
                    f"the engine process stopped (exit code {code}) during this run; it starts again for the next one",
                )
            )

    def _send(self, message: tuple) -> None:
        with self._send_lock:
            self._conn.send(message)

    def call(
        self,
        name: str,
        kwargs: dict,
        on_message: Callable[[Any], None] | None = None,
        cancel: threading.Event | None = None,
        immediate: bool = False,
    ) -> Any:
        """Run job `name` and wait for its result; `immediate` reads (health) skip the queue of runs."""
        self._ensure()
        job_id = next(self._ids)
        box: queue.Queue = queue.Queue()
        self._waiting[job_id] = box
        if not immediate:  # a quick read is no run in flight
            self.in_flight.add(1)
        cancelled_sent = False
        try:
            self._send(("now" if immediate else "job", job_id, name, kwargs))
            while True:
                try:
                    message = box.get(timeout=0.05)
                except queue.Empty:
                    if cancel is not None and cancel.is_set() and not cancelled_sent:
                        self._send(("cancel", job_id))
                        cancelled_sent = True
                    continue
                if message[0] == "msg":
                    if on_message is not None:
                        on_message(message[2])
                elif message[0] == "done":
                    return message[2]
                else:
                    raise rebuild_error(message[2], message[3])
        finally:
            self._waiting.pop(job_id, None)
            if not immediate:
                self.in_flight.add(-1)

    def close(self) -> None:
        with self._lock:
            if self._proc is not None and self._proc.is_alive():
                self._proc.terminate()
                self._proc.join(timeout=5)
