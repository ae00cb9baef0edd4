"""Continued training of the target (continued.continue_target) and the time-fitted phases a GPU lease needs:
a run writes its record (run.json) for the model card, resumes where it stopped, and runs under mixed
precision on any device; fitting to a budget plans tokens and steps from measured speed, not from a guess."""

from __future__ import annotations

import inspect
import json
import string
import textwrap
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from specviz.workshop import continued, students, text
from specviz.workshop.continued import ContinueConfig

pytestmark = pytest.mark.slow  # training


@pytest.fixture()
def run_inputs(tiny_tokenizer, tmp_path):
    import hashlib

    target = tmp_path / "target"
    make_tiny_model("llama", len(tiny_tokenizer), layers=4, hidden=32, seed=5).save_pretrained(target)
    tiny_tokenizer.save_pretrained(target)
    (target / "specviz.json").write_text(json.dumps({"exits": [1, 2, 4], "kangaroo_exit": 1}))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    tokens = {}
    for split, modules in {
        "train": [inspect, textwrap, string],
        "heldout": [string],
        "heldout_stdlib": [textwrap],
    }.items():
        ids = text.encode(tiny_tokenizer, [inspect.getsource(m) for m in modules]).astype(np.uint16)
        np.save(corpus / f"{split}.npy", ids)
        tokens[split] = len(ids)
    vocab_sha = hashlib.sha1(json.dumps(tiny_tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    (corpus / "manifest.json").write_text(
        json.dumps({"tokens": tokens, "tokenizer_sha1": vocab_sha, "packages": [], "files": 5, "bytes": 1000})
    )
    return target, corpus


def tiny_config(target, corpus, run_dir, **changes) -> ContinueConfig:
    quick = ContinueConfig().quickened()
    return replace(quick, run_dir=str(run_dir), init=str(target), corpus=str(corpus), **changes)


def test_a_run_writes_its_record_and_resumes_under_mixed_precision(run_inputs, tmp_path):
    target, corpus = run_inputs
    logs: list[str] = []
    ccfg = tiny_config(
        target, corpus, tmp_path / "run", amp="bf16", max_steps=5, total_tokens=256 * 10, eval_minutes=1000.0
    )
    out = continued.continue_target(ccfg, logs.append)
    record = json.loads((tmp_path / "run" / continued.RUN_RECORD).read_text())
    assert record["step"] == 5 and record["tokens"] == 5 * 256 and record["config"]["amp"] == "bf16"
    assert record["device_name"] == "cpu" and (out / "config.json").exists()
    continued.continue_target(replace(ccfg, max_steps=0), logs.append)  # the same command: on to the plan's end
    record = json.loads((tmp_path / "run" / continued.RUN_RECORD).read_text())
    assert any("resumed" in line and "step 5" in line for line in logs)
    assert record["tokens"] >= ccfg.total_tokens and record["step"] == 10
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals if e["event"] == "eval"] == [0, 5, 10]
    assert all(np.isfinite(e["heldout"]) for e in evals if e["event"] == "eval")


def test_fit_to_budget_plans_tokens_from_the_measured_speed(monkeypatch):
    clock = {"now": 1000.0}
    monkeypatch.setattr(continued.time, "time", lambda: clock["now"])
    ccfg = ContinueConfig(total_tokens=2_000_000_000, reserve_seconds=10.0, fit_to_budget=True)
    logs: list[str] = []
    plan, fit_from = continued.fitted_plan(ccfg, ccfg, 10, 10_000, (0, 0.0), deadline=1200.0, log=logs.append)
    assert plan is ccfg and fit_from == (10_000, 1000.0)  # speed is measured after the warm-up steps
    clock["now"] = 1040.0  # 40 more steps of 1,000 tokens in 40 s: 1,000 tokens/s
    plan, _ = continued.fitted_plan(plan, ccfg, 50, 50_000, fit_from, deadline=1200.0, log=logs.append)
    assert plan.total_tokens == 50_000 + 1000 * (1200 - 1040 - 10)
    assert logs and "1000 tok/s" in logs[0]
    decaying = replace(plan, total_tokens=55_000)  # past (1 - decay_share) of the plan: the end stays put
    assert continued.fitted_plan(decaying, ccfg, 75, 50_000, fit_from, 1200.0, logs.append)[0].total_tokens == 55_000


def test_fitted_steps_end_a_phase_on_its_seconds():
    progress = students.Progress(phase="refine", step=4, target={}, warm={}, initial={})
    progress.seconds["refine"] = 8.0  # four slow warm-up steps, not counted in the speed
    total, fit_from = students.fitted_steps(progress, "refine", 30.0, 100_000, (0, 0.0), log=print)
    assert (total, fit_from) == (100_000, (4, 8.0))
    progress.step, progress.seconds["refine"] = 14, 13.0  # ten steps of 0.5 s
    total, _ = students.fitted_steps(progress, "refine", 30.0, total, fit_from, log=print)
    assert total == 14 + int((30.0 - 13.0) / 0.5) == progress.planned["refine"]


def test_heldout_loss_runs_without_autograd():
    """An evaluation of 2,048-token windows must not build a graph: every forward runs with grad disabled
    (a decorator once slid onto the helper above it), and the model's train/eval mode comes back as it was."""
    model = make_tiny_model("llama", 64, seed=1).requires_grad_(True).train()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.is_grad_enabled()))
    nats, late = continued.heldout_loss(model, np.random.default_rng(0).integers(0, 64, 500), windows=4, seq_len=32)
    assert seen and not any(seen) and model.training
    assert 0 < late and 0 < nats
