"""The batched KV cache: rows of different lengths, left-padded, realigned after each round.

It owns the rows' committed lengths; the batch methods and the load-time self-check use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from specviz.engine import kvcache
from specviz.engine.decoder import Output
from specviz.engine.kvcache import filled_layers as each_layer
from specviz.engine.kvcache import is_filled


@dataclass
class Seq:
    """One request: its prompt, its output, the pending token not yet in any cache."""

    index: int
    prompt_ids: list[int]
    out: Output
    pending: int = -1
    steps: int = 0  # rounds this row took part in
    healed: int = 0  # 1 when the prompt's last token is the healed first output token (specviz.engine.healing)

    @property
    def length(self) -> int:  # tokens in the cache (everything but the pending token)
        return len(self.prompt_ids) + len(self.out.ids) - 1 - self.healed


def gather_columns(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, H, S, D) -> (B, H, W', D) with column j of row b taken from column index[b, j]."""
    return t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))


def left_pad(t: torch.Tensor, width: int) -> torch.Tensor:
    """(1, H, S, D) -> (1, H, width, D), zeros on the left (masked out)."""
    return torch.nn.functional.pad(t, (0, 0, width - t.shape[2], 0))


class BatchKV:
    """A model's left-padded batched KV cache: row i's `valid[i]` entries are the last columns."""

    def __init__(self, model: torch.nn.Module, vocab: int, naive: bool = False):
        self.model, self.vocab, self.naive = model, vocab, naive
        self.cache = kvcache.new_cache(model.config)
        self.valid: list[int] = []

    @property
    def width(self) -> int:
        return self.cache.get_seq_length()

    def pads(self) -> list[int]:
        return [self.width - v for v in self.valid]

    @torch.inference_mode()
    def feed(self, ids: torch.Tensor, pads: list[int] | None = None) -> torch.Tensor:
        """Append (B, T) ids (left-padded by `pads` when the cache is empty); logits (B, T, V)."""
        batch, new = ids.shape
        device = ids.device
        width = self.width
        if not self.valid:
            self.valid = [0] * batch
        pads_new = pads or [0] * batch
        cols = torch.arange(width + new, device=device)
        first_valid = torch.tensor([width - v for v in self.valid], device=device)
        mask = (cols[None, :] >= first_valid[:, None]).long()
        if pads:  # prompt padding inside the new block
            pad_t = torch.tensor(pads_new, device=device)
            mask[:, width:] = (torch.arange(new, device=device)[None, :] >= pad_t[:, None]).long()
        if self.naive:
            positions = (width + torch.arange(new, device=device)).expand(batch, new)
        else:
            start = torch.tensor(self.valid, device=device) - torch.tensor(pads_new, device=device)
            positions = (start[:, None] + torch.arange(new, device=device)[None, :]).clamp_min(0)
        out = kvcache.forward(
            self.model, self.cache, input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True
        )
        self.valid = [v + new - p for v, p in zip(self.valid, pads_new)]
        return out.logits[..., : self.vocab]

    def settle(self, kept: list[int], block: int) -> list[dict]:
        """After a fed block of `block` tokens, row i keeps its first kept[i]: realign (see module doc)."""
        width = self.width
        top = max(kept)
        valid_after = [v - block + k for v, k in zip(self.valid, kept)]
        shifts = [top - k for k in kept]
        end = width - block + top  # all rows end here after the shift
        drop = min(end - v for v in valid_after)  # columns that are pad in every row
        new_width = end - drop
        device = next(each_layer(self.cache)).keys.device if any(True for _ in each_layer(self.cache)) else None
        moved = any(shifts) or drop
        if moved and device is not None:
            cols = torch.arange(new_width, device=device)
            index = (cols[None, :] + drop - torch.tensor(shifts, device=device)[:, None]).clamp_min(0)  # (B, W')
            for layer in each_layer(self.cache):
                layer.keys = gather_columns(layer.keys, index)
                layer.values = gather_columns(layer.values, index)
        elif width > new_width:
            kvcache.crop(self.cache, new_width)
        infos = []
        for i, (v, k, s) in enumerate(zip(self.valid, kept, shifts)):
            pad_before = width - block - (v - block)
            pad_after = new_width - valid_after[i]
            infos.append(
                {
                    "kept": k,
                    "shift": s,
                    "pad_before": pad_before,
                    "pad_after": pad_after,
                    "pad_added": max(0, pad_after - pad_before),
                    "pad_removed": max(0, pad_before - pad_after),
                    "cache_moved": valid_after[i] if (s or drop) else 0,
                    "width_before": width - block,
                    "width_after": new_width,
                }
            )
        self.valid = valid_after
        return infos

    def keep_rows(self, rows: list[int]) -> None:
        """Drop finished rows from the batch."""
        if len(rows) == len(self.valid):
            return
        index = torch.tensor(rows, dtype=torch.long, device=next(each_layer(self.cache)).keys.device)
        for layer in each_layer(self.cache):
            layer.keys = layer.keys.index_select(0, index)
            layer.values = layer.values.index_select(0, index)
        self.valid = [self.valid[i] for i in rows]
        drop = min(self.width - v for v in self.valid)
        if drop:
            for layer in each_layer(self.cache):
                layer.keys, layer.values = layer.keys[:, :, drop:], layer.values[:, :, drop:]

    # -- EXSPEC: per-sequence caches in and out of a batch ------------------------------------
    @classmethod
    def stack(cls, model: torch.nn.Module, vocab: int, parts: list["BatchKV"], naive: bool) -> tuple["BatchKV", bool]:
        """One batch from single-row caches, left-padded to the longest; (batch, padding was needed)."""
        batch = cls(model, vocab, naive)
        width = max(p.width for p in parts)
        padded = any(p.width != width for p in parts)
        if width:
            for li, layers in enumerate(zip(*(p.cache.layers for p in parts))):
                filled = [layer for layer in layers if is_filled(layer)]
                if not filled:
                    continue
                shape_k, shape_v, like = filled[0].keys.shape, filled[0].values.shape, filled[0].keys
                keys = [
                    left_pad(layer.keys if is_filled(layer) else like.new_zeros(1, shape_k[1], 0, shape_k[3]), width)
                    for layer in layers
                ]
                values = [
                    left_pad(layer.values if is_filled(layer) else like.new_zeros(1, shape_v[1], 0, shape_v[3]), width)
                    for layer in layers
                ]
                batch.cache.update(torch.cat(keys), torch.cat(values), li)
        batch.valid = [p.valid[0] for p in parts]
        return batch, padded

    def split(self, trim_right: list[int]) -> list["BatchKV"]:
        """Each row's valid entries as a single-row cache (views: nothing moves). Row i's last
        trim_right[i] columns are its rejected drafts and are left out."""
        out = []
        for i, v in enumerate(self.valid):
            single = BatchKV(self.model, self.vocab, self.naive)
            for li, layer in enumerate(self.cache.layers):
                if is_filled(layer):
                    end = layer.keys.shape[2] - trim_right[i]
                    single.cache.update(
                        layer.keys[i : i + 1, :, end - v : end], layer.values[i : i + 1, :, end - v : end], li
                    )
            single.valid = [v]
            out.append(single)
        return out
