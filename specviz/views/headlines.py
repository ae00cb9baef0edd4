"""The Learn tab's "measured here" column: each method's effect on the embedded pair, read from the bench
summary shipped beside the models (`python -m specviz.bench ... --json assets/models/bench-summary.json`,
re-run whenever the family changes), so a learner sees the paper's headline next to what this project
measured, with the command that measured it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from specviz.paths import portable_text

SUMMARY_NAME = "bench-summary.json"
# the Learn table's rows: (row key, bench labels that speak for it; the first present is shown, variants after)
ROWS: dict[str, tuple[str, ...]] = {
    "draft_model": ("draft_model",),
    "kangaroo": ("kangaroo", "kangaroo:eta=0:gamma=4:vocab_trim=2048"),
    "sorted": ("sorted",),
    "vocabtrim": ("draft_model:vocab_trim=2048", "draft_model:vocab_trim=1024"),
    "mirror": ("mirror", "mirror:parallel=false"),
    "batch": ("eqspec:batch_size=4", "exspec:batch_size=4"),
    "prompt_lookup": ("prompt_lookup", "hf_prompt_lookup"),
    "tree": ("tree", "tree:nodes=8", "tree:nodes=32"),
}


def load_summary(models_dir: Path) -> dict[str, Any] | None:
    path = models_dir / SUMMARY_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _number(value: Any) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def _single(label: str, row: dict) -> str:
    speedup, tau = _number(row.get("speedup")), _number(row.get("tau"))
    if speedup is None:
        return ""
    return f"`{label}` {speedup:.2f}x" + (f" (τ {tau:.2f})" if tau is not None else "")


def _batch(label: str, rows: dict[str, dict]) -> str:
    """A batch method's throughput against batched autoregressive decoding at the same batch size."""
    size = label.rsplit("batch_size=", 1)[-1]
    base = rows.get(f"batch_autoregressive:batch_size={size}", {})
    mine, ar = _number(rows[label].get("tokens_per_s")), _number(base.get("tokens_per_s"))
    if mine is None or not ar:
        return ""
    return f"`{label}` {mine / ar:.2f}x batched AR throughput"


def cell(key: str, summary: dict[str, Any] | None) -> str:
    """The measured figures for one Learn row, or a plain statement that there are none."""
    if not summary:
        return "not measured"
    rows = summary.get("rows", {})
    parts = [
        (_batch(label, rows) if key == "batch" else _single(label, rows[label])) for label in ROWS[key] if label in rows
    ]
    parts = [p for p in parts if p]
    return "; ".join(parts) if parts else "not measured"


def provenance(summary: dict[str, Any] | None) -> str:
    if not summary:
        return (
            "No bench summary ships with these models: run the Learn command in docs/results.md with "
            f"`--json assets/models/{SUMMARY_NAME}`."
        )
    return (
        f"*Measured here*: the embedded pair on {summary.get('device', '?')} ({summary.get('dtype', '?')}), "
        f"{summary.get('measured', '?')}, {summary.get('prompts', '?')} prompts x "
        f"{summary.get('repeats', '?')} repeats, "
        f"greedy, medians, speedup over autoregressive decoding in the same process: "
        f"`{portable_text(summary.get('command', '?'))}`."
    )  # the command, not the folders of the machine it ran on
