import json

import pytest

from specviz.engine.quiet import Disturbance, Reading, between
from specviz.engine.trace import EVENT_KINDS, Event, Recorder, RowResult, Trace


def sample_trace() -> Trace:
    rec = Recorder()
    rec.add("prefill", t0=0.0, t1=0.01, source="target", info={"tokens": 3})
    rec.add("draft", step=0, token_id=5, q=0.5, depth=0, source="draft", t0=0.01, t1=0.02)
    rec.add("verify", step=0, t0=0.02, t1=0.05, source="target", info={"tokens": 2})
    rec.add("accept", step=0, position=0, token_id=5, text="<b>", p=0.4, q=0.5, depth=0, t0=0.05, t1=0.05)
    rec.add("bonus", step=0, position=1, token_id=7, text="x", p=0.9, depth=1, t0=0.05, t1=0.05)
    return Trace(
        method="draft_model",
        params={"gamma": 1},
        rows=[RowResult("ab", [1, 2, 3], [5, 7], "<b>x", "length")],
        events=rec.events,
        wall_time=0.05,
    )


def test_json_round_trip_is_exact():
    trace = sample_trace()
    again = Trace.from_json(trace.to_json())
    assert again == trace
    assert again.to_json() == trace.to_json()


def test_frame_has_one_row_per_event_and_schema_columns():
    df = sample_trace().to_frame()
    assert len(df) == 5
    for col in ("kind", "step", "row", "position", "token_id", "text", "q", "p", "depth", "source", "t0", "t1", "info"):
        assert col in df.columns


def test_chrome_trace_has_spans_and_instants():
    chrome = sample_trace().to_chrome_trace()
    json.dumps(chrome)  # serialisable
    phases = [e["ph"] for e in chrome["traceEvents"]]
    assert "X" in phases and "i" in phases and "M" in phases
    spans = [e for e in chrome["traceEvents"] if e["ph"] == "X"]
    assert {e["cat"] for e in spans} == {"prefill", "draft", "verify"}
    assert all(e["dur"] > 0 for e in spans)


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "{",
        "[]",
        '{"schema": 1}',
        '{"schema": 99, "rows": [], "events": []}',
        '{"schema": 1, "rows": [], "events": [{"kind": "bogus"}], "method": "x", "params": {}}',
        '{"schema": 1, "rows": [{"nope": 1}], "events": [], "method": "x", "params": {}}',
    ],
)
def test_from_json_rejects_what_is_not_a_trace(payload):
    with pytest.raises(ValueError, match="not a specviz trace|unknown event kind"):
        Trace.from_json(payload)


def test_disabled_recorder_stores_nothing():
    rec = Recorder(enabled=False)
    rec.add("draft", token_id=1)
    assert rec.events == []


def test_event_kinds_cover_the_design():
    for kind in ("prefill", "draft", "early_exit", "verify", "accept", "reject", "correct", "bonus", "realign", "emit"):
        assert kind in EVENT_KINDS
    assert Event("draft").row == 0


def test_the_disturbance_record_survives_json_and_older_traces_load_without_it():
    start = Reading(wall_s=0.0, own_cpu_s=0.0, busy_ticks=0, total_ticks=0, cpus=2)
    record = between(start, Reading(wall_s=1.0, own_cpu_s=0.7, busy_ticks=194, total_ticks=200, cpus=2)).to_dict()
    trace = sample_trace()
    trace.disturbance = record
    again = Trace.from_json(trace.to_json())
    assert again.disturbance == record and Disturbance.from_dict(again.disturbance).disturbed
    assert Disturbance.from_dict(again.disturbance).others_share == pytest.approx(0.62)
    older = json.loads(sample_trace().to_json())
    del older["disturbance"]  # a trace saved before the probe existed
    assert Trace.from_dict(older).disturbance is None
