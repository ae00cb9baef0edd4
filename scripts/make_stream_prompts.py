"""Write assets/prompts/stream.jsonl: 96 request-stream prompts of genuinely mixed lengths.

Why: batch methods need a pool of many requests of different lengths (EXSPEC groups same-length rows
from a pool larger than the batch); the 16 bundled prompts are too few, and repeating them would make
lengths equal. Each prompt is a head of a standard-library file from the held-out split the embedded
models never trained on (`corpus.old_stdlib_heldout`), starting at a top-level `def`/`class` and cut at
a length drawn from a fixed, seeded spread (about 10 to 300 tokens). Deterministic for a given Python.
`python scripts/make_stream_prompts.py [--out assets/prompts/stream.jsonl] [--count 96]`
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from specviz.workshop.corpus import old_stdlib_heldout

STARTS = re.compile(r"^(?:def|class|async def) ", re.M)


def heldout_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [
        p
        for p in sorted(root.rglob("*.py"))
        if "test" not in p.parts
        and "tests" not in p.parts
        and "site-packages" not in p.parts
        and old_stdlib_heldout(p.name)
    ]
    return [p for p in files if p.stat().st_size > 1500]


def prompts(count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    files = heldout_files()
    out: list[dict] = []
    starts = {
        p: [m.start() for m in STARTS.finditer(p.read_text(encoding="utf-8", errors="replace"))] or [0] for p in files
    }
    while len(out) < count:
        path = files[len(out) % len(files)]
        text = path.read_text(encoding="utf-8", errors="replace")
        begin = rng.choice(starts[path])
        length = int(rng.choice([40, 80, 160, 320, 640, 1000]) * rng.uniform(0.8, 1.25))
        head = text[begin : begin + length]
        cut = head.rfind("\n")
        head = head[: cut + 1] if cut > 20 else head
        if len(head.strip()) < 10 or any(r["prompt"] == head for r in out):
            continue
        out.append({"id": f"{path.stem}-{len(out)}", "category": f"chars<{length // 100 * 100 + 100}", "prompt": head})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="assets/prompts/stream.jsonl")
    parser.add_argument("--count", type=int, default=96)
    args = parser.parse_args()
    rows = prompts(args.count)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} prompts from {len(heldout_files())} held-out files -> {args.out}")


if __name__ == "__main__":
    main()
