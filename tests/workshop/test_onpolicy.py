"""onpolicy.OnPolicyPool: its windows are corpus prefixes followed by the target's own greedy continuation,
one generate call fills `rows_tokens` worth of rows, each row is served `reuse` times, and a new length
refills. And the students' refinement now trains the sorted drafter too (unless told not to)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import make_tiny_model

from specviz.workshop import students
from specviz.workshop.continued import WindowStream
from specviz.workshop.onpolicy import OnPolicyPool, PoolConfig

VOCAB = 64


def greedy(model, prompt: torch.Tensor, new: int) -> list[int]:
    """Plain greedy decoding without a cache: the reference the pool's tails must equal."""
    ids = prompt.clone()
    for _ in range(new):
        nxt = model(ids[None]).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt[None]])
    return ids.tolist()


def make_pool(reuse: int = 2, rows_tokens: int = 4 * 17, seed: int = 0):
    target = make_tiny_model("llama", VOCAB, layers=2, seed=1)
    stream = np.random.default_rng(0).integers(1, VOCAB, 5000).astype(np.uint16)
    windows = WindowStream(stream, seed=7)
    cfg = PoolConfig(rows_tokens=rows_tokens, reuse=reuse, new_tokens=6, min_prompt=4, seed=seed)
    return target, stream, OnPolicyPool(target, windows, cfg)


def test_tails_are_the_targets_greedy_continuation_of_a_corpus_prefix():
    target, stream, pool = make_pool()
    batch = pool.next(16, 2)  # (2, 17): 11 corpus tokens, 6 greedy ones
    assert batch.shape == (2, 17) and pool.prompt_len(16) == 11
    text = stream.tobytes()
    for row in batch:
        prefix = row[:11]
        assert np.asarray(prefix, dtype=np.uint16).tobytes() in text  # a real corpus window's start
        assert row.tolist() == greedy(target, prefix, 6)


def test_one_generate_call_serves_each_row_reuse_times_and_a_new_length_refills():
    _, _, pool = make_pool(reuse=2, rows_tokens=4 * 17)  # 4 rows of 17 tokens per call
    served = [pool.next(16, 2) for _ in range(4)]  # 4 rows x 2 uses = 8 = 4 batches of 2
    assert pool.fills == 1 and pool.generated_tokens == 4 * 6
    rows = torch.cat(served)
    counts = {tuple(r.tolist()): 0 for r in rows}
    for r in rows:
        counts[tuple(r.tolist())] += 1
    assert sorted(counts.values()) == [2, 2, 2, 2]
    assert all(len(set(map(tuple, b.tolist()))) == 2 for b in served)  # a batch never repeats a row
    pool.next(16, 2)
    assert pool.fills == 2  # ran dry
    assert pool.next(8, 2).shape == (2, 9) and pool.fills == 3  # another length


def test_a_batch_larger_than_the_pool_is_still_served_whole():
    _, _, pool = make_pool(rows_tokens=1)
    assert pool.next(16, 3).shape == (3, 17) and pool.fills == 1


def test_refinement_trains_the_sorted_drafter_too_unless_told_not_to(tiny_tokenizer):
    teacher_model = make_tiny_model("llama", len(tiny_tokenizer), layers=4, hidden=32, seed=3)
    teacher = students.Teacher(
        model=teacher_model, tok=tiny_tokenizer, meta={}, fingerprint={}, exits=(1, 2), kangaroo_exit=1, max_len=64
    )
    batch = torch.randint(1, len(tiny_tokenizer), (2, 17))
    for refine_sorted in (True, False):
        cfg = students.StudentsConfig(target="", corpus="", out="", refine_sorted=refine_sorted)
        s = students.make_students(cfg, teacher, log=lambda _m: None)
        s.opts = students.phase_opts(cfg, s, "refine")
        before = {k: v.clone() for k, v in s.sorted_drafter.state_dict().items()}
        losses = students.student_step(s, teacher, batch)
        changed = any(not torch.equal(before[k], v) for k, v in s.sorted_drafter.state_dict().items())
        assert changed is refine_sorted and ("sorted" in losses) is refine_sorted
        assert {"drafter", "adapter"} <= set(losses)
