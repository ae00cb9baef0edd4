"""The lossless acceptance rules, and the logits processing shared by drafter and target.

Greedy: a draft is accepted while it equals the target's argmax; the target's argmax at the
first mismatch (or after the last draft) is emitted. Output = the target's greedy output.

Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): draft x_i ~ q_i is accepted
with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the emitted token is drawn
from norm(max(0, p_i - q_i)); if every draft passes, a bonus token is drawn from p_{gamma+1}.
The emitted tokens are then distributed exactly as if sampled from p one by one, for any q,
provided p and q are processed (temperature, top-k, top-p) the same way.

`decide` is the one entry point the methods use: it picks the rule, and when asked (`top` > 0) it
also returns the top-k of q, of p (and of the residual at a sampling rejection) for the trace,
from ONE topk over the whole verified block and ONE transfer to the CPU per round.

A deliberately BROKEN rule (`rule="broken"`) exists only for `specviz.analysis.exactness`, which shows that
its chi-square test catches a wrong rule. It is the classic slip: the acceptance test is the right
one (u < min(1, p/q)), but at a rejection the token is drawn from p itself instead of from the
residual norm(max(0, p - q)). Emitted tokens then follow min(p, q) + (1 - sum min(p, q)) p, which
over-weights what the drafter also likes. No user-facing parameter reaches it (`run` rejects unknown
parameters; the rule rides on a private RunContext field).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """(..., V) logits -> (..., V) float32 probabilities after temperature, top-k, top-p.

        Greedy runs still get probabilities (softmax at T=1, no filtering) for display."""
        logits = logits.float()
        if self.greedy:
            return torch.softmax(logits, dim=-1)
        logits = logits / self.temperature
        if self.top_k and self.top_k < logits.shape[-1]:
            kth = torch.topk(logits, self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
            cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
            drop_sorted = (
                cum - torch.softmax(sorted_logits, dim=-1) >= self.top_p
            )  # keep the smallest set reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def choose(self, logits: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pick the next token from (B, V) logits: (ids (B,), probs (B, V))."""
        probs = self.probs(logits)
        if self.greedy:
            return logits.argmax(-1), probs
        return sample(probs, generator), probs


def sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) probabilities -> (B,) ids. Uses the run's own generator, so runs never share RNG state."""
    if generator is not None and generator.device != probs.device:
        # CPU generator for a GPU run: draw on the CPU (tiny tensor) to keep the stream reproducible.
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(probs.device)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def uniform(n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(n, generator=generator, device=gen_device).to(device)


RULES = ("exact", "broken")  # "broken" = BROKEN ON PURPOSE, reachable only through specviz.analysis.exactness
PROB_DECIMALS = 6  # probabilities in the trace's top-k lists are rounded to this many decimals


def top_entries(probs: torch.Tensor, k: int) -> list[list[list]]:
    """(R, V) probabilities -> per row its top-k as [[token_id, prob], ...]: one topk, one CPU transfer."""
    rows = probs.shape[0]
    if k <= 0 or rows == 0:
        return [[] for _ in range(rows)]
    vals, idx = torch.topk(probs, min(k, probs.shape[-1]), dim=-1)
    scale = 10.0**PROB_DECIMALS
    vals = (vals.detach().to("cpu", torch.float64) * scale).round() / scale  # float64: short JSON reprs
    return [[[i, v] for i, v in zip(ri, rv)] for ri, rv in zip(idx.tolist(), vals.tolist())]


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one block of drafts."""

    accepted: int  # n: number of leading drafts accepted (0..gamma)
    token: int  # the token emitted after them: correction (n < gamma) or bonus (n == gamma)
    p_draft: list[float]  # target probability of each draft token
    q_draft: list[float]  # drafter probability of each draft token
    p_token: float  # target probability of `token`
    ratios: list[float]  # min(1, p/q) per draft (greedy: 1 where it matched, 0 elsewhere)
    rule: str = "argmax"  # "argmax" (greedy), "ratio" (speculative sampling) or "broken" (exactness demo only)
    u: list[float] | None = None  # sampling: the uniform drawn per draft (accepted iff u < ratio)
    top_p: list | None = None  # per block position 0..gamma: target's top-k [[id, prob], ...] (when asked)
    top_q: list | None = None  # per draft 0..gamma-1: drafter's top-k (when asked)
    residual_top: list | None = None  # sampling rejection: top-k of norm(max(0, p - q)) at the rejected position


def greedy_verdict(
    drafts: torch.Tensor,
    target_logits: torch.Tensor,
    q_draft: list[float],
    *,
    q: torch.Tensor | None = None,
    top: int = 0,
) -> Verdict:
    """drafts (gamma,), target_logits (gamma+1, V): accept the prefix equal to the target's argmax.
    `top` > 0 (and q, the drafter's (gamma, V) probabilities): the top-k lists for the trace too."""
    gamma = drafts.shape[0]
    best = target_logits.argmax(-1)  # (gamma+1,)
    probs = torch.softmax(target_logits.float(), dim=-1)
    match = (best[:gamma] == drafts).int()
    n = int(match.cumprod(0).sum().item()) if gamma else 0
    token = best[n]
    p_draft = probs[torch.arange(gamma, device=probs.device), drafts].tolist() if gamma else []
    verdict = Verdict(
        n, int(token.item()), p_draft, q_draft, float(probs[n, token].item()), [float(m) for m in match.tolist()]
    )
    if top > 0:
        with_q = q is not None and gamma > 0
        tops = top_entries(torch.cat([probs, q.to(probs.dtype)]) if with_q else probs, top)
        verdict = replace(verdict, top_p=tops[: gamma + 1], top_q=tops[gamma + 1 :] if with_q else [[]] * gamma)
    return verdict


def sampling_verdict(
    drafts: torch.Tensor,  # (gamma,) draft tokens, x_i ~ q_i
    q: torch.Tensor,  # (gamma, V) drafter probabilities (processed)
    p: torch.Tensor,  # (gamma+1, V) target probabilities (processed the same way)
    generator: torch.Generator | None,
    *,
    top: int = 0,  # > 0: also the top-k of p, q and the residual for the trace (one topk, one transfer)
    rule: str = "exact",  # "broken": the deliberately wrong rule of specviz.analysis.exactness (see the module doc)
) -> Verdict:
    """The Leviathan/Chen rule: accept x_i with prob min(1, p_i(x_i)/q_i(x_i)); resample at the first rejection."""
    if rule not in RULES:
        raise ValueError(f"unknown verify rule {rule!r}")
    gamma = drafts.shape[0]
    idx = torch.arange(gamma, device=p.device)
    p_x = p[idx, drafts] if gamma else p.new_zeros(0)
    q_x = q[idx, drafts] if gamma else p.new_zeros(0)
    ratio = torch.clamp(p_x / q_x.clamp_min(1e-30), max=1.0)
    r = uniform(gamma, generator, p.device)
    ok = (r < ratio).int()
    n = int(ok.cumprod(0).sum().item()) if gamma else 0
    dist = None
    if n < gamma:
        if rule == "broken":
            dist = p[n]  # BROKEN ON PURPOSE: p itself, not the residual max(0, p - q)
        else:
            residual = torch.clamp(p[n] - q[n], min=0.0)
            total = residual.sum()
            # p == q on the support leaves no residual mass; then any rejection is impossible in exact
            # arithmetic and float noise caused it: fall back to p itself, which is the correct law.
            dist = residual / total if total > 0 else p[n]
        token = sample(dist.unsqueeze(0), generator)[0]
    else:
        token = sample(p[gamma].unsqueeze(0), generator)[0]
    token_id = int(token.item())
    verdict = Verdict(
        n,
        token_id,
        p_x.tolist(),
        q_x.tolist(),
        float(p[n, token_id].item()),
        ratio.tolist(),
        rule="ratio" if rule == "exact" else rule,
        u=r.tolist(),
    )
    if top > 0:
        parts = [p, q.to(p.dtype)] + ([dist.unsqueeze(0)] if dist is not None else [])
        tops = top_entries(torch.cat(parts) if gamma else p, top)
        verdict = replace(
            verdict,
            top_p=tops[: gamma + 1],
            top_q=tops[gamma + 1 : 2 * gamma + 1],
            residual_top=tops[2 * gamma + 1] if dist is not None else None,
        )
    return verdict


def decide(
    sampling: Sampling,
    drafts: torch.Tensor,
    q: torch.Tensor | None,
    logits: torch.Tensor,
    generator: torch.Generator | None,
    *,
    top: int = 0,
    rule: str = "exact",
) -> Verdict:
    """The verdict on one verified block, greedy or sampling: drafts (gamma,), q (gamma, V) drafter
    probabilities (processed), logits (gamma+1, V) the target's raw logits over [last, drafts].
    `rule` applies to sampling only (greedy has one rule, the argmax)."""
    gamma = drafts.shape[0]
    if q is None or (gamma == 0 and q.shape[0] != 0):
        q = logits.new_zeros(0, logits.shape[-1], dtype=torch.float32)
    if sampling.greedy:
        q_x = q[torch.arange(gamma, device=q.device), drafts].tolist() if gamma else []
        return greedy_verdict(drafts, logits, q_x, q=q, top=top)
    return sampling_verdict(drafts, q, sampling.probs(logits), generator, top=top, rule=rule)


@dataclass(frozen=True)
class SiblingVerdict:
    """Outcome of verifying the children of one tree node, tried one by one in their order."""

    accepted: int | None  # index of the accepted child; None when every child was rejected (or there were none)
    token: int  # the accepted child's token, else the token emitted instead: a correction, or a bonus at a leaf
    p_token: float  # the target's probability of `token` (before any child was removed)
    tried: list[float]  # per child tried, the probability it was accepted with (greedy: 1 if it is the argmax)
    u: list[float]  # sampling: the uniform drawn per child tried
    rule: str = "argmax"  # "argmax", "sibling" (sampling, this rule) or "broken" (exactness demo only)
    residual_top: list | None = None  # sampling, every child rejected: top-k of the residual the token came from


def sibling_verdict(
    sampling: Sampling,
    logits: torch.Tensor,
    p: torch.Tensor,
    children: list[int],
    generator: torch.Generator | None,
    *,
    top: int = 0,
    rule: str = "exact",
) -> SiblingVerdict:
    """Which of a node's deterministic children (a token tree's top-k siblings) the target takes, from its logits
    (V,) at the node and their probabilities p = sampling.probs(logits) (computed once for the whole tree).

    Greedy: the child equal to the argmax, if any; else the argmax is emitted.
    Sampling (exact for children chosen deterministically, as a tree's top-k are): with r = p, try the children in
    order; child x is accepted with probability r(x) (its q is a point mass, so min(1, r/q) = r(x)); when rejected,
    x is removed from r and r renormalised, and the next child is tried; when every child is rejected the token is
    drawn from the last r. Then P(emit y) = p(y) for every y: by induction over the children tried, the chance of
    reaching child i is 1 - sum of p over the children before it, and r is then p restricted to the tokens not yet
    tried, renormalised, so child i is emitted with probability (1 - P_before) p(x_i) / (1 - P_before) = p(x_i), and
    a token y that is no child with (1 - P_all) p(y) / (1 - P_all) = p(y). The tree's deeper levels are the same
    argument at the accepted child, whose own children depend on the path only, so the whole output has the
    target's law. (SpecInfer's multi-step rule is the version of this for children sampled from q.)"""
    if rule not in RULES:
        raise ValueError(f"unknown verify rule {rule!r}")
    if sampling.greedy:
        best = int(logits.argmax(-1).item())
        p_best = float(p[best].item())  # greedy: p is the softmax at T = 1
        hit = children.index(best) if best in children else None
        tried = [1.0 if token == best else 0.0 for token in children[: (hit + 1 if hit is not None else len(children))]]
        return SiblingVerdict(hit, best, p_best, tried, [])
    r = p.clone()
    tried, drawn = [], []
    for i, token in enumerate(children):
        chance = float(r[token].item())
        u = float(uniform(1, generator, p.device)[0].item())
        tried.append(chance)
        drawn.append(u)
        if u < chance:
            return SiblingVerdict(
                i, token, float(p[token].item()), tried, drawn, rule="sibling" if rule == "exact" else rule
            )
        r[token] = 0.0
        total = r.sum()
        # float noise only: in exact arithmetic a child holding all of r's mass is accepted with certainty
        r = r / total if total > 0 else p
    dist = p if rule == "broken" else r  # BROKEN ON PURPOSE: p itself, as if no child had been tried
    token_id = int(sample(dist.unsqueeze(0), generator)[0].item())
    residual = top_entries(dist.unsqueeze(0), top)[0] if top > 0 and children else None
    return SiblingVerdict(
        None,
        token_id,
        float(p[token_id].item()),
        tried,
        drawn,
        rule="sibling" if rule == "exact" else rule,
        residual_top=residual,
    )
