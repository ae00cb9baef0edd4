"""`exactness(method, pair, prompt, n=2000, tokens=2)`: is what a method samples distributed as the
target's own law? A measurement, not an assumption.

1. The law: the target's EXACT joint probabilities of the first `tokens` tokens after `prompt`, with
   the run's temperature / top-k / top-p processing. At each step the `top` most likely tokens are
   enumerated (one target forward per enumerated prefix); the rest of the mass goes to one "other"
   cell. A prefix ending in EOS is a cell of its own (generation stops there).
2. The samples: `n` independent runs of the method, each with its own seed (seed, seed+1, ...), and
   `n` runs of plain autoregressive sampling (seeds after those) as the reference panel.
3. The verdict: Pearson's chi-square (specviz.analysis.stats, float64, rare cells pooled) and the total
   variation distance of each panel's counts from the law. The reference panel shows what finite-n
   noise alone looks like.

Speed. The samples share one prompt, and a model forward is a deterministic function of the tokens
it has seen: a method that takes every forward from `ctx.decoder(...)` and `ctx.split_decoder(...)` (`memo_safe`)
gets, here, the memoizing implementations of those protocols (`specviz.engine.memo.ForwardMemo`, configured
below): the prompt's prefill runs once, and a continuation seen before costs a dictionary look-up. The sorted
drafter runs its own forwards per sample; Mirror-SD, whose branches copy the drafter's cache, is never memoized.
Every random choice (drafts, acceptance uniforms, residual and bonus draws) is still made per sample by the
method's own code with that sample's generator, so the samples are independent draws; tests check that they equal
`run`'s outputs for the same seeds. (A memoized forward may have been computed along another path to the same
tokens, e.g. in a longer block: its last float bits can then differ from a fresh run's, as any two
block shapes do; the law tested is unaffected.)

`broken=True` runs a deliberately WRONG speculative-sampling rule (verify.py, rule "broken": the
right acceptance test u < min(1, p/q), but a rejection resamples from p instead of from the residual
max(0, p - q)), labelled "BROKEN on purpose" in the result: the chi-square test must reject it. It
exists only here, never as a default, and `run` cannot reach it.
"""

from __future__ import annotations

import sys
import time
import types
from typing import Any

import torch

from specviz.analysis.stats import chi_square, total_variation
from specviz.api import common_vocab, encode_prompt, method_class
from specviz.engine.decoder import Output, TransformersDecoder, context_limit, eos_ids
from specviz.engine.memo import ForwardMemo
from specviz.engine.trace import Recorder
from specviz.engine.verify import Sampling
from specviz.methods import METHODS
from specviz.methods.base import RunContext, validate_params
from specviz.shown import shown

BROKEN_LABEL = (
    "BROKEN on purpose: a rejected draft is replaced by a token drawn from p instead of from the "
    "residual max(0, p - q); speculative sampling is NOT exact under this rule"
)
MAX_SAMPLES = 200_000
MAX_TOKENS = 4
MAX_TOP = 64
MEMO_BYTES = 256 * 2**20  # memoized forward outputs kept per shared model before its memo starts over


# ----------------------------------------------------------------------------- the exact law
def cell_key(ids: tuple[int, ...]) -> str:
    return " ".join(map(str, ids))


OTHER = "other"


@torch.inference_mode()
def target_law(
    pair, prompt_ids: list[int], sampling: Sampling, tokens: int, top: int, vocab: int, eos: set[int]
) -> tuple[dict[tuple[int, ...], float], float]:
    """{token-id tuple: exact probability} for the enumerated prefixes, and the mass of everything else."""
    dec = TransformersDecoder(pair.target, vocab)
    device = pair.target.device
    logits = dec.feed(torch.tensor([prompt_ids], dtype=torch.long, device=device))[0]
    law: dict[tuple[int, ...], float] = {}
    other = 0.0

    def expand(logits: torch.Tensor, prefix: tuple[int, ...], mass: float) -> None:
        nonlocal other
        probs = sampling.probs(logits.unsqueeze(0))[0].double()
        probs = probs / probs.sum()
        support = int((probs > 0).sum())
        k = min(top, support)
        vals, idx = torch.topk(probs, k)
        if k < support:  # the tokens not enumerated at this step
            other += mass * max(0.0, 1.0 - float(vals.sum()))
        held = dec.length
        for v, a in zip(vals.tolist(), idx.tolist()):
            path = prefix + (a,)
            if len(path) == tokens or a in eos:
                law[path] = mass * v
            else:
                nxt = dec.feed(torch.tensor([[a]], dtype=torch.long, device=device))[0]
                expand(nxt, path, mass * v)
                dec.rollback(held)

    expand(logits, (), 1.0)
    return law, other


def classify(output: list[int], law: dict[tuple[int, ...], float], tokens: int) -> str:
    """The cell of one sampled continuation: its first `tokens` ids (fewer if it ended at EOS)."""
    for length in range(1, min(tokens, len(output)) + 1):
        path = tuple(output[:length])
        if path in law:
            return cell_key(path)
    return OTHER


# ----------------------------------------------------------------------------- sampling
def iter_samples(
    cls,
    pair,
    prompt_ids: list[int],
    values: dict,
    seeds,
    vocab: int,
    rule: str = "exact",
    memo: ForwardMemo | None = None,
    shared: dict | None = None,
):
    """The output ids of one run of method `cls` per seed (`values`: validated parameters; the run's
    max_new_tokens is values["max_new_tokens"]). Nothing is recorded. Forwards are shared through `memo`
    when the method allows it (see the module doc); each run draws from its own generator."""
    device = pair.target.device
    prompt = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    sampling = Sampling(values["temperature"], values["top_k"], values["top_p"])
    eos = eos_ids(pair.target, pair.tokenizer)
    room = context_limit(pair.target) - len(prompt_ids)
    limit = values["max_new_tokens"]
    if memo is None and cls.memo_safe:
        memo = ForwardMemo(MEMO_BYTES)
    shared = {} if shared is None else shared
    rec = Recorder(device, enabled=False)
    for seed in seeds:
        params = {**values, "seed": seed, "dist_top_k": 0}
        ctx = RunContext(
            pair=pair,
            prompt_ids=prompt,
            params=params,
            sampling=sampling,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            rec=rec,
            out=Output(limit, eos, room),
            vocab=vocab,
            verify_rule=rule,
            memo=memo if cls.memo_safe else None,
            shared=shared,
        )
        cls().generate(ctx)
        yield list(ctx.out.ids)


def sample_panel(
    cls,
    pair,
    prompt_ids: list[int],
    values: dict,
    n: int,
    first_seed: int,
    vocab: int,
    law: dict,
    tokens: int,
    rule: str,
) -> tuple[dict[str, int], dict]:
    """n runs of method `cls`, seeds first_seed .. first_seed+n-1: counts per cell, and memo stats."""
    memo = ForwardMemo(MEMO_BYTES) if cls.memo_safe else None
    shared: dict = {}
    counts: dict[str, int] = {}
    for output in iter_samples(
        cls, pair, prompt_ids, values, range(first_seed, first_seed + n), vocab, rule, memo, shared
    ):
        key = classify(output, law, tokens)
        counts[key] = counts.get(key, 0) + 1
    return counts, memo.stats() if memo is not None else {"hits": 0, "misses": 0}


def exactness(
    method: str,
    pair,
    prompt: str,
    n: int = 2000,
    tokens: int = 2,
    broken: bool = False,
    seed: int = 0,
    top: int = 16,
    reference: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Sample `n` continuations of `tokens` tokens with `method` (and with plain autoregressive sampling)
    and test them against the target's exact law. `params`: the method's parameters (temperature > 0).
    Returns tv_distance, chi2_p, counts, reference_* (the autoregressive panel), law, cells, n, seconds,
    method, broken (and label: "BROKEN on purpose ..." when broken)."""
    cls = method_class(method)
    if cls.batch:
        raise ValueError(f"{method} is a batch method: exactness samples single-sequence methods")
    if cls.peer:
        raise ValueError(f"{method} decodes greedily only: its law is a point mass, nothing to test")
    for name, value, low, high in (
        ("n", n, 1, MAX_SAMPLES),
        ("tokens", tokens, 1, MAX_TOKENS),
        ("top", top, 1, MAX_TOP),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{name} must be an integer in {low}..{high}; got {shown(value)}")
    if broken and method == "autoregressive":
        raise ValueError("broken=True breaks the speculative-sampling rule: choose a speculative method")
    for reserved in ("max_new_tokens", "seed", "verify_rule"):
        if reserved in params:
            raise ValueError(f"{reserved} is set by exactness itself (tokens=, seed=); do not pass it")
    params.setdefault("temperature", 1.0)
    values = validate_params(cls, {**params, "seed": seed, "max_new_tokens": tokens})
    if values["temperature"] == 0:
        raise ValueError("exactness tests sampling: temperature must be > 0 (greedy output is a single sequence)")
    cls().check_pair(pair)
    ids = encode_prompt(pair, prompt)
    vocab = common_vocab(pair)
    sampling = Sampling(values["temperature"], values["top_k"], values["top_p"])
    eos = eos_ids(pair.target, pair.tokenizer)

    start = time.perf_counter()
    law_paths, other = target_law(pair, ids, sampling, tokens, top, vocab, eos)
    law_seconds = time.perf_counter() - start
    ordered = sorted(law_paths.items(), key=lambda kv: -kv[1])
    keys = [cell_key(path) for path, _ in ordered] + [OTHER]
    law = {cell_key(path): prob for path, prob in ordered}
    law[OTHER] = other
    total = sum(law.values())
    law = {k: v / total for k, v in law.items()}  # float64 rounding only: total is 1 within ~1e-12

    def decode(path: tuple[int, ...]) -> str:
        return pair.tokenizer.decode(list(path), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    cells = [
        {"key": cell_key(path), "ids": list(path), "text": decode(path), "prob": law[cell_key(path)]}
        for path, _ in ordered
    ]
    cells.append(
        {
            "key": OTHER,
            "ids": [],
            "text": f"(any other continuation: beyond the top {top} at some step)",
            "prob": law[OTHER],
        }
    )

    def panel(panel_cls, first_seed: int, rule: str) -> dict[str, Any]:
        t0 = time.perf_counter()
        raw, memo = sample_panel(panel_cls, pair, ids, values, n, first_seed, vocab, law_paths, tokens, rule)
        seconds = time.perf_counter() - t0
        counts = {k: raw.get(k, 0) for k in keys}
        observed, expected = [counts[k] for k in keys], [law[k] for k in keys]
        test = chi_square(observed, expected)
        return {
            "counts": counts,
            "tv_distance": total_variation(observed, expected),
            "chi2_p": test.p_value,
            "chi2": test.statistic,
            "dof": test.dof,
            "seconds": seconds,
            "memo": memo,
        }

    rule = "broken" if broken else "exact"
    main = panel(cls, seed, rule)
    ref = panel(METHODS["autoregressive"], seed + n, "exact") if reference else None
    result: dict[str, Any] = {
        "method": method,
        "params": {k: v for k, v in values.items() if k not in ("seed", "max_new_tokens", "dist_top_k")},
        "prompt": prompt,
        "broken": bool(broken),
        "label": BROKEN_LABEL if broken else "exact rule (" + ("argmax" if sampling.greedy else "ratio") + ")",
        "n": n,
        "tokens": tokens,
        "top": top,
        "seed": seed,
        "law": law,
        "cells": cells,
        "counts": main["counts"],
        "tv_distance": main["tv_distance"],
        "chi2_p": main["chi2_p"],
        "chi2": main["chi2"],
        "dof": main["dof"],
        "method_seconds": main["seconds"],
        "law_seconds": law_seconds,
        "memo": main["memo"],
    }
    if ref is not None:
        result.update(
            {
                "reference_counts": ref["counts"],
                "reference_tv_distance": ref["tv_distance"],
                "reference_chi2_p": ref["chi2_p"],
                "reference_chi2": ref["chi2"],
                "reference_dof": ref["dof"],
                "reference_seconds": ref["seconds"],
            }
        )
    result["seconds"] = time.perf_counter() - start
    return result


class _CallableModule(types.ModuleType):
    """`specviz.analysis.exactness` names both this module and its function: once the module is imported the
    package attribute is the module, so calling it calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return exactness(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
