"""Prometheus text (a saved /metrics page, or a live one under --watch), parsed with prometheus_client's parser.

`read` gives one record per label set (model, engine index) from vLLM's counters (a server's lifetime) and SGLang's
gauges (its most recent batch window). `Watcher` turns successive pages into interval records from counter deltas,
and survives a counter that went down (a restarted server): the new value is then the count since the restart.
"""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from specviz.engine.acceptance import AcceptanceRecord, BadRecord, complete
from specviz.observe import sglang, vllm

MAX_PAGE_BYTES = 5_000_000  # a /metrics page larger than this is refused
FIELDS = ("steps", "drafted", "accepted")


def families(text: str) -> list:
    try:
        return list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise BadRecord(f"not Prometheus text: {exc}") from None


def read(text: str) -> list[AcceptanceRecord]:
    parsed = families(text)
    return vllm.from_prometheus(parsed) + sglang.from_prometheus(parsed)


def fetch(url: str, timeout: float = 5.0, max_bytes: int = MAX_PAGE_BYTES) -> str:
    """The text of a /metrics page (http or https only, size-capped)."""
    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise ValueError(f"--watch takes an http(s) URL, not {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (scheme checked above)
        body = response.read(max_bytes + 1)
    if len(body) > max_bytes:
        raise ValueError(f"{url} sent more than {max_bytes / 1e6:.0f} MB; a /metrics page is far smaller")
    return body.decode("utf-8", errors="replace")


class Watcher:
    """Interval records from successive /metrics pages of vLLM's counters."""

    def __init__(self) -> None:
        self.last: dict[tuple, dict[str, Any]] = {}
        self.resets = 0

    def update(self, text: str, time: str | None = None) -> list[AcceptanceRecord]:
        groups = vllm.prometheus_groups(families(text))
        out = []
        for key, group in groups.items():
            before = self.last.get(key)
            self.last[key] = group
            if before is None:
                continue  # the first page is the baseline
            went_down = any(group.get(f, 0) < before.get(f, 0) for f in FIELDS) or any(
                n < before["positions"].get(i, 0) for i, n in group["positions"].items()
            )
            if went_down:
                self.resets += 1
                delta = group  # the counters restarted from zero: what they hold is the interval's count
            else:
                delta = {f: group[f] - before.get(f, 0) for f in FIELDS if f in group}
                delta["positions"] = {i: n - before["positions"].get(i, 0) for i, n in group["positions"].items()}
            if not delta.get("steps"):
                continue
            record = vllm.record_from_group(key, delta, scope="interval")
            record.time = time
            if went_down:
                record.notes.append("counter reset (a restarted server): this interval counts from the restart")
            out.append(complete(record))
        return out
