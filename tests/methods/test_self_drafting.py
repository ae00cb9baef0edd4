"""Training-free self-drafting on any supported target: Kangaroo reads the target's own layer-l state through
its final norm and head (the logit lens) at a calibrated exit, Mirror-SD's exit is calibrated the same way;
greedy output stays the target's, sampling stays exact; through the Python API and the app."""

from __future__ import annotations

import json

import pytest
from conftest import make_tiny_pair
from helpers import assert_greedy_equal, assert_trace_invariants

from specviz.api import run
from specviz.methods.calibrate import exit_table
from specviz.models.pair import load_pair


@pytest.fixture(scope="module")
def qwen3_dir(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen3")
    make_tiny_pair("qwen3", tiny_tokenizer, target_layers=4, draft_layers=1, save_dir=root)
    return root


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_kangaroo_without_an_adapter_is_the_calibrated_logit_lens(tiny_tokenizer, arch):
    pair = make_tiny_pair(arch, tiny_tokenizer, target_layers=4)
    reference = run("autoregressive", pair, "def f(x):", max_new_tokens=24)
    trace = run("kangaroo", pair, "def f(x):", max_new_tokens=24)
    assert_greedy_equal(pair, trace, reference)
    assert_trace_invariants(trace)
    assert trace.meta["kangaroo_drafter"] == "logit lens (no adapter)"
    cal = trace.meta["exit_calibration"]
    assert trace.params["exit_layer"] == cal["exit_layer"] and len(cal["table"]) == 3
    assert all(0 <= row["alpha"] <= 1 and 0 < row["c"] < 1 for row in cal["table"])
    assert {e.source for e in trace.events if e.kind == "draft"} == {f"target[:{cal['exit_layer']}]+head (no adapter)"}
    chosen = run("kangaroo", pair, "def f(x):", max_new_tokens=24, exit_layer=1)
    assert chosen.params["exit_layer"] == 1 and chosen.output_ids == reference.output_ids


def test_calibration_measures_agreement_that_grows_with_depth(embedded_pair):
    table = exit_table(embedded_pair.target, embedded_pair.tokenizer, 8192)
    alphas = [row["alpha"] for row in table]
    assert len(table) == 11 and alphas[-1] > alphas[0]  # the last exits agree more than the first (trained target)


def test_a_qwen3_target_by_path_runs_kangaroo_and_mirror_with_no_trained_parts(qwen3_dir):
    pair = load_pair(str(qwen3_dir / "target"), str(qwen3_dir / "draft"), device="cpu", cache=None)
    assert not pair.extras.get("kangaroo_adapter") and not pair.extras.get("target_meta")
    reference = run("autoregressive", pair, "def f(x):", max_new_tokens=20)
    for method, params in (("kangaroo", {}), ("mirror", {}), ("mirror", {"parallel": False})):
        trace = run(method, pair, "def f(x):", max_new_tokens=20, **params)
        assert_greedy_equal(pair, trace, reference)
        assert "exit_calibration" in trace.meta, method


def test_the_app_runs_training_free_kangaroo_on_a_qwen3_path(qwen3_dir, monkeypatch):
    """Through the app's own handler and engine (a server thread here; the engine process runs the same job)."""
    monkeypatch.setenv("SPECVIZ_ENGINE", "thread")
    from specviz.app import handlers

    text, trace_json = handlers.playground_api(
        None, "def f(x):", "kangaroo", json.dumps({"max_new_tokens": 16}), str(qwen3_dir / "target"), ""
    )  # None: no browser session
    trace = json.loads(trace_json)
    assert trace["meta"]["kangaroo_drafter"] == "logit lens (no adapter)"
    local = run(
        "autoregressive", load_pair(str(qwen3_dir / "target"), device="cpu", cache=None), "def f(x):", max_new_tokens=16
    )
    assert trace["rows"][0]["output_ids"] == local.output_ids
