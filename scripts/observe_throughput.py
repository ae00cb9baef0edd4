"""How fast the observe command line streams a large server log, and whether its memory stays flat.

Writes a log of --lines lines (one in --every a vLLM "SpecDecoding metrics:" line, the rest ordinary server lines)
to a temporary folder, reads it through `python -m specviz.observe`'s reader (the table path, in this process,
with its progress bar on stderr), and prints lines/s and the peak resident memory before and after. The goal
(issue 39): one million lines in under 20 s, memory flat.

    python scripts/observe_throughput.py                 # one million lines
    python scripts/observe_throughput.py --lines 20000   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specviz.observe.__main__ import main as observe_main  # noqa: E402

RECORD = (
    "INFO 06-10 12:{m:02d}:{s:02d} [metrics.py:96] SpecDecoding metrics: Mean acceptance length: 2.50, "
    "Accepted throughput: 15.00 tokens/s, Drafted throughput: 30.00 tokens/s, Accepted: 150 tokens, "
    "Drafted: 300 tokens, Per-position acceptance rate: 0.800, 0.500, 0.200, Avg Draft acceptance rate: 50.0%\n"
)
OTHER = (
    "INFO 06-10 12:{m:02d}:{s:02d} [loggers.py:123] Engine 000: Avg prompt throughput: 812.4 tokens/s, "
    "Avg generation throughput: 96.1 tokens/s, Running: 8 reqs, Waiting: 0 reqs, GPU KV cache usage: 31.2%\n"
)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def write_log(path: Path, lines: int, every: int) -> int:
    records = 0
    with open(path, "w") as f:
        for i in tqdm(range(lines), desc="writing", unit=" lines", mininterval=0.5):
            template = RECORD if i % every == 0 else OTHER
            records += template is RECORD
            f.write(template.format(m=(i // 60) % 60, s=i % 60))
    return records


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--every", type=int, default=10, help="one record line in this many")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        expected = write_log(log, args.lines, args.every)
        size_mb = os.path.getsize(log) / 1e6
        before = peak_rss_mb()
        start = time.perf_counter()
        out = io.StringIO()
        observe_main([str(log)], out=out)  # the progress bar shows when stderr is a terminal
        seconds = time.perf_counter() - start
        after = peak_rss_mb()
    found = f"{expected} records from {args.lines} lines"
    if found not in out.getvalue():
        print(f"expected '{found}' in the summary:\n{out.getvalue()[-500:]}", file=sys.stderr)
        return 1
    print(
        f"{args.lines} lines ({size_mb:.0f} MB, {expected} records) in {seconds:.1f} s: "
        f"{args.lines / seconds:,.0f} lines/s; peak RSS {before:.0f} MB before reading, {after:.0f} MB after"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
