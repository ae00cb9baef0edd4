"""Training Kangaroo's adapter and S2D's sorted drafter for a user's own target (specviz.workshop.parts_training), end
to end on a tiny random Llama target: the trained part beats the untrained logit lens, loads beside the target,
and both methods stay greedy-equal to autoregressive with it; an interrupted run resumes."""

from __future__ import annotations

import inspect
import json
import textwrap

import pytest
from conftest import make_tiny_model
from helpers import peaky_llama

from specviz.api import run
from specviz.models.pair import load_pair
from specviz.workshop import parts_training as parts
from specviz.workshop.train import main as train_main

pytestmark = pytest.mark.slow  # training


@pytest.fixture(scope="module")
def tiny_target(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    model = peaky_llama(len(tiny_tokenizer), layers=4, seed=5, hidden=32)  # far from uniform: agreement means something
    model.save_pretrained(root / "target")
    tiny_tokenizer.save_pretrained(root / "target")
    text = "\n\n".join(inspect.getsource(m) for m in (json, textwrap, inspect))
    (root / "text.txt").write_text(text)
    return root


def small(part: str, root, *extra: str) -> list[str]:
    return [
        part,
        "--target",
        str(root / "target"),
        "--text",
        str(root / "text.txt"),
        "--seq-len",
        "64",
        "--batch-size",
        "8",
        "--threads",
        "1",
        *extra,
    ]


def test_trained_parts_beat_the_logit_lens_and_run_beside_the_target(tiny_target):
    train_main(small("kangaroo-adapter", tiny_target, "--steps", "150", "--exit-layer", "1", "--lr", "0.01"))
    train_main(small("sorted-drafter", tiny_target, "--steps", "60", "--layers", "2"))
    out = tiny_target / "target" / parts.PARTS_DIR
    adapter = json.loads((out / parts.ADAPTER_DIR / parts.REPORT).read_text())
    assert adapter["after"]["agreement_trained"] > adapter["after"]["agreement_logit_lens"], adapter["after"]
    sorted_report = json.loads((out / parts.SORTED_DIR / parts.REPORT).read_text())
    assert sorted_report["after"]["agreement_k2"] > sorted_report["before"]["agreement_k2"], sorted_report
    pair = load_pair(str(tiny_target / "target"), str(tiny_target / "target"), device="cpu", cache=None)
    assert {"kangaroo_adapter", "sorted_drafter"} <= set(pair.extras)
    reference = run("autoregressive", pair, "def f(x):", max_new_tokens=24).output_ids
    for method in ("kangaroo", "sorted"):
        assert run(method, pair, "def f(x):", max_new_tokens=24).output_ids == reference, method


def test_an_interrupted_training_resumes(tiny_target, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = parts.soft_ce

    def failing(*args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # the session ends mid-run
        return original(*args)

    monkeypatch.setattr(parts, "soft_ce", failing)
    args = small("kangaroo-adapter", tiny_target, "--steps", "8", "--checkpoint-every", "2", "--out", str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        train_main(args)
    assert (tmp_path / parts.ADAPTER_DIR / parts.CHECKPOINT).exists()
    monkeypatch.setattr(parts, "soft_ce", original)
    said = []
    cfg = parts.PartsConfig(
        part="kangaroo-adapter",
        target=str(tiny_target / "target"),
        out=str(tmp_path),
        text=str(tiny_target / "text.txt"),
        steps=8,
        seq_len=64,
        checkpoint_every=2,
        threads=1,
    )
    parts.train_part(cfg, log=said.append)
    assert any("resuming kangaroo-adapter at step 4" in line for line in said)
    assert not (tmp_path / parts.ADAPTER_DIR / parts.CHECKPOINT).exists()


def test_parts_for_another_target_are_refused(tiny_target, tiny_tokenizer, tmp_path):
    other = make_tiny_model("llama", len(tiny_tokenizer), layers=3, hidden=32, seed=6)
    other.save_pretrained(tmp_path / "other")
    tiny_tokenizer.save_pretrained(tmp_path / "other")
    with pytest.raises(ValueError, match="trained for another target"):
        load_pair(
            str(tmp_path / "other"), parts=str(tiny_target / "target" / parts.PARTS_DIR), device="cpu", cache=None
        )
