"""The EAGLE head on tiny random Llama targets: shapes, the layer-id convention, q over the target vocabulary, and
the head's own KV cache (a rolled-back cache equals a fresh recompute; a cached chain equals one causal forward)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from specviz.engine.eagle import (
    EagleConfig,
    EagleDrafter,
    EagleHead,
    gather_features,
    target_probs,
    to_target_logits,
)
from specviz.engine.verify import Sampling

VOCAB = 64


@pytest.fixture(scope="module")
def target():
    return make_tiny_model("llama", VOCAB, layers=4, hidden=32, seed=1)


def make_head(target, version: int, draft_vocab: int | None = None, seed: int = 2) -> EagleHead:
    torch.manual_seed(seed)
    head = EagleHead.for_target(target.config, version=version, draft_vocab_size=draft_vocab)
    with torch.no_grad():  # norms away from 1 and a sizeable fc, so every weight matters in the comparisons below
        for name, p in head.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5)
    if draft_vocab:
        head.set_draft_vocab(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed))[:draft_vocab])
    return head.eval()


def features(target, head, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        hidden = target(ids, output_hidden_states=True).hidden_states
    return gather_features(hidden, head.config.layer_ids)


def drafter(target, head) -> EagleDrafter:
    return EagleDrafter(head, target.get_input_embeddings(), target.get_output_embeddings())


IDS = torch.tensor([[5, 17, 3, 42, 8, 8, 21, 60, 1, 33, 12, 7]])


def test_layer_ids_index_transformers_hidden_states(target):
    """id 0 is the embeddings, id L the LM head's input (after the final norm): EAGLE-1's feature."""
    with torch.no_grad():
        out = target(IDS, output_hidden_states=True)
    hs = out.hidden_states
    assert len(hs) == target.config.num_hidden_layers + 1
    torch.testing.assert_close(hs[0], target.get_input_embeddings()(IDS))
    torch.testing.assert_close(target.get_output_embeddings()(hs[-1]), out.logits)
    torch.testing.assert_close(gather_features(hs, (0, 4))[..., 32:], hs[4])


def test_shapes(target):
    v1, v3 = make_head(target, 1), make_head(target, 3, draft_vocab=16)
    assert v1.config.layer_ids == (4,) and v1.fc.in_features == 64 and v1.fc.bias is not None
    assert v3.fc.in_features == 3 * 32 and v3.fc.out_features == 32 and v3.fc.bias is None
    for proj in ("q_proj", "k_proj", "v_proj"):
        assert getattr(v3.midlayer.self_attn, proj).in_features == 64  # cat(embedding, fused feature)
        assert getattr(v1.midlayer.self_attn, proj).in_features == 32
    assert v3.lm_head.weight.shape == (16, 32) and v3.d2t.shape == (16,) and v3.t2d.shape == (VOCAB,)
    assert not hasattr(v1, "lm_head") and not hasattr(v1.midlayer, "hidden_norm")
    assert not any("embed" in k for k in v3.trainable_state())  # the target's embedding is not stored
    for head, width in ((v1, VOCAB), (v3, 16)):
        d = drafter(target, head)
        f = features(target, head, IDS)
        logits = d.start(f[:, :-1], IDS[:, 1:])
        assert logits.shape == (1, width) and d.length == IDS.shape[1] - 1 and d.last.shape == (1, 1, 32)
        assert d.step(3).shape == (1, width) and d.length == IDS.shape[1]


@pytest.mark.parametrize("sampling", [Sampling(), Sampling(temperature=0.7, top_p=0.9), Sampling(1.3, top_k=5)])
def test_q_is_zero_outside_the_draft_vocabulary(target, sampling):
    head = make_head(target, 3, draft_vocab=16)
    ids = head.draft_ids()
    assert torch.equal(ids, torch.nonzero(head.t2d).flatten())  # d2t offsets and t2d agree
    d = drafter(target, head)
    draft_logits = d.start(features(target, head, IDS)[:, :-1], IDS[:, 1:])
    q = target_probs(draft_logits, ids, VOCAB, sampling)
    assert q.shape == (1, VOCAB)
    torch.testing.assert_close(q.sum(-1), torch.ones(1))
    outside = ~head.t2d
    assert outside.any() and float(q[0, outside].abs().max()) == 0.0
    assert float(q[0, ids].sum()) == pytest.approx(1.0, abs=1e-6)
    # draft id i's logit lands on target id i + d2t[i]
    full = to_target_logits(draft_logits, ids, VOCAB)
    for i in (0, 7, 15):
        assert full[0, i + int(head.d2t[i])] == draft_logits[0, i]
    # EAGLE-1 spans the whole vocabulary: its q is the target-processed softmax of its logits
    v1 = make_head(target, 1)
    assert v1.draft_ids() is None
    logits = drafter(target, v1).start(features(target, v1, IDS)[:, :-1], IDS[:, 1:])
    torch.testing.assert_close(target_probs(logits, None, VOCAB, sampling), sampling.probs(logits))


@pytest.mark.parametrize("version", [1, 3])
def test_rollback_equals_a_fresh_recompute(target, version):
    head = make_head(target, version, draft_vocab=16 if version == 3 else None)
    f = features(target, head, IDS)
    a = drafter(target, head)
    a.start(f[:, :5], IDS[:, 1:6])
    for token in (9, 4, 11):  # a rejected chain of drafts ...
        a.step(token)
    a.rollback(5)  # ... dropped after verification
    assert a.length == 5 and a.last is None
    got = [a.start(f[:, 5:9], IDS[:, 6:10]), a.step(2), a.step(30)]
    b = drafter(target, head)
    want = [b.start(f[:, :9], IDS[:, 1:10]), b.step(2), b.step(30)]
    for x, y in zip(got, want):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("version", [1, 3])
def test_cached_chain_equals_one_causal_forward(target, version):
    """k steps through the head's cache = one forward, without a cache, over the real entries followed by the
    chain's own features: each draft entry sees every real entry and the drafts before it, at position = index."""
    head = make_head(target, version, draft_vocab=16 if version == 3 else None)
    f = features(target, head, IDS)
    d = drafter(target, head)
    real = 7
    step_logits, own, tokens = [d.start(f[:, :real], IDS[:, 1 : real + 1])], [], [13, 2, 50]
    for token in tokens:
        own.append(d.last)
        step_logits.append(d.step(token))
    next_ids = torch.cat((IDS[:, 1 : real + 1], torch.tensor([tokens])), dim=1)
    embeds = target.get_input_embeddings()(next_ids)
    positions = torch.arange(real + len(tokens))[None]
    with torch.no_grad():
        if version == 3:  # EAGLE-3 fuses real features only; its own outputs go in as they are
            x = torch.cat([head.fc(f[:, :real])] + own, dim=1)
            g = head(x, embeds, positions, own=True)
        else:  # EAGLE-1 runs fc over cat(embedding, feature) for both kinds
            g = head(torch.cat([f[:, :real]] + own, dim=1), embeds, positions)
        logits = head.logits(g[0, real - 1 :], target.get_output_embeddings())
    torch.testing.assert_close(torch.cat(step_logits), logits, rtol=1e-5, atol=1e-5)


def test_drafter_refuses_misuse(target):
    head = make_head(target, 3, draft_vocab=16)
    d = drafter(target, head)
    with pytest.raises(RuntimeError, match="start"):
        d.step(1)
    f = features(target, head, IDS)
    d.start(f[:, :4], IDS[:, 1:5])
    with pytest.raises(ValueError, match="roll back to 6"):
        d.rollback(6)
    with pytest.raises(ValueError, match="pair up"):
        d.start(f[:, :3], IDS[:, :2])
    with pytest.raises(ValueError, match="EAGLE-1 head drafts through the target's LM head"):
        make_head(target, 1).logits(torch.zeros(1, 32))


def test_config_and_vocab_map_are_checked(target):
    base = dict(
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=VOCAB,
    )
    with pytest.raises(ValueError, match="EAGLE-1 reads one feature"):
        EagleConfig(version=1, draft_vocab_size=VOCAB, layer_ids=(1, 2, 4), **base)
    with pytest.raises(ValueError, match="draft_vocab_size=65"):
        EagleConfig(version=3, draft_vocab_size=65, layer_ids=(1, 2, 4), **base)
    head = make_head(target, 3, draft_vocab=16)
    head.check_vocab_map()
    with torch.no_grad():
        head.d2t[3] += 1  # two draft ids now share a target id, or t2d disagrees
    with pytest.raises(ValueError, match="d2t|t2d"):
        head.check_vocab_map()
    with pytest.raises(ValueError, match="16 distinct ids"):
        head.set_draft_vocab([1, 1, 2])
