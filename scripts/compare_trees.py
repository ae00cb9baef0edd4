"""Old tree against new: the same bench in both, interleaved, for a change that must not change behaviour.

    python scripts/compare_trees.py --old 1a893c2 [--methods ...] [--repeats 3] [--max-new-tokens 64] [--out DIR]

The old commit is checked out beside this one (a detached git worktree, removed afterwards). Each round runs
`python -m specviz.bench --repeats 1` in one tree and then the other (the order alternates), so a drift of the
machine's speed falls on both. It checks that every (method, prompt) row has the same output, tau and alpha in every
run of both trees, and that each method's speedup (median over its rows and rounds) in the new tree is within
`--tolerance` (5 %) of the old one's. Exit 1 when either fails. Run on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
METHODS = "autoregressive,draft_model,kangaroo,sorted,mirror,draft_model:vocab_trim=2048,hf_assisted"


def bench(tree: Path, out: Path, args: argparse.Namespace) -> pd.DataFrame:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable,
        "-m",
        "specviz.bench",
        "--methods",
        args.methods,
        "--max-new-tokens",
        str(args.max_new_tokens),
        "--repeats",
        "1",
        "--quiet",
        "--out",
        str(out),
    ]
    if args.limit:
        command += ["--limit", str(args.limit)]
    subprocess.run(command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return pd.read_csv(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", required=True, help="the commit to compare against")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--repeats", type=int, default=3, help="rounds, each one bench run per tree")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--limit", type=int, default=None, help="the first N bundled prompts")
    parser.add_argument("--tolerance", type=float, default=0.05)
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "specviz-compare-trees"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    old = Path(tempfile.mkdtemp(prefix="specviz-old-")) / "tree"
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(old), args.old],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    frames: dict[str, list[pd.DataFrame]] = {"old": [], "new": []}
    try:
        for r in range(args.repeats):
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for name in order:
                frame = bench(old if name == "old" else ROOT, out / f"{name}_{r}.csv", args)
                frames[name].append(frame.assign(round=r))
                print(f"round {r + 1}/{args.repeats}: {name} done", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(old)], cwd=ROOT, check=False)
    rows = pd.concat([f.assign(tree=name) for name, fs in frames.items() for f in fs])
    digests = rows.groupby(["method", "prompt_id"])["output_digest"].nunique()
    unequal = digests[digests > 1]
    # tau and alpha follow from the outputs and the drafts: the same in every run of both trees (greedy)
    counted = rows.assign(tau=rows["tau"].round(9), alpha=rows["alpha"].round(9))
    moved = counted.groupby(["method", "prompt_id"])[["tau", "alpha"]].nunique(dropna=False).max(axis=1)
    table = []
    for method, group in rows.groupby("method", sort=False):
        old_s = median(group[group.tree == "old"]["speedup"])
        new_s = median(group[group.tree == "new"]["speedup"])
        table.append(
            {
                "method": method,
                "old_speedup": round(old_s, 3),
                "new_speedup": round(new_s, 3),
                "new/old": round(new_s / old_s, 3),
                "within": abs(new_s / old_s - 1) <= args.tolerance,
                "rows_equal": int((digests.loc[method] == 1).sum()),
                "tau_alpha_equal": int((moved.loc[method] == 1).sum()),
                "rows": int(len(digests.loc[method])),
            }
        )
    report = {
        "old": args.old,
        "rounds": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "methods": table,
        "unequal_rows": [list(i) for i in unequal.index],
        "tau_alpha_moved": [list(i) for i in moved[moved > 1].index],
    }
    (out / "compare.json").write_text(json.dumps(report, indent=2) + "\n")
    print(pd.DataFrame(table).to_string(index=False))
    print(
        f"rows with different outputs: {len(unequal)}; with a different tau or alpha: {int((moved > 1).sum())}; "
        f"written {out / 'compare.json'}"
    )
    return 0 if unequal.empty and (moved <= 1).all() and all(t["within"] for t in table) else 1


if __name__ == "__main__":
    sys.exit(main())
