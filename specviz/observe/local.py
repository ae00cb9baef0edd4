"""specviz's own runs as acceptance records: a saved trace (JSON) and a bench CSV (`python -m specviz.bench`).

A bench row holds medians, not events: where it has the acceptance columns (`acceptance_columns`, written by the
bench with --acceptance-out) they are read as counted; otherwise steps, drafted and accepted are derived from
new_tokens, tau, mean_drafts_per_round and wasted_drafts, and marked derived. A bench "round" is every
verification round, a round that drafted nothing included, so a derived mean acceptance length can sit below τ's.
"""

from __future__ import annotations

import json
import math
from typing import Any

from specviz.engine.acceptance import AcceptanceRecord, BadRecord, acceptance_record_from_trace, complete
from specviz.engine.trace import Trace
from specviz.observe.common import count, new

ENGINE = "specviz"
COLUMNS = ("acc_steps", "acc_drafted", "acc_accepted", "acc_accepted_per_position", "acc_histogram")


def is_trace(obj: Any) -> bool:
    return isinstance(obj, dict) and "schema" in obj and "events" in obj and "rows" in obj


def from_trace_dict(obj: dict) -> list[AcceptanceRecord]:
    try:
        trace = Trace.from_dict(obj)
    except (ValueError, TypeError) as exc:
        raise BadRecord(str(exc)) from None
    return [acceptance_record_from_trace(trace)]


def acceptance_columns(record: AcceptanceRecord) -> dict[str, Any]:
    """The columns a bench row carries so that a CSV converts without deriving (JSON text for the lists)."""
    return {
        "acc_steps": record.steps,
        "acc_drafted": record.drafted,
        "acc_accepted": record.accepted,
        "acc_accepted_per_position": json.dumps(record.accepted_per_position),
        "acc_histogram": json.dumps({str(j): n for j, n in sorted((record.histogram or {}).items())}),
    }


def _present(row: dict, key: str) -> bool:
    value = row.get(key)
    return value is not None and value != "" and not (isinstance(value, float) and math.isnan(value))


def _number(row: dict, key: str) -> float:
    try:
        return float(row[key])
    except (TypeError, ValueError):
        raise BadRecord(f"column {key} is {row[key]!r}: expected a number") from None


def from_bench_row(row: dict) -> AcceptanceRecord | None:
    """One bench CSV row (a dict of column -> text or number); None for a row that drafted nothing."""
    labels = {key: str(row[key]) for key in ("method", "prompt_id", "category") if _present(row, key)}
    k = count(_number(row, "param_gamma"), "param_gamma") if _present(row, "param_gamma") else None
    if _present(row, "acc_steps"):
        record = new(ENGINE, "request", k=k, labels=labels)
        record.steps = count(_number(row, "acc_steps"), "acc_steps")
        record.drafted = count(_number(row, "acc_drafted"), "acc_drafted")
        record.accepted = count(_number(row, "acc_accepted"), "acc_accepted")
        if _present(row, "acc_accepted_per_position"):
            per_pos = json.loads(str(row["acc_accepted_per_position"]))
            record.accepted_per_position = None if per_pos is None else [count(v, "position count") for v in per_pos]
        if _present(row, "acc_histogram"):
            hist = json.loads(str(row["acc_histogram"]))
            record.histogram = {count(j, "histogram key"): count(n, "histogram count") for j, n in hist.items()} or None
        return record if record.drafted else None
    needed = ("new_tokens", "tau", "mean_drafts_per_round", "wasted_drafts")
    if not all(_present(row, key) for key in needed):
        return None
    tau = _number(row, "tau")
    drafts_per_round = _number(row, "mean_drafts_per_round")
    if tau <= 0 or drafts_per_round <= 0:
        return None
    record = new(ENGINE, "request", k=k, labels=labels)
    steps = round(_number(row, "new_tokens") / tau)
    drafted = round(drafts_per_round * steps)
    record.mark("steps", steps)
    record.mark("drafted", drafted)
    record.mark("accepted", drafted - count(_number(row, "wasted_drafts"), "wasted_drafts"))
    record.notes.append("from a bench row's medians: steps = new_tokens / tau, rounds that drafted nothing included")
    return record


def records_from_bench_rows(rows: list[dict]) -> list[AcceptanceRecord]:
    """The bench's rows (dicts, as written to its CSV) as completed records; rows that drafted nothing are left out
    (`python -m specviz.bench ... --acceptance-out FILE` writes these with writers.write_acceptance)."""
    found = (from_bench_row(row) for row in rows)
    return [complete(record) for record in found if record is not None]
