"""The shipped Kangaroo adapter against one trained by `python -m specviz.workshop.train kangaroo-adapter`, on the
embedded target: greedy agreement on the command's own held-out windows, then speed (interleaved per prompt
in one process, the same target object, medians over repeats).

    python -m specviz.workshop.train kangaroo-adapter --target assets/models/target --exit-layer 2 --steps 400 --out DIR
    python scripts/compare_adapters.py --new DIR/kangaroo-adapter [--limit 8] [--repeats 3] [--max-new-tokens 128]

Nothing else may run meanwhile (pause training first).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file from anywhere
from specviz import load_pair, run
from specviz.bench.prompts import load_prompts
from specviz.engine.adapter import KangarooAdapter
from specviz.models.hub import load_causal_lm, load_tokenizer
from specviz.workshop.parts_training import PartsConfig, heldout_windows, measure_adapter, token_split, training_text

CONFIGS = (("eta=0.6", {}), ("eta=0 gamma=4", {"eta": 0, "gamma": 4}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new", required=True, help="the trained adapter's folder")
    parser.add_argument("--shipped", default="assets/models/kangaroo-adapter")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--text", default="", help="held-out text from this UTF-8 file (default: the stdlib's sources)")
    args = parser.parse_args()
    os.chdir(Path(__file__).resolve().parents[1])  # the assets' relative paths
    cpu = torch.device("cpu")
    adapters = {
        name: KangarooAdapter.load(path, device=cpu, dtype=torch.float32).eval()
        for name, path in (("shipped", args.shipped), ("new", args.new))
    }
    cfg = PartsConfig(part="kangaroo-adapter", target="assets/models/target", text=args.text)
    target = load_causal_lm("assets/models/target", cpu, torch.float32)
    held = heldout_windows(token_split(load_tokenizer("assets/models/target"), training_text(cfg), cfg)[1], cfg)
    for name, adapter in adapters.items():
        print(f"{name:8s} held-out agreement {measure_adapter(target, adapter, held)}")
    base = load_pair("embedded")
    pairs = {
        name: dataclasses.replace(base, extras={**base.extras, "kangaroo_adapter": a}) for name, a in adapters.items()
    }
    prompts = [p["prompt"] for p in load_prompts("assets/prompts/code.jsonl", args.limit)]
    rates: dict[str, dict[int, list[tuple[float, float]]]] = {}

    def timed(label: str, i: int, pair, method: str, params: dict) -> None:
        start = time.perf_counter()
        trace = run(method, pair, prompts[i], max_new_tokens=args.max_new_tokens, **params)
        seconds = time.perf_counter() - start
        drafted = sum(e.kind == "draft" for e in trace.events)
        alpha = sum(e.kind == "accept" for e in trace.events) / max(1, drafted)
        rates.setdefault(label, {}).setdefault(i, []).append((len(trace.output_ids) / seconds, alpha))

    for _ in range(args.repeats):
        for i in range(len(prompts)):
            timed("autoregressive", i, base, "autoregressive", {})
            for config, params in CONFIGS:
                for name, pair in pairs.items():
                    timed(f"kangaroo {config}, {name} adapter", i, pair, "kangaroo", params)
    ar = {i: statistics.median(r for r, _ in v) for i, v in rates["autoregressive"].items()}
    for label, per in rates.items():
        speedup = statistics.median(statistics.median(r for r, _ in v) / ar[i] for i, v in per.items())
        alpha = statistics.median(statistics.median(a for _, a in v) for v in per.values())
        print(f"{label:40s} speedup {speedup:.3f}  alpha {alpha:.3f}")


if __name__ == "__main__":
    main()
