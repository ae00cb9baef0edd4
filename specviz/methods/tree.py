"""Token-tree speculation: many candidates verified in one target forward (SpecInfer, Miao et al. 2024; Medusa,
Cai et al. 2024; EAGLE-2, Li et al. 2024; Sequoia, Chen et al. 2024).

Each round the drafter grows a tree of candidates after the last committed token (EAGLE-2's dynamic tree): the
root's `branch` most likely next tokens are its children; then, depth by depth, the `branch` nodes of the newest
layer with the highest cumulative draft probability (the product of q along their path) are fed to the drafter
in one forward with a tree attention mask, and each gets its own `branch` most likely children. Growing stops at
`depth` or when no node of the newest layer could enter the final tree; the `nodes` candidates with the highest
cumulative probability form the tree (a child never scores above its parent, so that set holds every chosen
node's path).

The target verifies the whole tree in one forward: the nodes go after the root with a tree mask (each sees the
committed text and its own ancestors) and per-node positions, so each node's logits are those of its path fed
alone. From the root down, the children of the current node are tried in the drafter's order by the rule of
`specviz.engine.verify.sibling_verdict` (greedy: the child equal to the target's argmax; sampling: accept child x
with the residual's probability of x, else remove x and renormalise; the proof is in its docstring, and the tree's
shape depends on the committed path only, so the output has the target's law). The accepted path is emitted,
then the target's own token at its end (a correction where children were all rejected, a bonus at a leaf).

Caches: the target's keeps the entries of the committed text, the root and the accepted path (a gather,
`specviz.engine.kvcache.KVCache.gather`: the one exception to "rollback is an index"); the drafter's keeps the
committed text and the accepted nodes it fed while growing (the same gather, in its own cache), and feeds the rest
of the path and the target's token at its next round.

Events: each candidate is a `draft` event with info {node, parent, sibling} (node numbers within the round, the
root is node 0; sibling: its rank among its parent's children, 0 = the drafter's first choice), and gets an
`accept` or a `reject` (info.cause: "mismatch"/"ratio" when tried and refused, "sibling_accepted" when a sibling
before it was taken, "after_reject" below a node that was not taken, "past_end" when accepted after the output
ended). Schema 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from specviz.engine.kvcache import full_attention_only
from specviz.engine.protocols import Decoder
from specviz.engine.tree import TokenTree, tree_mask
from specviz.engine.verify import SiblingVerdict, sibling_verdict, top_entries
from specviz.methods.base import Method, Param, RunContext
from specviz.methods.draft_model import DRAFTER_FORWARD
from specviz.methods.rounds import Drafter, prefill_both

NODES = Param(
    "nodes",
    int,
    12,
    1,
    128,
    help="node budget: candidate tokens in each round's tree (the target verifies "
    "them all, plus the root, in one forward)",
)
DEPTH = Param(
    "depth", int, 6, 1, 16, help="depth limit: the longest path a round can accept (drafter forwards per round)"
)
BRANCH = Param(
    "branch", int, 3, 1, 16, help="children per expanded node, and nodes expanded per depth (EAGLE-2's top-k)"
)


@dataclass
class GrownTree:
    """A round's candidates: the tree (node 0 = the root) and, per node, what the drafter said of it."""

    tree: TokenTree
    q: list[float]  # node -> q of its token at its parent (1.0 for the root)
    spans: list[tuple[float, float]]  # node -> the drafter forward that proposed it (t0, t1)
    slots: list[int | None]  # node -> where the drafter's cache holds it (None: never fed, a leaf of the growth)
    forwards: int = 1  # drafter forwards this round's growth made (a level the node budget cut whole included)


class TreeDrafter(Drafter):
    """Grows a round's token tree with the pair's drafter on its own KV cache (specviz's lean Llama loop where the
    model is one, as draft_model's drafter; both forwards take the tree's mask and positions)."""

    def grow(self, seq: torch.Tensor, nodes: int, depth: int, branch: int) -> GrownTree:
        ctx, rec = self.ctx, self.ctx.rec
        tree = TokenTree.rooted_at(int(seq[0, -1]))
        committed = seq.shape[1]  # the root sits at cache slot committed - 1 once pending is fed
        score, q, spans, slot = [0.0], [1.0], [(0.0, 0.0)], {0: committed - 1}
        t0 = rec.now()
        probs = ctx.sampling.probs(self.decoder.feed(seq[:, self.decoder.length :]))  # (1, V) at the root
        forwards = 1
        parents = [0]
        for level in range(1, depth + 1):
            span = (t0, rec.now())
            values, ids = torch.topk(probs, min(branch, probs.shape[-1]), dim=-1)
            layer = []
            for row, parent in enumerate(parents):
                for value, token in zip(values[row].tolist(), ids[row].tolist()):
                    if value <= 0.0:  # outside the drafter's top-k / top-p: a candidate it could never draft
                        continue
                    node = tree.add(parent, token)
                    score.append(score[parent] + math.log(value))
                    q.append(value)
                    spans.append(span)
                    layer.append(node)
            if level == depth or not layer:
                break
            # the nodes-th best score so far: a layer whose best node is below it has no descendant in the tree
            if len(score) - 1 >= nodes and max(score[n] for n in layer) < sorted(score[1:], reverse=True)[nodes - 1]:
                break
            parents = sorted(layer, key=lambda n: (-score[n], n))[:branch]
            past = self.decoder.length
            visible = [[slot[a] for a in tree.ancestors(n)] for n in parents]
            positions = torch.tensor([[committed - 1 + tree.depths[n] for n in parents]], device=seq.device)
            mask = tree_mask(visible, committed, past, next(self.decoder.model.parameters()).dtype, seq.device)
            t0 = rec.now()
            logits = self.decoder.feed_tree(
                torch.tensor([[tree.tokens[n] for n in parents]], device=seq.device), positions, mask
            )
            probs = ctx.sampling.probs(logits)
            forwards += 1
            for i, n in enumerate(parents):
                slot[n] = past + i
        keep = sorted(sorted(range(1, len(tree)), key=lambda n: (-score[n], n))[:nodes])
        chosen = tree.subtree(keep)
        return GrownTree(
            chosen,
            [1.0] + [q[n] for n in keep],
            [spans[0]] + [spans[n] for n in keep],
            [slot[0]] + [slot.get(n) for n in keep],
            forwards,
        )

    def keep(self, committed: int, grown: GrownTree, path: list[int]) -> None:
        """After verification: the committed text's entries and those of the accepted path as far as the drafter
        fed it (the rest of the path, and the target's token, are fed at the next round)."""
        fed = []
        for node in path:
            if grown.slots[node] is None:
                break
            fed.append(grown.slots[node])
        self.decoder.keep_path(list(range(committed)) + fed)


class Tree(Method):
    name = "tree"
    title = "Token-tree speculation (EAGLE-2's dynamic tree, one verification forward)"
    needs_draft = True
    memo_safe = True  # its forwards are functions of the tokens and the tree (exactness memoizes feed_tree too)
    PARAMS = (NODES, DEPTH, BRANCH, DRAFTER_FORWARD)

    def check_pair(self, pair) -> None:
        super().check_pair(pair)
        for role, model in (("target", pair.target), ("drafter", pair.draft)):
            if not full_attention_only(model.config):
                raise ValueError(
                    f"tree verification needs a {role} whose every layer attends to the whole history; "
                    f"{type(model).__name__} has sliding-window layers"
                )

    def generate(self, ctx: RunContext) -> None:
        out, params = ctx.out, ctx.params
        target = ctx.decoder(ctx.pair.target)
        drafter = TreeDrafter(ctx, ctx.pair.draft, lean=params["drafter_forward"] == "lean")
        seq = ctx.prompt_ids
        prefill_both(ctx, target, drafter, drafter.source)
        step = 0
        sizes = []
        while not out.done:
            ctx.check_cancel()
            committed = seq.shape[1]
            grown = drafter.grow(seq, params["nodes"], min(params["depth"], out.room - 1), params["branch"])
            record_candidates(ctx, grown, step)
            path, emitted = self.verify(ctx, target, grown, committed, step)
            sizes.append(len(grown.tree) - 1)
            target.keep_path(list(range(committed)) + [committed - 1 + n for n in path])
            drafter.keep(committed, grown, path)
            seq = torch.cat([seq, torch.tensor([emitted], dtype=seq.dtype, device=seq.device)], dim=1)
            step += 1
        ctx.meta["tree"] = {"rounds": step, "mean_nodes": round(sum(sizes) / len(sizes), 2) if sizes else 0.0}

    @staticmethod
    def verify(
        ctx: RunContext, target: Decoder, grown: GrownTree, committed: int, step: int
    ) -> tuple[list[int], list[int]]:
        """The whole tree in one target forward, the walk from the root, and the round's events; returns the
        accepted path (node numbers) and the tokens emitted."""
        rec, tree, device = ctx.rec, grown.tree, ctx.prompt_ids.device
        past = target.length  # committed - 1: the root is fed with its tree
        visible = [[past + a for a in tree.ancestors(n)] for n in range(len(tree))]
        mask = tree_mask(visible, past, past, target.model.dtype, device)
        positions = torch.tensor([[past + d for d in tree.depths]], device=device)
        t0 = rec.now()
        logits = target.feed_tree(torch.tensor([tree.tokens], device=device), positions, mask)  # (N + 1, V)
        p = ctx.sampling.probs(logits)
        node, path, fate = 0, [], {}
        while True:
            children = tree.children(node)
            verdict = sibling_verdict(
                ctx.sampling,
                logits[node],
                p[node],
                [tree.tokens[c] for c in children],
                ctx.generator,
                top=ctx.dist_top,
                rule=ctx.verify_rule,
            )
            for i, child in enumerate(children):
                state = (
                    "accept" if i == verdict.accepted else ("tried" if i < len(verdict.tried) else "sibling_accepted")
                )
                fate[child] = (state, verdict, i)
            if verdict.accepted is None:
                break
            node = children[verdict.accepted]
            path.append(node)
        rec.add(
            "verify",
            step=step,
            source="target",
            t0=t0,
            t1=rec.now(),
            info={
                "tokens": len(tree),
                "drafts": len(tree) - 1,
                "accepted": len(path),
                "tree": True,
                "forwards": grown.forwards,
                "depth": max(tree.depths),
                "leaves": tree.leaves(),
            },
        )
        # the target's top-k where it emitted its own token (a node's q and p are on its events: top-k lists for
        # every node would cost more than the 3 % recording budget on trees of 16+ nodes)
        top_end = top_entries(p[node : node + 1], ctx.dist_top)[0] if ctx.dist_top else []
        emitted = commit_tree(ctx, grown, p, top_end, fate, path, node, verdict, step)
        return path, emitted


def record_candidates(ctx: RunContext, grown: GrownTree, step: int) -> None:
    """One `draft` event per candidate, in node order (its drafter forward's span, its place in the tree)."""
    rec, tree = ctx.rec, grown.tree
    if not rec.enabled:
        return
    ranks = tree.sibling_ranks()
    for n in range(1, len(tree)):
        t0, t1 = grown.spans[n]
        rec.add(
            "draft",
            step=step,
            token_id=tree.tokens[n],
            q=grown.q[n],
            depth=tree.depths[n] - 1,
            source="draft",
            t0=t0,
            t1=t1,
            info={"node": n, "parent": tree.parents[n], "sibling": ranks[n]},
        )


def commit_tree(
    ctx: RunContext,
    grown: GrownTree,
    p: torch.Tensor,
    top_end: list,
    fate: dict,
    path: list[int],
    end: int,
    verdict: SiblingVerdict,
    step: int,
) -> list[int]:
    """Push the accepted path and the target's token at its end; record every candidate's verdict. Returns the
    tokens pushed."""
    rec, out, tree = ctx.rec, ctx.out, grown.tree
    pushed: list[int] = []
    now = rec.now()
    ranks = tree.sibling_ranks()
    rule = "argmax" if ctx.sampling.greedy else ("sibling" if ctx.verify_rule == "exact" else ctx.verify_rule)
    p_at = (
        p[torch.tensor(tree.parents[1:], device=p.device), torch.tensor(tree.tokens[1:], device=p.device)].tolist()
        if len(tree) > 1
        else []
    )
    for n in range(1, len(tree)):
        common = dict(
            step=step,
            token_id=tree.tokens[n],
            p=p_at[n - 1],
            q=grown.q[n],
            depth=tree.depths[n] - 1,
            source="draft",
            t0=now,
            t1=now,
        )
        info: dict = {"node": n, "parent": tree.parents[n], "sibling": ranks[n], "rule": rule}
        state, judged, i = fate.get(n, ("after_reject", None, 0))
        if judged is not None and judged.u and i < len(judged.u):  # sampling: the chance it had and the draw
            info["u"], info["accept_prob"] = judged.u[i], judged.tried[i]
        if state == "accept" and out.done:
            state = "past_end"  # accepted after EOS / the token limit: not part of the output
        if state == "accept":
            pushed.append(tree.tokens[n])
            if rec.enabled:
                rec.add("accept", position=out.push(tree.tokens[n]), info=info, **common)
            else:
                out.push(tree.tokens[n])
        elif rec.enabled:
            info["cause"] = ("mismatch" if ctx.sampling.greedy else "ratio") if state == "tried" else state
            rec.add("reject", info=info, **common)
    if not out.done:
        kind = "correct" if tree.children(end) else "bonus"
        extra: dict = {"rule": rule, "node": end}
        if top_end:
            extra["top_p"] = top_end
        if verdict.residual_top is not None and kind == "correct":
            extra["residual_top"] = verdict.residual_top
        position = out.push(verdict.token)
        rec.add(
            kind,
            step=step,
            position=position,
            token_id=verdict.token,
            p=verdict.p_token,
            q=None,
            depth=len(path),
            source="target",
            t0=now,
            t1=now,
            info=extra,
        )
        pushed.append(verdict.token)
    return pushed
