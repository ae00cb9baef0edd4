"""A specviz trace and a bench row convert to the same record as a deployment's, and back out as vLLM writes it."""

from __future__ import annotations

import csv
import json

import pytest

from specviz.api import run
from specviz.engine.trace import Event, RowResult, Trace
from specviz.observe import prometheus
from specviz.observe.local import acceptance_columns, from_bench_row, records_from_bench_rows
from specviz.observe.reader import ReadStats, iter_path, iter_text
from specviz.observe.writers import to_jsonl, to_prometheus, write_acceptance


def hand_counted_trace() -> Trace:
    """Round 0 accepts 2 of 3, round 1 none of 3, round 2 all 3 (+ bonus), round 3 drafts nothing (an emit)."""
    events = [Event("prefill", step=-1)]
    verdicts = {0: ["accept", "accept", "reject"], 1: ["reject", "reject", "reject"], 2: ["accept"] * 3}
    for step, kinds in verdicts.items():
        events += [Event("draft", step=step, depth=d) for d in range(3)]
        events.append(Event("verify", step=step))
        events += [Event(kind, step=step, depth=d) for d, kind in enumerate(kinds)]
        events.append(Event("bonus" if step == 2 else "correct", step=step, depth=3))
    events.append(Event("emit", step=3))
    return Trace(method="draft_model", params={"gamma": 3}, rows=[RowResult("p", [1])], events=events)


def test_trace_against_a_hand_count():
    r = hand_counted_trace().acceptance_record()
    assert (r.engine, r.scope, r.k, r.steps, r.drafted, r.accepted) == ("specviz", "request", 3, 3, 9, 5)
    assert r.accepted_per_position == [2, 2, 1] and r.per_position == [2 / 3, 2 / 3, 1 / 3]
    assert r.histogram == {2: 1, 0: 1, 3: 1} and r.per_step_accepted == [2, 0, 3]
    assert r.mean_acceptance_length == 1 + 5 / 3 and r.acceptance_rate == 5 / 9


def test_a_saved_trace_reads_as_a_record(tmp_path):
    path = tmp_path / "trace.json"
    path.write_text(hand_counted_trace().to_json())
    (record,) = list(iter_path(path, ReadStats(name="t")))
    assert (record.steps, record.accepted, record.per_position) == (3, 5, [2 / 3, 2 / 3, 1 / 3])


def test_writers_round_trip_through_the_vllm_readers():
    record = hand_counted_trace().acceptance_record()
    (back,) = list(iter_text(to_jsonl([record])))
    assert (back.engine, back.steps, back.drafted, back.accepted, back.histogram) == ("vllm", 3, 9, 5, record.histogram)
    (prom,) = prometheus.read(to_prometheus([record, record]))
    assert (prom.steps, prom.drafted, prom.accepted, prom.accepted_per_position) == (6, 18, 10, [4, 4, 2])
    assert prom.labels["model_name"] == "draft_model"


def test_bench_rows_with_and_without_the_acceptance_columns(tmp_path):
    record = hand_counted_trace().acceptance_record()
    counted = {"method": "draft_model", "prompt_id": "p1", "tau": 2.0, "param_gamma": 3, **acceptance_columns(record)}
    # 9 tokens over 4 rounds (the draftless round included): tau 2.25, 2.25 drafts a round, 4 wasted
    medians = {"method": "draft_model", "prompt_id": "p2", "new_tokens": 9, "tau": 2.25, "alpha": 5 / 9}
    medians.update({"mean_drafts_per_round": 2.25, "wasted_drafts": 4})
    baseline = {"method": "autoregressive", "prompt_id": "p1", "new_tokens": 9, "tau": 1.0}
    baseline.update({"mean_drafts_per_round": 0.0, "wasted_drafts": 0})
    path = tmp_path / "results.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=sorted(set(counted) | set(medians)))
        writer.writeheader()
        writer.writerows([counted, medians, baseline])
    stats = ReadStats(name="csv")
    first, second = list(iter_path(path, stats))
    assert stats.kind == "csv" and stats.skipped == 1  # the autoregressive row drafted nothing
    assert (first.steps, first.drafted, first.accepted, first.per_position) == (3, 9, 5, record.per_position)
    assert first.derived == ["per_position", "acceptance_rate", "mean_acceptance_length"]
    assert (second.steps, second.drafted, second.accepted) == (4, 9, 5)
    assert {"steps", "drafted", "accepted"} <= set(second.derived)
    assert from_bench_row(baseline) is None
    rows = [counted, medians, baseline]
    assert [(r.steps, r.accepted, r.mean_acceptance_length) for r in records_from_bench_rows(rows)] == [
        (3, 5, 1 + 5 / 3),
        (4, 5, 2.25),
    ]


def test_write_acceptance_writes_both_files(tmp_path):
    jsonl, prom = write_acceptance([hand_counted_trace().acceptance_record()], tmp_path / "acc.jsonl")
    assert prom.name == "acc.prom" and "vllm:spec_decode_num_drafts_total" in prom.read_text()
    assert json.loads(jsonl.read_text())["metrics"]["speculative_decoding"]["num_spec_steps"] == 3


# a prompt whose text repeats, so the hybrids copy more than gamma tokens and Mirror-SD reuses branch rollouts
REPEATING = "def add(a, b):\n    return a + b\n\n\ndef add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n"


@pytest.mark.parametrize(
    "name,params",
    [
        ("mirror", {}),
        ("draft_model", {"lookup": 2, "choose": "yield"}),
        ("kangaroo", {"lookup": 2}),
        ("prompt_lookup", {}),
        ("tree", {}),
    ],
)
def test_every_drafting_method_converts_as_its_events_count(embedded_pair, name, params):
    """Steps, drafted and accepted equal the trace's own draft, verify and accept events, for the methods whose
    rounds are not plain gamma-chains: Mirror-SD's reused rollouts are verified drafts, a hybrid's copy may be
    longer than gamma (k is the largest budget), a tree's k is unknown."""
    trace = run(name, embedded_pair, REPEATING, max_new_tokens=48, **params)
    record = trace.acceptance_record()
    drafts = [e for e in trace.events if e.kind == "draft"]
    assert record.drafted == len(drafts) and record.accepted == sum(e.kind == "accept" for e in trace.events)
    assert record.steps == len({e.step for e in drafts})
    if name == "mirror":
        assert any("branch" in e.info for e in drafts), "no branch was reused: the case is not reached"
    if name == "tree":
        assert record.k is None
    else:
        assert max(record.per_step_drafted) <= record.k
    if params.get("lookup"):
        assert max(record.per_step_drafted) > trace.params["gamma"], "no copy longer than gamma: not reached"
