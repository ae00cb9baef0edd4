"""The seams a method sees (`engine.protocols`): every decoder offers all of `Decoder`, every split target all of
`SplitDecoder`, and the memoizing implementations give what the plain ones give, with their caches holding exactly
what a plain run's would."""

from __future__ import annotations

import torch
from conftest import make_tiny_model

from specviz.engine.decoder import TransformersDecoder
from specviz.engine.lean import LeanDecoder
from specviz.engine.memo import ForwardMemo
from specviz.engine.protocols import Decoder, SplitDecoder
from specviz.engine.split import SplitTarget

VOCAB = 64


def members(protocol: type) -> set[str]:
    """The names a protocol declares: its methods, properties and annotated attributes."""
    names = {name for name in vars(protocol) if not name.startswith("_")}
    return names | set(getattr(protocol, "__annotations__", {}))


def test_every_decoder_offers_the_whole_protocol():
    model = make_tiny_model("llama", VOCAB, layers=3, seed=1)
    assert {"feed", "hidden", "feed_tree", "keep_path", "rollback", "reset", "length", "model", "vocab"} <= members(
        Decoder
    )
    decoders = [TransformersDecoder(model, VOCAB), LeanDecoder(model, VOCAB), ForwardMemo().decoder(model, VOCAB)]
    for decoder in decoders:
        missing = sorted(name for name in members(Decoder) if not hasattr(decoder, name))
        assert not missing, f"{type(decoder).__name__} lacks {missing}"
    splits = [SplitTarget(model, VOCAB, 1), SplitTarget(model, VOCAB, 1, lean=True)]
    splits.append(ForwardMemo().split_decoder(model, VOCAB, 1))
    for split in splits:
        missing = sorted(name for name in members(SplitDecoder) if not hasattr(split, name))
        assert not missing, f"{type(split).__name__} lacks {missing}"


def test_hidden_is_what_the_head_reads():
    """`hidden` (VocabTrim applies its own head to it) is the final-normed state whose head is `feed`'s logits."""
    model = make_tiny_model("llama", VOCAB, layers=2, seed=2)
    ids = torch.tensor([[3, 9, 27, 5]])
    for make in (TransformersDecoder, LeanDecoder):
        a, b = make(model, VOCAB), make(model, VOCAB)
        logits = model.get_output_embeddings()(b.hidden(ids)[0, -1:])
        torch.testing.assert_close(logits, a.feed(ids), rtol=1e-5, atol=1e-6)
        assert a.length == b.length == 4


def rounds(split, prompt: list[int], script: list[tuple[list[int], int]]) -> list[torch.Tensor]:
    """Kangaroo's use of a split: the prompt's prefill, then per round the shallow pass of some tokens, the deep
    pass over their states, and a rollback; returns every deep pass's logits."""
    out = []
    split.prefill(torch.tensor([prompt]))
    for fed, keep in script:
        states = split.shallow(torch.tensor([fed]))
        out.append(split.deep(states))
        split.rollback(keep)
    return out


def test_a_memoized_split_gives_the_plain_logits_and_caches():
    """Two runs through one MemoSplit (the second served from its memo, its KV entries replayed) give the logits of
    a plain SplitTarget bit for bit, and every layer's cache then holds exactly the committed tokens."""
    model = make_tiny_model("llama", VOCAB, layers=3, seed=3)
    prompt = [1, 4, 9, 16, 25]
    script = [([30, 31, 32], 7), ([33], 8), ([34, 35], 8), ([36, 37, 38, 39], 11)]  # fed, then kept
    plain = rounds(SplitTarget(model, VOCAB, 1), prompt, script)
    memo = ForwardMemo()
    split = memo.split_decoder(model, VOCAB, 1)
    for _ in range(2):
        assert all(torch.equal(a, b) for a, b in zip(rounds(split, prompt, script), plain))
        assert split.inner.stack.lengths == [11, 11, 11] and split.tokens == prompt + [30, 31, 33, 36, 37, 38]
        split.inner.stack.check()
    assert memo.stats()["hits"] == memo.stats()["misses"] == 2 * len(script)
