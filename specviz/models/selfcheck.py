"""Prove at load time that the engine's cache paths compute what the model computes.

Why: a transformers release once moved the forward's cache keyword, and the old one fell silently
into `**kwargs`; every method then decoded from an empty cache and showed wrong text as if it were
right. So the first time a model is loaded on a (device, dtype), each cache path it can be used on
decodes a short fixed prompt, teacher-forced on `model.generate`'s own greedy tokens, one-token
steps and a rolled-back multi-token block alike:

- `decoder`: the single-sequence KV cache (`engine.Decoder`), every model;
- `layer stack`: per-layer caches (`layers.LayerStack`: Kangaroo, S2D, Mirror-SD), split at mid depth;
- `batch`: the left-padded batch cache with a realignment (`methods.batch.BatchKV`: EQSPEC, EXSPEC);
- `adapter`: the Kangaroo adapter's own cache, step by step against all at once;
- `lean`: the lean drafter forward (`lean.LeanDecoder`);
- `lean shallow`: Kangaroo's lean shallow pass (layers [0, mid)) continued by the stack's deep layers.

Each position's argmax must equal the reference's; in half precision a differing argmax passes only as
a proven tie (the reference's top-2 margin below the measured logit difference) and only while the
logits stay close overall (relative error bound), so a broken cache cannot pass as "ties".
A failure raises `SelfCheckFailed` (a ValueError) naming torch, transformers and what differed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

from specviz.engine import kvcache
from specviz.engine.batch_cache import BatchKV
from specviz.engine.decoder import TransformersDecoder
from specviz.engine.layers import LayerStack, causal_mask, split_parts
from specviz.engine.lean import LeanDecoder, supports

PROMPT = "def add(a, b):\n    return"
NEW_TOKENS = 3  # per path: a prefill, a one-token step, then a rollback and a 2-token block
REL_ERROR = {torch.float32: 1e-3, torch.float64: 1e-6}  # relative logit error allowed; half precision: HALF_REL_ERROR
HALF_REL_ERROR = 0.08


class SelfCheckFailed(ValueError):
    """An engine cache path disagrees with the model's own greedy decoding."""


@dataclass
class Finding:
    path: str
    model: str
    positions: int = 0
    ties: int = 0
    problem: str = ""  # empty: passed

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.findings)


def versions() -> str:
    return f"torch {torch.__version__}, transformers {transformers.__version__}"


def rel_bound(dtype: torch.dtype) -> float:
    return REL_ERROR.get(dtype, HALF_REL_ERROR)


def compare(finding: Finding, got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, where: str) -> None:
    """got/ref (T, V) logits at the same positions: argmax equal, or a proven tie within the dtype's error."""
    if finding.problem:
        return
    got, ref = got.float(), ref.float()
    diff = (got - ref).abs()
    scale = (ref - ref.mean(-1, keepdim=True)).norm(dim=-1).clamp_min(1e-6)
    rel = float((diff.norm(dim=-1) / scale).max())
    finding.positions += got.shape[0]
    if rel > rel_bound(dtype):
        finding.problem = (
            f"{where}: logits differ from the reference by {rel:.2e} (relative; allowed "
            f"{rel_bound(dtype):.0e} in {str(dtype).replace('torch.', '')})"
        )
        return
    want, have = ref.argmax(-1), got.argmax(-1)
    for i in torch.nonzero(want != have).flatten().tolist():
        margin = float(ref[i, want[i]] - ref[i, have[i]])
        measured = float(diff[i].max())
        if dtype in REL_ERROR or margin > measured:
            finding.problem = (
                f"{where}, position {i}: token {int(have[i])} instead of {int(want[i])} "
                f"(reference margin {margin:.3g}, logit difference {measured:.3g})"
            )
            return
        finding.ties += 1


@torch.inference_mode()
def greedy_reference(model, ids: torch.Tensor, n: int) -> tuple[list[int], torch.Tensor]:
    """`model.generate`'s greedy tokens (no early stop) and its raw logits for them: (n,), (n, V)."""
    pad = model.generation_config.pad_token_id
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=pad if pad is not None else 0,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, ids.shape[1] :].tolist()
    return tokens, torch.cat([step[:1] for step in out.logits], dim=0)


@torch.inference_mode()
def full_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """Logits at every position of one no-cache forward: (T, V)."""
    return model(input_ids=ids, use_cache=False).logits[0]


def check_decoder(decoder, seq: torch.Tensor, prompt_len: int, ref: torch.Tensor, dtype, finding: Finding) -> None:
    """Prefill, a one-token step, a rollback of that step and a 2-token block; ref (3, V) predicts seq[prompt_len:]."""
    first = decoder.feed(seq[:, :prompt_len], keep=1)
    step = decoder.feed(seq[:, prompt_len : prompt_len + 1], keep=1)
    compare(finding, torch.cat([first, step]), ref[:2], dtype, "one-token steps")
    decoder.rollback(prompt_len)
    block = decoder.feed(seq[:, prompt_len : prompt_len + 2], keep=2)
    compare(finding, block, ref[1:3], dtype, "rolled-back block")


def check_layer_stack(
    model,
    vocab: int,
    seq: torch.Tensor,
    prompt_len: int,
    ref: torch.Tensor,
    dtype,
    finding: Finding,
    lean: bool = False,
) -> None:
    """Split at mid depth, as Kangaroo and Mirror-SD run it; `lean`: the shallow half on the lean pass
    (lean.LeanDecoder(exact=True), Kangaroo's default), the deep half on the stack."""
    stack = LayerStack(model, vocab)
    mid = max(1, stack.depth // 2)
    shallow = LeanDecoder(model, vocab, depth=mid, exact=True) if lean else None

    def through(ids: torch.Tensor) -> torch.Tensor:
        h = shallow.states(ids) if shallow is not None else stack.run(stack.embed_ids(ids), 0, mid)
        return stack.logits(stack.run(h, mid, stack.depth))[0]

    first = through(seq[:, :prompt_len])[-1:]
    step = through(seq[:, prompt_len : prompt_len + 1])
    compare(finding, torch.cat([first, step]), ref[:2], dtype, "one-token steps")
    stack.crop(prompt_len)
    if shallow is not None:
        shallow.rollback(prompt_len)
    compare(finding, through(seq[:, prompt_len : prompt_len + 2]), ref[1:3], dtype, "rolled-back block")


def check_batch(
    model, vocab: int, seq: torch.Tensor, prompt_len: int, ref: torch.Tensor, dtype, finding: Finding
) -> None:
    """Two rows (the prompt, and the prompt less its first 2 tokens, left-padded), a 2-token block,
    a realignment that keeps 2 tokens of row 0 and 1 of row 1, then one more token each."""
    cut = 2
    rows = [seq[0], seq[0, cut:]]
    refs = [ref, full_logits(model, rows[1][None])[..., :vocab]]  # ref: every position of rows[0]
    kv = BatchKV(model, vocab)
    p = [prompt_len, prompt_len - cut]
    width = max(p)
    pads = [width - x for x in p]
    ids = torch.stack(
        [torch.cat([torch.zeros(pad, dtype=seq.dtype, device=seq.device), r[:x]]) for r, x, pad in zip(rows, p, pads)]
    )
    first = kv.feed(ids, pads=pads)[:, -1]
    compare(finding, first, torch.stack([refs[b][p[b] - 1] for b in range(2)]), dtype, "batched prefill")
    block = torch.stack([r[x : x + 2] for r, x in zip(rows, p)])
    got = kv.feed(block)
    compare(
        finding,
        got.reshape(-1, got.shape[-1]),
        torch.cat([refs[b][p[b] : p[b] + 2] for b in range(2)]),
        dtype,
        "batched block",
    )
    kept = [2, 1]
    kv.settle(kept, 2)
    nxt = torch.stack([r[x + k : x + k + 1] for r, x, k in zip(rows, p, kept)])
    got = kv.feed(nxt)[:, -1]
    compare(finding, got, torch.stack([refs[b][p[b] + kept[b]] for b in range(2)]), dtype, "after realignment")


def check_adapter(model, adapter, vocab: int, seq: torch.Tensor, dtype, finding: Finding) -> None:
    """The adapter over layer-l states: all at once (no cache) vs prefill + one-token steps + rollback."""
    stack = LayerStack(model, vocab)
    exit_layer = adapter.config.exit_layer
    with torch.inference_mode():
        hidden = stack.run(stack.embed_ids(seq), 0, exit_layer)
        total = seq.shape[1]
        pos = torch.arange(total, device=seq.device)[None]
        whole = stack.logits(adapter(hidden, pos, kvcache.new_cache(), causal_mask(total, 0, seq.device)))[0]
        cache, start = kvcache.new_cache(), total - 2
        parts = [
            adapter(hidden[:, :start], pos[:, :start], cache, causal_mask(start, 0, seq.device))[:, -1:],
            adapter(hidden[:, start : start + 1], pos[:, start : start + 1], cache, None),
        ]
        compare(finding, stack.logits(torch.cat(parts, dim=1))[0], whole[start - 1 : start + 1], dtype, "cached steps")
        kvcache.crop(cache, start)
        block = adapter(hidden[:, start:], pos[:, start:], cache, causal_mask(total - start, start, seq.device))
        compare(finding, stack.logits(block)[0], whole[start:], dtype, "rolled-back block")


def attempt(report: Report, finding: Finding, check) -> None:
    """Run one path's check; an exception inside it (an attention shape error, say) is a failure too."""
    try:
        check(finding)
    except Exception as exc:  # noqa: BLE001 - whatever broke, the path is not safe to run
        finding.problem = (
            f"raised {type(exc).__name__}: {str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ''}"
        )
    report.findings.append(finding)


def check_model(model, role: str, pair, ids: torch.Tensor, report: Report, *, batch: bool, adapter: Any = None) -> None:
    """Every path `model` can run on, against its own `generate`."""
    vocab = min(model.get_output_embeddings().weight.shape[0], pair.target.get_output_embeddings().weight.shape[0])
    dtype = next(model.parameters()).dtype
    prompt_len = ids.shape[1]
    tokens, gen_logits = greedy_reference(model, ids, NEW_TOKENS)
    seq = torch.cat([ids, torch.tensor([tokens], device=ids.device)], dim=1)
    every = full_logits(model, seq)[:, :vocab]
    ref = every[prompt_len - 1 : -1]
    attempt(
        report,
        Finding("generate vs one forward", role),
        lambda f: compare(f, ref, gen_logits[:, :vocab], dtype, "model.generate against one no-cache forward"),
    )
    attempt(
        report,
        Finding("decoder", role),
        lambda f: check_decoder(TransformersDecoder(model, vocab), seq, prompt_len, ref, dtype, f),
    )
    try:
        split_parts(model)
        splittable = True
    except ValueError:
        splittable = False
    if splittable and role == "target":  # only targets run per layer (the sorted drafter is one: same code)
        attempt(
            report,
            Finding("layer stack", role),
            lambda f: check_layer_stack(model, vocab, seq, prompt_len, ref, dtype, f),
        )
        if supports(model):
            attempt(
                report,
                Finding("lean shallow", role),
                lambda f: check_layer_stack(model, vocab, seq, prompt_len, ref, dtype, f, lean=True),
            )
    if batch:
        attempt(report, Finding("batch", role), lambda f: check_batch(model, vocab, seq, prompt_len, every, dtype, f))
    if adapter is not None and splittable:
        attempt(report, Finding("adapter", role), lambda f: check_adapter(model, adapter, vocab, seq, dtype, f))
    if role == "drafter" and supports(model):
        attempt(
            report,
            Finding("lean", role),
            lambda f: check_decoder(LeanDecoder(model, vocab), seq, prompt_len, ref, dtype, f),
        )


def run_checks(pair, *, target: bool = True, draft: bool = True) -> Report:
    report = Report()
    start = time.perf_counter()
    ids = pair.tokenizer(PROMPT, return_tensors="pt", add_special_tokens=False).input_ids.to(pair.target.device)
    jobs = []
    if target:
        jobs.append((pair.target, "target", (pair.extras or {}).get("kangaroo_adapter")))
    if draft and pair.draft is not None:
        jobs.append((pair.draft, "drafter", None))
    for model, role, adapter in jobs:
        try:
            check_model(model, role, pair, ids, report, batch=True, adapter=adapter)
        except Exception as exc:  # noqa: BLE001 - the reference itself could not be computed
            report.findings.append(Finding("reference", role, problem=f"raised {type(exc).__name__}: {str(exc)[:200]}"))
    report.seconds = time.perf_counter() - start
    return report


_VERIFIED: set[tuple] = set()
_LOCK = threading.Lock()
LAST: dict[str, Any] = {}  # the last report per key (README's cost figure, /health)


def ensure(pair, target_key: tuple, draft_key: tuple | None) -> Report | None:
    """Run the checks this pair's models have not passed yet in this process; raise on a failure."""
    with _LOCK:
        todo_target = target_key not in _VERIFIED
        todo_draft = draft_key is not None and draft_key not in _VERIFIED
        if not (todo_target or todo_draft):
            return None
        report = run_checks(pair, target=todo_target, draft=todo_draft)
        LAST["report"] = report
        if not report.ok:
            bad = "; ".join(f"{f.model} {f.path}: {f.problem}" for f in report.findings if not f.ok)
            raise SelfCheckFailed(
                f"refusing to run {pair.describe()}: specviz's load-time self-check found its cache paths disagree "
                f"with the model's own greedy decoding on {versions()} ({bad}). This combination would show wrong "
                "output; install the versions in requirements.txt."
            )
        if todo_target:
            _VERIFIED.add(target_key)
        if todo_draft:
            _VERIFIED.add(draft_key)
        return report


def forget() -> None:
    """Clear what passed (tests that break the engine on purpose)."""
    with _LOCK:
        _VERIFIED.clear()
