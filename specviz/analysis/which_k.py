"""Which k? The expected tokens per verification step and the MODELED speedup of fixed-k chain drafting for
k = 1..K, from a record's per-position acceptance rates and the user's costs.

Definitions (vLLM's, which llama.cpp adopted; `specviz.engine.acceptance` holds them for records):
- per-position rate r_i = steps whose i-th draft was accepted / steps. In a chain the i-th draft counts only when
  drafts 1..i-1 were accepted too, so r_i is the chance that a step reaches i accepted drafts, and
  r_1 >= r_2 >= ... >= r_K.
- conditional rate b_i = r_i / r_(i-1) (r_0 = 1): position i's acceptance given the one before.
- tokens per step with k drafts: E[k] = 1 + r_1 + ... + r_k (the bonus or correction token included). A chain
  that drafts k <= K tokens accepts its first i drafts exactly when the K-draft chain did (the drafter sees the
  same prefix; the later drafts are never looked at), so E[k] follows from the recorded rates for every k <= K.
  Beyond K nothing was recorded: the model says nothing there.
- cost of a step with k drafts, in target steps: k c + v(k + 1), where c = one draft step / one target step and
  v(w) = one verification of w tokens / one target step.
- modeled speedup(k) = E[k] / (k c + v(k + 1)), against plain decoding at one target step per token.
It holds for fixed-k chain drafting only. A tree verifies siblings (its rates per depth are not a chain's), and a
dynamic draft length changes k per step (a log cannot say which steps drafted fewer than K): for those it cannot
tell, and `plan` refuses them. Where a record has only totals, the rates are fitted as i.i.d. from the mean
acceptance length (r_i = a^i with (1 - a^(K+1)) / (1 - a) = mean acceptance length, as `alpha_iid` does), not
from accepted / drafted, which is not a per-position quantity when acceptance is not i.i.d.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from specviz.speedup import iid_alpha


@dataclass(frozen=True)
class Costs:
    """What a step costs, in target steps. No default pretends to know the user's hardware: a preset says
    what it assumes."""

    draft_step: float  # c: one drafter step / one target step (0 for n-gram lookup)
    verify_widths: tuple[tuple[int, float], ...] = ((1, 1.0),)  # (w, v(w)): verifying w tokens / one step
    verify_slope: float = 0.0  # v(w) beyond the last listed width grows by this much per extra token

    def verify(self, width: int) -> float:
        """v(width), linear between the listed widths, and past the last at `verify_slope` per token."""
        points = sorted(self.verify_widths)
        if width <= points[0][0]:
            return points[0][1]
        for (w0, v0), (w1, v1) in zip(points, points[1:]):
            if w0 <= width <= w1:
                return v0 + (v1 - v0) * (width - w0) / (w1 - w0)
        w_last, v_last = points[-1]
        return v_last + self.verify_slope * (width - w_last)


@dataclass(frozen=True)
class Preset:
    name: str
    costs: Costs
    assumes: str  # said beside the result: what the preset takes for granted


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            "GPU, batch 1, one-layer head (assumed)",
            Costs(draft_step=0.05, verify_widths=((1, 1.0), (8, 1.05)), verify_slope=0.01),
            "a memory-bound GPU at batch 1: verifying up to 8 tokens costs about one step, an EAGLE-style "
            "one-layer head about 5 % of one. At larger batches verification stops being free and the best k falls.",
        ),
        Preset(
            "GPU, large batch (assumed)",
            Costs(draft_step=0.05, verify_widths=((1, 1.0),), verify_slope=0.5),
            "a compute-bound GPU serving many requests at once: each extra verified token costs about half a "
            "step. Speculation pays far less here.",
        ),
        Preset(
            "this project's 2-core CPU, embedded pair (measured)",
            Costs(draft_step=0.135, verify_widths=((1, 1.0), (2, 1.26), (5, 1.64), (11, 1.70), (65, 3.25))),
            "measured on specviz's 2-core CPU with its embedded 12 M target (docs/results.md): c of the "
            "3-layer drafter 0.135, verification of 2/5/11/65 tokens 1.26/1.64/1.70/3.25 steps.",
        ),
    )
}


@dataclass(frozen=True)
class KRow:
    k: int  # drafts per step
    tokens_per_step: float  # E[k], bonus included
    step_cost: float  # k c + v(k + 1), in target steps
    speedup: float  # MODELED: tokens_per_step / step_cost
    best: bool  # the k of the highest modeled speedup


@dataclass(frozen=True)
class Plan:
    rows: tuple[KRow, ...]
    rates: tuple[float, ...]  # the per-position rates used (r_1..r_K)
    fitted_iid: bool  # the rates were fitted from the mean acceptance length, not recorded
    note: str  # what the model assumed and where it stops

    @property
    def best(self) -> KRow:
        return next(row for row in self.rows if row.best)


def conditional_rates(rates: list[float]) -> list[float | None]:
    """b_i = r_i / r_(i-1): position i's acceptance given the one before (None after a position never reached)."""
    out: list[float | None] = []
    before = 1.0
    for rate in rates:
        out.append(rate / before if before > 0 else None)
        before = rate
    return out


def iid_rates(mean_acceptance_length: float, k: int) -> list[float]:
    """r_i = a^i for the i.i.d. a that gives this mean acceptance length at k drafts per step."""
    alpha = iid_alpha(mean_acceptance_length, k)
    if alpha is None:
        raise ValueError(f"a mean acceptance length of {mean_acceptance_length} does not fit k = {k} drafts per step")
    return [alpha**i for i in range(1, k + 1)]


def check_rates(rates: list[float]) -> list[float]:
    """The rates as floats in [0, 1]; a clear ValueError otherwise."""
    if not rates:
        raise ValueError("no per-position rates: the model needs at least position 1")
    clean = []
    for i, rate in enumerate(rates, start=1):
        value = float(rate)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ValueError(f"per-position rate {i} is {rate}: a rate lies between 0 and 1")
        clean.append(value)
    return clean


def plan(
    costs: Costs,
    rates: list[float] | None = None,
    *,
    mean_acceptance_length: float | None = None,
    k_recorded: int | None = None,
    drafting: str = "chain",
) -> Plan:
    """The modeled speedup for k = 1..K from per-position rates (or, with only totals, from the mean acceptance
    length and the recorded k, fitted as i.i.d.). `drafting` other than "chain" (a tree, a dynamic length) is
    refused: the chain formula says nothing about it."""
    if drafting != "chain":
        raise ValueError(
            f"the which-k model holds for fixed-k chain drafting; for {drafting} drafting it cannot tell "
            "(a tree verifies siblings, a dynamic length changes k per step)"
        )
    if costs.draft_step < 0 or costs.verify(1) <= 0:
        raise ValueError("costs must be positive: c >= 0 and a verification costs more than nothing")
    fitted = rates is None
    if fitted:
        if mean_acceptance_length is None or not k_recorded:
            raise ValueError("give per-position rates, or the mean acceptance length and the k it was recorded at")
        rates = iid_rates(mean_acceptance_length, k_recorded)
    rates = check_rates(rates)
    rows = []
    tokens = 1.0
    for k, rate in enumerate(rates, start=1):
        tokens += rate
        step_cost = k * costs.draft_step + costs.verify(k + 1)
        rows.append((k, tokens, step_cost, tokens / step_cost))
    top = max(range(len(rows)), key=lambda i: rows[i][3])
    note = (
        f"MODELED for fixed-k chain drafting, k = 1..{len(rates)} (the recorded K); beyond K it cannot tell."
        + (
            " The rates were fitted as i.i.d. from the mean acceptance length (the record has only totals): "
            "real acceptance usually falls faster with position, so the best k may be smaller."
            if fitted
            else ""
        )
        + " The best k moves with batch size: verification is nearly free at batch 1 on a GPU and not at large batch."
    )
    return Plan(
        rows=tuple(KRow(k, t, c, s, i == top) for i, (k, t, c, s) in enumerate(rows)),
        rates=tuple(rates),
        fitted_iid=fitted,
        note=note,
    )
