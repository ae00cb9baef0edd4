"""AIPerf: the per-request `spec_decode_acceptance` of `profile_export.jsonl` (one MetricRecordInfo a line).

Sources read (docs/observe.md names the commit): src/aiperf/common/models/spec_decode_models.py
(SpecDecodeAcceptanceRecord), src/aiperf/common/models/record_models.py (MetricRecordInfo), the vLLM and
TensorRT-LLM adapters. AIPerf's record is already engine-neutral and counts as ours: num_spec_steps = steps,
num_draft_tokens = drafted, num_accepted_draft_tokens = accepted, acceptance_histogram = histogram (string keys on
the wire), mean_acceptance_length = 1 + accepted / steps; its `engine` names the serving engine.
"""

from __future__ import annotations

from typing import Any

from specviz.engine.acceptance import AcceptanceRecord
from specviz.observe.common import count, counts_list, histogram, new, optional_count, rate

ENGINE = "aiperf"


def from_object(obj: Any) -> list[AcceptanceRecord]:
    if not isinstance(obj, dict) or not isinstance(obj.get("spec_decode_acceptance"), dict):
        return []
    payload = obj["spec_decode_acceptance"]
    record = new(
        ENGINE,
        "request",
        k=optional_count(payload, "num_spec_tokens"),
        steps=count(payload.get("num_spec_steps"), "num_spec_steps"),
        drafted=optional_count(payload, "num_draft_tokens"),
        accepted=optional_count(payload, "num_accepted_draft_tokens"),
        histogram=histogram(payload.get("acceptance_histogram", {}), "acceptance_histogram"),
        labels={"served_by": str(payload.get("engine", ""))},
    )
    if payload.get("mean_acceptance_length") is not None:
        record.mean_acceptance_length = rate(payload["mean_acceptance_length"], "mean_acceptance_length")
    if payload.get("draft_acceptance_rate") is not None:
        record.acceptance_rate = rate(payload["draft_acceptance_rate"], "draft_acceptance_rate")
    for name in ("per_step_accepted", "per_step_drafted"):
        if payload.get(name) is not None:
            setattr(record, name, counts_list(payload[name], name))
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        if metadata.get("x_request_id"):
            record.labels["request"] = str(metadata["x_request_id"])
        if metadata.get("request_end_ns") is not None:
            record.time = str(metadata["request_end_ns"])
    if record.steps == 0:
        record.mean_acceptance_length = None
        record.acceptance_rate = None
    return record and [record]
