"""A class at once: `python scripts/load_test.py [--users 32] [--out load.json]` against a fresh `python app.py`.

A rehearsal in seconds (CI's smoke run): `--users 2 --memory-runs 2` (measures nothing worth reporting).

(a) `users` clients click a bundled example with the page's default settings after the start-up warm-up
    measured the examples: time to the finished result (goal p95 <= 2 s);
(b) `users` clients send one identical prompt that is not cached: how many engine runs it took, failures,
    whether all results are identical, time to the result (goal one run, p95 <= 5 s);
(c) `users` clients with as many different prompts: failures, time to the first answer (the place in the queue,
    goal <= 1 s), results against the same run alone, and the wait estimate first shown against the real wait
    (goal within +-50 % for 80 % of users);
(d) resident memory of the UI and engine processes after run 20 and run 200 (goal growth <= 50 MB).
Every request goes through the streamed Playground endpoint, as a click does. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

TOKENS = 64


def empty_trace():
    """A trace of no run: what the queued warm-up call of each session sends to /load_trace."""
    from specviz.engine.trace import Trace

    return Trace(method="autoregressive", params={}, rows=[])


def p95(values: list[float]) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class User(threading.Thread):
    """One visitor: submits, records when the first answer and the result arrived and what the first said."""

    def __init__(self, client, args: list, start: threading.Barrier) -> None:
        super().__init__(daemon=True)
        self.client, self.args, self.start_together = client, args, start
        self.first_s = self.done_s = None
        self.first_html = ""
        self.result = None
        self.error = ""

    def run(self) -> None:
        self.start_together.wait()  # every page is loaded: all click at once
        start = time.perf_counter()
        job = self.client.submit(*self.args, api_name="/playground_stream")
        while not job.done() and not job.outputs():
            time.sleep(0.02)
        self.first_s = time.perf_counter() - start
        outputs = job.outputs()
        self.first_html = str(outputs[0][0]) if outputs else ""
        try:
            self.result = job.result()
        except Exception as exc:  # noqa: BLE001 - counted as a failure
            self.error = str(exc)[:200]
        self.done_s = time.perf_counter() - start


def crowd(url: str, requests: list[list]) -> list[User]:
    """One browser session per request (a gradio_client each, connected before the clock starts, as a page is
    loaded before its click), all submitting at once."""
    from gradio_client import Client

    start = threading.Barrier(len(requests))
    # Plain HTTP on loopback: ssl_verify=False only spares this generator loading the CA bundle at each request
    # (it shares the server's two cores). Each session asks /health first, as a page's load does before a click,
    # and makes one queued call: a browser's page load runs the page's load events through the queue, which builds
    # the session's state on the server (about 15 ms a session, py-spy), so a click from a loaded page never pays it.
    clients = [Client(url, verbose=False, download_files=False, ssl_verify=False) for _ in requests]
    loaded = empty_trace().to_json()
    for client in clients:
        client.predict(api_name="/health")
        client.predict(loaded, api_name="/load_trace")
    users = [User(client, args, start) for client, args in zip(clients, requests)]
    for u in users:
        u.start()
    for u in users:
        u.join(900)
    return users


def trace_of(user: User):
    from specviz.engine.trace import Trace

    if not user.result:
        return None
    saved = user.result[-1][0]  # the trace.json download: a path on this machine (not downloaded, see User)
    return Trace.read(saved["path"] if isinstance(saved, dict) else saved, 50_000_000)


def health(url: str) -> dict:
    from gradio_client import Client

    return json.loads(Client(url, verbose=False).predict(api_name="/health"))


def summary(name: str, users: list[User]) -> dict:
    done = [u.done_s for u in users if not u.error]
    first = [u.first_s for u in users]
    figures = {
        "users": len(users),
        "failed": sum(1 for u in users if u.error),
        "result_median_s": round(statistics.median(done), 2) if done else None,
        "result_p95_s": round(p95(done), 2) if done else None,
        "first_answer_max_s": round(max(first), 2),
        "first_answer_p95_s": round(p95(first), 2),
    }
    print(f"({name}) {figures}", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--memory-runs", type=int, default=200, help="(d): memory after run 20 and after this one")
    parser.add_argument("--out", default="")
    parser.add_argument("--parts", default="a,b,c,d", help="which of the measurements to make")
    args = parser.parse_args()
    from appserver import playground_stream_args, running_app

    from specviz import load_pair, run
    from specviz.app.controls import EXAMPLES, UI_DEFAULTS

    report: dict = {}
    methods = ["draft_model", "kangaroo", "autoregressive", "draft_model"]  # (c) and (d) cycle through these
    parts = set(args.parts.split(","))
    warm = "a" in parts  # only (a) measures the examples the start-up warm-up ran
    with running_app({"SPECVIZ_PREWARM": "1" if warm else "0"}) as app:
        deadline = time.time() + 600
        while warm and health(app.url)["trace_cache"]["entries"] < 9 and time.time() < deadline:  # the warm-up
            time.sleep(1)
        print(f"warm-up done after {app.ready_s:.1f} s start-up: {health(app.url)['trace_cache']}", flush=True)

        if "a" in parts:
            # (a) the bundled examples, as clicked
            users = crowd(
                app.url, [playground_stream_args("draft_model", TOKENS, EXAMPLES[i % 8]) for i in range(args.users)]
            )
            report["a_examples"] = summary("a: bundled examples", users)
            report["a_examples"]["served_from_cache"] = sum(
                "served from cache" in str(u.result[0]) for u in users if u.result
            )

        if "b" in parts:
            # (b) one identical prompt, not cached
            before = health(app.url)["queue"]["runs_started"]
            prompt = "def load_test_identical(rows):\n"
            users = crowd(app.url, [playground_stream_args("draft_model", TOKENS, prompt) for _ in range(args.users)])
            report["b_identical"] = summary("b: one identical prompt", users)
            ids = {tuple(trace_of(u).output_ids) for u in users if u.result}
            report["b_identical"].update(
                engine_runs=health(app.url)["queue"]["runs_started"] - before, all_identical=len(ids) == 1
            )
            print(f"    engine runs {report['b_identical']['engine_runs']}, identical {len(ids) == 1}", flush=True)

        if "c" in parts:
            # (c) different prompts
            prompts = [f"def task_{i}(items):\n    total = {i}\n" for i in range(args.users)]
            requests = [playground_stream_args(methods[i % len(methods)], TOKENS, p) for i, p in enumerate(prompts)]
            users = crowd(app.url, requests)
            report["c_different"] = summary("c: different prompts", users)
            pair = load_pair("embedded")
            equal, told, accurate = 0, 0, 0
            for u, request in zip(users, requests):
                trace = trace_of(u)
                if trace is None:
                    continue
                alone = run(request[3], pair, request[0], max_new_tokens=TOKENS, heal_prompt=UI_DEFAULTS["heal_prompt"])
                equal += trace.output_ids == alone.output_ids
                waited = trace.meta["engine"].get("queued_s", 0.0)
                match = re.search(r'data-estimate-s="([\d.]+)"', u.first_html)
                if match:  # told a place and an estimate
                    told += 1
                    estimate = float(match.group(1))
                    accurate += abs(estimate - waited) <= 0.5 * waited
                else:  # running at once: told so, nothing to estimate
                    accurate += 'data-state="running"' in u.first_html
            n = len(users)
            report["c_different"].update(
                equal_to_run_alone=f"{equal}/{n}",
                shown_a_place=told,
                estimate_within_50pct=f"{accurate}/{n}",
                estimate_share=round(accurate / n, 2),
            )
            print(
                f"    equal to the run alone {equal}/{n}; estimate within +-50 % of the real wait {accurate}/{n} "
                f"({told} told a place)",
                flush=True,
            )

        if "d" in parts:
            # (d) memory from run 20 (or the last, when fewer) to run `memory_runs`
            from gradio_client import Client

            client = Client(app.url, verbose=False)
            rss = {}
            first = min(20, args.memory_runs)
            for i in range(1, args.memory_runs + 1):
                client.predict(
                    *playground_stream_args(methods[i % len(methods)], 16, f"x_{i} = [{i}]\n"),
                    api_name="/playground_stream",
                )
                if i in (first, args.memory_runs):
                    pid = health(app.url)["engine_pid"]
                    rss[i] = {"ui_mb": round(rss_mb(app.proc.pid), 1), "engine_mb": round(rss_mb(pid), 1)}
                    print(f"    after run {i}: {rss[i]}", flush=True)
            last = rss[args.memory_runs]
            report["d_memory"] = {
                f"after_run_{first}": rss[first],
                f"after_run_{args.memory_runs}": last,
                "ui_growth_mb": round(last["ui_mb"] - rss[first]["ui_mb"], 1),
                "engine_growth_mb": round(last["engine_mb"] - rss[first]["engine_mb"], 1),
            }
            print(f"(d) {report['d_memory']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
