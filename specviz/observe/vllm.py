"""vLLM: the V1 "SpecDecoding metrics:" log line (every variant since 2025), the V0 "Speculative metrics:" line,
the Prometheus counters of /metrics, and the per-request `metrics.speculative_decoding` of a response.

Sources read (docs/observe.md names the commits): vllm/v1/spec_decode/metrics.py (SpecDecodingLogging.log,
SpecDecodingProm), vllm/spec_decode/metrics.py and vllm/engine/metrics.py (V0), the ObservabilityConfig's
`per_request_spec_decode_metrics` and AIPerf's vLLM adapter for the per-request payload.

How vLLM counts, mapped to engine/acceptance.py's definitions:
- V1: num_drafts = steps, num_draft_tokens = drafted, num_accepted_tokens = accepted, accepted per position =
  steps whose i-th draft passed; the log's mean acceptance length is 1 + accepted / steps (2 decimals) and its
  per-position rates are counts / steps (3 decimals). The line gives no steps: steps = accepted / the sum of the
  rates (derived), or accepted / (mean - 1) where a line has no rates.
- V0: "accepted" counts every position the sampler passed, also after a rejection, so it is not ours. Drafts are
  k per sequence per step (its collector asserts draft tokens % k == 0), so steps = draft tokens / k, and
  "emitted tokens" (the bonus or correction token included) give accepted = emitted - steps and the mean
  acceptance length = emitted / steps. V0's counters are cumulative: a line covers the server's lifetime.
"""

from __future__ import annotations

import re
from typing import Any

from specviz.engine.acceptance import AcceptanceRecord, BadRecord
from specviz.observe.common import NUM, count, counts_list, histogram, log_time, new, optional_count, rate

ENGINE = "vllm"
V1_MARK = "SpecDecoding metrics:"
V0_MARK = "Speculative metrics:"

V1_FIELDS = {
    "mean": re.compile(r"Mean acceptance length: " + NUM),
    "accepted": re.compile(r"Accepted: " + NUM + r" tokens"),
    "drafted": re.compile(r"Drafted: " + NUM + r" tokens"),
    "rate": re.compile(r"(?<!Avg )Draft acceptance rate: " + NUM + "%"),
    "avg_rate": re.compile(r"Avg Draft acceptance rate: " + NUM + "%"),
    "accepted_tps": re.compile(r"Accepted throughput: " + NUM + " tokens/s"),
    "drafted_tps": re.compile(r"Drafted throughput: " + NUM + " tokens/s"),
}
PER_POSITION = re.compile(r"Per-position acceptance rate: (" + NUM + r"(?:, *" + NUM + r")*)")
ENGINE_INDEX = re.compile(r"Engine (\d+):")
V0_FIELDS = {
    "rate": re.compile(r"Draft acceptance rate: " + NUM),
    "efficiency": re.compile(r"System efficiency: " + NUM),
    "k": re.compile(r"Number of speculative tokens: " + NUM),
    "accepted": re.compile(r"Number of accepted tokens: " + NUM),
    "drafted": re.compile(r"Number of draft tokens(?: tokens)?: " + NUM),
    "emitted": re.compile(r"Number of emitted tokens(?: tokens)?: " + NUM),
}


def _fields(patterns: dict[str, re.Pattern], text: str) -> dict[str, float]:
    found = {}
    for name, pattern in patterns.items():
        match = pattern.search(text)
        if match:
            found[name] = float(match.group(1))
    return found


def read_line(line: str) -> AcceptanceRecord | None:
    """One log line, or None when it holds no vLLM acceptance record."""
    at = line.find(V1_MARK)
    if at >= 0:
        return _v1(line, at)
    at = line.find(V0_MARK)
    if at >= 0:
        return _v0(line, at)
    return None


def _v1(line: str, at: int) -> AcceptanceRecord | None:
    body = line[at + len(V1_MARK) :]
    f = _fields(V1_FIELDS, body)
    if "accepted" not in f or "drafted" not in f:
        return None
    record = new(ENGINE, "interval", accepted=count(f["accepted"], "Accepted"), drafted=count(f["drafted"], "Drafted"))
    record.time = log_time(line, at)
    engine_index = ENGINE_INDEX.search(line, 0, at)
    if engine_index:
        record.labels["engine_index"] = engine_index.group(1)
    positions = PER_POSITION.search(body)
    if positions:
        record.per_position = [rate(x, "per-position rate") for x in positions.group(1).split(",")]
    if "mean" in f:
        record.mean_acceptance_length = f["mean"]
    percent = f.get("avg_rate", f.get("rate"))
    if percent is not None:
        record.acceptance_rate = percent / 100 if percent == percent else None  # vLLM prints nan for 0 drafted
    for name in ("accepted_tps", "drafted_tps"):
        if name in f:
            record.reported[name.replace("_tps", "_tokens_per_s")] = f[name]
    if not positions and "mean" in f and f["mean"] > 1 and record.accepted:
        record.mark("steps", round(record.accepted / (f["mean"] - 1)))
        record.notes.append("steps = accepted / (mean acceptance length - 1), the mean rounded to 2 decimals")
    record.notes.append("an interval of the engine's log: every request scheduled in it, pooled")
    return record


def _v0(line: str, at: int) -> AcceptanceRecord | None:
    body = line[at + len(V0_MARK) :]
    f = _fields(V0_FIELDS, body)
    if "drafted" not in f or "emitted" not in f:
        return None
    drafted = count(f["drafted"], "Number of draft tokens")
    emitted = count(f["emitted"], "Number of emitted tokens")
    record = new(ENGINE, "lifetime", drafted=drafted)
    record.time = log_time(line, at)
    record.reported = {
        "v0_accepted_tokens": f.get("accepted"),
        "v0_draft_acceptance_rate": f.get("rate"),
        "emitted_tokens": emitted,
    }
    if "efficiency" in f:
        record.reported["system_efficiency"] = f["efficiency"]
    record.notes.append(
        "vLLM V0: its 'accepted' counts positions that passed after a rejection too; accepted here = emitted - steps"
    )
    if "k" in f:
        record.k = count(f["k"], "Number of speculative tokens")
    if record.k and drafted % record.k == 0:
        steps = drafted // record.k
        record.mark("steps", steps)
        if emitted < steps:
            raise BadRecord(f"emitted tokens ({emitted}) are fewer than the steps ({steps}) the drafts imply")
        record.mark("accepted", emitted - steps)
        if steps:
            record.mark("mean_acceptance_length", emitted / steps)
    elif record.k:
        record.warnings.append(f"draft tokens ({drafted}) are not a multiple of k ({record.k}): steps unknown")
    return record


# -- per-request: metrics.speculative_decoding ------------------------------------------------------------------
PAYLOAD_KEYS = ("num_spec_steps", "mean_acceptance_length")  # vLLM always sends the histogram too; the writer
# here may not know it (a bench row), and the record stays readable without it


def is_payload(obj: Any) -> bool:
    return isinstance(obj, dict) and all(key in obj for key in PAYLOAD_KEYS)


def find_payload(obj: Any) -> dict | None:
    """`metrics.speculative_decoding` at a response's root (a completion, a streamed last chunk), or a choice's
    `speculative_decoding_stats` (the pull request's earlier layout)."""
    if not isinstance(obj, dict):
        return None
    metrics = obj.get("metrics")
    if isinstance(metrics, dict) and is_payload(metrics.get("speculative_decoding")):
        return metrics["speculative_decoding"]
    for choice in obj.get("choices") or []:
        if isinstance(choice, dict) and is_payload(choice.get("speculative_decoding_stats")):
            return choice["speculative_decoding_stats"]
    return None


def from_payload(payload: dict, labels: dict[str, str] | None = None) -> AcceptanceRecord:
    record = new(
        ENGINE,
        "request",
        k=optional_count(payload, "num_spec_tokens"),
        steps=count(payload["num_spec_steps"], "num_spec_steps"),
        drafted=optional_count(payload, "num_draft_tokens"),
        accepted=optional_count(payload, "num_accepted_draft_tokens"),
        labels=dict(labels or {}),
    )
    if payload.get("acceptance_histogram") is not None:
        record.histogram = histogram(payload["acceptance_histogram"], "acceptance_histogram")
    if payload.get("mean_acceptance_length") is not None:
        record.mean_acceptance_length = rate(payload["mean_acceptance_length"], "mean_acceptance_length")
    if payload.get("draft_acceptance_rate") is not None:
        record.acceptance_rate = rate(payload["draft_acceptance_rate"], "draft_acceptance_rate")
    if payload.get("per_step_accepted") is not None:
        record.per_step_accepted = counts_list(payload["per_step_accepted"], "per_step_accepted")
    if payload.get("per_step_drafted") is not None:
        record.per_step_drafted = counts_list(payload["per_step_drafted"], "per_step_drafted")
    if record.steps == 0:
        record.mean_acceptance_length = None  # vLLM writes 1.0 for a request that never verified
        record.acceptance_rate = None
    return record


def from_object(obj: Any) -> list[AcceptanceRecord]:
    payload = find_payload(obj)
    if payload is None:
        return []
    labels = {key: str(obj[key]) for key in ("id", "model") if isinstance(obj.get(key), (str, int))}
    return [from_payload(payload, labels)]


# -- Prometheus: vllm:spec_decode_* counters --------------------------------------------------------------------
PROM_NAMES = {
    "vllm:spec_decode_num_drafts": "steps",
    "vllm:spec_decode_num_draft_tokens": "drafted",
    "vllm:spec_decode_num_accepted_tokens": "accepted",
}
PER_POS_NAME = "vllm:spec_decode_num_accepted_tokens_per_pos"


def prometheus_groups(families: list) -> dict[tuple, dict[str, Any]]:
    """Counter values by label set (model, engine index ...): {labels: {steps, drafted, accepted, positions}}."""
    groups: dict[tuple, dict[str, Any]] = {}
    for family in families:
        name = family.name.removesuffix("_total")
        if name not in PROM_NAMES and name != PER_POS_NAME:
            continue
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue  # _created holds a time, not a count
            labels = {k: v for k, v in sample.labels.items() if k != "position"}
            key = tuple(sorted(labels.items()))
            group = groups.setdefault(key, {"positions": {}})
            value = count(sample.value, sample.name)
            if name == PER_POS_NAME:
                group["positions"][count(sample.labels.get("position", "-1"), "position label")] = value
            else:
                group[PROM_NAMES[name]] = value
    return groups


def record_from_group(key: tuple, group: dict[str, Any], scope: str = "lifetime") -> AcceptanceRecord:
    positions = group.get("positions") or {}
    per_pos = [positions.get(i, 0) for i in range(max(positions) + 1)] if positions else None
    record = new(
        ENGINE,
        scope,
        steps=group.get("steps"),
        drafted=group.get("drafted"),
        accepted=group.get("accepted"),
        accepted_per_position=per_pos,
        labels=dict(key),
    )
    if per_pos is not None:
        record.k = len(per_pos)  # one counter per position up to num_speculative_tokens
    return record


def from_prometheus(families: list) -> list[AcceptanceRecord]:
    return [record_from_group(key, group) for key, group in prometheus_groups(families).items() if len(group) > 1]
