"""Half precision, honestly: a run that differs from autoregressive is classified a proven tie or a bug."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from specviz.analysis.divergence import annotate, classify
from specviz.analysis.metrics import compare
from specviz.api import run
from specviz.engine.trace import Trace
from specviz.models.pair import load_pair
from specviz.views.plots import equality_text

PROMPTS = [
    json.loads(line)["prompt"]
    for line in (Path(__file__).resolve().parents[2] / "assets" / "prompts" / "code.jsonl").read_text().splitlines()[:3]
]


def test_a_wrong_token_with_a_clear_margin_is_a_bug_not_a_tie(embedded_pair):
    reference = run("autoregressive", embedded_pair, PROMPTS[0], max_new_tokens=12)
    broken = Trace.from_json(reference.to_json())
    wrong = (broken.rows[0].output_ids[5] + 1) % 100
    broken.rows[0].output_ids[5] = wrong
    found = classify(embedded_pair, broken, reference)
    assert found is not None and found.position == 5 and found.token == wrong
    assert not found.tie and found.margin > found.logit_difference
    annotate(embedded_pair, broken, reference)
    stats = compare(broken, reference)
    assert stats["real_divergences"] == 1 and stats["tie_divergences"] == 0
    assert "NOT a tie" in equality_text(stats)
    assert classify(embedded_pair, reference, reference) is None


def test_bfloat16_differences_are_all_proven_ties():
    """On this CPU, bf16 draft_model differs from bf16 autoregressive on some prompts (as transformers' own
    assisted generation does): each difference must be a tie, none a bug."""
    pair = load_pair("embedded", device="cpu", dtype="bfloat16")
    ties = 0
    for prompt in PROMPTS:
        reference = run("autoregressive", pair, prompt, max_new_tokens=48)
        for method in ("draft_model", "kangaroo"):
            trace = run(method, pair, prompt, max_new_tokens=48)
            for found in annotate(pair, trace, reference):
                assert found.tie, f"{method}: {found.describe()}"
                ties += 1
    assert pair.dtype == torch.bfloat16
    print(f"bf16: {ties} proven ties over {2 * len(PROMPTS)} runs")
