"""MLX-VLM: the speculative fields of a response's `timings` (draft_kind, draft_rounds, draft_n, draft_n_accepted).

Built from the issue's description of Blaizzy/mlx-vlm#1788: its source could not be found with the tools this
project used (docs/observe.md). Mapping: draft_rounds = steps, draft_n = drafted, draft_n_accepted = accepted,
draft_kind = the drafter (a label).
"""

from __future__ import annotations

from typing import Any

from specviz.engine.acceptance import AcceptanceRecord
from specviz.observe.common import new, optional_count

ENGINE = "mlx_vlm"


def from_object(obj: Any) -> list[AcceptanceRecord]:
    if not isinstance(obj, dict):
        return []
    timings = obj.get("timings")
    if not isinstance(timings, dict) or "draft_kind" not in timings:
        return []
    record = new(
        ENGINE,
        "request",
        steps=optional_count(timings, "draft_rounds"),
        drafted=optional_count(timings, "draft_n"),
        accepted=optional_count(timings, "draft_n_accepted"),
        labels={"drafter": str(timings["draft_kind"])},
    )
    record.notes.append("read from the issue's description of mlx-vlm#1788 (source not found): see docs/observe.md")
    return [record]
