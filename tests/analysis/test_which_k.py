"""The which-k model against sums worked by hand, and its refusals."""

from __future__ import annotations

import math

import pytest

from specviz.analysis.which_k import PRESETS, Costs, conditional_rates, iid_rates, plan


def test_free_verification_takes_the_longest_chain() -> None:
    # E[k] = 1.8, 2.4, 2.7; cost 1.1, 1.2, 1.3 -> 1.636, 2.000, 2.077
    result = plan(Costs(draft_step=0.1), [0.8, 0.6, 0.3])
    assert [round(row.tokens_per_step, 6) for row in result.rows] == [1.8, 2.4, 2.7]
    assert [round(row.speedup, 3) for row in result.rows] == [1.636, 2.0, 2.077]
    assert result.best.k == 3 and not result.fitted_iid


def test_costly_verification_moves_the_best_k_down() -> None:
    # v(w) = 1 + 0.2 (w - 1): costs 1.3, 1.6, 1.9 -> 1.385, 1.500, 1.421
    result = plan(Costs(draft_step=0.1, verify_slope=0.2), [0.8, 0.6, 0.3])
    assert [round(row.speedup, 3) for row in result.rows] == [1.385, 1.5, 1.421]
    assert result.best.k == 2
    assert sum(row.best for row in result.rows) == 1


def test_verify_interpolates_between_listed_widths() -> None:
    costs = Costs(draft_step=0.0, verify_widths=((1, 1.0), (5, 2.0)), verify_slope=0.5)
    assert costs.verify(3) == pytest.approx(1.5)
    assert costs.verify(7) == pytest.approx(3.0)


def test_conditional_rates_divide_by_the_position_before() -> None:
    assert conditional_rates([0.8, 0.4, 0.0, 0.0]) == [0.8, 0.5, 0.0, None]


def test_totals_are_fitted_iid_from_the_mean_acceptance_length() -> None:
    rates = iid_rates(2.5, 3)
    assert 1 + sum(rates) == pytest.approx(2.5, abs=1e-9)
    assert rates[1] == pytest.approx(rates[0] ** 2)
    result = plan(Costs(draft_step=0.1), mean_acceptance_length=2.5, k_recorded=3)
    assert result.fitted_iid and "fitted as i.i.d." in result.note
    assert result.rows[-1].tokens_per_step == pytest.approx(2.5)


@pytest.mark.parametrize("rates", [[1.2], [-0.1], [math.nan], []], ids=["above one", "negative", "nan", "empty"])
def test_bad_rates_get_a_clear_message(rates) -> None:
    with pytest.raises(ValueError, match="rate"):
        plan(Costs(draft_step=0.1), rates)


def test_trees_and_dynamic_lengths_are_refused() -> None:
    for drafting in ("tree", "dynamic"):
        with pytest.raises(ValueError, match="cannot tell"):
            plan(Costs(draft_step=0.1), [0.5], drafting=drafting)


def test_every_preset_says_what_it_assumes() -> None:
    for preset in PRESETS.values():
        assert preset.assumes and ("assumed" in preset.name or "measured" in preset.name)
        assert plan(preset.costs, [0.7, 0.5, 0.3, 0.1]).best.k >= 1
