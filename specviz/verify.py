"""The lossless acceptance rules, and the logits processing shared by drafter and target.

Greedy: a draft is accepted while it equals the target's argmax; the target's argmax at the
first mismatch (or after the last draft) is emitted. Output = the target's greedy output.

Speculative sampling (Leviathan et al. 2023, Chen et al. 2023): draft x_i ~ q_i is accepted
with probability min(1, p_i(x_i) / q_i(x_i)); at the first rejection the emitted token is drawn
from norm(max(0, p_i - q_i)); if every draft passes, a bonus token is drawn from p_{gamma+1}.
The emitted tokens are then distributed exactly as if sampled from p one by one, for any q,
provided p and q are processed (temperature, top-k, top-p) the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

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
            drop_sorted = cum - torch.softmax(sorted_logits, dim=-1) >= self.top_p  # keep the smallest set reaching top_p
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


@dataclass(frozen=True)
class Verdict:
    """Outcome of verifying one block of drafts."""

    accepted: int  # n: number of leading drafts accepted (0..gamma)
    token: int  # the token emitted after them: correction (n < gamma) or bonus (n == gamma)
    p_draft: list[float]  # target probability of each draft token
    q_draft: list[float]  # drafter probability of each draft token
    p_token: float  # target probability of `token`
    ratios: list[float]  # min(1, p/q) per draft (greedy: 1 where it matched, 0 elsewhere)


def greedy_verdict(drafts: torch.Tensor, target_logits: torch.Tensor, q_draft: list[float]) -> Verdict:
    """drafts (gamma,), target_logits (gamma+1, V): accept the prefix equal to the target's argmax."""
    gamma = drafts.shape[0]
    best = target_logits.argmax(-1)  # (gamma+1,)
    probs = torch.softmax(target_logits.float(), dim=-1)
    match = (best[:gamma] == drafts).int()
    n = int(match.cumprod(0).sum().item()) if gamma else 0
    token = best[n]
    p_draft = probs[torch.arange(gamma, device=probs.device), drafts].tolist() if gamma else []
    return Verdict(n, int(token.item()), p_draft, q_draft, float(probs[n, token].item()), [float(m) for m in match.tolist()])


def sampling_verdict(
    drafts: torch.Tensor,  # (gamma,) draft tokens, x_i ~ q_i
    q: torch.Tensor,  # (gamma, V) drafter probabilities (processed)
    p: torch.Tensor,  # (gamma+1, V) target probabilities (processed the same way)
    generator: torch.Generator | None,
) -> Verdict:
    """The Leviathan/Chen rule: accept x_i with prob min(1, p_i(x_i)/q_i(x_i)); resample at the first rejection."""
    gamma = drafts.shape[0]
    idx = torch.arange(gamma, device=p.device)
    p_x = p[idx, drafts] if gamma else p.new_zeros(0)
    q_x = q[idx, drafts] if gamma else p.new_zeros(0)
    ratio = torch.clamp(p_x / q_x.clamp_min(1e-30), max=1.0)
    r = uniform(gamma, generator, p.device)
    ok = (r < ratio).int()
    n = int(ok.cumprod(0).sum().item()) if gamma else 0
    if n < gamma:
        residual = torch.clamp(p[n] - q[n], min=0.0)
        total = residual.sum()
        # p == q on the support leaves no residual mass; then any rejection is impossible in exact
        # arithmetic and float noise caused it: fall back to p itself, which is the correct law.
        dist = residual / total if total > 0 else p[n]
        token = sample(dist.unsqueeze(0), generator)[0]
    else:
        token = sample(p[gamma].unsqueeze(0), generator)[0]
    token_id = int(token.item())
    return Verdict(n, token_id, p_x.tolist(), q_x.tolist(), float(p[n, token_id].item()), ratio.tolist())
