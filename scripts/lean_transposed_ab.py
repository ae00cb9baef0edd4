"""A/B of `lean.draft_linear`'s transposed copy: each drafting method run with it on and off, interleaved per
prompt in one process against the autoregressive run of the same prompt, medians over repeats.

    python scripts/lean_transposed_ab.py [--limit 8] [--repeats 3] [--max-new-tokens 128]

Nothing else may run meanwhile (pause training first): the two cores are the measurement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere
import specviz.engine.lean as lean
from specviz import load_pair, run
from specviz.bench.matrix import parse_method
from specviz.bench.prompts import load_prompts

METHODS = ("draft_model", "draft_model:vocab_trim=2048", "kangaroo", "kangaroo:eta=0:gamma=4:vocab_trim=2048")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default="assets/prompts/code.jsonl")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])  # the assets' relative paths
    pair = load_pair("embedded")
    prompts = [p["prompt"] for p in load_prompts(args.prompts, args.limit)]
    methods = [parse_method(spec, {"max_new_tokens": args.max_new_tokens}) for spec in args.methods.split(",")]
    ar_params = {"max_new_tokens": args.max_new_tokens}
    pays = lean.transposed_pays
    rates: dict[str, dict[int, list[float]]] = {}

    def timed(key: str, i: int, name: str, params: dict) -> None:
        start = time.perf_counter()
        trace = run(name, pair, prompts[i], **params)
        rates.setdefault(key, {}).setdefault(i, []).append(len(trace.output_ids) / (time.perf_counter() - start))

    modes = [("transposed", pays), ("F.linear", lambda weight: False)]
    for repeat in range(args.repeats):
        for i in range(len(prompts)):
            timed("autoregressive", i, "autoregressive", ar_params)
            for label, name, params in methods:
                for mode, rule in modes[:: 1 if (repeat + i) % 2 == 0 else -1]:  # alternate which goes first
                    lean.transposed_pays = rule
                    timed(f"{label} [{mode}]", i, name, params)
            lean.transposed_pays = pays
    ar = {i: statistics.median(v) for i, v in rates["autoregressive"].items()}
    print(f"{'method':58s} speedup  tokens/s   ({len(prompts)} prompts x {args.repeats} repeats, medians)")
    for key, per in rates.items():
        speedup = statistics.median(statistics.median(v) / ar[i] for i, v in per.items())
        print(f"{key:58s} {speedup:7.3f}  {statistics.median(statistics.median(v) for v in per.values()):8.1f}")


if __name__ == "__main__":
    main()
