"""Tell a numerical tie from a bug where a method's output differs from autoregressive.

In half precision a multi-token verification forward and one-token steps round differently, so a
greedy speculative run may legitimately pick another token where the target's top two logits are
nearly equal. At the first differing position we recompute, on the target, the logits of the
autoregressive one-token forward and of the speculative multi-token forward (the round's verify
block, as the trace recorded it). It is a proven tie only when the target's top-2 margin there is
smaller than the largest difference between those two logit vectors; anything else is a bug.
fp32 keeps token equality as the rule (it is classified the same way, and the tests demand equality).

The result is stored in the trace (`meta["divergence"]`), so metrics, the bench and the app read it
from traces like everything else.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from specviz.api import common_vocab
from specviz.engine.decoder import TransformersDecoder
from specviz.engine.trace import TOKEN_KINDS, Trace


@dataclass(frozen=True)
class Divergence:
    row: int
    position: int  # first output position where the method's token differs from autoregressive
    token: int  # the method's
    reference_token: int  # autoregressive's
    margin: float  # target's top-2 logit margin there (one-token forward)
    logit_difference: float  # max |one-token logits - multi-token logits| there
    block: int  # tokens in the recomputed multi-token forward
    tie: bool

    def describe(self) -> str:
        kind = "a numerical tie" if self.tie else "NOT a tie (a bug)"
        return (
            f"first difference at token {self.position}: {self.token} instead of {self.reference_token}; "
            f"top-2 margin {self.margin:.3g} vs logit difference {self.logit_difference:.3g} -> {kind}"
        )


def first_difference(a: list[int], b: list[int]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def round_block(trace: Trace, row: int, position: int, output: list[int]) -> tuple[int, list[int]]:
    """(first position of the round that emitted `position`, the tokens that round's verify block fed
    after the token before it): the round's drafts where the trace has them, else its emitted tokens."""
    emitter = next((e for e in trace.events if e.kind in TOKEN_KINDS and e.row == row and e.position == position), None)
    if emitter is None:
        return position, output[position : position + 1]
    step = emitter.step
    start = min(e.position for e in trace.events if e.kind in TOKEN_KINDS and e.row == row and e.step == step)
    drafts = sorted(
        (e.depth, e.token_id) for e in trace.events if e.kind == "draft" and e.row == row and e.step == step
    )
    tokens = [t for _, t in drafts] or output[start : position + 1]
    return start, tokens


@torch.inference_mode()
def classify(pair, trace: Trace, baseline: Trace, row: int = 0) -> Divergence | None:
    """The first difference of `trace` row `row` from `baseline`'s, classified; None when equal."""
    out, ref = trace.rows[row].output_ids, baseline.rows[min(row, len(baseline.rows) - 1)].output_ids
    i = first_difference(ref, out)
    if i is None or i >= min(len(out), len(ref)):
        return None  # equal, or one stopped early (a length cap), which is no token disagreement
    prompt = trace.rows[row].prompt_ids
    vocab = common_vocab(pair)  # the width the run itself compared
    device = pair.target.device
    start, block_tokens = round_block(trace, row, i, out)
    # autoregressive: the prompt in one prefill, then one token at a time
    dec = TransformersDecoder(pair.target, vocab)
    one = dec.feed(torch.tensor([prompt], device=device))[-1]
    for t in ref[:i]:
        one = dec.feed(torch.tensor([[t]], device=device))[-1]
    # speculative: the same cache up to the round's start, then the round's block in one forward
    dec.rollback(len(prompt) + start - 1)
    before = (prompt + ref)[len(prompt) + start - 1]
    block = [before] + block_tokens
    if len(block) <= i - start:  # the trace's drafts do not reach position i
        block = [before] + ref[start:i] + out[i : i + 1]
    many = dec.feed(torch.tensor([block], device=device), keep=len(block))[i - start]
    one, many = one.float(), many.float()
    top = torch.topk(one, 2)
    margin = (
        float(top.values[0] - one[out[i]]) if int(top.indices[0]) != out[i] else float(top.values[0] - top.values[1])
    )
    difference = float((one - many).abs().max())
    return Divergence(
        row=row,
        position=i,
        token=out[i],
        reference_token=ref[i],
        margin=margin,
        logit_difference=difference,
        block=len(block),
        tie=margin <= difference,
    )


def annotate(pair, trace: Trace, baseline: Trace) -> list[Divergence]:
    """Classify every differing row and record it in `trace.meta["divergence"]` (a list of dicts)."""
    found = [d for r in range(len(trace.rows)) if (d := classify(pair, trace, baseline, r)) is not None]
    trace.meta["divergence"] = [asdict(d) for d in found]
    return found
