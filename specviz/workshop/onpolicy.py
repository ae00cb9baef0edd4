"""A pool of on-policy training windows: corpus prefixes whose tail is the target's own greedy continuation,
generated many rows at a time and each served more than once.

Why: the students' refinement step used to generate its own tails, one step's batch at a time. Greedy
decoding is sequential (192 forward calls for 192 new tokens) and a step's batch is small (32 rows of
2,048 tokens on a GPU, one row on this CPU), so the device mostly waited on those calls: 65 refinement
steps took 130 s of an H100. One generate call for 4-16x the rows costs little more than one for a
step's rows, and serving each row `reuse` times halves the cost again. Acceptance follows agreement on
the target's own text, not on corpus text (docs/embedded-models.md, "Agreement"), so on-policy tokens are the ones worth
having many of.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from specviz.workshop.config import TrainConfig
from specviz.workshop.continued import WindowStream
from specviz.workshop.family import target_continuations


@dataclass(frozen=True)
class PoolConfig:
    rows_tokens: int  # tokens per generate call (rows = rows_tokens // (seq_len + 1), at least one step's batch)
    reuse: int = 2  # times each generated row is served before the pool is refilled
    new_tokens: int = 192  # greedy tokens at the end of a window
    min_prompt: int = 64  # corpus tokens before them, at least
    seed: int = 0


class OnPolicyPool:
    """Serves (B, seq_len + 1) windows from a pool refilled when it runs dry or the length changes."""

    def __init__(self, target, windows: WindowStream, cfg: PoolConfig, fills: int = 0, generated_tokens: int = 0):
        self.target, self.windows, self.cfg = target, windows, cfg
        self.rows: torch.Tensor | None = None  # (N, seq_len + 1) on the target's device
        self.order: list[int] = []
        # generate calls and greedy tokens so far, a resumed run's included: the report, logs and the order's seed
        self.fills, self.generated_tokens = fills, generated_tokens

    def prompt_len(self, seq_len: int) -> int:
        return min(seq_len, max(self.cfg.min_prompt, seq_len + 1 - self.cfg.new_tokens))

    def next(self, seq_len: int, batch_size: int) -> torch.Tensor:
        if self.rows is None or self.rows.shape[1] != seq_len + 1 or len(self.order) < batch_size:
            self._fill(seq_len, batch_size)
        take, self.order = self.order[:batch_size], self.order[batch_size:]
        return self.rows[take]

    def _fill(self, seq_len: int, batch_size: int) -> None:
        n = max(batch_size, self.cfg.rows_tokens // (seq_len + 1))
        prompt = self.prompt_len(seq_len)
        corpus = self.windows.next(seq_len, n)
        self.rows = target_continuations(
            self.target, SimpleNamespace(next=lambda: corpus), TrainConfig(seq_len=seq_len, refine_prompt=prompt)
        )
        rng = np.random.default_rng([self.cfg.seed, self.fills])
        # every row `reuse` times, shuffled within each pass so a batch mixes rows
        self.order = [int(i) for _ in range(max(1, self.cfg.reuse)) for i in rng.permutation(n)]
        self.fills += 1
        self.generated_tokens += n * (seq_len + 1 - prompt)
