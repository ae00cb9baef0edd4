"""What each tab asks of the engine, as `serving.Job`s: the job, its size for the wait estimate, and the
cache key of requests whose answer is a measured trace (Playground, Race, the /playground endpoint).

The key is computed from the VALIDATED parameters (every default filled in, numbers coerced), so the page's
`64.0` and the API's `64`, or an omitted gamma and gamma=4, are one request. Compare, Batch and the
Exactness lab are queued like every run but never cached: they are measurements a visitor asks for anew.
"""

from __future__ import annotations

import time
from typing import Any

from specviz.analysis.categories import task_of
from specviz.api import method_class
from specviz.app.serving import Job
from specviz.app.trace_cache import request_key
from specviz.methods.base import validate_params
from specviz.models.fingerprint import pair_fingerprint
from specviz.models.hub import pair_names

WARMUP_PRIORITY = 1  # the start-up measurement of the bundled examples waits behind every visitor


def traced_job(
    name: str, method: str, target: str | None, draft: str | None, prompt: Any, params: dict, priority: int = 0
) -> Job:
    """A Playground/Race run (`name` "playground": the method then autoregressive) or the API's single run."""
    cls = method_class(method)
    if cls.batch:
        raise ValueError(f"{method} is a batch method: use the batch endpoint")
    valid = validate_params(cls, params)  # a bad value is refused here, before it queues
    target, draft = pair_names(target, draft)
    fingerprint = pair_fingerprint(target, draft)
    key = None if fingerprint is None else request_key(name, fingerprint, method, valid, prompt)
    runs = 2 if name == "playground" and method != "autoregressive" else 1
    kwargs = dict(method=method, target=target, draft=draft, prompt=prompt, params=params)
    if name == "playground":
        kwargs["submitted_at"] = time.time()
    return Job(
        name, kwargs, kind=f"{name}:{method}", units=runs * valid["max_new_tokens"], cache_key=key, priority=priority
    )


def batch_job(method: str, target: str | None, draft: str | None, prompts: Any, params: dict) -> Job:
    target, draft = pair_names(target, draft)
    count = len(prompts) if isinstance(prompts, list) else 1
    tokens = params.get("max_new_tokens", 64) if isinstance(params, dict) else 64
    units = count * (tokens if isinstance(tokens, (int, float)) else 64)
    return Job(
        "batch",
        dict(method=method, target=target, draft=draft, prompts=prompts, params=params),
        kind=f"batch:{method}",
        units=units,
    )


def compare_job(
    specs: list,
    prompts: list,
    repeats: int,
    max_new_tokens: int,
    target: str | None,
    draft: str | None,
    per_task: int | None = None,
) -> Job:
    target, draft = pair_names(target, draft)
    runs = (
        len(prompts) if not per_task else min(len(prompts), per_task * len({task_of(p["category"]) for p in prompts}))
    )
    units = (len(specs) + 1) * runs * repeats * max_new_tokens  # autoregressive always runs too
    return Job(
        "compare",
        dict(specs=specs, prompts=prompts, repeats=repeats, target=target, draft=draft, per_task=per_task),
        kind="compare",
        units=units,
    )


def batch_compare_job(
    batch_size: int,
    prompts: list,
    max_new_tokens: int,
    gamma: int,
    include_naive: bool,
    target: str | None,
    draft: str | None,
) -> Job:
    target, draft = pair_names(target, draft)
    variants = 4 if include_naive else 3
    sizes = len({1, batch_size})
    units = len(prompts) * max_new_tokens * (1 + variants * sizes)  # + the single-sequence references
    return Job(
        "batch_compare",
        dict(
            batch_size=batch_size,
            prompts=prompts,
            max_new_tokens=max_new_tokens,
            gamma=gamma,
            include_naive=include_naive,
            target=target,
            draft=draft,
        ),
        kind="batch_compare",
        units=units,
    )


def exactness_job(
    method: str,
    target: str | None,
    draft: str | None,
    prompt: str,
    n: int,
    tokens: int,
    params: dict,
    broken: bool,
    seed: int,
) -> Job:
    target, draft = pair_names(target, draft)
    units = n * tokens * (3 if broken else 2) / 50  # a sample's token costs far less than a run's (forwards memoised)
    return Job(
        "exactness_lab",
        dict(
            method=method,
            target=target,
            draft=draft,
            prompt=prompt,
            n=n,
            tokens=tokens,
            params=params,
            broken=broken,
            seed=seed,
        ),
        kind=f"exactness:{method}",
        units=units,
    )
