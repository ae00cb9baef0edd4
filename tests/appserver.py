"""Start the real app (`python app.py`, as README and the Docker CMD do) on a free port for a test module."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class RunningApp:
    url: str
    ready_s: float
    proc: subprocess.Popen

    def peak_rss_mb(self) -> float:
        """Peak resident memory of the server process so far (Linux /proc)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, proc: subprocess.Popen, seconds: float = 120) -> float:
    start = time.time()
    while time.time() - start < seconds:
        if proc.poll() is not None:
            raise RuntimeError(f"app exited: {proc.stdout.read()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.time() - start
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} not served within {seconds} s")


@contextlib.contextmanager
def running_app(env: dict[str, str] | None = None, command: list[str] | None = None) -> Iterator[RunningApp]:
    """`command` (default `python app.py`) with its --port replaced by a free one (7860 may be taken)."""
    port = free_port()
    full_env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "SPECVIZ_PREWARM": "0",
        "SPECVIZ_DISTURBED_SHARE": "1",  # test servers: timings nobody reads; a run beside the tests is still cached
        **(env or {}),
    }
    command = [sys.executable if a == "python" else a for a in (command or ["python", "app.py"])]
    if "--port" in command:
        command[command.index("--port") + 1] = str(port)
    else:
        command += ["--port", str(port)]
    proc = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        yield RunningApp(url, wait_for(url, proc), proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def playground_stream_args(method: str, max_new_tokens: int, prompt: str = "def long_function(a, b, c):\n") -> list:
    """The Playground's inputs in order, each control at the value the page gives it for `method`."""
    from specviz.app.controls import PARAMS, UI_DEFAULTS
    from specviz.app.handlers import MIRROR_COSTS
    from specviz.methods import METHODS
    from specviz.methods.base import COMMON_PARAMS

    common = {p.name: UI_DEFAULTS.get(p.name, p.default) for p in COMMON_PARAMS} | {"max_new_tokens": max_new_tokens}
    own = {p.name: p.default for p in METHODS[method].PARAMS}
    specific = [own.get(name, p.default) for name, p in PARAMS.items()]
    return [prompt, "embedded", "", method] + [common[p.name] for p in COMMON_PARAMS] + specific + list(MIRROR_COSTS)
