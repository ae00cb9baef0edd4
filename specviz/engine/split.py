"""A target split at an exit layer (`SplitTarget`, a `specviz.engine.protocols.SplitDecoder`): Kangaroo drafts
from layers [0, l) and verifies with layers [l, N) over the states the drafts already have.

The deep layers run on the model's own layer modules (`layers.LayerStack`, one cache whose layers may hold
different lengths). The shallow pass runs there too, or on `lean.LeanDecoder(depth=l, exact=True)` with its own
preallocated KV: bit-identical to the layer modules in float32 (tests, load-time self-check), which matters
because verification continues from its states.
"""

from __future__ import annotations

import torch

from specviz.engine.layers import LayerStack
from specviz.engine.lean import LeanDecoder


class SplitTarget:
    """The target split at `exit_layer`, the shallow pass lean where asked (the caller checks `lean.supports`)."""

    def __init__(self, model: torch.nn.Module, vocab: int, exit_layer: int, lean: bool = False):
        self.stack = LayerStack(model, vocab)
        if not 1 <= exit_layer < self.stack.depth:
            raise ValueError(f"exit_layer must be between 1 and {self.stack.depth - 1}; got {exit_layer}")
        self.exit_layer = exit_layer
        self.lean = lean
        self.shallow_pass = LeanDecoder(model, vocab, depth=exit_layer, exact=True) if lean else None

    @property
    def length(self) -> int:
        return self.stack.lengths[self.exit_layer]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor | None:
        if not ids.shape[1]:
            return None
        states = self.shallow(ids)
        self.stack.run(states, self.exit_layer, self.stack.depth)
        return states

    def shallow(self, ids: torch.Tensor) -> torch.Tensor:
        if self.shallow_pass is not None:
            return self.shallow_pass.states(ids)
        return self.stack.run(self.stack.embed_ids(ids), 0, self.exit_layer)

    def deep(self, states: torch.Tensor) -> torch.Tensor:
        stack = self.stack
        return stack.logits(stack.run(states, self.exit_layer, stack.depth))[0]

    def rollback(self, length: int) -> None:
        self.stack.crop(length)
        if self.shallow_pass is not None:
            self.shallow_pass.rollback(length)
