"""Training an EAGLE head in the workshop: the losses fall on a tiny random target, the training-time test feeds the
head its own outputs (not detached) with the attention a drafted chain has at inference, a resumed run ends where
an uninterrupted one does, and a --quick run writes a head that load_head reads back and that drafts."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import make_tiny_model

from specviz.engine.eagle import EagleDrafter, EagleHead, gather_features
from specviz.models.eagle_checkpoint import load_head
from specviz.workshop import eagle_training as et
from specviz.workshop.config import TrainConfig
from specviz.workshop.train import main as train_main

LAYERS = 4


@pytest.fixture(scope="module")
def target_dir(tiny_tokenizer, tmp_path_factory):
    """A tiny random Llama target saved with its tokenizer (the trainer loads a target by path)."""
    path = tmp_path_factory.mktemp("eagle-target")
    model = make_tiny_model("llama", len(tiny_tokenizer), layers=LAYERS, hidden=32, seed=5)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # logits of std ~3: peaked distributions, as a trained target's are
    model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def target(target_dir):
    return et.load_target(str(target_dir))[0]


def tiny_cfg(target_dir, tmp_path, **changes) -> et.EagleTrainConfig:
    cfg = et.EagleTrainConfig(
        target=str(target_dir),
        steps=6,
        draft_vocab=48,
        ttt_steps=3,
        seq_len=16,
        batch_size=2,
        warmup_steps=2,
        vocab_windows=4,
        eval_windows=2,
        eval_every=3,
        log_every=1,
        ckpt_minutes=0.0,
        run_dir=str(tmp_path / "run"),
        out=str(tmp_path / "head"),
        corpus=TrainConfig().quickened(),
    )
    return replace(cfg, **changes)


def window_of(vocab: int, rows: int = 2, length: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (rows, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("layout", ["eagle3", "eagle1"])
def test_a_few_steps_lower_the_loss(target, target_dir, tmp_path, layout):
    """Each version's loss, on one fixed window, falls by a third in 15 AdamW steps."""
    cfg = tiny_cfg(target_dir, tmp_path, layout=layout, noise=0.0)
    vocab = target.config.vocab_size
    head = et.new_head(cfg, target, None).train()
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    window = window_of(vocab)
    steps = cfg.ttt_steps if layout == "eagle3" else 1
    losses = []
    for _ in range(15):
        result = et.head_step(cfg, head, target, window, steps)
        opt.zero_grad()
        result.loss.backward()
        opt.step()
        losses.append(float(result.loss.detach()))
    assert losses[0] > 0 and losses[-1] < 0.67 * losses[0], losses
    if layout == "eagle3":
        assert set(result.parts) == {"p0", "p1", "p2"}
    else:
        assert set(result.parts) == {"v", "p"}


def test_unrolled_steps_feed_the_heads_own_outputs_not_detached(target, target_dir, tmp_path):
    """Step j (j > 0) is fed step j-1's output itself, and a later step's loss reaches the earlier outputs
    (EAGLE-3 keeps the graph through its unrolled steps)."""
    cfg = tiny_cfg(target_dir, tmp_path)
    head = et.new_head(cfg, target, None).train()
    window = window_of(target.config.vocab_size)
    features = et.target_pass(target, window, head.config.layer_ids)[0]
    fed = {}
    outputs = et.unroll(head, features, window, target.get_input_embeddings(), 3, lambda j, f: fed.__setitem__(j, f))
    assert fed[0] is features
    assert fed[1] is outputs[0] and fed[2] is outputs[1]
    outputs[0].retain_grad()
    outputs[1].retain_grad()
    outputs[2].pow(2).sum().backward()
    assert outputs[1].grad is not None and float(outputs[1].grad.abs().sum()) > 0
    assert outputs[0].grad is not None and float(outputs[0].grad.abs().sum()) > 0


@pytest.mark.parametrize("version", [3, 1])
def test_training_unroll_is_the_chain_the_drafter_runs(target, target_dir, tmp_path, version):
    """Unrolled step j at row t (fed the text's tokens) gives the logits of the chain EagleDrafter drafts from real
    entry t with the same tokens: the training attention (step 0 causal, later steps on their own row), the
    positions t+j and the fed-back features are those of inference."""
    layout = "eagle3" if version == 3 else "eagle1"
    cfg = tiny_cfg(target_dir, tmp_path, layout=layout)
    head = et.new_head(cfg, target, list(range(0, 96, 2)) if version == 3 else None).eval()
    window = window_of(target.config.vocab_size, rows=1)
    steps, rows = 4, window.shape[1] - 1
    embed, lm_head = target.get_input_embeddings(), target.get_output_embeddings()
    with torch.no_grad():
        out = target(window, output_hidden_states=True)
        features = gather_features(out.hidden_states, head.config.layer_ids)[:, :-1]
        unrolled = [head.logits(g, lm_head)[0] for g in et.unroll(head, features, window, embed, steps)]
    for t in (0, 3, rows - steps - 1):
        drafter = EagleDrafter(head, embed, lm_head)
        chain = [drafter.start(features[:, : t + 1], window[:, 1 : t + 2])]
        for j in range(1, steps):
            chain.append(drafter.step(int(window[0, t + 1 + j])))
        for j in range(steps):
            torch.testing.assert_close(unrolled[j][t], chain[j][0], atol=1e-5, rtol=1e-5)


def test_step_mask_is_causal_then_diagonal():
    mask = et.step_mask(3, 2)[0, 0].int().tolist()
    assert mask == [[1, 0, 0, 1, 0, 0, 1, 0, 0], [1, 1, 0, 0, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 1, 0, 0, 1]]


def test_eagle3_loss_is_restricted_to_the_draft_vocabulary(target, target_dir, tmp_path):
    """Positions whose target argmax is outside the draft vocabulary carry no loss; the others learn the target's
    distribution renormalised over the draft vocabulary (at its minimum the loss is that distribution's entropy)."""
    cfg = tiny_cfg(target_dir, tmp_path)
    vocab = target.config.vocab_size
    head = et.new_head(cfg, target, list(range(48))).eval()
    window = window_of(vocab, rows=1)
    logits = torch.randn(1, window.shape[1], vocab, generator=torch.Generator().manual_seed(2))
    logits[0, 1, :48] -= 100.0  # row 0's target argmax lies outside the draft vocabulary
    logits[0, 2, 5] = 50.0  # row 1's target is token 5, certainly
    g = torch.zeros(1, window.shape[1] - 1, head.config.hidden_size, requires_grad=True)
    (loss,), (agree,) = et.eagle3_losses(head, [g], logits)
    loss.backward()
    assert float(g.grad[0, 0].abs().sum()) == 0.0
    assert float(g.grad[0, 1].abs().sum()) > 0.0
    with torch.no_grad():
        head.lm_head.weight.zero_()
        head.lm_head.weight[5, 0] = 1.0
        head.norm.weight.fill_(1.0)
    g2 = torch.zeros_like(g)
    g2[0, 1, 0] = 1.0
    (_,), (agree,) = et.eagle3_losses(head, [g2], logits)
    assert bool(agree[0, 1]) and not bool(agree[0, 0])


def test_eagle1_targets_are_the_next_feature_and_the_next_distribution(target, target_dir, tmp_path):
    """An output g_t equal to the target's final state at t+1 is EAGLE-1's perfect prediction: no regression loss,
    the target's own greedy token at every step-0 position, and a token loss equal to the target's entropy."""
    cfg = tiny_cfg(target_dir, tmp_path, layout="eagle1")
    head = et.new_head(cfg, target, None).eval()
    window = window_of(target.config.vocab_size)
    _, final, logits = et.target_pass(target, window, head.config.layer_ids)
    parts, (agree,) = et.eagle1_losses(head, [final], logits, final, target.get_output_embeddings())
    assert float(parts["v"]) == 0.0
    assert bool(agree.all())
    p = torch.softmax(logits[:, 1:], -1)
    entropy = -(p * torch.log_softmax(logits[:, 1:], -1)).sum(-1).mean()
    torch.testing.assert_close(parts["p"], entropy, atol=1e-5, rtol=1e-5)


@pytest.mark.slow  # training runs (the corpus read and encoded, checkpoints, the head written)
@pytest.mark.parametrize("layout", ["eagle3", "eagle1"])
def test_resume_continues_to_the_same_head(target_dir, tmp_path, layout):
    """Interrupted after 3 of 6 steps and run again, a run ends with the weights of an uninterrupted one
    (data position, optimizer, EAGLE-1's noise generator and the step all come back from the checkpoint)."""
    whole = et.train_eagle_head(tiny_cfg(target_dir, tmp_path / "a", layout=layout), log=lambda m: None)
    cut = tiny_cfg(target_dir, tmp_path / "b", layout=layout)
    first = et.train_eagle_head(replace(cut, max_steps=3), log=lambda m: None)
    assert first["step"] == 3 and not first["finished"]
    said = []
    second = et.train_eagle_head(cut, log=said.append)
    assert any("resuming at step 3" in m for m in said)
    assert second["step"] == 6 and whole["step"] == 6 and second["finished"]
    a = torch.load(tmp_path / "a" / "run" / et.CHECKPOINT, weights_only=False)["head"]
    b = torch.load(tmp_path / "b" / "run" / et.CHECKPOINT, weights_only=False)["head"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert second["heldout"][-1]["agree"] == whole["heldout"][-1]["agree"]


@pytest.mark.slow  # training runs (the corpus read and encoded, checkpoints, the head written)
def test_a_checkpoint_of_another_configuration_is_refused(target_dir, tmp_path):
    et.train_eagle_head(tiny_cfg(target_dir, tmp_path, steps=1), log=lambda m: None)
    with pytest.raises(ValueError, match="another configuration"):
        et.train_eagle_head(tiny_cfg(target_dir, tmp_path, steps=2, seq_len=24), log=lambda m: None)


def test_eagle1_refuses_other_layer_ids(target_dir, tmp_path, target):
    with pytest.raises(ValueError, match="final state"):
        et.new_head(tiny_cfg(target_dir, tmp_path, layout="eagle1", features=(1,)), target, None)


@pytest.mark.slow  # training runs (the corpus read and encoded, checkpoints, the head written)
@pytest.mark.parametrize("layout", ["eagle3", "eagle1"])
def test_quick_run_writes_a_head_that_loads_and_drafts(target_dir, target, tmp_path, layout):
    out = tmp_path / "head"
    run_dir = str(tmp_path / "run")
    common = ["--quick", "--layout", layout, "--run-dir", run_dir, "--out", str(out), "--draft-vocab", "64"]
    train_main(["eagle-head", "--target", str(target_dir), *common])
    record = json.loads((out / et.RECORD).read_text())
    assert record["finished"] and record["step"] == 4
    head = load_head(out, target.config)
    assert isinstance(head, EagleHead) and head.config.version == (3 if layout == "eagle3" else 1)
    if layout == "eagle3":
        assert head.config.draft_vocab_size == 64
        trained = torch.load(tmp_path / "run" / et.CHECKPOINT, weights_only=False)
        assert sorted(trained["draft_ids"]) == head.draft_ids().tolist()
    ids = torch.tensor([[3, 17, 40, 8, 99, 21]])
    with torch.no_grad():
        states = target(ids, output_hidden_states=True).hidden_states
    drafter = EagleDrafter(head, target.get_input_embeddings(), target.get_output_embeddings())
    logits = drafter.start(gather_features(states, head.config.layer_ids)[:, :-1], ids[:, 1:])
    draft_ids = head.draft_ids()
    tokens = []
    for _ in range(3):
        best = int(logits.argmax())
        tokens.append(best if draft_ids is None else int(draft_ids[best]))
        logits = drafter.step(tokens[-1])
    assert all(0 <= t < target.config.vocab_size for t in tokens)
    if draft_ids is not None:
        assert all(bool(head.t2d[t]) for t in tokens)
