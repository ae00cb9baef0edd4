"""Records written the way vLLM writes them, so a specviz run reads like a deployment anywhere: per-request JSONL
(one `metrics.speculative_decoding` object a line, as vLLM's --per-request-spec-decode-metrics) and Prometheus
text with vLLM's counter names (written by prometheus_client)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily

from specviz.engine.acceptance import AcceptanceRecord


def vllm_payload(record: AcceptanceRecord) -> dict:
    payload = {
        "mean_acceptance_length": record.mean_acceptance_length,
        "draft_acceptance_rate": record.acceptance_rate,
        "num_spec_steps": record.steps,
        "num_accepted_draft_tokens": record.accepted,
        "num_draft_tokens": record.drafted,
        "num_spec_tokens": record.k,
    }
    if record.histogram is not None:
        payload["acceptance_histogram"] = {str(j): n for j, n in sorted(record.histogram.items())}
    if record.per_step_accepted is not None:
        payload["per_step_accepted"] = record.per_step_accepted
    if record.per_step_drafted is not None:
        payload["per_step_drafted"] = record.per_step_drafted
    return payload


def to_jsonl(records: Iterable[AcceptanceRecord]) -> str:
    lines = []
    for i, record in enumerate(records):
        name = record.labels.get("method") or record.engine
        request = {"id": f"{name}-{record.labels.get('prompt_id', i)}", "model": name}
        request["metrics"] = {"speculative_decoding": vllm_payload(record)}
        lines.append(json.dumps(request))
    return "".join(line + "\n" for line in lines)


class _Counters:
    """A prometheus_client collector that serves fixed counter values (summed over records per model)."""

    def __init__(self, records: Iterable[AcceptanceRecord]) -> None:
        self.totals: dict[str, dict[str, int]] = {}
        self.positions: dict[str, dict[int, int]] = {}
        for record in records:
            model = record.labels.get("method") or record.labels.get("model") or record.engine
            totals = self.totals.setdefault(model, {"steps": 0, "drafted": 0, "accepted": 0})
            for name in totals:
                totals[name] += getattr(record, name) or 0
            for i, n in enumerate(record.accepted_per_position or []):
                self.positions.setdefault(model, {})[i] = self.positions.get(model, {}).get(i, 0) + n

    def collect(self):
        names = {
            "steps": ("vllm:spec_decode_num_drafts", "Number of spec decoding drafts."),
            "drafted": ("vllm:spec_decode_num_draft_tokens", "Number of draft tokens."),
            "accepted": ("vllm:spec_decode_num_accepted_tokens", "Number of accepted tokens."),
        }
        for field_name, (name, doc) in names.items():
            family = CounterMetricFamily(name, doc, labels=["model_name", "engine"])
            for model, totals in self.totals.items():
                family.add_metric([model, "0"], totals[field_name])
            yield family
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Accepted tokens per draft position.",
            labels=["model_name", "engine", "position"],
        )
        for model, positions in self.positions.items():
            for i, n in sorted(positions.items()):
                per_pos.add_metric([model, "0", str(i)], n)
        yield per_pos


def to_prometheus(records: Iterable[AcceptanceRecord]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Counters(records))
    return generate_latest(registry).decode()


def write_acceptance(records: Iterable[AcceptanceRecord], path: str | Path) -> tuple[Path, Path]:
    """`path` gets the per-request JSONL; the same name with `.prom` gets the Prometheus text."""
    items = list(records)
    jsonl = Path(path)
    prom = jsonl.with_suffix(".prom")
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    jsonl.write_text(to_jsonl(items))
    prom.write_text(to_prometheus(items))
    return jsonl, prom
