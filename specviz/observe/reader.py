"""Read any file of acceptance records: decide the format by its content (never its name) and stream it.

Formats: log lines of any engine (records mixed with other lines, streamed line by line), JSON Lines and
server-sent events (`data: {...}`) of responses, one JSON document (a response, a list of responses or of
TensorRT-LLM iterations, /server_info, a specviz trace), Prometheus text, and a specviz bench CSV. A file holding
many records is a series in file order. Lines that are not records are skipped and counted; a record with
impossible values is refused with a message naming them, and reading goes on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from tqdm import tqdm

from specviz.engine.acceptance import AcceptanceRecord, BadRecord, complete
from specviz.observe import aiperf, llamacpp, local, mlx, prometheus, sglang, trtllm, vllm

MAX_DOCUMENT_BYTES = 50_000_000  # a file read whole (JSON, Prometheus text, CSV) larger than this is refused
MAX_STREAM_BYTES = 4_000_000_000  # a log streamed line by line larger than this is refused
MAX_LINE_CHARS = 1_000_000  # a longer line is skipped unread (no log line of these engines is near it)
SNIFF_BYTES = 65_536
KEPT_MESSAGES = 20
OBJECT_READERS: tuple[Callable[[Any], list[AcceptanceRecord]], ...] = (
    vllm.from_object,
    sglang.from_object,
    mlx.from_object,
    llamacpp.from_object,
    trtllm.from_object,
    aiperf.from_object,
)
JSON_LIST = re.compile(r"\[\s*[\{\]]")
PROM_LINE = re.compile(
    r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[^}]*\})?\s+[-+]?(?:[\d.]+(?:[eE][-+]?\d+)?|NaN|Inf)(?:\s+-?\d+)?\s*$"
)


@dataclass
class ReadStats:
    """What reading one source gave besides its records."""

    name: str
    kind: str = ""  # "log", "jsonl", "json", "prometheus", "csv"
    lines: int = 0  # lines (or items) read
    records: int = 0
    skipped: int = 0  # lines that are not records
    rejected: int = 0  # records refused for impossible values
    messages: list[str] = field(default_factory=list)  # the first KEPT_MESSAGES refusals, with their line
    error: str | None = None  # the source could not be read at all

    def refuse(self, where: str, exc: Exception) -> None:
        self.rejected += 1
        if len(self.messages) < KEPT_MESSAGES:
            self.messages.append(f"{where}: {exc}")


def records_from_object(obj: Any) -> list[AcceptanceRecord]:
    if local.is_trace(obj):
        return local.from_trace_dict(obj)
    for reader in OBJECT_READERS:
        found = reader(obj)
        if found:
            return found
    return []


def records_from_line(line: str) -> list[AcceptanceRecord]:
    """The records one log line holds (most lines hold none: cheap substring tests come first)."""
    head = line.lstrip()
    if head.startswith("data: "):
        head = head[6:]
    if head.startswith("{"):
        try:
            obj = json.loads(head)
        except json.JSONDecodeError:
            return []
        return records_from_object(obj)
    if "SpecDecoding metrics:" in line or "Speculative metrics:" in line:
        found = vllm.read_line(line)
    elif "draft acceptance" in line or "#gen drafts" in line:
        found = llamacpp.read_line(line)
    elif "accept len:" in line:
        found = sglang.read_line(line)
    else:
        return []
    return [found] if found is not None else []


def sniff(head: bytes) -> str:
    """The format of a file from its first bytes: binary, json, prometheus, csv or lines."""
    if b"\x00" in head:
        return "binary"
    text = head.decode("utf-8", errors="replace")
    if text.count("\ufffd") > max(8, len(text) // 100):
        return "binary"
    stripped = text.lstrip("\ufeff \t\r\n")
    if JSON_LIST.match(stripped) or (stripped.startswith("{") and "\n{" not in stripped.rstrip()):
        return "json"  # a log line may start with "[2025-...": a JSON list starts with "[{" or "[]"
    lines = [x for x in stripped.splitlines()[:50] if x.strip()]
    if lines and all(x.startswith("#") or PROM_LINE.match(x) for x in lines) and "spec_" in text:
        return "prometheus"
    if lines and "," in lines[0]:
        header = [c.strip() for c in lines[0].split(",")]
        if "method" in header and ("tau" in header or "acc_steps" in header):
            return "csv"
    return "lines"


def _complete(record: AcceptanceRecord, where: str, stats: ReadStats) -> AcceptanceRecord | None:
    record.source = where
    try:
        return complete(record)
    except BadRecord as exc:
        stats.refuse(where, exc)
        return None


def iter_path(
    path: str | os.PathLike, stats: ReadStats | None = None, progress: bool = False, max_bytes: int | None = None
) -> Iterator[AcceptanceRecord]:
    """The records of one file, in file order; `stats` (filled as it goes) says what was skipped or refused."""
    stats = stats if stats is not None else ReadStats(name=str(path))
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError as exc:
        stats.error = f"cannot read {path}: {exc.strerror or exc}"
        return
    kind = sniff(head)
    stats.kind = kind
    if kind == "binary":
        stats.error = f"{path} is a binary file (not a log, Prometheus text, JSON or CSV): nothing read"
        return
    limit = max_bytes if max_bytes is not None else (MAX_STREAM_BYTES if kind == "lines" else MAX_DOCUMENT_BYTES)
    if size > limit:
        stats.error = f"{path} is {size / 1e6:.1f} MB; the limit for this kind of file is {limit / 1e6:.0f} MB"
        return
    if kind == "lines":
        yield from _iter_lines(path, size, stats, progress)
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    yield from iter_text(text, stats, kind=kind, name=str(path))


def iter_text(
    text: str, stats: ReadStats | None = None, kind: str | None = None, name: str = "text"
) -> Iterator[AcceptanceRecord]:
    """The records of a text held in memory (pasted text, or a document read whole)."""
    stats = stats if stats is not None else ReadStats(name=name)
    kind = kind or sniff(text[:SNIFF_BYTES].encode("utf-8", errors="replace"))
    stats.kind = kind
    if kind == "binary":
        stats.error = f"{name} looks binary (a NUL byte or undecodable bytes): nothing read"
        return
    if kind == "json":
        try:
            document = json.loads(text)
        except json.JSONDecodeError:
            kind = stats.kind = "lines"  # JSON Lines, or a log that starts with a brace
        else:
            yield from _iter_document(document, stats, name)
            return
    if kind == "prometheus":
        stats.lines = text.count("\n") + 1
        try:
            found = prometheus.read(text)
        except BadRecord as exc:
            stats.error = f"{name}: {exc}"
            return
        for record in found:
            if _complete(record, f"{name} (Prometheus)", stats):
                stats.records += 1
                yield record
        return
    if kind == "csv":
        yield from _iter_csv(text, stats, name)
        return
    for number, line in enumerate(io.StringIO(text), 1):
        yield from _line_records(line, number, name, stats)
    stats.lines = text.count("\n") + (0 if text.endswith("\n") else 1)


def _line_records(line: str, number: int, name: str, stats: ReadStats) -> Iterator[AcceptanceRecord]:
    if len(line) > MAX_LINE_CHARS:
        stats.skipped += 1
        return
    try:
        found = records_from_line(line)
    except BadRecord as exc:
        stats.refuse(f"{name}:{number}", exc)
        return
    if not found:
        stats.skipped += 1
        return
    for record in found:
        if _complete(record, f"{name}:{number}", stats):
            stats.records += 1
            yield record


def _iter_lines(path: str | os.PathLike, size: int, stats: ReadStats, progress: bool) -> Iterator[AcceptanceRecord]:
    name = str(path)
    bar = tqdm(total=size, unit="B", unit_scale=True, desc=os.path.basename(name), disable=not progress, leave=False)
    done = 0
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        for number, line in enumerate(f, 1):
            done += len(line)
            if number % 50_000 == 0:
                bar.update(done)
                done = 0
            yield from _line_records(line, number, name, stats)
            stats.lines = number
    bar.update(done)
    bar.close()


def _iter_document(document: Any, stats: ReadStats, name: str) -> Iterator[AcceptanceRecord]:
    items = document if isinstance(document, list) else [document]
    for i, item in enumerate(items):
        where = f"{name}[{i}]" if isinstance(document, list) else name
        stats.lines += 1
        try:
            found = records_from_object(item)
        except BadRecord as exc:
            stats.refuse(where, exc)
            continue
        if not found:
            stats.skipped += 1
        for record in found:
            if _complete(record, where, stats):
                stats.records += 1
                yield record


def _iter_csv(text: str, stats: ReadStats, name: str) -> Iterator[AcceptanceRecord]:
    for number, row in enumerate(csv.DictReader(io.StringIO(text)), 2):
        stats.lines += 1
        try:
            record = local.from_bench_row(row)
        except (BadRecord, json.JSONDecodeError) as exc:
            stats.refuse(f"{name}:{number}", exc)
            continue
        if record is None:
            stats.skipped += 1
        elif _complete(record, f"{name}:{number}", stats):
            stats.records += 1
            yield record
