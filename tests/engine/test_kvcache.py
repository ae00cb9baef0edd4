"""`specviz.engine.kvcache.KVCache`, the one owner of a single-sequence cache and its lengths: every change it
makes (feed, crop, replay, row selection, the path gather of tree verification) leaves exactly the entries a
plain feed of the same tokens would."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from specviz.engine.kvcache import KVCache

VOCAB = 64


def fed(model, ids: list[int]) -> KVCache:
    kv = KVCache(model.config)
    kv.forward(model, len(ids), input_ids=torch.tensor([ids]), use_cache=True)
    return kv


def entries(kv: KVCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in kv.cache.layers]


def assert_same(a: KVCache, b: KVCache) -> None:
    assert a.lengths == b.lengths
    for (ka, va), (kb, vb) in zip(entries(a), entries(b)):
        torch.testing.assert_close(ka, kb, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5)


def test_gathered_tree_path_equals_feeding_the_path_alone():
    """A tree of three nodes after a prompt (x1 and x2 siblings, x3 a child of x1) fed in one forward with a
    tree mask and per-node positions; keeping the path x1, x3 leaves the cache of feeding [prompt, x1, x3]."""
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=5)
    prompt, x1, x2, x3 = [5, 9, 17, 3], 11, 12, 13
    n = len(prompt)
    tree = fed(model, prompt)
    parent = [-1, -1, 0]  # node -> its parent within the block (-1: the prompt's last token)
    mask = torch.zeros(1, 1, 3, n + 3, dtype=torch.bool)
    mask[..., :n] = True
    for node in range(3):
        at = node
        while at >= 0:
            mask[0, 0, node, n + at] = True
            at = parent[at]
    positions = torch.tensor([[n, n, n + 1]])
    tree.forward(
        model, 3, input_ids=torch.tensor([[x1, x2, x3]]), attention_mask=mask, position_ids=positions, use_cache=True
    )
    assert tree.lengths == [n + 3] * len(tree.lengths)
    tree.gather(list(range(n)) + [n, n + 2])
    assert_same(tree, fed(model, prompt + [x1, x3]))
    tree.check()


def test_crop_then_feed_equals_a_plain_feed():
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=6)
    kv = fed(model, [1, 2, 3, 4, 5])
    kv.crop(3)
    assert kv.lengths == [3, 3]
    kv.forward(model, 2, input_ids=torch.tensor([[7, 8]]), use_cache=True)
    assert_same(kv, fed(model, [1, 2, 3, 7, 8]))
    kv.check()


def test_replayed_entries_equal_the_forward_that_made_them():
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=7)
    kv = fed(model, [1, 2, 3])
    before = list(kv.lengths)
    kv.forward(model, 2, input_ids=torch.tensor([[4, 5]]), use_cache=True)
    taken = kv.since(range(2), before)
    kv.crop(3)
    kv.replay(range(2), taken)
    assert_same(kv, fed(model, [1, 2, 3, 4, 5]))


def test_repeated_rows_then_one_selected_equals_that_row_fed_alone():
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=8)
    kv = fed(model, [1, 2, 3, 4])
    rows = kv.repeated(3, 2, model.config)
    assert rows.lengths == [3, 3] and rows.cache.layers[0].keys.shape[0] == 2
    rows.forward(model, 1, input_ids=torch.tensor([[20], [30]]), use_cache=True)
    rows.select_rows(torch.tensor([1]))
    assert_same(rows, fed(model, [1, 2, 3, 30]))


def test_check_catches_a_length_the_cache_does_not_hold():
    model = make_tiny_model("llama", VOCAB, layers=2, hidden=32, seed=9)
    kv = fed(model, [1, 2, 3])
    kv.lengths[1] = 2
    try:
        kv.check()
    except AssertionError:
        return
    raise AssertionError("check() accepted a wrong length")
