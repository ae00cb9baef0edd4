"""Each engine's format and variant, read from samples written from its source (observe_samples.py), and the
--json contract."""

from __future__ import annotations

import io
import json

import observe_samples as s
import pytest

from specviz.observe.__main__ import main
from specviz.observe.reader import ReadStats, iter_text


def read(text: str) -> list:
    stats = ReadStats(name="t")
    records = list(iter_text(text, stats))
    assert stats.error is None and stats.rejected == 0, (stats.error, stats.messages)
    return records


def one(text: str):
    records = read(text)
    assert len(records) == 1
    return records[0]


def test_vllm_v1_line_derives_steps_from_the_rates():
    r = one(s.VLLM_V1)
    assert (r.engine, r.scope, r.drafted, r.accepted) == ("vllm", "interval", 300, 150)
    assert r.steps == 100 and "steps" in r.derived  # 150 / (0.8 + 0.5 + 0.2)
    assert r.per_position == [0.8, 0.5, 0.2] and "per_position" not in r.derived
    assert r.mean_acceptance_length == 2.5 and r.acceptance_rate == 0.5
    assert r.time == "06-10 12:00:00"


def test_vllm_v1_april_variant():
    r = one(s.VLLM_V1_APRIL)
    assert (r.drafted, r.accepted, r.steps) == (300, 105, 100)
    assert r.acceptance_rate == pytest.approx(0.35) and r.mean_acceptance_length == 2.05


def test_vllm_v1_first_variant_has_no_steps():
    r = one(s.VLLM_V1_FIRST)
    assert (r.drafted, r.accepted, r.steps, r.mean_acceptance_length, r.per_position) == (100, 40, None, None, None)


def test_vllm_v0_maps_emitted_tokens():
    r = one(s.VLLM_V0)
    assert (r.scope, r.k, r.steps, r.drafted, r.accepted) == ("lifetime", 4, 100, 400, 150)
    assert r.mean_acceptance_length == 2.5 and {"steps", "accepted", "mean_acceptance_length"} <= set(r.derived)
    assert r.reported["v0_accepted_tokens"] == 280  # kept, under V0's own counting


def test_vllm_prometheus_one_record_per_engine():
    records = sorted(read(s.VLLM_PROMETHEUS), key=lambda r: r.labels["engine"])
    assert [r.labels for r in records] == [{"engine": "0", "model_name": "m"}, {"engine": "1", "model_name": "m"}]
    first = records[0]
    assert (first.steps, first.drafted, first.accepted, first.k) == (40, 120, 60, 3)
    assert first.per_position == [0.75, 0.5, 0.25] and first.mean_acceptance_length == 2.5
    assert records[1].per_position == [0.3, 0.0, 0.0]


@pytest.mark.parametrize("layout", ["json", "jsonl", "sse"])
def test_vllm_per_request_response(layout):
    body = json.dumps(s.VLLM_RESPONSE)
    text = {"json": body, "jsonl": body + "\n" + body + "\n", "sse": f"data: {body}\n\ndata: [DONE]\n"}[layout]
    records = read(text)
    assert len(records) == (2 if layout == "jsonl" else 1)
    r = records[0]
    assert (r.scope, r.k, r.steps, r.drafted, r.accepted) == ("request", 3, 4, 12, 4)
    assert r.histogram == {0: 2, 1: 1, 3: 1} and r.per_step_accepted == [0, 1, 3, 0]
    assert r.accepted_per_position == [2, 1, 1] and r.per_position == [0.5, 0.25, 0.25]
    assert r.labels == {"id": "cmpl-1", "model": "m"}


def test_sglang_meta_info_current():
    r = one(json.dumps(s.SGLANG_META))
    assert (r.steps, r.drafted, r.accepted) == (20, 60, 30)
    assert r.mean_acceptance_length == 2.5  # 1 + 30 / 20, not SGLang's 2.55 that counts the prefill's token
    assert r.reported["spec_accept_length"] == 2.55
    assert r.histogram == {0: 8, 2: 6, 3: 6} and r.accepted_per_position == [12, 12, 6]
    assert r.per_position == [0.6, 0.6, 0.3]


def test_sglang_meta_info_older_names():
    r = one(json.dumps(s.SGLANG_OLD))
    assert (r.steps, r.drafted, r.accepted, r.mean_acceptance_length) == (10, 40, 20, 3.0)


def test_sglang_meta_info_oldest_derives_accepted_from_completion_tokens():
    r = one(json.dumps(s.SGLANG_OLDEST))
    assert r.accepted == 20 and "accepted" in r.derived and r.mean_acceptance_length == 3.0


def test_sglang_log_gauges_and_server_info():
    line = one(s.SGLANG_DECODE)
    assert (line.scope, line.mean_acceptance_length, line.acceptance_rate) == ("interval", 3.21, 0.55)
    gauge = one(s.SGLANG_PROMETHEUS)
    assert (gauge.scope, gauge.mean_acceptance_length, gauge.acceptance_rate, gauge.drafted) == (
        "recent",
        2.75,
        0.58,
        None,
    )
    info = one(json.dumps(s.SGLANG_SERVER_INFO))
    assert (info.scope, info.mean_acceptance_length) == ("lifetime", 2.4)


def test_llamacpp_lines_and_timings():
    old = one(s.LLAMA_OLD)
    assert (old.drafted, old.accepted, old.steps, old.acceptance_rate) == (40, 20, None, 0.5)
    assert old.labels == {"task": "7"}
    new = one(s.LLAMA_NEW)
    assert (new.drafted, new.accepted, new.steps) == (2898, 1797, 1449)  # 1797 / (0.727 + 0.513)
    assert new.mean_acceptance_length == 2.24 and new.per_position == [0.727, 0.513]
    stats = one(s.LLAMA_STATS)
    assert (stats.scope, stats.steps, stats.drafted, stats.accepted) == ("lifetime", 50, 400, 90)
    assert stats.mean_acceptance_length == pytest.approx(2.8) and stats.labels == {"drafter": "draft"}
    timings = one(json.dumps(s.LLAMA_RESPONSE))
    assert (timings.engine, timings.drafted, timings.accepted, timings.steps) == ("llama.cpp", 40, 25, None)


def test_mlx_vlm_timings():
    r = one(json.dumps(s.MLX_RESPONSE))
    assert (r.engine, r.steps, r.drafted, r.accepted, r.mean_acceptance_length) == ("mlx_vlm", 10, 30, 12, 2.2)


def test_tensorrt_llm_request_and_iterations():
    r = one(json.dumps(s.TRT_REQUEST))
    assert (r.engine, r.k, r.steps, r.drafted, r.accepted, r.mean_acceptance_length) == (
        "tensorrt_llm",
        3,
        20,
        60,
        30,
        2.5,
    )
    iteration = one(json.dumps(s.TRT_ITERATIONS))  # the context iteration without drafts is skipped
    assert (iteration.scope, iteration.steps, iteration.drafted, iteration.accepted) == ("iteration", 8, 24, 10)
    assert iteration.mean_acceptance_length == iteration.reported["acceptanceLength"] == 2.25


def test_aiperf_profile_export_line():
    r = one(json.dumps(s.AIPERF_LINE) + "\n" + json.dumps({"metadata": {}, "metrics": {}}) + "\n")
    assert (r.engine, r.steps, r.drafted, r.accepted, r.labels["served_by"]) == ("aiperf", 43, 129, 10, "vllm")
    assert r.accepted_per_position == [4, 3, 3]


def test_a_log_of_mixed_lines_is_a_series_with_skipped_lines_counted():
    text = "\n".join(["noise", s.VLLM_V1, "more noise", s.VLLM_V1_APRIL, s.LLAMA_NEW, ""])
    stats = ReadStats(name="log")
    records = list(iter_text(text, stats))
    assert [r.engine for r in records] == ["vllm", "vllm", "llama.cpp"]
    assert (stats.records, stats.skipped, stats.lines) == (3, 2, 5)


def test_json_contract(tmp_path):
    log = tmp_path / "any.name"
    log.write_text("\n".join([s.VLLM_V1, s.VLLM_V1_FIRST, json.dumps(s.SGLANG_META)]) + "\n")
    out = io.StringIO()
    assert main([str(log), "--json", "--quiet"], out=out) == 0
    records = json.loads(out.getvalue())
    assert len(records) == 3
    for record in records:
        for key in ("engine", "drafted", "accepted", "steps", "mean_acceptance_length", "per_position", "derived"):
            assert key in record
        assert record["per_position"] is None or isinstance(record["per_position"], list)
    assert records[1]["steps"] is None and records[1]["per_position"] is None
    assert records[0]["steps"] == 100 and "steps" in records[0]["derived"]


def test_table_and_html(tmp_path):
    log = tmp_path / "x"
    log.write_text(s.VLLM_V1 + "\n")
    out = io.StringIO()
    html = tmp_path / "r.html"
    assert main([str(log), "--html", str(html), "--quiet"], out=out) == 0
    assert "100*" in out.getvalue() and "0.80, 0.50, 0.20" in out.getvalue()
    assert "<table>" in html.read_text() and "100*" in html.read_text()
