"""TensorRT-LLM: the per-request `speculative_decoding` stats of a response and the iteration
`specDecodingStats` of its iteration log (`trtllm-serve`'s /metrics JSON, `llm.get_stats()`).

Sources read (docs/observe.md names the commits): cpp/include/tensorrt_llm/executor/types.h (SpecDecodingStats),
the Python bindings that name its fields, and AIPerf's TensorRT-LLM adapter with its tests for the per-request
payload.

How TensorRT-LLM counts, mapped to engine/acceptance.py's definitions:
- per request: num_spec_steps = steps, total_draft_tokens = drafted, total_accepted_draft_tokens = accepted,
  acceptance_histogram (dense list, index j = steps that accepted j), num_spec_tokens = k (null under
  draft_len_schedule, where the draft length varies). It sends no mean acceptance length: derived here.
- per iteration: numRequestsWithDraftTokens = steps (each such request verified once in the iteration),
  numDraftTokens = drafted, numAcceptedTokens = accepted. Its acceptanceLength is "tokens produced per step for
  requests with a draft": (accepted + steps) / steps, our mean acceptance length; it is kept as reported.
"""

from __future__ import annotations

from typing import Any

from specviz.engine.acceptance import AcceptanceRecord
from specviz.observe.common import count, histogram, new, optional_count, rate

ENGINE = "tensorrt_llm"
REQUEST_KEYS = ("total_draft_tokens", "total_accepted_draft_tokens")


def _request_payload(obj: dict) -> dict | None:
    for holder in [obj] + [c for c in obj.get("choices") or [] if isinstance(c, dict)]:
        payload = holder.get("speculative_decoding")
        if isinstance(payload, dict) and all(key in payload for key in REQUEST_KEYS):
            return payload
    return None


def from_request(payload: dict) -> AcceptanceRecord:
    record = new(
        ENGINE,
        "request",
        k=optional_count(payload, "num_spec_tokens"),
        steps=optional_count(payload, "num_spec_steps"),
        drafted=count(payload["total_draft_tokens"], "total_draft_tokens"),
        accepted=count(payload["total_accepted_draft_tokens"], "total_accepted_draft_tokens"),
    )
    if payload.get("acceptance_histogram") is not None:
        record.histogram = histogram(payload["acceptance_histogram"], "acceptance_histogram")
    if payload.get("acceptance_rate") is not None:
        record.acceptance_rate = rate(payload["acceptance_rate"], "acceptance_rate")
    if record.k is None:
        record.notes.append("no fixed k (draft_len_schedule): the draft length varies with the batch")
    return record


def from_iteration(stats: dict, iteration: Any = None) -> AcceptanceRecord | None:
    steps = count(stats.get("numRequestsWithDraftTokens", 0), "numRequestsWithDraftTokens")
    drafted = count(stats.get("numDraftTokens", 0), "numDraftTokens")
    if steps == 0 and drafted == 0:
        return None  # an iteration without drafts (a context phase) is not a speculative step
    record = new(
        ENGINE,
        "iteration",
        steps=steps,
        drafted=drafted,
        accepted=count(stats.get("numAcceptedTokens", 0), "numAcceptedTokens"),
    )
    if iteration is not None:
        record.labels["iter"] = str(iteration)
    if stats.get("acceptanceLength") is not None:
        record.reported["acceptanceLength"] = rate(stats["acceptanceLength"], "acceptanceLength")
    return record


def from_object(obj: Any) -> list[AcceptanceRecord]:
    if not isinstance(obj, dict):
        return []
    payload = _request_payload(obj)
    if payload is not None:
        return [from_request(payload)]
    stats = obj.get("specDecodingStats")
    if isinstance(stats, dict):
        record = from_iteration(stats, obj.get("iter"))
        if record is not None and obj.get("timestamp") is not None:
            record.time = str(obj["timestamp"])
        return [record] if record is not None else []
    return []
