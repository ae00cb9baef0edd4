"""Who runs next on the engine, and how long each waiting visitor will wait.

Gradio admits every engine request at once (its own queue only orders handlers); this module is the
one queue in front of the engine workers. Why our own and not Gradio's concurrency group: a cached
answer must not wait behind engine runs, a browser session's runs are capped *before* they take a
place, and the wait estimate must account for the size of every run ahead (tokens, prompts, samples),
not only a handler's past average. The estimate replays the queue: each worker's remaining time on
its current run, then every run ahead placed on the first worker to become free.
"""

from __future__ import annotations

import heapq
import itertools
import os
import threading
import time
from dataclasses import dataclass, field

SESSION_RUNS_ENV = "SPECVIZ_SESSION_RUNS"  # most runs a browser session may have queued or running (default 3)
QUEUE_SIZE_ENV = "SPECVIZ_QUEUE_SIZE"  # most runs waiting for a worker at once (default 64)


class Refused(ValueError):
    """A run not admitted (per-session cap, full queue): the message says why and what to do."""


@dataclass(frozen=True)
class AdmissionConfig:
    workers: int = 1  # engine workers (runs at once)
    per_session: int = 3  # runs one browser session may have queued or running
    max_waiting: int = 64  # runs waiting for a worker, all sessions together

    @classmethod
    def from_env(cls, workers: int) -> "AdmissionConfig":
        return cls(
            workers=workers,
            per_session=int(os.environ.get(SESSION_RUNS_ENV, "3")),
            max_waiting=int(os.environ.get(QUEUE_SIZE_ENV, "64")),
        )


class RunCosts:
    """Seconds per unit of work for each kind of run, learnt from the runs measured here.

    A unit is what makes a run long (tokens for a Playground run; methods x prompts x repeats x tokens for
    Compare ...); the caller says how many a run has. Until a kind has been measured, a prior is used."""

    PRIOR_S_PER_UNIT = 0.02  # about a 12 M target's token on 2 CPU cores, the slow side
    WEIGHT = 0.3  # of a new measurement in the running mean

    def __init__(self) -> None:
        self._rates: dict[str, float] = {}
        self._lock = threading.Lock()

    def estimate(self, kind: str, units: float) -> float:
        with self._lock:
            rate = self._rates.get(kind)
            if rate is None:  # a kind never measured: the mean of those that were, else the prior
                rate = sum(self._rates.values()) / len(self._rates) if self._rates else self.PRIOR_S_PER_UNIT
        return rate * max(units, 1.0)

    def observe(self, kind: str, units: float, seconds: float) -> None:
        rate = seconds / max(units, 1.0)
        with self._lock:
            old = self._rates.get(kind)
            self._rates[kind] = rate if old is None else (1 - self.WEIGHT) * old + self.WEIGHT * rate


@dataclass
class Ticket:
    """One run's place: waiting, then running on `worker`, then released."""

    session: str
    kind: str  # RunCosts kind
    units: float
    cost_s: float  # estimated seconds on a worker
    priority: int  # 0 visitors; higher waits behind them (the start-up warm-up)
    order: int
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    worker: int | None = None
    released: bool = False
    admitted: threading.Event = field(default_factory=threading.Event)

    @property
    def waited_s(self) -> float:
        return (self.started or time.monotonic()) - self.submitted


@dataclass(frozen=True)
class Place:
    """What a waiting visitor is shown."""

    position: int  # 1 = next to run; 0 = running now
    waiting: int  # runs waiting in all
    estimate_s: float  # expected seconds until this run starts


class Admission:
    def __init__(self, config: AdmissionConfig, costs: RunCosts | None = None) -> None:
        self.config = config
        self.costs = costs or RunCosts()
        self._lock = threading.Condition()
        self._waiting: list[Ticket] = []  # in run order: (priority, order)
        self._running: dict[int, Ticket] = {}  # worker -> ticket
        self._order = itertools.count()
        self.started = 0  # runs that got a worker since start-up (the load script counts engine runs by it)
        self.last_arrival = 0.0  # time.monotonic() of the last request that took a place (a burst's end is quiet)

    # ------------------------------------------------------------------ entering and leaving
    def enter(self, session: str, kind: str, units: float, priority: int = 0) -> Ticket:
        """A place in the queue, or Refused before any place is taken."""
        with self._lock:
            mine = sum(1 for t in self._all() if t.session == session)
            if session and priority == 0 and mine >= self.config.per_session:
                raise Refused(
                    f"this browser session already has {mine} runs queued or running (at most "
                    f"{self.config.per_session}); wait for one to finish or press Stop, then run again"
                )
            if len(self._waiting) >= self.config.max_waiting:
                backlog = self._start_estimate(len(self._waiting))
                raise Refused(
                    f"the queue is full ({len(self._waiting)} runs waiting, about {backlog:.0f} s of work): "
                    f"please try again in about {max(5, round(backlog / 2))} s"
                )
            ticket = Ticket(
                session=session,
                kind=kind,
                units=units,
                cost_s=self.costs.estimate(kind, units),
                priority=priority,
                order=next(self._order),
            )
            self._waiting.append(ticket)
            self.last_arrival = time.monotonic()
            self._waiting.sort(key=lambda t: (t.priority, t.order))
            self._dispatch()
            return ticket

    def release(self, ticket: Ticket, seconds: float | None = None) -> None:
        """The run ended (or was cancelled while waiting): its worker takes the next run. `seconds`, the
        run's measured time on the worker, teaches the estimate."""
        with self._lock:
            if ticket.released:
                return
            ticket.released = True
            if ticket in self._waiting:
                self._waiting.remove(ticket)
            if ticket.worker is not None and self._running.get(ticket.worker) is ticket:
                del self._running[ticket.worker]
            if seconds is not None:
                self.costs.observe(ticket.kind, ticket.units, seconds)
            self._dispatch()

    def promote(self, ticket: Ticket, priority: int) -> None:
        """A waiting run moves up to `priority` (a visitor now waits for the warm-up's run of the same request)."""
        with self._lock:
            if ticket in self._waiting and priority < ticket.priority:
                ticket.priority = priority
                self._waiting.sort(key=lambda t: (t.priority, t.order))

    def _dispatch(self) -> None:
        free = [w for w in range(self.config.workers) if w not in self._running]
        while free and self._waiting:
            ticket = self._waiting.pop(0)
            ticket.worker, ticket.started = free.pop(0), time.monotonic()
            self.started += 1
            self._running[ticket.worker] = ticket
            ticket.admitted.set()
        self._lock.notify_all()

    def _all(self) -> list[Ticket]:
        return self._waiting + list(self._running.values())

    # ------------------------------------------------------------------ what a visitor sees
    def place(self, ticket: Ticket) -> Place:
        with self._lock:
            if ticket.admitted.is_set():
                return Place(0, len(self._waiting), 0.0)
            ahead = self._waiting.index(ticket) if ticket in self._waiting else 0
            return Place(ahead + 1, len(self._waiting), self._start_estimate(ahead))

    def _start_estimate(self, ahead: int) -> float:
        """Seconds until the run behind the first `ahead` waiting runs starts: every worker's remaining time,
        then each run ahead on the first worker free."""
        now = time.monotonic()
        free_at = [
            max(0.0, t.cost_s - (now - t.started)) if (t := self._running.get(w)) else 0.0
            for w in range(self.config.workers)
        ]
        heapq.heapify(free_at)
        for t in self._waiting[:ahead]:
            heapq.heappush(free_at, heapq.heappop(free_at) + t.cost_s)
        return free_at[0]

    def wait(self, ticket: Ticket, timeout: float) -> bool:
        """Block up to `timeout` seconds for a worker; True once admitted."""
        return ticket.admitted.wait(timeout)

    def snapshot(self) -> dict:
        with self._lock:
            return {
                "workers": self.config.workers,
                "running": len(self._running),
                "waiting": len(self._waiting),
                "runs_started": self.started,
                "per_session": self.config.per_session,
                "max_waiting": self.config.max_waiting,
            }
