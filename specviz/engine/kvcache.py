"""The one seam between the engine and transformers' KV caches: make a cache, hand it to a module's
forward, roll it back.

Why a seam: transformers moved the forward's cache keyword (`past_key_values` up to 5.23, `cache`
from 5.24) and an unknown keyword falls into `**kwargs` without a word, so a forward silently starts
from an empty cache. Every engine path calls models through `forward` below, which reads the keyword
from the module class's own signature (once per class) and refuses a class that names none. What
else the engine leans on (DynamicLayer subclassing, negative `crop`, `logits_to_keep`) lives here
too, and `specviz.models.selfcheck` proves the whole seam against `generate` when a pair is loaded.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

CACHE_KEYWORDS = ("cache", "past_key_values", "past_key_value")  # newest first


class UnsupportedModel(ValueError):
    """A module whose forward takes no cache keyword the engine knows."""


@functools.cache
def _signature_names(cls: type) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword this module's forward takes its KV cache by (read from the class signature)."""
    names = _signature_names(type(module))
    for name in CACHE_KEYWORDS:
        if name in names:
            return name
    raise UnsupportedModel(
        f"{type(module).__name__}.forward takes none of {', '.join(CACHE_KEYWORDS)}: this transformers version "
        "passes the KV cache some other way, which specviz does not know"
    )


def takes(module: torch.nn.Module, keyword: str) -> bool:
    return keyword in _signature_names(type(module))


def forward(module: torch.nn.Module, cache: Any, **kwargs: Any) -> Any:
    """`module(**kwargs)` with `cache` passed under the keyword its forward really takes. A
    `logits_to_keep` the forward does not take is applied to the output's logits instead."""
    keep = kwargs.pop("logits_to_keep", None)
    if keep is not None and takes(module, "logits_to_keep"):
        kwargs["logits_to_keep"] = keep
        keep = None
    out = module(**kwargs, **{cache_keyword(module): cache})
    if keep:
        out.logits = out.logits[:, -keep:]
    return out


class GrowingLayer(DynamicLayer):
    """A DynamicLayer that writes new keys/values into a buffer grown by doubling instead of
    `torch.cat`-ing the whole history every step. The cat made each forward copy the full cache (on a
    small CPU model, 30-55 % of a verification's time); what attention sees is identical: views of
    exactly the held entries. `crop` (inherited) just narrows the views."""

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any) -> None:
        super().lazy_initialization(key_states, value_states, *args)
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def _owns_views(self) -> bool:
        return self.buffers is not None and self.keys.numel() > 0 and self.keys.data_ptr() == self.buffers[0].data_ptr()

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        end = held + key_states.shape[-2]
        buffers = self.buffers if (held == 0 or self._owns_views()) else None  # keys replaced from outside
        if buffers is None or end > buffers[0].shape[-2] or buffers[0].shape[:-2] != key_states.shape[:-2]:
            capacity = max(end, 2 * held, 64)
            buffers = (
                key_states.new_empty((*key_states.shape[:-2], capacity, key_states.shape[-1])),
                value_states.new_empty((*value_states.shape[:-2], capacity, value_states.shape[-1])),
            )
            if held:
                buffers[0][..., :held, :] = self.keys
                buffers[1][..., :held, :] = self.values
            self.buffers = buffers
        buffers[0][..., held:end, :] = key_states
        buffers[1][..., held:end, :] = value_states
        self.keys, self.values = buffers[0][..., :end, :], buffers[1][..., :end, :]
        return self.keys, self.values


def new_cache(config: Any = None) -> DynamicCache:
    """An empty DynamicCache shaped by `config` (sliding-window layers where the config has them)."""
    return DynamicCache(config=config) if config is not None else DynamicCache()


def full_attention_only(config) -> bool:
    """True when every layer attends to the whole history (no sliding window in any layer), as the
    cache transformers builds for this config says."""
    return all(type(layer) is DynamicLayer for layer in new_cache(config).layers)


def growing_cache(config) -> DynamicCache:
    """A DynamicCache whose full-attention layers are GrowingLayers (sliding-window layers stay as they are)."""
    cache = new_cache(config)
    cache.layers = [GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


def held(layer: Any) -> int:
    """Entries a cache layer holds (0 before its first update)."""
    return layer.get_seq_length() if getattr(layer, "is_initialized", False) else 0


def crop_layer(layer: Any, length: int) -> None:
    """Keep the first `length` entries of one cache layer (a negative count to drop: the form every 5.x takes)."""
    extra = held(layer) - length
    if extra > 0:
        layer.crop(-extra)


def crop(cache: DynamicCache, length: int) -> None:
    """Keep the first `length` entries of every layer of `cache`."""
    for layer in cache.layers:
        crop_layer(layer, length)


def is_filled(layer: Any) -> bool:
    return bool(getattr(layer, "is_initialized", False) and layer.keys is not None and layer.keys.numel())


def filled_layers(cache: DynamicCache):
    """The layers of `cache` that hold entries (batched realignment moves exactly these)."""
    return (layer for layer in cache.layers if is_filled(layer))


def path_split(positions: list[int]) -> tuple[int, list[int]]:
    """A gather's positions (ascending) as (the entries that stay where they are, the positions after the first
    gap, which are copied down to follow them)."""
    base = next((i for i, p in enumerate(positions) if p != i), len(positions))
    return base, positions[base:]


class KVCache:
    """A transformers cache and the number of entries each of its layers holds: the one owner of both.

    Every change to a single-sequence cache goes through it: a forward that appends (`forward`), entries a
    module appended to some layers only (`appended`), entries replayed from an earlier forward (`since`,
    `replay`), rollback (`crop`: an index, never a copy), row selection (`select_rows`, `repeated`) and the
    gather of a path of positions (`gather`, what tree verification keeps). Methods hold a KVCache, never the
    transformers cache inside it. (Batched, left-padded caches are `specviz.engine.batch_cache.BatchKV`'s; the
    lean decoders' preallocated buffers are `specviz.engine.lean.KVBuffers`'s.)"""

    def __init__(self, config: Any = None, *, growing: bool = False, depth: int | None = None):
        self.cache = growing_cache(config) if growing else new_cache(config)
        self.lengths = [0] * (depth if depth is not None else max(1, len(self.cache.layers)))

    @property
    def length(self) -> int:
        """Entries the first layer holds (every layer, for a cache fed whole-model forwards)."""
        return self.lengths[0]

    def forward(self, module: torch.nn.Module, new: int, layers: range | None = None, **kwargs: Any) -> Any:
        """`module`'s forward over `new` positions on this cache; `layers` are those it appends to (all)."""
        out = forward(module, self.cache, **kwargs)
        self.appended(new, layers)
        return out

    def run(self, call: Any, new: int, layers: range | None = None) -> Any:
        """`call(cache)` for a module that takes the transformers cache positionally (the Kangaroo adapter)."""
        out = call(self.cache)
        self.appended(new, layers)
        return out

    def appended(self, new: int, layers: range | None = None) -> None:
        for i in layers if layers is not None else range(len(self.lengths)):
            self.lengths[i] += new

    def crop(self, length: int) -> None:
        """Every layer keeps at most its first `length` entries."""
        for i, held_now in enumerate(self.lengths):
            if held_now > length:
                if i < len(self.cache.layers):
                    crop_layer(self.cache.layers[i], length)
                self.lengths[i] = length

    def since(self, layers: range, before: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the entries `layers` appended after holding `before` (to replay them later)."""
        return [
            (self.cache.layers[i].keys[..., b:, :].clone(), self.cache.layers[i].values[..., b:, :].clone())
            for i, b in zip(layers, before)
        ]

    def replay(self, layers: range, entries: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Append entries taken by `since`, as if the forward that made them had run again."""
        for i, (keys, values) in zip(layers, entries):
            self.cache.layers[i].update(keys, values)
            self.lengths[i] += keys.shape[-2]

    def ready(self, layers: range) -> bool:
        """Whether `layers` exist and were fed (a replay needs their shapes)."""
        return all(
            i < len(self.cache.layers) and getattr(self.cache.layers[i], "is_initialized", False) for i in layers
        )

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep the rows `index` of a batched cache (lengths are per position, the same in every row)."""
        self.cache.batch_select_indices(index)

    def repeated(self, length: int, rows: int, config: Any = None) -> "KVCache":
        """A new cache holding this one's first `length` entries (batch 1), repeated for `rows` rows."""
        out = KVCache(config, depth=len(self.lengths))
        for i, layer in enumerate(self.cache.layers):
            if length and is_filled(layer):
                out.cache.update(
                    layer.keys[:, :, :length].repeat(rows, 1, 1, 1),
                    layer.values[:, :, :length].repeat(rows, 1, 1, 1),
                    i,
                )
                out.lengths[i] = length
        return out

    def gather(self, positions: list[int] | torch.Tensor) -> None:
        """Keep only the entries at `positions` (ascending), in that order, in every layer: the accepted path of
        a verified tree, whose other branches' entries go. The one exception to "rollback is an index": the
        entries up to the first gap stay where they are and only the path after it is copied (in place, in a
        GrowingLayer's buffer), so a round costs the path's length, not the cache's."""
        positions = [int(p) for p in (positions.tolist() if isinstance(positions, torch.Tensor) else positions)]
        base, tail = path_split(positions)
        for i, layer in enumerate(self.cache.layers):
            if not is_filled(layer):
                continue
            if tail:
                at = torch.tensor(tail, dtype=torch.long, device=layer.keys.device)
                keys, values = layer.keys.index_select(-2, at), layer.values.index_select(-2, at)
                end = base + len(tail)
                if isinstance(layer, GrowingLayer) and layer._owns_views():
                    layer.buffers[0][..., base:end, :] = keys
                    layer.buffers[1][..., base:end, :] = values
                    layer.keys, layer.values = layer.buffers[0][..., :end, :], layer.buffers[1][..., :end, :]
                else:
                    layer.keys = torch.cat([layer.keys[..., :base, :], keys], dim=-2)
                    layer.values = torch.cat([layer.values[..., :base, :], values], dim=-2)
            else:
                crop_layer(layer, base)
            if i < len(self.lengths):
                self.lengths[i] = len(positions)

    def check(self) -> None:
        """The cache really holds what the lengths say (tests call this after every step)."""
        held_now = [held(layer) for layer in self.cache.layers[: len(self.lengths)]]
        assert held_now == self.lengths[: len(held_now)], (
            f"cache layers hold {held_now} entries, expected {self.lengths}"
        )
