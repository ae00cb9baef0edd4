"""Jobs for tests/app/test_worker.py, run inside a real engine process (not collected as tests)."""

from __future__ import annotations

import os
import threading

JOBS = ("echo", "boom", "crash", "on_main_thread", "until_cancelled")


def echo(x, *, cancel, emit):
    emit({"seen": x})
    return x


def boom(*, cancel, emit):
    raise RuntimeError("injected fault")


def crash(*, cancel, emit):
    os._exit(3)  # what a segfault or an out-of-memory kill looks like from outside


def on_main_thread(*, cancel, emit):
    return threading.current_thread() is threading.main_thread()


def until_cancelled(*, cancel, emit):
    emit({"started": True})
    return cancel.wait(30)
