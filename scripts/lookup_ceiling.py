"""How far can drafting by lookup go on these prompts, on this machine? `python scripts/lookup_ceiling.py --prompts FILE
[--per-category N --tasks summarization,rag] [--max-new-tokens 64]`.

A measurement of the bound, not of a method: each prompt's greedy output is decoded once (autoregressive); then, with
that output known, every round of a lookup drafter is replayed offline. The round drafts from the text so far, the
accepted length is the drafts' common prefix with the true output, and the round costs one target forward over its
width. That forward's cost by width is measured on the target right after each prompt's own run, at that prompt's
context, in target steps (widths interleaved, medians of `--repeats`): on a shared machine the curve moves between
minutes, and a prompt is priced by the curve of its own moment. Two drafters are replayed:
- the chain: `prompt_lookup`'s own (`NgramIndex`: the most recent earlier match of the longest n-gram, up to gamma
  tokens);
- a trie of every earlier match's continuation (longest n first, most recent first) up to a node budget. This is
  what a token tree of lookup candidates could accept, verified in one forward of that many nodes.

With the target's measured prefill share f of the autoregressive run, a speedup s after the prefill is a whole-run
speedup of 1 / (f + (1 - f) / s). Python's own work per round (verdicts, events) is left out, so the ceilings are
above what a real run can reach: `python -m specviz.bench` measures that.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specviz.analysis.categories import first_per_task, task_of  # noqa: E402
from specviz.api import fits_context, run  # noqa: E402
from specviz.bench.matrix import target_prefill_s  # noqa: E402
from specviz.bench.prompts import load_prompts  # noqa: E402
from specviz.engine.decoder import TransformersDecoder, context_limit  # noqa: E402
from specviz.methods.prompt_lookup import LOOKUP_GAMMA, MAX_NGRAM, MIN_NGRAM, NgramIndex  # noqa: E402
from specviz.models.pair import load_pair  # noqa: E402

WIDTHS = (1, 2, 3, 4, 6, 8, 11, 16, 24, 33, 48, 65)


def width_costs(pair, text: list[int], repeats: int) -> dict[int, float]:
    """A target forward over w tokens after the prompt `text` (cut so that the widest forward fits the context), in
    steps (w = 1), widths interleaved, medians."""
    vocab = pair.target.get_output_embeddings().weight.shape[0]
    context = min(len(text), context_limit(pair.target) - max(WIDTHS))
    torch.manual_seed(0)
    ids = torch.tensor([text[:context] + torch.randint(0, vocab, (max(WIDTHS),)).tolist()])
    target = TransformersDecoder(pair.target, vocab)
    target.feed(ids[:, :context])
    times: dict[int, list[float]] = {w: [] for w in WIDTHS}
    for _ in range(repeats):
        for w in WIDTHS:
            start = time.perf_counter()
            target.feed(ids[:, context : context + w], keep=w)
            times[w].append(time.perf_counter() - start)
            target.rollback(context)
    step = statistics.median(times[1])
    return {w: statistics.median(t) / step for w, t in times.items()}


def cost_of(costs: dict[int, float], width: int) -> float:
    """The measured cost of a width, linear between the measured ones (and beyond the widest)."""
    known = sorted(costs)
    if width in costs:
        return costs[width]
    if len(known) < 2 or width < known[0]:
        raise ValueError(f"width {width}: the measured widths {known} neither hold nor bracket it")
    below = max(w for w in known if w < width)
    above = min((w for w in known if w > width), default=None)
    if above is None:
        below, above = known[-2], known[-1]
    slope = (costs[above] - costs[below]) / (above - below)
    return costs[below] + slope * (width - below)


Propose = Callable[[list[int], int], list[list[int]]]  # (text so far, most drafts the output has room for) -> drafts


def chain_proposer(prompt: list[int], gamma: int, low: int, high: int) -> Propose:
    """prompt_lookup's own drafts: its NgramIndex over the prompt, extended as the replay commits tokens."""
    index = NgramIndex(low, high)
    index.extend(prompt)

    def propose(text: list[int], room: int) -> list[list[int]]:
        index.extend(text[len(index.tokens) :])
        drafts, _, _ = index.draft(min(gamma, room))
        return [drafts] if drafts else []

    return propose


def trie_proposer(budget: int, gamma: int, low: int, high: int) -> Propose:
    def propose(text: list[int], room: int) -> list[list[int]]:
        return trie_drafts(text, budget, min(gamma, room), low, high)

    return propose


def trie_drafts(text: list[int], budget: int, depth: int, low: int, high: int) -> list[list[int]]:
    """Continuations of every earlier match of the text's last n tokens (n from high down to low, the most recent
    first), cut so that their trie holds at most `budget` nodes."""
    paths, nodes = [], set()
    end = len(text)
    for n in range(min(high, end - 1), low - 1, -1):
        tail = text[end - n :]
        for e in range(end - 2, n - 2, -1):
            if text[e - n + 1 : e + 1] != tail:
                continue
            copy: list[int] = []
            for i in range(depth):
                at = e + 1 + i
                copy.append(text[at] if at < end else copy[at - end])
            kept = []
            for i in range(len(copy)):
                node = tuple(copy[: i + 1])
                if node not in nodes:
                    if len(nodes) >= budget:
                        break
                    nodes.add(node)
                kept.append(copy[i])
            if kept:
                paths.append(kept)
            if len(nodes) >= budget:
                return paths
    return paths


def replay(prompt: list[int], output: list[int], propose: Propose, costs: dict[int, float]) -> tuple[float, float]:
    """(tau, speedup after the prefill) of a lookup drafter replayed against the known output. A round drafts at
    most one token fewer than the output has left, as prompt_lookup does (the target's own token ends it)."""
    text, done, rounds, spent = list(prompt), 0, 0, 0.0
    while done < len(output):
        drafts = propose(text, len(output) - done - 1)
        width = 1 + len({tuple(d[: i + 1]) for d in drafts for i in range(len(d))})
        accepted = 0
        for d in drafts:
            a = 0
            while a < len(d) and done + a < len(output) and d[a] == output[done + a]:
                a += 1
            accepted = max(accepted, a)
        step = min(accepted + 1, len(output) - done)
        text += output[done : done + step]
        done += step
        rounds += 1
        spent += cost_of(costs, width)
    return len(output) / rounds, len(output) / spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True)
    parser.add_argument("--per-category", type=int)
    parser.add_argument("--tasks", help="with --per-category: these tasks only (comma-separated)")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--target", default="embedded")
    parser.add_argument("--gamma", type=int, default=LOOKUP_GAMMA.default)
    parser.add_argument("--min-ngram", type=int, default=MIN_NGRAM.default)
    parser.add_argument("--max-ngram", type=int, default=MAX_NGRAM.default)
    parser.add_argument("--trie-nodes", default="16,32,64", help="node budgets of the trie of every match")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of each prompt's width-cost measurement")
    args = parser.parse_args()

    if args.tasks and args.per_category is None:
        parser.error("--tasks goes with --per-category")
    pair = load_pair(args.target)
    prompts = load_prompts(args.prompts, args.limit)
    if args.per_category is not None:
        if args.tasks:
            prompts = [p for p in prompts if task_of(p["category"]) in set(args.tasks.split(","))]
        prompts, _ = first_per_task(
            prompts, args.per_category, lambda p: fits_context(pair, p["prompt"], args.max_new_tokens)
        )
    if not prompts:
        parser.error("no prompt to replay: check --tasks and --per-category against the file")
    runs = []
    for p in prompts:
        trace = run("autoregressive", pair, p["prompt"], max_new_tokens=args.max_new_tokens)
        costs = width_costs(pair, trace.rows[0].prompt_ids, args.repeats)
        runs.append((trace, target_prefill_s(trace) / trace.wall_time, costs))
    context = int(statistics.median(len(t.rows[0].prompt_ids) for t, _, _ in runs))
    print(
        f"{len(runs)} prompts (median context {context} tokens); a target forward over w tokens, in steps (w = 1), "
        "the median over prompts:"
    )
    print("  " + ", ".join(f"{w}: {statistics.median(c[w] for _, _, c in runs):.2f}" for w in WIDTHS))

    budgets = [int(b) for b in args.trie_nodes.split(",") if b]
    drafters = {f"chain (gamma {args.gamma}, n {args.min_ngram}-{args.max_ngram})": None}
    drafters.update({f"trie of every match, {b} nodes": b for b in budgets})
    shares = [share for _, share, _ in runs]
    f = statistics.median(shares)
    print(f"autoregressive's prefill share: median {f:.3f} (range {min(shares):.3f}-{max(shares):.3f})")
    print("| drafter | tau | speedup after the prefill | whole-run ceiling |")
    print("|---|---|---|---|")
    for label, budget in drafters.items():
        taus, afters, wholes = [], [], []
        for trace, share, costs in runs:
            prompt, output = trace.rows[0].prompt_ids, trace.output_ids
            ngrams = (args.gamma, args.min_ngram, args.max_ngram)
            propose = chain_proposer(prompt, *ngrams) if budget is None else trie_proposer(budget, *ngrams)
            tau, after = replay(prompt, output, propose, costs)
            taus.append(tau)
            afters.append(after)
            wholes.append(1 / (share + (1 - share) / after))
        print(
            f"| {label} | {statistics.median(taus):.2f} | {statistics.median(afters):.2f} | "
            f"{statistics.median(wholes):.2f} |"
        )
    for goal in (1.5, 2.0):
        need = (1 - f) / (1 / goal - f) if 1 / goal > f else float("inf")
        print(f"a whole-run {goal}x at the median prefill share needs {need:.2f}x after the prefill")


if __name__ == "__main__":
    main()
