"""Unlikelihood fine-tuning: it marks exactly the tokens that repeat an earlier n-gram, its loss is
-log(1 - p) there, and the command runs, saves an HF target with its record and resumes. The DITTO objective:
its rows are a corpus prefix and one corpus span repeated, and its loss pulls each copy's probability to a
share of the copy before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_tokenizer, make_tiny_model

from specviz.workshop.unlikelihood import (
    UnlikelihoodConfig,
    ditto_loss,
    finetune,
    own_text_losses,
    pseudo_repetitions,
    repeat_mask,
    unlikelihood_loss,
)

pytestmark = pytest.mark.slow  # training


def tiny_target_and_corpus(tmp_path, meta: dict | None = None):
    """A 3-layer random target (with its specviz.json when `meta` is given) in tmp_path/target and a random
    token corpus; returns the corpus folder."""
    tok = build_tiny_tokenizer()
    target = make_tiny_model("llama", len(tok), layers=3, seed=2)
    target.save_pretrained(tmp_path / "target")
    tok.save_pretrained(tmp_path / "target")
    if meta is not None:
        (tmp_path / "target" / "specviz.json").write_text(json.dumps(meta))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for split, size in (("train", 4000), ("heldout", 600)):
        np.save(corpus / f"{split}.npy", rng.integers(1, len(tok), size).astype(np.uint16))
    return corpus


def test_repeat_mask_marks_tokens_that_complete_a_seen_ngram():
    ids = torch.tensor([[5, 1, 2, 3, 1, 2, 3, 1, 9]])
    assert repeat_mask(ids, start=0, n=3).nonzero()[:, 1].tolist() == [6, 7]  # (1,2,3) again, then (2,3,1) again
    assert repeat_mask(ids, start=7, n=3).nonzero()[:, 1].tolist() == [7]  # the prefix is context, never penalised
    assert not repeat_mask(torch.tensor([[1, 2, 3, 4, 5]]), start=0, n=2).any()


def test_unlikelihood_loss_is_minus_log_one_minus_p_at_the_marked_tokens():
    model = make_tiny_model("llama", 64, seed=1)
    seq = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 4] = mask[1, 9] = True
    probs = model(seq[:, :-1]).logits.softmax(-1)
    expected = -(torch.log(1 - probs[0, 3, seq[0, 4]]) + torch.log(1 - probs[1, 8, seq[1, 9]])) / 2
    torch.testing.assert_close(unlikelihood_loss(model, seq, mask), expected)
    assert unlikelihood_loss(model, seq, torch.zeros_like(mask)).item() == 0.0


def test_anchor_is_kl_to_the_starting_target_on_unpenalized_continuation_tokens():
    model, reference = make_tiny_model("llama", 64, seed=1), make_tiny_model("llama", 64, seed=2)
    seq = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, 6] = True  # token 6 of row 0 repeats: penalized, so not anchored
    ul, anchor = own_text_losses(model, reference, seq, mask, start=4)
    torch.testing.assert_close(ul, unlikelihood_loss(model, seq, mask))
    logp = model(seq[:, :-1]).logits.log_softmax(-1)
    ref = reference(seq[:, :-1]).logits.log_softmax(-1)
    kept = [(r, j) for r in range(2) for j in range(3, 9) if (r, j) != (0, 5)]  # predicting tokens 4..9, bar row 0's 6
    expected = sum((ref[r, j].exp() * (ref[r, j] - logp[r, j])).sum() for r, j in kept) / len(kept)
    torch.testing.assert_close(anchor, expected)
    assert own_text_losses(model, model, seq, mask, start=4)[1].abs().item() < 1e-6
    assert own_text_losses(model, None, seq, mask, start=4)[1].item() == 0.0


def test_finetune_runs_saves_and_resumes(tmp_path):
    corpus = tiny_target_and_corpus(tmp_path, meta={"exits": [1, 3], "kangaroo_exit": 1})
    cfg = UnlikelihoodConfig(
        target=str(tmp_path / "target"),
        corpus=str(corpus),
        out=str(tmp_path / "out"),
        steps=3,
        mle_seq_len=16,
        mle_batch=2,
        prefix_tokens=8,
        new_tokens=12,
        ul_batch=2,
        eval_every=0,
        eval_windows=2,
        max_steps=2,
        lr=1e-3,
        anchor_weight=1.0,
    )
    first = finetune(cfg, log=lambda msg: None)
    assert first["step"] == 2 and not first["done"] and not (tmp_path / "out" / "target").exists()
    second = finetune(cfg, log=lambda msg: None)  # resumes from OUT/ckpt.pt
    assert second["step"] == 3 and second["done"]
    meta = json.loads((tmp_path / "out" / "target" / "specviz.json").read_text())
    assert meta["exits"] == [1, 3] and meta["unlikelihood"]["steps"] == 3
    trained = [h for h in meta["unlikelihood"]["history"] if h["event"] == "train"]
    assert [h["step"] for h in trained] == [1, 2, 3] and all(0 <= h["repeat_share"] <= 1 for h in trained)
    assert trained[0]["anchor"] == 0.0 < trained[2]["anchor"]  # held to the target it started from, also on resume
    assert (
        [h["event"] for h in meta["unlikelihood"]["history"]][0]
        == "eval"
        == meta["unlikelihood"]["history"][-1]["event"]
    )


def test_seconds_finish_the_run_on_time_under_autocast(tmp_path):
    """--seconds ends a run as finished (a GPU lease is minutes, not steps); bf16 autocast (here on the CPU)
    is the path a lent GPU takes."""
    corpus = tiny_target_and_corpus(tmp_path)
    said = []
    cfg = UnlikelihoodConfig(
        target=str(tmp_path / "target"),
        corpus=str(corpus),
        out=str(tmp_path / "out"),
        steps=10_000,
        mle_seq_len=16,
        mle_batch=2,
        prefix_tokens=8,
        new_tokens=12,
        ul_batch=2,
        eval_every=0,
        eval_windows=2,
        seconds=1.0,
        amp="bf16",
    )
    result = finetune(cfg, log=said.append)
    assert result["done"] and 0 < result["step"] < 10_000
    assert any(line.startswith("--seconds 1") for line in said)
    meta = json.loads((tmp_path / "out" / "target" / "specviz.json").read_text())
    assert meta["unlikelihood"]["steps"] == result["step"]


def test_freeze_layers_keeps_what_the_family_reads_bit_identical(tmp_path):
    """--freeze-layers 1: the embedding (tied head), final norm and layer 0 come out exactly as they went in
    (the Kangaroo exit's state and the grafted drafter's body stay valid); the layers above do train."""
    from transformers import AutoModelForCausalLM

    corpus = tiny_target_and_corpus(tmp_path)
    said = []
    cfg = UnlikelihoodConfig(
        target=str(tmp_path / "target"),
        corpus=str(corpus),
        out=str(tmp_path / "out"),
        steps=3,
        mle_seq_len=16,
        mle_batch=2,
        prefix_tokens=8,
        new_tokens=12,
        ul_batch=2,
        eval_every=0,
        eval_windows=2,
        lr=1e-2,
        warmup_steps=1,
        freeze_layers=1,
    )
    assert finetune(cfg, log=said.append)["done"]
    assert any(line.startswith("frozen:") for line in said)
    before = AutoModelForCausalLM.from_pretrained(tmp_path / "target").state_dict()
    after = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "target").state_dict()
    frozen = [k for k in before if k.startswith(("model.embed_tokens", "lm_head", "model.norm", "model.layers.0."))]
    trained = [k for k in before if k.startswith(("model.layers.1.", "model.layers.2."))]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert all(not torch.equal(before[k], after[k]) for k in trained if "layernorm" not in k)


def test_pseudo_repetitions_are_a_corpus_prefix_then_one_corpus_span_repeated():
    train = np.arange(1000, dtype=np.uint16)  # every window of it is unique: where a row came from is readable
    seq, periods = pseudo_repetitions(
        train, torch.Generator().manual_seed(3), rows=5, prefix=6, length=40, span_min=3, span_max=7
    )
    assert seq.shape == (5, 40) and len(periods) == 5 and all(3 <= k <= 7 for k in periods)
    for row, k in zip(seq.tolist(), periods):
        assert row[: 6 + k] == list(range(row[0], row[0] + 6 + k))  # prefix and span: consecutive corpus tokens
        assert all(row[t] == row[t - k] for t in range(6 + k, 40))  # then the span again and again


def test_ditto_loss_pulls_each_copy_to_a_share_of_the_copy_before():
    model = make_tiny_model("llama", 64, seed=1).requires_grad_(True)
    seq = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    prefix, periods, ratio = 3, [2, 4], 0.5
    for row, k in enumerate(periods):
        for t in range(prefix + k, 12):
            seq[row, t] = seq[row, t - k]

    def expected(stop_gradient: bool) -> torch.Tensor:
        p = model(seq[:, :-1]).logits.softmax(-1).gather(-1, seq[:, 1:, None]).squeeze(-1)  # p[:, t - 1]: token t
        before = p.detach() if stop_gradient else p
        return torch.stack(
            [
                -torch.log(1 - (p[r, t - 1] - ratio * before[r, t - 1 - k]).abs())
                for r, k in enumerate(periods)
                for t in range(prefix + k, 12)
            ]
        ).mean()

    def grads(loss: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        loss.backward()
        return [q.grad.clone() for q in model.parameters()]

    loss = ditto_loss(model, seq, prefix, periods, ratio)
    torch.testing.assert_close(loss, expected(True))
    got = grads(loss)  # the earlier copy is a fixed target: gradients flow only through the later copy's p
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, grads(expected(True))))
    assert not all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, grads(expected(False))))


def test_ditto_objective_trains_and_reports_the_greedy_repeat_share(tmp_path):
    corpus = tiny_target_and_corpus(tmp_path)
    cfg = UnlikelihoodConfig(
        target=str(tmp_path / "target"),
        corpus=str(corpus),
        out=str(tmp_path / "out"),
        steps=2,
        mle_seq_len=16,
        mle_batch=2,
        prefix_tokens=8,
        new_tokens=12,
        ul_batch=2,
        eval_every=1,
        eval_windows=2,
        objective="ditto",
        ditto_len=32,
        span_min=3,
        span_max=6,
    )
    assert finetune(cfg, log=lambda msg: None)["done"]
    history = json.loads((tmp_path / "out" / "target" / "specviz.json").read_text())["unlikelihood"]["history"]
    evals = [h for h in history if h["event"] == "eval"]
    assert [h["step"] for h in evals] == [0, 1, 2] and all(0 <= h["repeat_share"] <= 1 for h in evals)
    assert all(h["ul"] > 0 and "repeat_share" not in h for h in history if h["event"] == "train")
    try:
        finetune(UnlikelihoodConfig(**{**cfg.__dict__, "anchor_weight": 1.0, "out": str(tmp_path / "x")}))
    except ValueError as exc:
        assert "anchor" in str(exc)
    else:
        raise AssertionError("the anchor needs greedy text the DITTO objective does not generate")
