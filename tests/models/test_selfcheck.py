"""The load-time self-check: it passes on a healthy engine, refuses a broken cache hand-off, and in
half precision tells a numerical tie from a real disagreement."""

from __future__ import annotations

import pytest
import torch

from specviz.engine import kvcache
from specviz.models import selfcheck
from specviz.models.pair import load_pair


def test_a_healthy_pair_passes_every_path(saved_pairs):
    selfcheck.forget()
    load_pair(str(saved_pairs / "ok" / "target"), str(saved_pairs / "ok" / "draft"), device="cpu", cache=None)
    report = selfcheck.LAST["report"]
    paths = {(f.model, f.path) for f in report.findings}
    assert {
        ("target", "decoder"),
        ("target", "layer stack"),
        ("target", "lean shallow"),
        ("target", "batch"),
        ("drafter", "decoder"),
        ("drafter", "lean"),
        ("drafter", "batch"),
    } <= paths
    assert report.ok and all(f.positions > 0 for f in report.findings)


def test_embedded_pair_checks_its_adapter(embedded_pair):
    report = selfcheck.run_checks(embedded_pair)
    assert report.ok, report.findings
    assert any(f.path == "adapter" for f in report.findings)


@pytest.mark.parametrize("keyword", ["cache_typo", "past_key_value_s"])
def test_a_cache_keyword_the_model_ignores_makes_load_refuse(saved_pairs, monkeypatch, keyword):
    """What transformers < 5.24 did with `cache=`: the keyword fell into **kwargs and every forward
    started from an empty cache. The self-check must catch it and refuse, naming the versions."""
    selfcheck.forget()
    monkeypatch.setattr(kvcache, "cache_keyword", lambda module: keyword)
    with pytest.raises(selfcheck.SelfCheckFailed) as err:
        load_pair(str(saved_pairs / "ok" / "target"), device="cpu", cache=None)
    message = str(err.value)
    assert "transformers" in message and torch.__version__ in message and "decoder" in message
    monkeypatch.undo()
    selfcheck.forget()
    load_pair(str(saved_pairs / "ok" / "target"), device="cpu", cache=None)  # healthy again: loads


def test_a_rollback_that_drops_nothing_makes_load_refuse(saved_pairs, monkeypatch):
    selfcheck.forget()
    monkeypatch.setattr(kvcache, "crop_layer", lambda layer, length: None)
    with pytest.raises(selfcheck.SelfCheckFailed, match="rolled-back block"):
        load_pair(str(saved_pairs / "ok" / "target"), device="cpu", cache=None)
    monkeypatch.undo()
    selfcheck.forget()


def test_cache_keyword_is_read_from_the_signature():
    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, **kwargs):
            return past_key_values

    class New(torch.nn.Module):
        def forward(self, input_ids, cache=None, **kwargs):
            return cache

    class Unknown(torch.nn.Module):
        def forward(self, input_ids, **kwargs):
            return kwargs

    assert kvcache.forward(Old(), "kv", input_ids=None) == "kv"
    assert kvcache.forward(New(), "kv", input_ids=None) == "kv"
    with pytest.raises(kvcache.UnsupportedModel):
        kvcache.forward(Unknown(), "kv", input_ids=None)


def test_half_precision_ties_pass_and_real_differences_fail():
    ref = torch.tensor([[4.0, 3.99, 0.0, -1.0], [2.0, 0.0, -1.0, 1.0]])
    flipped = ref.clone()
    flipped[0, 1] += 0.02  # argmax flips on a 0.01 margin with a 0.02 difference: a tie
    tie = selfcheck.Finding("decoder", "target")
    selfcheck.compare(tie, flipped, ref, torch.bfloat16, "steps")
    assert tie.ok and tie.ties == 1
    near = ref.clone()
    near[0, 1] = 4.0 - 1e-4
    nudged = near.clone()
    nudged[0, 1] += 2e-4
    strict = selfcheck.Finding("decoder", "target")
    selfcheck.compare(strict, nudged, near, torch.float32, "steps")  # fp32 keeps token equality as the rule
    assert not strict.ok and "instead of" in strict.problem
    wrong = selfcheck.Finding("decoder", "target")
    selfcheck.compare(wrong, torch.flip(ref, dims=[1]), ref, torch.bfloat16, "steps")  # far off: never "ties"
    assert not wrong.ok and "relative" in wrong.problem
