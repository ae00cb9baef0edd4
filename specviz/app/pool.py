"""Engine workers: one engine process per accelerator, each run alone on its device.

Why one per device and one on a CPU: a timed run must share nothing. Two engine processes on one set of
CPU cores would share the cores and distort both runs' timings, so a CPU-only machine gets one worker;
a machine with several GPUs gets one worker per GPU (each pinned through SPECVIZ_DEVICE in its process).
ZeroGPU keeps its single in-thread engine (its `@spaces.GPU` must run in the server process): the page
says its timings share the process. Which run goes to which worker is `specviz.app.admission`'s decision.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any, Callable

import torch

from specviz.app.worker import REGISTRY, ProcessEngine, ThreadEngine

WORKERS_ENV = "SPECVIZ_ENGINE_WORKERS"  # engine workers on this machine (default: one per GPU, else 1)
DEVICES_ENV = "SPECVIZ_ENGINE_DEVICES"  # comma-separated devices, one worker each (e.g. cuda:0,cuda:2)


@dataclass(frozen=True)
class PoolConfig:
    devices: tuple[str | None, ...]  # one worker per entry; None = the engine's own choice (SPECVIZ_DEVICE or auto)
    in_thread: bool = False  # ZeroGPU / SPECVIZ_ENGINE=thread: one engine in the server process

    @classmethod
    def from_env(cls, in_thread: bool = False) -> "PoolConfig":
        if in_thread:
            return cls(devices=(None,), in_thread=True)
        if os.environ.get(DEVICES_ENV, "").strip():
            return cls(devices=tuple(d.strip() for d in os.environ[DEVICES_ENV].split(",") if d.strip()))
        if os.environ.get(WORKERS_ENV, "").strip():
            return cls(devices=(None,) * max(1, int(os.environ[WORKERS_ENV])))
        return cls(devices=default_devices())


def default_devices() -> tuple[str | None, ...]:
    """One worker per CUDA device when there are several (unless a device was chosen), else one."""
    if os.environ.get("SPECVIZ_DEVICE"):
        return (None,)
    try:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:  # the UI may run without torch in principle; one worker then
        count = 0
    return tuple(f"cuda:{i}" for i in range(count)) if count > 1 else (None,)


class EnginePool:
    """The engines, by worker index; started lazily, restarted after a crash (ProcessEngine does both)."""

    def __init__(
        self,
        config: PoolConfig,
        registry: str = REGISTRY,
        factory: Callable[..., Any] | None = None,
        wrap: Callable | None = None,
    ) -> None:
        self.config = config
        self.wrap = wrap  # ZeroGPU: spaces.GPU around each in-thread call
        if config.in_thread:
            self.engines = [ThreadEngine(registry)]
        else:
            make = factory or ProcessEngine
            self.engines = [make(registry, env={"SPECVIZ_DEVICE": d} if d else None) for d in config.devices]
        for e in self.engines:
            atexit.register(e.close)

    @property
    def size(self) -> int:
        return len(self.engines)

    @property
    def kind(self) -> str:
        return self.engines[0].kind

    def describe(self, worker: int) -> str:
        device = self.config.devices[worker] if worker < len(self.config.devices) else None
        return f"worker {worker + 1} of {self.size}" + (f" ({device})" if device else "")

    def call(
        self,
        worker: int,
        name: str,
        kwargs: dict,
        on_message: Callable | None = None,
        cancel=None,
        immediate: bool = False,
    ) -> Any:
        call = self.engines[worker].call
        return (self.wrap(call) if self.wrap and not immediate else call)(name, kwargs, on_message, cancel, immediate)

    def close(self) -> None:
        for e in self.engines:
            e.close()
