"""What a wider verification costs: `python scripts/tree_cost.py [--target embedded] [--repeats 15]`.

A token tree buys a longer accepted path per round with more candidates verified in one target forward. Where a
forward's cost is flat in its width (a GPU, memory-bound), trees pay; where it grows with every token (a CPU,
compute-bound), a tree of N nodes pays only if its tau beats the chain's by more than its verification costs more.
This measures, interleaved and as medians, one target forward over 1 + k tokens after a 200-token context (a chain:
the causal mask; a tree: a tree mask and per-node positions, the `tree` method's verification) and one drafter
forward over w nodes (the tree's growth, per level), each in target steps (a forward over 1 token), and prints the
break-even: the tau a tree of N nodes needs to be as fast as a chain of gamma drafts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specviz.engine.decoder import TransformersDecoder  # noqa: E402
from specviz.engine.lean import LeanDecoder, supports  # noqa: E402
from specviz.engine.tree import TokenTree, tree_mask  # noqa: E402
from specviz.models.pair import load_pair  # noqa: E402

WIDTHS = (1, 2, 4, 5, 8, 9, 16, 17, 33, 65)
DRAFT_WIDTHS = (1, 2, 4, 8)
CONTEXT = 200


def balanced_tree(root: int, nodes: int, branch: int, vocab: int) -> TokenTree:
    """A tree of `nodes` candidates after `root`, filled level by level with `branch` children per node."""
    tree = TokenTree.rooted_at(root)
    at = 0
    while len(tree) - 1 < nodes:
        for _ in range(branch):
            if len(tree) - 1 >= nodes:
                break
            tree.add(at, (len(tree) * 7919) % vocab)
        at += 1
    return tree


def timed(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="embedded")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    pair = load_pair(args.target)
    vocab = pair.target.get_output_embeddings().weight.shape[0]
    context = torch.randint(0, vocab, (1, CONTEXT))
    target = TransformersDecoder(pair.target, vocab)

    def at(length: int) -> None:
        """The target's cache holds exactly the first `length` context tokens."""
        target.rollback(length)
        if target.length < length:
            target.feed(context[:, target.length : length])

    def chain(k: int):
        ids = torch.randint(0, vocab, (1, k))

        def call() -> None:  # [last committed, k - 1 drafts] after CONTEXT - 1 entries, as a chain round feeds them
            target.feed(ids, keep=k)
            target.rollback(CONTEXT - 1)

        return call

    def tree_of(k: int):
        tree = balanced_tree(int(context[0, -1]), k - 1, 4, vocab)
        past = CONTEXT - 1
        visible = [[past + a for a in tree.ancestors(n)] for n in range(len(tree))]
        mask = tree_mask(visible, past, past, next(pair.target.parameters()).dtype, "cpu")
        positions = torch.tensor([[past + d for d in tree.depths]])
        ids = torch.tensor([tree.tokens])

        def call() -> None:
            target.feed_tree(ids, positions, mask)
            target.rollback(past)

        return call

    rows: dict[tuple[str, int], list[float]] = {}
    calls = {(kind, k): (chain(k) if kind == "chain" else tree_of(k)) for k in WIDTHS for kind in ("chain", "tree")}
    for _ in range(3):  # rounds, each interleaving every width and kind
        for k in WIDTHS:
            for kind in ("chain", "tree"):
                at(CONTEXT - 1)
                rows.setdefault((kind, k), []).append(timed(calls[(kind, k)], args.repeats))
    step = statistics.median(rows[("chain", 1)])
    print(
        f"target: {args.target}, one step (1 token after {CONTEXT}) = {1000 * step:.2f} ms; medians of 3 rounds x "
        f"{args.repeats}\n"
    )
    print("| tokens in the verification | chain (causal) | tree (mask, positions) |\n|---|---|---|")
    for k in WIDTHS:
        c, t = statistics.median(rows[("chain", k)]), statistics.median(rows[("tree", k)])
        print(f"| {k} | {c / step:.2f} steps ({1000 * c:.1f} ms) | {t / step:.2f} steps ({1000 * t:.1f} ms) |")

    draft = pair.draft
    if draft is not None:
        lean = LeanDecoder(draft, vocab) if supports(draft) else TransformersDecoder(draft, vocab)
        lean.feed(context)
        costs = {}
        for w in DRAFT_WIDTHS:
            tree = balanced_tree(int(context[0, -1]), w, w, vocab)
            ids = torch.tensor([tree.tokens[1:]])
            visible = [[CONTEXT - 1] for _ in range(w)]
            mask = tree_mask(visible, CONTEXT, CONTEXT, next(draft.parameters()).dtype, "cpu")
            positions = torch.full((1, w), CONTEXT)

            def grow(ids=ids, mask=mask, positions=positions) -> None:
                lean.feed_tree(ids, positions, mask)
                lean.rollback(CONTEXT)

            costs[w] = timed(grow, args.repeats)
        print(
            f"\ndrafter forward over w nodes of one level ({type(lean).__name__}), in target steps: "
            + ", ".join(f"w={w}: {costs[w] / step:.3f}" for w in DRAFT_WIDTHS)
        )
        c = costs[1] / step
        v = {k: statistics.median(rows[("tree", k)]) / step for k in WIDTHS}
        vc = {k: statistics.median(rows[("chain", k)]) / step for k in WIDTHS}
        print("\nbreak-even (per round: tau over drafter forwards x c + verification; c = one drafter forward):")
        for gamma, nodes, depth in ((4, 8, 6), (4, 16, 6), (4, 32, 6), (4, 64, 8)):
            chain_cost = gamma * c + vc[gamma + 1]
            tree_cost = depth * costs[4] / step + v[nodes + 1]
            print(
                f"- a tree of {nodes} nodes (depth {depth}) must reach {tree_cost / chain_cost:.2f}x the tau of a "
                f"chain of {gamma} drafts (round cost {tree_cost:.2f} vs {chain_cost:.2f} target steps)"
            )


if __name__ == "__main__":
    main()
