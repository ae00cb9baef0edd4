"""The two speed changes under the engine give the same numbers as transformers' own path:
the lean drafter forward (Llama family) and the growing KV layer that replaces DynamicLayer's cat."""
from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from conftest import ARCHS, make_tiny_model, make_tiny_pair
from specviz.api import run
from specviz.engine import Decoder
from specviz.kvcache import GrowingLayer
from specviz.lean import LeanDecoder, supports

VOCAB = 64
# (tokens fed, then the length to roll back to): prefill, single steps, a verification block, rollbacks
SCRIPT = [(7, None), (1, None), (5, 9), (1, None), (3, 8), (40, None), (1, 30), (2, None)]


def replay(decoder, gen_seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(gen_seed)
    outs = []
    for count, back in SCRIPT:
        ids = torch.randint(0, VOCAB, (1, count), generator=gen)
        outs.append(decoder.feed(ids, keep=count))
        if back is not None:
            decoder.rollback(back)
    return outs


class PlainDecoder(Decoder):
    """transformers' own DynamicCache (torch.cat per step): the reference."""

    def reset(self) -> None:
        self.cache = DynamicCache(config=self.model.config)
        self.length = 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_forward_matches_transformers(arch):
    model = make_tiny_model(arch, VOCAB, layers=2, hidden=32, seed=3)
    assert supports(model)
    lean = LeanDecoder(model, VOCAB, capacity=4)  # grows several times during the script
    for a, b in zip(replay(PlainDecoder(model, VOCAB)), replay(lean)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert lean.capacity >= lean.length


@pytest.mark.parametrize("arch", ARCHS)
def test_growing_cache_gives_the_same_logits_as_dynamic_cache(arch):
    model = make_tiny_model(arch, VOCAB, layers=2, hidden=32, seed=4)
    decoder = Decoder(model, VOCAB)
    kinds = {type(layer).__name__ for layer in decoder.cache.layers}
    assert kinds in ({"GrowingLayer"}, {"DynamicSlidingWindowLayer"}, set())  # sliding windows keep their own layer
    for a, b in zip(replay(PlainDecoder(model, VOCAB)), replay(decoder)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    decoder.check()


def test_growing_layer_adopts_keys_replaced_from_outside():
    layer = GrowingLayer()
    k = torch.randn(1, 2, 3, 4)
    layer.update(k, k.clone())
    layer.keys, layer.values = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)  # e.g. a realignment gather
    replaced = layer.keys.clone()
    new = torch.randn(1, 2, 1, 4)
    keys, _ = layer.update(new, new.clone())
    torch.testing.assert_close(keys, torch.cat([replaced, new], dim=-2))


def test_drafter_forward_is_recorded_and_only_lean_where_supported(tiny_tokenizer):
    for arch, expected in (("llama", "lean"), ("gpt2", "transformers")):
        pair = make_tiny_pair(arch, tiny_tokenizer, seed=2)
        trace = run("draft_model", pair, "def f(x):", max_new_tokens=6)
        assert trace.meta["drafter_forward"] == expected
        assert run("draft_model", pair, "def f(x):", max_new_tokens=6,
                   drafter_forward="transformers").meta["drafter_forward"] == "transformers"
    assert not supports(make_tiny_model("gpt_neox", VOCAB))


def test_models_with_a_sliding_window_stay_on_transformers():
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, use_sliding_window=True, sliding_window=8,
                         max_window_layers=0)
    assert not supports(AutoModelForCausalLM.from_config(config))
