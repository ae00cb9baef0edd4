"""Goodness-of-fit of sampled tokens against an exact law, in float64 and without a library's
rounding tolerance (scipy 1.17's `chisquare` refuses observed and expected sums that differ by 1e-7).

Used by the exactness checks (tests, `specviz.analysis.exactness`): is what a method sampled distributed as
the target's own law?
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class ChiSquare:
    statistic: float
    dof: int
    p_value: float
    cells: int  # cells after pooling the rare ones
    pooled: int  # cells pooled into one because fewer than `min_expected` draws were expected there


def chi_square(observed: Sequence[float], law: Sequence[float], min_expected: float = 5.0) -> ChiSquare:
    """Pearson's test of `observed` counts against `law` (probabilities, renormalised to sum 1).
    Cells expected under `min_expected` draws are pooled into one (kept only if it reaches it too)."""
    obs = torch.as_tensor(list(observed), dtype=torch.float64)
    p = torch.as_tensor(list(law), dtype=torch.float64)
    if obs.shape != p.shape or obs.numel() == 0:
        raise ValueError("observed counts and law must be non-empty and of the same length")
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError("law must be non-negative with positive mass")
    total = obs.sum()
    expected = p / p.sum() * total
    rare = expected < min_expected
    if bool((obs[p == 0] > 0).any()):  # a draw where the law has no mass: impossible under it
        return ChiSquare(float("inf"), max(int((~rare).sum()) - 1, 1), 0.0, int((~rare).sum()), int(rare.sum()))
    o_cells, e_cells = list(obs[~rare]), list(expected[~rare])
    if rare.any():
        o_cells.append(obs[rare].sum())
        e_cells.append(expected[rare].sum())
        if e_cells[-1] < min_expected and len(e_cells) > 1:  # too thin even pooled: fold into the last kept cell
            o_last, e_last = o_cells.pop(), e_cells.pop()
            o_cells[-1] += o_last
            e_cells[-1] += e_last
    o_t, e_t = (
        torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in o_cells]),
        torch.stack([torch.as_tensor(x, dtype=torch.float64) for x in e_cells]),
    )
    statistic = float(((o_t - e_t) ** 2 / e_t).sum())
    dof = max(o_t.numel() - 1, 1)
    p_value = float(
        torch.special.gammaincc(
            torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(statistic / 2, dtype=torch.float64)
        )
    )
    return ChiSquare(statistic, dof, p_value, o_t.numel(), int(rare.sum()))


def total_variation(counts: Sequence[float], law: Sequence[float]) -> float:
    """Half the L1 distance between the empirical distribution of `counts` and `law`."""
    c = torch.as_tensor(list(counts), dtype=torch.float64)
    p = torch.as_tensor(list(law), dtype=torch.float64)
    return float(0.5 * (c / c.sum() - p / p.sum()).abs().sum())
