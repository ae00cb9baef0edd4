"""`specviz.engine.tree`: a token tree fed in one forward with its mask and positions gives every node the logits
of its path fed alone, on every architecture the engine runs; keeping a path leaves the cache of that path."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, make_tiny_model

from specviz.engine.decoder import TransformersDecoder
from specviz.engine.kvcache import full_attention_only
from specviz.engine.tree import TokenTree, tree_mask

VOCAB = 64
PROMPT = [5, 9, 17, 3, 22]


def sample_tree() -> TokenTree:
    """root -> a, b; a -> c, d; c -> e; b -> f (nodes 1..6, added level by level)."""
    tree = TokenTree.rooted_at(PROMPT[-1])
    a, b = tree.add(0, 11), tree.add(0, 12)
    c, _ = tree.add(a, 13), tree.add(a, 14)
    tree.add(b, 15)
    tree.add(c, 16)
    return tree


def path_tokens(tree: TokenTree, node: int) -> list[int]:
    """The tokens after the root on the way to `node` (none for the root itself)."""
    return [tree.tokens[n] for n in tree.ancestors(node)[1:] + [node]] if node else []


def test_token_tree_structure():
    tree = sample_tree()
    assert tree.children(0) == [1, 2] and tree.children(1) == [3, 4] and tree.children(3) == [6]
    assert tree.ancestors(6) == [0, 1, 3] and tree.depths == [0, 1, 1, 2, 2, 2, 3]
    assert tree.sibling_ranks() == [0, 0, 1, 0, 1, 0, 0] and tree.leaves() == 3
    sub = tree.subtree([1, 3, 6])
    assert sub.tokens == [PROMPT[-1], 11, 13, 16] and sub.parents == [-1, 0, 1, 2]


def test_mask_sees_context_ancestors_and_itself():
    mask = tree_mask([[7], [7, 8]], prefix=6, past=8, dtype=torch.float32, device="cpu")
    seen = (mask[0, 0] == 0).int().tolist()
    assert seen[0] == [1] * 6 + [0, 1] + [1, 0]
    assert seen[1] == [1] * 6 + [0, 1] + [1, 1]  # row 1's parent is row 0 (slot 8)
    assert mask.dtype == torch.float32 and mask.min() == torch.finfo(torch.float32).min


@pytest.mark.parametrize("arch", ARCHS)
def test_tree_logits_equal_each_path_fed_alone(arch):
    model = make_tiny_model(arch, VOCAB, layers=2, hidden=32, seed=5)
    if not full_attention_only(model.config):
        pytest.skip("sliding-window layers: the tree method refuses this model")
    tree = sample_tree()
    dec = TransformersDecoder(model, VOCAB)
    dec.feed(torch.tensor([PROMPT[:-1]]))
    past = dec.length
    visible = [[past + a for a in tree.ancestors(n)] for n in range(len(tree))]
    logits = dec.feed_tree(
        torch.tensor([tree.tokens]),
        torch.tensor([[past + d for d in tree.depths]]),
        tree_mask(visible, past, past, model.dtype, "cpu"),
    )
    assert logits.shape == (len(tree), VOCAB) and dec.length == past + len(tree)
    for node in range(len(tree)):
        alone = TransformersDecoder(model, VOCAB).feed(torch.tensor([PROMPT + path_tokens(tree, node)]))[0]
        torch.testing.assert_close(logits[node], alone, rtol=1e-4, atol=1e-4)
    # keep the path root -> a -> c -> e, then feed one more token: the same as feeding that text plainly
    path = [1, 3, 6]
    dec.keep_path(list(range(past + 1)) + [past + n for n in path])
    nxt = dec.feed(torch.tensor([[7]]))[0]
    plain = TransformersDecoder(model, VOCAB).feed(torch.tensor([PROMPT + path_tokens(tree, 6) + [7]]))[0]
    torch.testing.assert_close(nxt, plain, rtol=1e-4, atol=1e-4)
    dec.check()
