"""VocabTrim (arXiv 2506.22694): the drafter's LM head cut to the K ids the target emits most.

Composable, not a method of its own: `draft_model` (and Kangaroo) take `vocab_trim=K`. The
drafter computes its hidden state as usual, then logits only for the K kept rows of its LM head
(W[idx] h), which is where a small drafter spends much of its time. Ids outside the set get
probability 0 under q, so a drafted token is always inside it; the target still verifies over the
full vocabulary, and the speculative-sampling rule stays exact (p/q is only evaluated at drafted
ids, and the residual max(0, p - q) keeps all of p's mass outside the set).

MBSU, the paper's memory-bound speed-up: tau / (c * gamma + 1), with c = drafter parameters /
target parameters, counting the drafter's LM head at its trimmed size.
"""

from __future__ import annotations

import torch

from specviz.engine.lean import draft_linear
from specviz.methods.base import RunContext
from specviz.methods.rounds import Drafter


def ranking_for(pair) -> list[int]:
    ranking = pair.extras.get("vocab_ranking") if getattr(pair, "extras", None) else None
    if not ranking:
        raise ValueError(
            "vocab_trim needs a token ranking computed from the target's own outputs; the embedded pair ships one "
            "(assets/models/vocabtrim). For another target, put vocab_ranking.json ({'ranked_ids': [...]}) beside "
            "a local target or pass pair.extras['vocab_ranking'] = ids ranked by frequency."
        )
    return ranking


def kept_ids(pair, k: int, vocab: int, device) -> torch.Tensor:
    ranking = [i for i in ranking_for(pair) if i < vocab]
    if k > len(ranking):
        raise ValueError(f"vocab_trim={k} exceeds the ranked vocabulary ({len(ranking)} ids)")
    return torch.tensor(sorted(ranking[:k]), dtype=torch.long, device=device)


class TrimmedHead:
    """W[idx] (K, d) of an LM head, with a scatter back to full-vocabulary logits (-inf outside)."""

    def __init__(self, head: torch.nn.Module, idx: torch.Tensor, vocab: int):
        self.idx = idx
        self.vocab = vocab
        self.weight = head.weight.detach()[idx]  # (K, d): a copy for the drafter only
        bias = getattr(head, "bias", None)
        self.bias = bias.detach()[idx] if bias is not None else None

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        small = draft_linear(hidden, self.weight, self.bias)  # (..., K): only ever steers drafts
        full = small.new_full((*small.shape[:-1], self.vocab), float("-inf"))
        return full.scatter(-1, self.idx.expand(*small.shape[:-1], -1), small)

    def num_parameters(self) -> int:
        return self.weight.numel() + (self.bias.numel() if self.bias is not None else 0)


class TrimmedDrafter(Drafter):
    """A separate drafter whose LM head keeps only the K most frequent target ids."""

    def __init__(self, ctx: RunContext, model: torch.nn.Module, k: int, lean: bool = False):
        super().__init__(ctx, model, lean=lean)
        self.source = f"draft[vocab {k}]"
        self.k = k
        self.head = ctx.once(
            ("trimmed_head", id(model), k),
            lambda: TrimmedHead(
                model.get_output_embeddings(), kept_ids(ctx.pair, k, ctx.vocab, ctx.prompt_ids.device), ctx.vocab
            ),
        )
        full = model.get_output_embeddings().weight.numel()
        ctx.meta["draft_params"] += self.head.num_parameters() - full  # only K rows of the head are read

    @torch.inference_mode()
    def logits(self, pending: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder.hidden(pending)[:, -1])  # (1, V), -inf outside the kept ids
