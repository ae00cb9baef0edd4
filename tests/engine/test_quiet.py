"""The disturbance probe (specviz.engine.quiet): the rule that calls a run disturbed, decided on fabricated
readings (a test must not depend on this machine being quiet), /proc/stat's parsing, and "unknown" where the
CPUs cannot be read."""

from __future__ import annotations

import pytest

from specviz.engine import quiet
from specviz.engine.quiet import Disturbance, Reading, between, cpu_ticks

STAT = """cpu  300 0 100 600 0 0 0 0 0 0
cpu0 100 0 50 350 0 0 0 0 0 0
cpu1 200 0 50 250 0 0 0 0 0 0
intr 1 2 3
"""


def reading(wall: float, own: float, busy: int | None, total: int | None, cpus: int = 2) -> Reading:
    return Reading(wall_s=wall, own_cpu_s=own, busy_ticks=busy, total_ticks=total, cpus=cpus, hz=100)


def test_a_run_with_the_machine_to_itself_is_quiet():
    # 1 s on 2 CPUs (200 ticks); the run itself used 1.9 CPU seconds, the machine counted 192 busy ticks
    d = between(reading(10.0, 5.0, 1000, 5000), reading(11.0, 6.9, 1192, 5200))
    assert not d.disturbed
    assert d.others_share == pytest.approx(0.01) and d.others_cpu_s == pytest.approx(0.02)
    assert d.busy_share == pytest.approx(0.96) and d.own_cpu_per_wall == pytest.approx(1.9)
    assert d.words() == "other processes used 1 % of the CPU"


def test_a_run_beside_a_busy_process_is_disturbed():
    # the same second, but other processes kept 1.24 CPU seconds busy: 62 % of the machine
    d = between(reading(10.0, 5.0, 1000, 5000), reading(11.0, 5.7, 1194, 5200))
    assert d.disturbed and d.others_share == pytest.approx(0.62)
    assert d.words() == "other processes used 62 % of the CPU"


def test_the_threshold_is_a_tenth_of_a_core_and_the_tick_floor():
    start = reading(0.0, 0.0, 0, 0)
    at = between(start, reading(1.0, 0.0, 10, 200))  # 0.1 core of 2: exactly 5 %, not more than the threshold
    over = between(start, reading(1.0, 0.0, 11, 200))
    assert not at.disturbed and over.disturbed and at.threshold == pytest.approx(0.05)
    # the same tenth of a core on 8 cores is 1.25 % of the machine (the intra-op team waits for its slowest core)
    eight = (reading(0.0, 0.0, 0, 0, cpus=8), reading(1.0, 0.0, 11, 800, cpus=8))
    assert between(*eight).disturbed and between(*eight).threshold == pytest.approx(0.0125)
    # a short run: 4 ticks of others' time is 40 % of 10 ticks, but within /proc/stat's rounding (5 ticks)
    short = between(start, reading(0.05, 0.0, 4, 10))
    assert short.others_share == pytest.approx(0.4) and not short.disturbed
    assert between(start, reading(0.05, 0.0, 5, 10)).disturbed
    assert between(start, reading(1.0, 0.0, 22, 200), threshold=0.2).disturbed is False


def test_the_threshold_can_be_set_for_a_machine(monkeypatch):
    busy = (reading(0.0, 0.0, 0, 0), reading(1.0, 0.0, 124, 200))
    monkeypatch.setenv(quiet.SHARE_ENV, "1")
    assert not between(*busy).disturbed and between(*busy).threshold == 1.0
    monkeypatch.setenv(quiet.SHARE_ENV, "0.5")
    assert between(*busy).disturbed
    monkeypatch.setenv(quiet.SHARE_ENV, "lots")
    with pytest.raises(ValueError, match="between 0 and 1"):
        between(*busy)


def test_sampled_ticks_below_the_runs_own_time_are_no_disturbance():
    d = between(reading(0.0, 0.0, 0, 0), reading(1.0, 1.5, 140, 200))  # own time exceeds the busy ticks
    assert d.others_share == 0.0 and d.others_cpu_s == 0.0 and not d.disturbed


def test_unreadable_cpus_say_unknown_and_never_disturb():
    d = between(reading(0.0, 0.0, None, None), reading(2.0, 1.0, None, None))
    assert d.others_share is None and not d.known and not d.disturbed
    assert d.words() == "other processes' use of the CPU unknown"
    assert d.wall_s == 2.0 and d.own_cpu_s == 1.0


def test_read_survives_a_missing_proc_stat(tmp_path):
    got = quiet.read(str(tmp_path / "no-such-file"))
    assert got.busy_ticks is None and got.total_ticks is None and got.cpus >= 1
    assert not quiet.since(got).disturbed


def test_proc_stat_parsing_counts_only_the_allowed_cpus():
    assert cpu_ticks(STAT, {0, 1}) == (300 + 100, 1000)
    assert cpu_ticks(STAT, {1}) == (250, 500)  # busy: user + system of cpu1 only
    assert cpu_ticks(STAT, {7}) == (400, 1000)  # no line for that CPU: the machine's "cpu" line
    assert cpu_ticks("cpu0 a b c d\n", None) is None and cpu_ticks("nothing here\n", None) is None
    assert cpu_ticks(STAT.replace("cpu0 100", "cpu0 100 0 50 350 0 3 4 5").splitlines()[1] + "\n", None) == (
        100 + 50 + 3 + 4 + 5,
        100 + 50 + 350 + 3 + 4 + 5,
    )


def test_the_record_survives_a_dict_round_trip_and_ignores_strangers():
    d = between(reading(10.0, 5.0, 1000, 5000), reading(11.0, 5.7, 1194, 5200))
    assert Disturbance.from_dict(d.to_dict()) == d
    assert Disturbance.from_dict({**d.to_dict(), "later_field": 1}) == d
    assert Disturbance.from_dict(None) is None and Disturbance.from_dict({"others_share": 0.5}) is None
