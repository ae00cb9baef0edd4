"""`run(name, pair, prompt, **params) -> Trace`: the one entry point every caller uses.

Validation happens here, once: the method name, every parameter (types and ranges), the prompt
(non-empty, token cap, room in the context) and what the method needs from the pair.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from specviz.engine import quiet
from specviz.engine.decoder import Output, context_limit, eos_ids
from specviz.engine.healing import Healing, healed_prompt, plan
from specviz.engine.healing import first_token as heal_token
from specviz.engine.trace import HEALING_STEP, Recorder, RowResult, Trace, fill_token_text
from specviz.engine.verify import Sampling
from specviz.methods import METHODS
from specviz.methods.base import Cancelled, RunContext, validate_params
from specviz.models.anatomy import anatomy, weights_read_per_token
from specviz.shown import shown

MAX_PROMPT_TOKENS = 2048


def synchronize(device: torch.device) -> None:
    """Wall times on a GPU must wait for the queued kernels (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def target_layers(model) -> int | None:
    try:
        return len(anatomy(model).layers)
    except ValueError:
        return None


def fits_context(pair, prompt: str, new_tokens: int) -> bool:
    """Whether `prompt`'s tokens and `new_tokens` more fit the target's context (what the bench's --per-category,
    the Compare tab's question files and the workshop's Spec-Bench section keep)."""
    try:
        return len(encode_prompt(pair, prompt)) + new_tokens <= context_limit(pair.target)
    except ValueError:
        return False


def method_class(name: str):
    if not isinstance(name, str):  # a name goes here; listing every method beside a wrong type would only bury it
        raise ValueError(f"unknown method {shown(name)}: a method is named by a string, one of specviz.METHODS")
    if name not in METHODS:
        raise ValueError(f"unknown method {shown(name)}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def common_vocab(pair) -> int:
    """Logit width both models share (embedding matrices are often padded past the tokenizer)."""
    widths = [pair.target.get_output_embeddings().weight.shape[0]]
    if pair.draft is not None:
        widths.append(pair.draft.get_output_embeddings().weight.shape[0])
    return min(widths)


def encode_prompt(pair, prompt: Any, max_prompt_tokens: int = MAX_PROMPT_TOKENS) -> list[int]:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty: type some text to continue")
    ids = pair.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("prompt encodes to no tokens")
    if len(ids) > max_prompt_tokens:
        raise ValueError(f"prompt is {len(ids)} tokens; the limit is {max_prompt_tokens}")
    room = context_limit(pair.target) - len(ids)
    if room < 1:
        raise ValueError(
            f"prompt is {len(ids)} tokens, which fills the target's context ({context_limit(pair.target)})"
        )
    return ids


def run(
    name: str,
    pair,
    prompt: str,
    *,
    cancel: threading.Event | None = None,
    record: bool = True,
    recorder: Recorder | None = None,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    **params: Any,
) -> Trace:
    """Run one method on one prompt and return its full trace.

    `cancel`: set it from another thread to stop the run (the trace so far is returned with
    finish_reason "cancelled"). `record=False` stores no events (recording-overhead runs).
    `recorder`: pass your own Recorder to watch `recorder.events` grow from another thread while
    the run goes on (the UI streams tokens that way; events get their `text` only at the end).
    `dist_top_k` (default 8, 0 = off): verdict events carry the top-k of q and p the rule used
    (trace schema 2; see specviz.engine.trace). `specviz.analysis.exactness` tests a method's sampling law.
    `trace.disturbance` says what else took the machine's CPU while the run was timed (specviz.engine.quiet).
    """
    cls = method_class(name)
    if cls.batch:
        raise ValueError(f"{name} is a batch method: use specviz.run_batch with a list of prompts")
    values = validate_params(cls, params)
    method = cls()
    method.check_pair(pair)
    ids = encode_prompt(pair, prompt, max_prompt_tokens)
    device = pair.target.device
    vocab = common_vocab(pair)
    healing = plan(pair.tokenizer, ids, vocab) if values["heal_prompt"] else None
    # what else takes the CPU during the run (specviz.engine.quiet), read before the recorder's clock starts: the
    # events' times and the wall time must not count the reading (a replay ends at the wall time)
    clocks = quiet.read()
    rec = recorder if recorder is not None else Recorder(device, enabled=record)
    conditioned = healing.kept_ids if healing else ids
    out = Output(
        values["max_new_tokens"], eos_ids(pair.target, pair.tokenizer), context_limit(pair.target) - len(conditioned)
    )
    generator = torch.Generator(device="cpu").manual_seed(values["seed"])
    sampling = Sampling(values["temperature"], values["top_k"], values["top_p"])
    meta: dict[str, Any] = {}
    ctx = None
    start = time.perf_counter()
    try:
        if healing is not None:
            healed = heal_first(pair, healing, sampling, generator, vocab, rec, out, row=0)
            meta["token_healing"] = [healing.record(healed)]
            ids = healing.kept_ids + [healed]
        ctx = RunContext(
            pair=pair,
            prompt_ids=torch.tensor([ids], dtype=torch.long, device=device),
            params=values,
            sampling=sampling,
            generator=generator,
            rec=rec,
            out=out,
            vocab=vocab,
            cancel=cancel,
        )
        if not out.done:
            method.generate(ctx)
    except Cancelled:
        out.finish_reason = "cancelled"
    if ctx is not None:
        meta.update(ctx.meta)  # a cancelled run keeps its method's notes
    synchronize(device)
    wall = time.perf_counter() - start
    disturbance = quiet.since(clocks).to_dict()
    row = RowResult(
        prompt=healed_prompt(prompt, healing, pair.tokenizer),
        prompt_ids=conditioned,
        output_ids=list(out.ids),
        text=pair.tokenizer.decode(out.ids, skip_special_tokens=False),
        finish_reason=out.finish_reason,
    )
    rec.events.sort(key=lambda e: e.t0)  # chronological; stable, so same-time events keep their order
    fill_token_text(rec.events, pair.tokenizer)
    return Trace(
        method=name,
        params=values,
        rows=[row],
        events=rec.events,
        target_name=pair.target_name,
        draft_name=pair.draft_name if cls.needs_draft else None,
        device=str(device),
        dtype=str(pair.dtype).replace("torch.", ""),
        wall_time=wall,
        started_at=rec.started_at,
        meta={
            "vocab": vocab,
            "target_params": weights_read_per_token(pair.target),
            "target_layers": target_layers(pair.target),
            **meta,
        },
        disturbance=disturbance,
    )


def heal_first(
    pair,
    healing: Healing,
    sampling: Sampling,
    generator: torch.Generator,
    vocab: int,
    rec: Recorder,
    out: Output | None,
    row: int,
) -> int:
    """The healed first token, pushed into `out` (a batch method pushes it itself: position 0) and recorded: one
    target forward over the kept prompt (a prefill span) and the token it emits under the healing constraint."""
    t0 = rec.now()
    token, prob = heal_token(pair.target, healing, sampling, generator, vocab)
    t1 = rec.now()
    rec.add(
        "prefill", row=row, source="target", t0=t0, t1=t1, info={"tokens": len(healing.kept_ids), "token_healing": True}
    )
    rec.add(
        "emit",
        step=HEALING_STEP,
        row=row,
        position=out.push(token) if out is not None else 0,
        token_id=token,
        p=prob,
        source="target (token healing)",
        t0=t0,
        t1=t1,
        info={"removed_text": healing.removed_text, "allowed": len(healing.allowed)},
    )
    return token


MAX_BATCH_PROMPTS = 256


def run_batch(
    name: str,
    pair,
    prompts: list[str],
    *,
    cancel: threading.Event | None = None,
    record: bool = True,
    recorder: Recorder | None = None,
    max_prompt_tokens: int = MAX_PROMPT_TOKENS,
    **params: Any,
) -> Trace:
    """Run a batch method over several prompts: ONE Trace with one row per prompt (input order);
    every event carries its `row`. Same validation as `run`, per prompt."""
    cls = method_class(name)
    if not cls.batch:
        raise ValueError(
            f"{name} is not a batch method: use specviz.run for one prompt "
            f"(batch methods: {', '.join(n for n, c in METHODS.items() if c.batch)})"
        )
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    if len(prompts) > MAX_BATCH_PROMPTS:
        raise ValueError(f"{len(prompts)} prompts; the limit is {MAX_BATCH_PROMPTS}")
    values = validate_params(cls, params)
    method = cls()
    method.check_pair(pair)
    ids = []
    for i, prompt in enumerate(prompts):
        try:
            ids.append(encode_prompt(pair, prompt, max_prompt_tokens))
        except ValueError as exc:
            raise ValueError(f"prompt {i + 1}: {exc}") from None
    device = pair.target.device
    vocab = common_vocab(pair)
    healings = [plan(pair.tokenizer, row_ids, vocab) if values["heal_prompt"] else None for row_ids in ids]
    conditioned = [h.kept_ids if h else row_ids for h, row_ids in zip(healings, ids)]
    # what else takes the CPU during the run (specviz.engine.quiet), read before the recorder's clock starts: the
    # events' times and the wall time must not count the reading (a replay ends at the wall time)
    clocks = quiet.read()
    rec = recorder if recorder is not None else Recorder(device, enabled=record)
    generator = torch.Generator(device="cpu").manual_seed(values["seed"])
    sampling = Sampling(values["temperature"], values["top_k"], values["top_p"])
    meta: dict[str, Any] = {}
    start = time.perf_counter()
    cancelled = False
    ctx = None
    try:
        first: dict[int, int] = {}
        for i, healing in enumerate(healings):
            if healing is not None:
                first[i] = heal_first(pair, healing, sampling, generator, vocab, rec, None, row=i)
                ids[i] = healing.kept_ids + [first[i]]
        if first:
            meta["token_healing"] = [h.record(first[i]) if h else None for i, h in enumerate(healings)]
        ctx = RunContext(
            pair=pair,
            prompt_ids=torch.tensor([ids[0]], device=device),
            params=values,
            sampling=sampling,
            generator=generator,
            rec=rec,
            out=Output(values["max_new_tokens"], set(), 1 << 20),
            vocab=vocab,
            cancel=cancel,
            batch_prompts=ids,
            first_tokens=first,
        )
        method.generate(ctx)
    except Cancelled:
        cancelled = True
    synchronize(device)
    wall = time.perf_counter() - start
    disturbance = quiet.since(clocks).to_dict()
    outputs = (ctx.outputs if ctx is not None else None) or []
    if ctx is not None:
        meta.update(ctx.meta)
    rows = []
    for i, prompt in enumerate(prompts):
        out_ids = list(outputs[i].ids) if i < len(outputs) else []
        reason = outputs[i].finish_reason if i < len(outputs) else ""
        healing = healings[i]
        rows.append(
            RowResult(
                prompt=healed_prompt(prompt, healing, pair.tokenizer),
                prompt_ids=conditioned[i],
                output_ids=out_ids,
                text=pair.tokenizer.decode(out_ids, skip_special_tokens=False),
                finish_reason=reason or ("cancelled" if cancelled else ""),
            )
        )
    rec.events.sort(key=lambda e: e.t0)
    fill_token_text(rec.events, pair.tokenizer)
    new_tokens = sum(len(r.output_ids) for r in rows)
    return Trace(
        method=name,
        params=values,
        rows=rows,
        events=rec.events,
        target_name=pair.target_name,
        draft_name=pair.draft_name if cls.needs_draft else None,
        device=str(device),
        dtype=str(pair.dtype).replace("torch.", ""),
        wall_time=wall,
        started_at=rec.started_at,
        meta={
            "vocab": vocab,
            "target_params": weights_read_per_token(pair.target),
            "throughput": new_tokens / wall if wall > 0 else 0.0,
            **meta,
        },
        disturbance=disturbance,
    )
