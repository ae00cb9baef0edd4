"""Forwards memoized by the tokens they cover, for many runs over one prompt (the exactness lab's samples).

A model forward is a deterministic function of the tokens it has seen, so runs that share a prompt share most of
their forwards. `ForwardMemo` is the factory one such session hands to `RunContext` in place of the plain decoders:

- `decoder(model, vocab, lean)` gives a `MemoDecoder` (the `protocols.Decoder`): a lazy view of ONE shared real
  decoder per (model, kind of forward) whose forwards are memoized by (tokens held, tokens fed). On a miss the
  shared decoder is rolled back to the longest common prefix (a crop) and fed the rest. A token tree's forwards
  (`feed_tree`) are memoized by the tree's tokens, positions and mask; a view holds them as a pending tree until
  `keep_path` keeps a root-to-node path, whose entries are then those of the path fed as plain tokens (each node
  saw only its ancestors).
- `split_decoder(model, vocab, exit_layer)` gives a `MemoSplit` (the `protocols.SplitDecoder`): one shared target
  split by layer whose layer-range forwards are memoized by the tokens they cover; a hit re-appends the KV entries
  the first computation appended, so every cache ends as if the forward had run. The prompt's prefill runs once:
  a later run crops every layer back to it.

Every random choice stays with the runs themselves. (A memoized forward may have been computed along another path
to the same tokens, e.g. in a longer block: its last float bits can then differ from a fresh run's, as any two
block shapes do.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from specviz.engine.decoder import TransformersDecoder
from specviz.engine.lean import LeanDecoder
from specviz.engine.split import SplitTarget

MAX_BYTES = 256 * 2**20  # memoized outputs kept per shared decoder before its memo starts over


@dataclass(frozen=True, eq=False)
class TreeFeed:
    """One `feed_tree` call held in a cache after its linear tokens: the memo key, and what replays it."""

    key: tuple
    ids: torch.Tensor
    positions: torch.Tensor
    mask: torch.Tensor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TreeFeed) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    @staticmethod
    def of(ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> TreeFeed:
        seen = mask[0, 0].eq(0).cpu().numpy()  # which entries each node attends to: the tree's shape
        key = (tuple(ids[0].tolist()), tuple(positions[0].tolist()), seen.shape, seen.tobytes())
        return TreeFeed(key, ids, positions, mask)


class Table:
    """Memoized values by key, with hit and miss counts; cleared when it would hold more than `max_bytes`."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.values: dict[tuple, Any] = {}
        self.bytes = 0
        self.hits = self.misses = 0

    def get(self, key: tuple) -> Any:
        value = self.values.get(key)
        if value is not None:
            self.hits += 1
        return value

    def put(self, key: tuple, value: Any, tensors: list[torch.Tensor]) -> None:
        """Remember `value` under `key` (a miss); `tensors`: what it holds, for the byte count."""
        self.misses += 1
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.bytes + size > self.max_bytes:
            self.values.clear()
            self.bytes = 0
        self.values[key] = value
        self.bytes += size


class SharedDecoder:
    """One real decoder over a model, with the tokens its cache holds and the memo of its forwards."""

    def __init__(self, inner: Any, max_bytes: int = MAX_BYTES):
        self.inner = inner
        self.tokens: list[int] = []  # what the real cache holds: these tokens, in order,
        self.trees: tuple[TreeFeed, ...] = ()  # then the nodes of these tree feeds
        self.memo = Table(max_bytes)

    def sync(self, tokens: list[int], device: torch.device, trees: tuple[TreeFeed, ...] = ()) -> None:
        """Make the real cache hold exactly `tokens` (crop to the common prefix, feed the rest), then `trees`."""
        if self.trees and (trees[: len(self.trees)] != self.trees or self.tokens != tokens):
            self.inner.rollback(len(self.tokens))  # the tree nodes go first; the linear part is kept
            self.trees = ()
        common = 0
        for a, b in zip(self.tokens, tokens):
            if a != b:
                break
            common += 1
        if common < len(self.tokens):
            self.inner.rollback(common)
            self.tokens = self.tokens[:common]
        if common < len(tokens):
            self.inner.feed(torch.tensor([tokens[common:]], dtype=torch.long, device=device))
            self.tokens = list(tokens)
        for feed in trees[len(self.trees) :]:
            self.inner.feed_tree(feed.ids, feed.positions, feed.mask)
        self.trees = trees


class MemoDecoder:
    """The `Decoder` protocol over a SharedDecoder: `tokens` is what this view holds; the real cache is brought to
    it only when a forward is not in the memo."""

    def __init__(self, shared: SharedDecoder):
        self.shared = shared
        self.tokens: list[int] = []
        self.trees: tuple[TreeFeed, ...] = ()  # tree feeds after `tokens`, until keep_path makes them a path
        self.model = shared.inner.model
        self.vocab = shared.inner.vocab

    @property
    def length(self) -> int:
        return len(self.tokens) + sum(feed.ids.shape[1] for feed in self.trees)

    def remember(self, key: tuple, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The memoized value of `key`, computed (on the real decoder, brought to this view) on a miss."""
        memo = self.shared.memo
        value = memo.get(key)
        if value is None:
            value = compute()
            memo.put(key, value, [value])
        return value

    def through(
        self, tag: Any, ids: torch.Tensor, compute: Callable[[Any, torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """`compute(real decoder, ids)` after the tokens this view holds, memoized; ids (1, T) are appended."""
        if self.trees:
            raise RuntimeError("a linear feed after a tree feed: keep a path of the tree first (keep_path)")
        new = ids[0].tolist()
        shared = self.shared

        def compute_here() -> torch.Tensor:
            shared.sync(self.tokens, ids.device)
            value = compute(shared.inner, ids)
            shared.tokens = self.tokens + new
            return value

        value = self.remember((tag, tuple(self.tokens), tuple(new)), compute_here)
        self.tokens = self.tokens + new
        return value

    def feed(self, ids: torch.Tensor, keep: int = 1) -> torch.Tensor:
        return self.through(("feed", keep), ids, lambda dec, x: dec.feed(x, keep=keep))

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.through("hidden", ids, lambda dec, x: dec.hidden(x))

    def feed_tree(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A tree's nodes after what this view holds, memoized by the tree's tokens, positions and shape; the view
        holds them as a pending tree until `keep_path`."""
        feed, shared = TreeFeed.of(ids, positions, mask), self.shared

        def compute_here() -> torch.Tensor:
            shared.sync(self.tokens, ids.device, self.trees)
            value = shared.inner.feed_tree(ids, positions, mask)
            shared.trees = self.trees + (feed,)
            return value

        value = self.remember(("tree", tuple(self.tokens), tuple(f.key for f in self.trees), feed.key), compute_here)
        self.trees = self.trees + (feed,)
        return value

    def keep_path(self, positions: list[int]) -> None:
        """Keep the entries at `positions`: the committed text and a root-to-node path of the pending trees, whose
        entries are then those of that path fed as plain tokens (each node saw only its ancestors). The real cache
        does the same gather when it holds exactly this view's entries; otherwise its next sync feeds the path."""
        flat = self.tokens + [t for feed in self.trees for t in feed.ids[0].tolist()]
        linear = len(self.tokens)
        if (
            list(positions[:linear]) != list(range(linear))
            or any(b <= a for a, b in zip(positions, positions[1:]))
            or (positions and positions[-1] >= len(flat))
        ):
            raise ValueError(
                "keep_path keeps every plain token and then ascending tree entries (one root-to-node path)"
            )
        kept = [flat[p] for p in positions]
        shared = self.shared
        if shared.tokens == self.tokens and shared.trees == self.trees:
            shared.inner.keep_path(positions)
            shared.tokens, shared.trees = list(kept), ()
        self.tokens, self.trees = kept, ()

    def rollback(self, length: int) -> None:
        if self.trees and length < self.length:
            raise RuntimeError("rollback inside a pending tree: keep a path of it first (keep_path)")
        if length < len(self.tokens):
            self.tokens = self.tokens[:length]

    def reset(self) -> None:
        self.tokens, self.trees = [], ()

    def check(self) -> None:  # the real cache is checked by its own decoder
        pass


class MemoSplit:
    """The `SplitDecoder` protocol over one shared `SplitTarget` (transformers' layer modules: the lean shallow pass
    keeps its KV apart, where a replay could not reach it). `tokens` is what the shallow layers hold; a layer-range
    forward is memoized by the tokens it covers, and a hit re-appends the KV entries it appended the first time, so
    the real caches always hold exactly this run's tokens. Runs share it one after another: each starts with
    `prefill`, which crops back to the prompt when the prompt is the one already there."""

    lean = False

    def __init__(self, inner: SplitTarget, max_bytes: int = MAX_BYTES):
        self.inner = inner
        self.exit_layer = inner.exit_layer
        self.memo = Table(max_bytes)
        self.tokens: list[int] = []  # the ids the shallow layers hold, in order
        self.prompt: tuple[list[int], torch.Tensor | None] | None = None  # the prefilled ids and their states

    @property
    def length(self) -> int:
        return self.inner.length

    def prefill(self, ids: torch.Tensor) -> torch.Tensor | None:
        tokens = ids[0].tolist()
        if self.prompt is not None and self.prompt[0] == tokens and self.tokens[: len(tokens)] == tokens:
            self.rollback(len(tokens))  # the prompt's entries are still the caches' first ones
            return self.prompt[1]
        self.rollback(0)
        states = self.inner.prefill(ids)
        self.tokens = tokens
        self.prompt = (tokens, states)
        return states

    def shallow(self, ids: torch.Tensor) -> torch.Tensor:
        pos, new = len(self.tokens), ids[0].tolist()
        self.tokens.extend(new)
        key = ("shallow", pos, tuple(self.tokens))
        return self.call(key, range(0, self.exit_layer), lambda: self.inner.shallow(ids))

    def deep(self, states: torch.Tensor) -> torch.Tensor:
        pos, new = self.inner.length, states.shape[1]
        key = ("deep", pos, tuple(self.tokens[: pos + new]))
        return self.call(key, range(self.exit_layer, self.inner.stack.depth), lambda: self.inner.deep(states))

    def rollback(self, length: int) -> None:
        self.inner.rollback(length)
        del self.tokens[length:]

    def call(self, key: tuple, layers: range, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """compute() (which appends to `layers`), or its remembered output with its KV entries replayed."""
        kv = self.inner.stack.kv
        hit = self.memo.values.get(key)
        if hit is not None and len(hit[1]) == len(layers) and kv.ready(layers):
            out, entries = hit
            kv.replay(layers, entries)
            self.memo.hits += 1
            return out
        before = [kv.lengths[i] for i in layers]
        out = compute()
        entries = kv.since(layers, before)
        self.memo.put(key, (out, entries), [out] + [x for pair in entries for x in pair])
        return out


class ForwardMemo:
    """The shared decoders and split targets of one session of runs over one prompt, one per model and kind."""

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.shared: dict[tuple, SharedDecoder] = {}
        self.splits: dict[tuple, MemoSplit] = {}

    def decoder(self, model: torch.nn.Module, vocab: int, lean: bool = False) -> MemoDecoder:
        key = (id(model), "lean" if lean else "transformers")
        if key not in self.shared:
            inner = LeanDecoder(model, vocab) if lean else TransformersDecoder(model, vocab)
            self.shared[key] = SharedDecoder(inner, self.max_bytes)
        return MemoDecoder(self.shared[key])

    def split_decoder(self, model: torch.nn.Module, vocab: int, exit_layer: int) -> MemoSplit:
        key = (id(model), exit_layer)
        if key not in self.splits:
            self.splits[key] = MemoSplit(SplitTarget(model, vocab, exit_layer), self.max_bytes)
        return self.splits[key]

    def stats(self) -> dict[str, int]:
        tables = [s.memo for s in self.shared.values()] + [s.memo for s in self.splits.values()]
        return {"hits": sum(t.hits for t in tables), "misses": sum(t.misses for t in tables)}
