"""Bad input gets a clear message and no crash: binary files, files over the cap, text with no record,
negative or NaN counts, rates above 1, accepted > drafted, per-position rates that rise."""

from __future__ import annotations

import io
import json

import observe_samples as s
import pytest

from specviz.observe.__main__ import main
from specviz.observe.reader import ReadStats, iter_path, iter_text


def refused(text: str) -> list[str]:
    stats = ReadStats(name="t")
    assert list(iter_text(text, stats)) == []
    assert stats.rejected == 1
    return stats.messages


@pytest.mark.parametrize("blob", [bytes(range(256)) * 10, b"SpecDecoding metrics:\x00\x01\n" * 100])
def test_binary_file(tmp_path, blob):
    path = tmp_path / "blob"
    path.write_bytes(blob)  # undecodable bytes; or text with NUL bytes (a core dump, a database page)
    stats = ReadStats(name=str(path))
    assert list(iter_path(path, stats)) == []
    assert "binary file" in stats.error
    out = io.StringIO()
    assert main([str(path), "--quiet"], out=out) == 1 and "binary file" in out.getvalue()


def test_file_over_the_cap(tmp_path):
    path = tmp_path / "big.log"
    path.write_text(s.VLLM_V1 + "\n" * 2000)
    stats = ReadStats(name=str(path))
    assert list(iter_path(path, stats, max_bytes=1000)) == []
    assert "the limit for this kind of file is" in stats.error


def test_text_with_no_record(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("hello\nworld\n")
    out = io.StringIO()
    assert main([str(path), "--quiet"], out=out) == 1
    assert "0 records from 2 lines" in out.getvalue() and "2 lines were not records" in out.getvalue()


@pytest.mark.parametrize(
    "text, words",
    [
        (s.VLLM_V1.replace("Accepted: 150 tokens", "Accepted: -5 tokens"), "at least 0"),
        (s.VLLM_V1.replace("Mean acceptance length: 2.50", "Mean acceptance length: nan"), "finite"),
        (json.dumps({"meta_info": {"spec_verify_ct": float("nan")}}), "finite"),
        (s.VLLM_V1.replace("Avg Draft acceptance rate: 50.0%", "Avg Draft acceptance rate: 150.0%"), "between 0 and 1"),
        (s.LLAMA_NEW.replace("(0.727, 0.513)", "(1.7, 0.5)"), "between 0 and 1"),
        (s.LLAMA_OLD.replace("40 generated", "10 generated"), "more than drafted"),
        (json.dumps({"timings": {"draft_n": 3, "draft_n_accepted": 9}}), "more than drafted"),
    ],
)
def test_impossible_values_are_refused_with_a_message(text, words):
    messages = refused(text)
    assert words in messages[0], messages


def test_rising_per_position_rates_are_kept_with_a_warning():
    text = s.VLLM_V1.replace("0.800, 0.500, 0.200", "0.200, 0.500, 0.800")
    stats = ReadStats(name="t")
    records = list(iter_text(text, stats))
    assert len(records) == 1 and "rises at position 2" in records[0].warnings[0]
    assert not list(iter_text(s.VLLM_V1, ReadStats(name="t")))[0].warnings


def test_a_bad_record_does_not_stop_the_rest(tmp_path):
    path = tmp_path / "log"
    path.write_text("\n".join([s.LLAMA_OLD.replace("40 generated", "10 generated"), s.VLLM_V1]) + "\n")
    out = io.StringIO()
    assert main([str(path), "--quiet"], out=out) == 0
    assert "1 records refused" in out.getvalue() and f"{path}:1: accepted (20) is more than drafted" in out.getvalue()


def test_a_histogram_that_contradicts_the_steps_is_refused():
    payload = json.loads(json.dumps(s.VLLM_RESPONSE))
    payload["metrics"]["speculative_decoding"]["num_spec_steps"] = 5
    assert "histogram counts 4 steps" in refused(json.dumps(payload))[0]


def test_missing_file_and_broken_prometheus(tmp_path):
    out = io.StringIO()
    assert main([str(tmp_path / "nope"), "--quiet"], out=out) == 1 and "cannot read" in out.getvalue()
    stats = ReadStats(name="p")
    broken = s.VLLM_PROMETHEUS.replace("} 40.0", "} 40.5")
    assert list(iter_text(broken, stats)) == [] and "whole number" in stats.error
