"""What a prompt-lookup round costs to draft on a long prompt: specviz's n-gram index against a rescan.

    python scripts/lookup_cost.py [--tokens 2000] [--rounds 200] [--gamma 10]

The prompt is the bundled code prompts, tokenized by the embedded target's tokenizer and repeated to `--tokens`
tokens. Each round drafts, then commits a few tokens as a verification would; the index's cost per round
(`draft` + `extend`) is timed against transformers' way (a sliding-window comparison over the whole text per
round, `PromptLookupCandidateGenerator`'s unfold, rebuilt here with torch). Medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts  # noqa: E402
from specviz.methods.prompt_lookup import NgramIndex  # noqa: E402
from specviz.models.hub import EMBEDDED_DIR, load_tokenizer  # noqa: E402


def rescan_draft(ids: torch.Tensor, max_n: int, gamma: int) -> list[int]:
    """The earliest earlier match of the longest suffix n-gram, found by comparing every window (transformers)."""
    length = ids.shape[0]
    for n in range(max_n, 0, -1):
        windows = ids.unfold(0, n, 1)
        matches = (windows == ids[length - n :]).all(dim=1).nonzero().flatten()
        for start in matches.tolist():
            begin = start + n
            if begin < length:
                return ids[begin : min(begin + gamma, length)].tolist()
    return []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--gamma", type=int, default=10)
    parser.add_argument("--max-ngram", type=int, default=3)
    args = parser.parse_args()
    tok = load_tokenizer(str(EMBEDDED_DIR / "target"))
    text = "\n\n".join(p["prompt"] for p in load_prompts(DEFAULT_PROMPTS))
    ids = tok(text)["input_ids"]
    prompt = (ids * (args.tokens // len(ids) + 1))[: args.tokens]
    commits = (ids * (args.rounds * 4 // len(ids) + 2))[: args.rounds * 4]  # 1-4 tokens committed per round

    t0 = time.perf_counter()
    index = NgramIndex(1, args.max_ngram)
    index.extend(prompt)
    build_ms = (time.perf_counter() - t0) * 1e3
    indexed, rescanned = [], []
    text_ids = list(prompt)
    at = 0
    for r in range(args.rounds):
        step = 1 + r % 4
        t = time.perf_counter()
        index.draft(args.gamma)
        index.extend(commits[at : at + step])
        indexed.append((time.perf_counter() - t) * 1e6)
        t = time.perf_counter()
        rescan_draft(torch.tensor(text_ids), args.max_ngram, args.gamma)
        rescanned.append((time.perf_counter() - t) * 1e6)
        text_ids.extend(commits[at : at + step])
        at += step
    print(f"prompt {args.tokens} tokens, {args.rounds} rounds, gamma {args.gamma}, n-grams 1..{args.max_ngram}")
    print(f"index build (once per run): {build_ms:.1f} ms")
    print(f"per round, the index (draft + extend): median {statistics.median(indexed):.1f} us")
    print(f"per round, a rescan of the whole text (transformers' way): median {statistics.median(rescanned):.1f} us")


if __name__ == "__main__":
    main()
