"""Flags, series totals and implied histograms of acceptance records, on records counted by hand."""

from __future__ import annotations

from specviz.analysis.observed import flags, histogram_of, overall
from specviz.engine.acceptance import AcceptanceRecord, complete


def record(**values) -> AcceptanceRecord:
    return complete(AcceptanceRecord(engine="vllm", scope="interval", **values))


def codes(r: AcceptanceRecord) -> list[str]:
    return [flag.code for flag in flags(r)]


def test_a_healthy_chain_raises_no_flag() -> None:
    r = record(steps=100, drafted=300, accepted=150, per_position=[0.8, 0.5, 0.2])
    assert codes(r) == []


def test_nothing_accepted_names_a_mismatched_drafter() -> None:
    r = record(steps=100, drafted=300, accepted=0, per_position=[0.0, 0.0, 0.0])
    (flag,) = flags(r)
    assert flag.code == "nothing_accepted" and "does not match its target" in flag.cause


def test_a_drop_to_zero_after_position_two() -> None:
    r = record(steps=100, drafted=400, accepted=90, per_position=[0.6, 0.3, 0.0, 0.0])
    assert codes(r) == ["drop_after"]
    assert "after position 2" in flags(r)[0].title and "k = 2" in flags(r)[0].cause


def test_near_one_mean_acceptance_length() -> None:
    r = record(steps=100, drafted=300, accepted=8, per_position=[0.06, 0.02, 0.0])
    assert "near_one" in codes(r)


def test_rising_rates_are_flagged() -> None:
    r = record(steps=100, drafted=300, accepted=100, per_position=[0.3, 0.5, 0.2])
    assert "rises" in codes(r)


def test_histogram_implied_by_per_position_counts() -> None:
    # 10 steps: 8 reached position 1, 5 position 2, 2 position 3 -> exactly 0: 2, 1: 3, 2: 3, 3: 2
    r = record(steps=10, drafted=30, accepted=15, accepted_per_position=[8, 5, 2])
    histogram, derived = histogram_of(r)
    assert histogram == {0: 2, 1: 3, 2: 3, 3: 2} and derived
    assert sum(j * n for j, n in histogram.items()) == r.accepted


def test_a_series_sums_counts_and_weights_rates_by_steps() -> None:
    a = record(steps=100, drafted=300, accepted=150, per_position=[0.8, 0.5, 0.2])
    b = record(steps=300, drafted=900, accepted=150, per_position=[0.4, 0.1, 0.0])
    total = overall([a, b])
    assert (total.steps, total.drafted, total.accepted) == (400, 1200, 300)
    assert [round(x, 6) for x in total.per_position] == [0.5, 0.2, 0.05]
    assert total.mean_acceptance_length == 1.75 and "per_position" in total.derived
