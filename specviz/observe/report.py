"""Records as a text table per source and as a self-contained HTML report (escaped; no plotting library)."""

from __future__ import annotations

import html
from typing import Iterable

from specviz.engine.acceptance import AcceptanceRecord

COLUMNS = ("engine", "scope", "k", "steps", "drafted", "accepted", "rate", "mean len", "per position", "derived")


def _value(x: float | int | None, digits: int = 3) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def row(record: AcceptanceRecord) -> list[str]:
    """One record's cells; a derived value carries a '*' (and its name is listed in the last column)."""

    def cell(name: str, value: str) -> str:
        return value + "*" if name in record.derived and value != "-" else value

    per_pos = ", ".join(f"{r:.2f}" for r in record.per_position) if record.per_position else "-"
    return [
        record.engine,
        record.scope,
        cell("k", _value(record.k)),
        cell("steps", _value(record.steps)),
        cell("drafted", _value(record.drafted)),
        cell("accepted", _value(record.accepted)),
        cell("acceptance_rate", _value(record.acceptance_rate)),
        cell("mean_acceptance_length", _value(record.mean_acceptance_length, 2)),
        cell("per_position", per_pos),
        ", ".join(sorted(record.derived)) or "-",
    ]


def text_table(records: Iterable[AcceptanceRecord]) -> str:
    rows = [list(COLUMNS)] + [row(r) for r in records]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def html_report(sections: list[tuple[str, list[AcceptanceRecord], list[str]]]) -> str:
    """sections: (source name, its records shown, lines saying what was skipped or refused)."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>specviz observe</title>",
        "<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}"
        "th,td{border:1px solid #888;padding:.25em .5em;text-align:left}</style></head><body>",
        "<h1>Acceptance records</h1>",
        "<p>Definitions: acceptance rate = accepted / drafted; mean acceptance length = 1 + accepted / steps "
        "(the bonus token included); per-position rate i = steps whose i-th draft was accepted / steps. "
        "A value marked * is derived from the others, not read.</p>",
    ]
    for name, records, notes in sections:
        parts.append(f"<h2>{html.escape(name)}</h2>")
        parts.extend(f"<p>{html.escape(note)}</p>" for note in notes)
        if not records:
            continue
        parts.append("<table><thead><tr>" + "".join(f"<th scope='col'>{html.escape(c)}</th>" for c in COLUMNS))
        parts.append("</tr></thead><tbody>")
        for record in records:
            parts.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row(record)) + "</tr>")
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts)
