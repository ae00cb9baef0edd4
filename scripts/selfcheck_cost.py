"""Measure what the load-time self-check costs: `python scripts/selfcheck_cost.py [--repeats 5]`.

Each repeat is a fresh process (so imports and first-touch allocations count as a user's first load
does): the wall time of the first `load_pair("embedded")`, and of the self-check inside it. Pause any
background job first: the figures are wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = """
import json, time
start = time.perf_counter()
from specviz.models import selfcheck
from specviz.models.pair import load_pair
imported = time.perf_counter()
load_pair("embedded", device="cpu")
done = time.perf_counter()
check_s = selfcheck.LAST["report"].seconds
print(json.dumps({"import_s": imported - start, "load_s": done - imported, "check_s": check_s}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    runs = []
    for _ in range(args.repeats):
        out = subprocess.run(
            [sys.executable, "-c", CHILD],
            capture_output=True,
            text=True,
            check=True,
            env={"HF_HUB_OFFLINE": "1", **os.environ},
        )
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(
        f"first load_pair('embedded') {med['load_s']:.3f} s, of which the self-check {med['check_s']:.3f} s "
        f"({med['check_s'] / med['load_s']:.0%}; {med['check_s'] / (med['load_s'] - med['check_s']):.0%} on top of the "
        f"load without it); imports before it {med['import_s']:.2f} s; median of {args.repeats} fresh processes"
    )


if __name__ == "__main__":
    main()
