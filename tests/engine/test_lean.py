"""The two speed changes under the engine give the same numbers as transformers' own path:
the lean drafter forward (Llama family) and the growing KV layer that replaces DynamicLayer's cat."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import ARCHS, make_tiny_model, make_tiny_pair

from specviz.api import run
from specviz.engine.decoder import TransformersDecoder
from specviz.engine.kvcache import GrowingLayer, KVCache
from specviz.engine.lean import LeanDecoder, supports
from specviz.engine.tree import TokenTree, tree_mask

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


class PlainDecoder(TransformersDecoder):
    """transformers' own DynamicCache layers (torch.cat per step): the reference."""

    def reset(self) -> None:
        self.kv = KVCache(self.model.config)  # growing=False: DynamicCache's own layers


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
    decoder = TransformersDecoder(model, VOCAB)
    kinds = {type(layer).__name__ for layer in decoder.kv.cache.layers}
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
        assert (
            run("draft_model", pair, "def f(x):", max_new_tokens=6, drafter_forward="transformers").meta[
                "drafter_forward"
            ]
            == "transformers"
        )
    assert not supports(make_tiny_model("gpt_neox", VOCAB))


def test_models_with_a_sliding_window_stay_on_transformers():
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        use_sliding_window=True,
        sliding_window=8,
        max_window_layers=0,
    )
    assert not supports(AutoModelForCausalLM.from_config(config))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_lean_shallow_pass_is_bit_identical_to_the_per_layer_transformers_path(arch):
    """Kangaroo's verification continues from the shallow states, so the lean shallow pass must not
    change them: in float32 on this CPU they equal the LayerStack's bit for bit (GQA included)."""
    from specviz.engine.layers import LayerStack

    model = make_tiny_model(arch, VOCAB, layers=3, hidden=32, seed=5)
    assert model.config.num_key_value_heads < model.config.num_attention_heads
    stack, lean = LayerStack(model, VOCAB), LeanDecoder(model, VOCAB, capacity=4, depth=2, exact=True)
    gen = torch.Generator().manual_seed(1)
    for count, back in SCRIPT:
        ids = torch.randint(0, VOCAB, (1, count), generator=gen)
        assert torch.equal(stack.run(stack.embed_ids(ids), 0, 2), lean.states(ids))
        if back is not None:
            stack.crop(back)
            lean.rollback(back)


def test_lean_adapter_matches_the_transformers_adapter():
    from specviz.engine import kvcache
    from specviz.engine.adapter import KangarooAdapter
    from specviz.engine.layers import causal_mask
    from specviz.engine.lean import LeanAdapter

    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=6)
    torch.manual_seed(0)
    adapter = KangarooAdapter.for_target(model.config, exit_layer=1).eval()
    lean, cache, held = LeanAdapter(adapter, capacity=2), kvcache.new_cache(), 0
    gen = torch.Generator().manual_seed(2)
    for count, back in SCRIPT:
        h = torch.randn(1, count, 32, generator=gen)
        pos = torch.arange(held, held + count).unsqueeze(0)
        with torch.inference_mode():
            ref = adapter(h, pos, cache, causal_mask(count, held, h.device))
        torch.testing.assert_close(lean(h), ref, rtol=1e-5, atol=1e-6)
        held += count
        if back is not None:
            kvcache.crop(cache, back)
            lean.rollback(back)
            held = back


@pytest.mark.parametrize("lens", [False, True])
def test_kangaroo_lean_path_gives_the_transformers_path_output_and_is_recorded(tiny_tokenizer, lens):
    from specviz.engine.adapter import KangarooAdapter

    pair = make_tiny_pair("llama", tiny_tokenizer, seed=7)
    if not lens:
        pair.extras["kangaroo_adapter"] = KangarooAdapter.for_target(pair.target.config, 1).eval()
    params = dict(max_new_tokens=24, gamma=4, eta=0.0, exit_layer=1)
    lean = run("kangaroo", pair, "def f(x):", **params)
    plain = run("kangaroo", pair, "def f(x):", drafter_forward="transformers", **params)
    ar = run("autoregressive", pair, "def f(x):", max_new_tokens=24)
    assert lean.meta["drafter_forward"] == "lean" and plain.meta["drafter_forward"] == "transformers"
    assert lean.output_ids == plain.output_ids == ar.output_ids
    # same drafts, same verdicts: the lean draft computes the same proposals
    drafts = lambda t: [(e.step, e.token_id) for e in t.events if e.kind == "draft"]  # noqa: E731
    assert drafts(lean) == drafts(plain)


def test_draft_linear_is_the_same_product_and_follows_in_place_updates():
    from specviz.engine.lean import draft_linear, transposed_pays

    torch.manual_seed(0)
    wide, narrow = torch.nn.Linear(16, 64), torch.nn.Linear(64, 16)
    assert transposed_pays(wide.weight) and not transposed_pays(narrow.weight)  # only where outputs outnumber inputs
    assert not transposed_pays(wide.weight.detach().half())  # float32 on a CPU only
    x = torch.randn(1, 3, 16)
    torch.testing.assert_close(draft_linear(x, wide.weight, wide.bias), wide(x))
    with torch.no_grad():
        wide.weight.mul_(-2.0)  # a training step in place: the cached transposed copy must not go stale
    torch.testing.assert_close(draft_linear(x, wide.weight, wide.bias), wide(x))
    y = torch.randn(1, 64)
    assert torch.equal(draft_linear(y, narrow.weight), F.linear(y, narrow.weight))  # F.linear itself there


def test_a_layer_whose_mlp_adds_nothing_is_skipped_with_the_same_logits():
    """A grafted drafter's adapter layer has down_proj = 0: the lean forward skips its MLP (exactly x + 0),
    and matches transformers' forward that computes it."""
    model = make_tiny_model("llama", VOCAB, layers=3, seed=4)
    with torch.no_grad():
        model.model.layers[2].mlp.down_proj.weight.zero_()
    lean = LeanDecoder(model, VOCAB)
    assert lean.adds_mlp == [True, True, False]
    assert LeanDecoder(model, VOCAB, exact=True).adds_mlp == [True] * 3  # Kangaroo's exact path: op for op
    for got, want in zip(replay(lean), replay(PlainDecoder(model, VOCAB))):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


# The lean tree drafter (`feed_tree`, `keep_path`) against plain feeds. A corrupted drafter cache only lowers
# acceptance (the target verifies every draft), so greedy equality cannot catch it: these compare numbers.
TREE_PROMPT = [5, 9, 17, 3, 22, 40, 8]  # the committed text; its last token is the tree's root
TREE_TOL = dict(rtol=1e-5, atol=1e-5)


def lean_tree() -> TokenTree:
    """root -> 1, 2, 3; 1 -> 4, 5; 2 -> 6; 5 -> 7, 8; 6 -> 9; 8 -> 10 (four levels, numbered level by level)."""
    tree = TokenTree.rooted_at(TREE_PROMPT[-1])
    for parent, token in [(0, 11), (0, 12), (0, 13), (1, 14), (1, 15), (2, 16), (5, 17), (5, 18), (6, 19), (8, 20)]:
        tree.add(parent, token)
    return tree


def tree_path(tree: TokenTree, node: int) -> list[int]:
    """The nodes from the root's first child down to `node`."""
    return tree.ancestors(node)[1:] + [node]


def fed_tree(model, feeding: str) -> tuple[LeanDecoder, dict[int, torch.Tensor]]:
    """A lean decoder fed the committed text plainly, then the tree's nodes after it (node n at slot committed + n -
    1): in one feed_tree, or level by level as `methods.tree` grows a tree (each level sees the slots of its
    ancestors fed before it). Returns the decoder and each node's logits."""
    tree, committed = lean_tree(), len(TREE_PROMPT)
    lean = LeanDecoder(model, VOCAB, capacity=8)  # grows during the tree feeds too
    lean.feed(torch.tensor([TREE_PROMPT]))
    levels = [list(range(1, len(tree)))]
    if feeding == "levels":
        levels = [[n for n in range(1, len(tree)) if tree.depths[n] == d] for d in range(1, max(tree.depths) + 1)]
    logits = {}
    for nodes in levels:
        past = lean.length
        visible = [[committed - 1 + a for a in tree.ancestors(n)] for n in nodes]
        mask = tree_mask(visible, committed, past, torch.float32, "cpu")
        positions = torch.tensor([[committed - 1 + tree.depths[n] for n in nodes]])
        out = lean.feed_tree(torch.tensor([[tree.tokens[n] for n in nodes]]), positions, mask)
        assert [committed - 1 + n for n in nodes] == list(range(past, lean.length))  # node n sits at its slot
        logits.update(zip(nodes, out))
    return lean, logits


@pytest.mark.parametrize("feeding", ["whole", "levels"])
def test_lean_feed_tree_gives_each_node_the_logits_of_its_path_fed_plainly(feeding):
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=8)
    tree = lean_tree()
    _, logits = fed_tree(model, feeding)
    assert sorted(logits) == list(range(1, len(tree)))
    for node, got in logits.items():
        text = TREE_PROMPT + [tree.tokens[n] for n in tree_path(tree, node)]
        with torch.inference_mode():
            plain = model(torch.tensor([text])).logits[0, -1]  # transformers' own forward of the path
        torch.testing.assert_close(got, plain, **TREE_TOL, msg=f"node {node}")


@pytest.mark.parametrize("feeding", ["whole", "levels"])
@pytest.mark.parametrize("leaf", [10, 9, 3, 4])  # gaps after the first slot, at the first slot, a lone child
def test_lean_keep_path_leaves_the_cache_of_a_plain_feed_of_that_path(feeding, leaf):
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=8)
    tree, committed = lean_tree(), len(TREE_PROMPT)
    lean, _ = fed_tree(model, feeding)
    path = tree_path(tree, leaf)
    lean.keep_path(list(range(committed)) + [committed - 1 + n for n in path])
    text = TREE_PROMPT + [tree.tokens[n] for n in path]
    plain = LeanDecoder(model, VOCAB)
    plain.feed(torch.tensor([text]))
    assert lean.length == plain.length == len(text)
    for layer, (keys, values) in enumerate(zip(lean.kv.keys, lean.kv.values)):
        for name, got, want in (("keys", keys, plain.kv.keys[layer]), ("values", values, plain.kv.values[layer])):
            torch.testing.assert_close(
                got[:, :, : len(text)], want[:, :, : len(text)], **TREE_TOL, msg=f"layer {layer} {name}"
            )
    nxt = torch.tensor([[7, 30]])  # the next round's feed: the rest of the path and the target's token
    got = lean.feed(nxt, keep=2)
    torch.testing.assert_close(got, plain.feed(nxt, keep=2), **TREE_TOL)
    with torch.inference_mode():
        reference = model(torch.tensor([text + [7, 30]])).logits[0, -2:]
    torch.testing.assert_close(got, reference, **TREE_TOL)


def test_lean_tree_entries_may_pass_the_position_limit_but_no_plain_feed_or_position_may():
    """A token tree's drafter entries are scratch until keep_path (issue 38: a tree near the end of the context
    asked for slots past the limit and the run stopped); a plain feed or a position past the limit stays an error."""
    from transformers import LlamaForCausalLM

    config = make_tiny_model("llama", VOCAB).config
    config.max_position_embeddings = 16
    torch.manual_seed(9)
    model = LlamaForCausalLM(config).eval()
    lean, text = LeanDecoder(model, VOCAB, capacity=8), list(range(30, 44))  # 14 of the 16 positions
    lean.feed(torch.tensor([text]))
    tokens = [11, 12, 13, 14, 15, 16]  # six children of the root: slots 14..19, all at position 14
    mask = tree_mask([[13]] * 6, 14, 14, torch.float32, "cpu")
    logits = lean.feed_tree(torch.tensor([tokens]), torch.tensor([[14] * 6]), mask)
    assert lean.length == 20 > lean.kv.limit
    with torch.inference_mode():
        for token, got in zip(tokens, logits):
            torch.testing.assert_close(got, model(torch.tensor([text + [token]])).logits[0, -1], **TREE_TOL)
    lean.keep_path(list(range(14)) + [18])  # the fifth child: copied down from past the limit
    got = lean.feed(torch.tensor([[7]]))[0]
    with torch.inference_mode():
        torch.testing.assert_close(got, model(torch.tensor([text + [15, 7]])).logits[0, -1], **TREE_TOL)
    assert lean.length == 16
    with pytest.raises(ValueError, match="context is 16 positions"):
        lean.feed(torch.tensor([[8]]))  # the scratch slots are there, but position 16 is not
    with pytest.raises(IndexError):
        lean.feed_tree(torch.tensor([[8]]), torch.tensor([[16]]), tree_mask([[15]], 16, 16, torch.float32, "cpu"))
