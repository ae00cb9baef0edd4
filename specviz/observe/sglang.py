"""SGLang: a response's `meta_info` (current and older field names), the scheduler's "Decode batch." log line,
the Prometheus gauges and /server_info's average.

Sources read (docs/observe.md names the commits): python/sglang/srt/managers/tokenizer_manager.py
(`_calculate_spec_decoding_metrics`), python/sglang/srt/managers/scheduler_metrics_mixin.py (the decode log line),
python/sglang/srt/metrics/collector.py (the gauges).

How SGLang counts, mapped to engine/acceptance.py's definitions:
- spec_verify_ct = steps; spec_num_correct_drafts (older: spec_accepted_drafts, spec_accept_token_num) =
  accepted; spec_num_proposed_drafts (older: spec_proposed_drafts, spec_draft_token_num) = drafted, but SGLang
  computes it as steps x (speculative_num_draft_tokens - 1), which counts tree nodes when topk > 1.
- meta_info's spec_accept_length = completion_tokens / spec_verify_ct counts the token the prefill produced, so
  it is kept as SGLang's own value and the mean acceptance length here is 1 + accepted / steps.
- spec_correct_drafts_histogram (older: spec_accept_histogram): index j = steps that accepted j drafts.
- spec_num_correct_drafts_by_position[i] = steps whose i-th draft was accepted.
- The gauges and the decode log line are per batch window ("accepted drafts + bonus per forward"): a mean
  acceptance length and an acceptance rate without counts.
"""

from __future__ import annotations

import re
from typing import Any

from specviz.engine.acceptance import AcceptanceRecord
from specviz.observe.common import NUM, count, counts_list, histogram, log_time, new, rate

ENGINE = "sglang"
ACCEPTED_KEYS = ("spec_num_correct_drafts", "spec_accepted_drafts", "spec_accept_token_num")
DRAFTED_KEYS = ("spec_num_proposed_drafts", "spec_proposed_drafts", "spec_draft_token_num")
HISTOGRAM_KEYS = ("spec_correct_drafts_histogram", "spec_accept_histogram")
DECODE_MARK = "Decode batch."
ACCEPT_LEN = re.compile(r"accept len: " + NUM)
ACCEPT_RATE = re.compile(r"accept rate: " + NUM)


def _first(meta: dict, keys: tuple[str, ...]) -> tuple[str, Any] | tuple[None, None]:
    for key in keys:
        if meta.get(key) is not None:
            return key, meta[key]
    return None, None


def from_meta_info(meta: dict, labels: dict[str, str] | None = None) -> AcceptanceRecord:
    record = new(ENGINE, "request", steps=count(meta["spec_verify_ct"], "spec_verify_ct"), labels=dict(labels or {}))
    key, value = _first(meta, ACCEPTED_KEYS)
    if key:
        record.accepted = count(value, key)
    key, value = _first(meta, DRAFTED_KEYS)
    if key:
        record.drafted = count(value, key)
        record.notes.append("SGLang's proposed drafts = steps x (num_draft_tokens - 1): tree nodes when topk > 1")
    key, value = _first(meta, HISTOGRAM_KEYS)
    if key and value:
        record.histogram = histogram(value, key)
    if meta.get("spec_num_correct_drafts_by_position") is not None:
        by_pos = counts_list(meta["spec_num_correct_drafts_by_position"], "spec_num_correct_drafts_by_position")
        record.accepted_per_position = by_pos
    if meta.get("spec_accept_rate") is not None and record.drafted:
        record.acceptance_rate = rate(meta["spec_accept_rate"], "spec_accept_rate")
    if meta.get("spec_accept_length") is not None:
        record.reported["spec_accept_length"] = rate(meta["spec_accept_length"], "spec_accept_length")
        record.notes.append("SGLang's spec_accept_length = completion tokens / steps counts the prefill's token")
    if meta.get("completion_tokens") is not None:
        record.reported["completion_tokens"] = count(meta["completion_tokens"], "completion_tokens")
    if record.accepted is None and record.steps and "completion_tokens" in record.reported:
        # completion tokens = the prefill's token + one bonus or correction per step + the accepted drafts
        accepted = record.reported["completion_tokens"] - 1 - record.steps
        if accepted >= 0:
            record.mark("accepted", accepted)
            record.notes.append("accepted = completion tokens - 1 - steps (no count in this release's meta_info)")
    return record


def from_object(obj: Any) -> list[AcceptanceRecord]:
    if not isinstance(obj, dict):
        return []
    meta = obj.get("meta_info")
    if isinstance(meta, dict) and meta.get("spec_verify_ct") is not None:
        labels = {"id": str(meta["id"])} if isinstance(meta.get("id"), (str, int)) else {}
        return [from_meta_info(meta, labels)]
    states = obj.get("internal_states")
    if isinstance(states, list):  # /server_info
        out = []
        for i, state in enumerate(states):
            if isinstance(state, dict) and state.get("avg_spec_accept_length") is not None:
                record = new(ENGINE, "lifetime", labels={"dp_rank": str(i)})
                record.mean_acceptance_length = rate(state["avg_spec_accept_length"], "avg_spec_accept_length")
                record.notes.append("/server_info's average acceptance length since the server started")
                out.append(record)
        return out
    return []


def read_line(line: str) -> AcceptanceRecord | None:
    at = line.find(DECODE_MARK)
    if at < 0:
        return None
    length = ACCEPT_LEN.search(line, at)
    if not length:
        return None
    record = new(ENGINE, "interval", time=log_time(line, at))
    record.mean_acceptance_length = float(length.group(1))
    accept_rate = ACCEPT_RATE.search(line, at)
    if accept_rate:
        record.acceptance_rate = float(accept_rate.group(1))
    record.notes.append("the scheduler's decode log: accepted drafts + bonus per forward over the log interval")
    return record


GAUGES = {"sglang:spec_accept_length": "mean_acceptance_length", "sglang:spec_accept_rate": "acceptance_rate"}


def from_prometheus(families: list) -> list[AcceptanceRecord]:
    groups: dict[tuple, AcceptanceRecord] = {}
    for family in families:
        field_name = GAUGES.get(family.name)
        if field_name is None:
            continue
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            record = groups.setdefault(key, new(ENGINE, "recent", labels=dict(key)))
            setattr(record, field_name, float(sample.value))
    for record in groups.values():
        record.notes.append("SGLang's gauges hold the most recent batch window, not counts")
        if record.mean_acceptance_length == 0:
            record.mean_acceptance_length = None  # the gauge starts at 0 before any speculative step
    return list(groups.values())
