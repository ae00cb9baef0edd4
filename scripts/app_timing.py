"""Are the app's timings the engine's? `python scripts/app_timing.py [--tokens 64] [--repeats 5] [--users 1,8,16]`

1. `specviz.run` on this process's main thread (the reference), autoregressive and draft_model, the
   Playground's default prompt, interleaved with 2., median of `repeats` (the first of each dropped);
2. the same runs through a real `python app.py` (its `/playground` API): the wall time the app records
   in the trace and shows, and what the client waited for (queue, transfer, rendering: the extra);
3. N users at once through the streaming Playground endpoint (mixed methods): time to the first
   update and to the finished run, median and p95.
Pause any background job first: these are wall times on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def start_app() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "app.py", "--port", str(port)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc, url
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the app did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--users", default="1,8,16")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from gradio_client import Client

    from appserver import playground_stream_args
    from specviz import load_pair, run
    from specviz.trace import Trace
    from specviz.ui import EXAMPLES

    prompt = EXAMPLES[0]
    methods = ("autoregressive", "draft_model")
    pair = load_pair("embedded")
    for m in methods:
        run(m, pair, prompt, max_new_tokens=8)
    proc, url = start_app()
    try:
        client = Client(url, verbose=False)
        main: dict[str, list[float]] = {m: [] for m in methods}
        recorded: dict[str, list[float]] = {m: [] for m in methods}
        waited: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.repeats + 1):  # interleaved: main thread, then the app, per method and repeat
            for m in methods:
                time.sleep(0.3)  # let the other process's idle threads stop spinning
                main[m].append(run(m, pair, prompt, max_new_tokens=args.tokens).wall_time)
                time.sleep(0.3)
                t0 = time.perf_counter()
                _, trace_json = client.predict(prompt, m, json.dumps({"max_new_tokens": args.tokens}), "embedded", "",
                                               api_name="/playground")
                waited[m].append(time.perf_counter() - t0)
                recorded[m].append(Trace.from_json(trace_json).wall_time)
        main_thread = {m: statistics.median(main[m][1:]) for m in methods}
        print(f"embedded pair, {args.tokens} tokens, the Playground's default prompt, median of {args.repeats}:")
        for m in methods:
            rec, wait = statistics.median(recorded[m][1:]), statistics.median(waited[m][1:])
            print(f"  {m:15s} specviz.run on the main thread {main_thread[m]:.3f} s | app records {rec:.3f} s "
                  f"({rec / main_thread[m] - 1:+.1%}) | a /playground client waits {wait:.3f} s (extra {wait - rec:.3f} s)")
        ar, dm = (statistics.median(recorded[m][1:]) for m in methods)
        print(f"  speedup draft_model: main thread {main_thread['autoregressive'] / main_thread['draft_model']:.2f}x, "
              f"app {ar / dm:.2f}x")
        mix = ["draft_model", "kangaroo", "autoregressive", "sorted", "mirror", "draft_model", "hf_assisted", "kangaroo"]
        for users in [int(u) for u in args.users.split(",")]:
            first, done = [], []

            def user(i: int) -> None:
                c = Client(url, verbose=False)
                t0 = time.perf_counter()
                job = c.submit(*playground_stream_args(mix[i % len(mix)], args.tokens, prompt), api_name="/playground_stream")
                while not job.outputs() and not job.done():
                    time.sleep(0.01)
                first.append(time.perf_counter() - t0)
                job.result()
                done.append(time.perf_counter() - t0)

            threads = [threading.Thread(target=user, args=(i,)) for i in range(users)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            print(f"  {users:2d} user(s) at once, streaming Playground (mixed methods): first update median "
                  f"{statistics.median(first):.2f} s p95 {p95(first):.2f} s; finished run median {statistics.median(done):.2f} s "
                  f"p95 {p95(done):.2f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


if __name__ == "__main__":
    main()
