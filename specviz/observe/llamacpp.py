"""llama.cpp: the server's `timings` (draft_n, draft_n_accepted), the slot's print_timing lines in their
variants, and common/speculative.cpp's "statistics <drafter>:" lines.

Sources read (docs/observe.md names the commits): tools/server/server-context.cpp (server_slot::print_timing,
the timings JSON), tools/server/server-task.h (result_timings), common/speculative.cpp
(common_speculative_print_stats).

How llama.cpp counts, mapped to engine/acceptance.py's definitions:
- "generated" (draft_n) = drafted; "accepted" (draft_n_accepted) = accepted. Both per request (a slot's task).
- The newer line adds the mean acceptance length (1 + accepted / verification steps, 2 decimals) and the rate per
  position (accepted at position i / steps, 3 decimals): vLLM's definitions. Steps = accepted / the sum of the
  rates (derived).
- "statistics <drafter>": #gen drafts = steps (each generated draft is verified once), #gen tokens = drafted,
  #acc tokens = accepted, #acc drafts = steps that accepted at least one draft (kept as reported). Its counters
  live as long as the slot's drafter, so the scope is the server's lifetime.
"""

from __future__ import annotations

import re
from typing import Any

from specviz.engine.acceptance import AcceptanceRecord
from specviz.observe.common import NUM, count, log_time, new, rate

ENGINE = "llama.cpp"
OLD = re.compile(r"draft acceptance rate = " + NUM + r" \(\s*" + NUM + r" accepted /\s*" + NUM + r" generated\)")
NEW = re.compile(
    r"draft acceptance = " + NUM + r" \(\s*" + NUM + r" accepted /\s*" + NUM + r" generated\)"
    r"(?:, mean acceptance length =\s*" + NUM + r")?"
    r"(?:, acceptance rate per position = \(([^)]*)\))?"
)
STATS = re.compile(
    r"statistics\s+([\w.-]+): #calls\(b,g,a\) = (\d+) (\d+) (\d+), #gen drafts = "
    + NUM
    + r", #acc drafts = "
    + NUM
    + r", #gen tokens = "
    + NUM
    + r", #acc tokens = "
    + NUM
)
TASK = re.compile(r"\btask (\d+)")


def read_line(line: str) -> AcceptanceRecord | None:
    if "draft acceptance" in line:
        match = NEW.search(line) or OLD.search(line)
        if not match:
            return None
        record = new(
            ENGINE,
            "request",
            accepted=count(float(match.group(2)), "accepted"),
            drafted=count(float(match.group(3)), "generated"),
            time=log_time(line, match.start()),
        )
        record.acceptance_rate = float(match.group(1))
        task = TASK.search(line, 0, match.start())
        if task:
            record.labels["task"] = task.group(1)
        if match.re is NEW:
            if match.group(4) is not None:
                record.mean_acceptance_length = float(match.group(4))
            if match.group(5):
                record.per_position = [rate(x.strip(), "rate per position") for x in match.group(5).split(",")]
        record.notes.append("llama.cpp's 'generated' is drafted")
        return record
    if "statistics" in line and "#gen drafts" in line:
        match = STATS.search(line)
        if not match:
            return None
        record = new(
            ENGINE,
            "lifetime",
            steps=count(float(match.group(5)), "#gen drafts"),
            drafted=count(float(match.group(7)), "#gen tokens"),
            accepted=count(float(match.group(8)), "#acc tokens"),
            time=log_time(line, match.start()),
            labels={"drafter": match.group(1)},
        )
        record.reported["steps_with_an_accepted_draft"] = count(float(match.group(6)), "#acc drafts")
        record.notes.append("statistics line: #gen drafts = steps, #gen tokens = drafted, #acc tokens = accepted")
        return record
    return None


def from_object(obj: Any) -> list[AcceptanceRecord]:
    """A /completion or chat response (or a streamed chunk) whose `timings` hold draft_n; MLX-VLM's timings
    carry draft_kind / draft_rounds and are read by observe/mlx.py."""
    if not isinstance(obj, dict):
        return []
    timings = obj.get("timings")
    if not isinstance(timings, dict) or "draft_n" not in timings or "draft_kind" in timings:
        return []
    record = new(
        ENGINE,
        "request",
        drafted=count(timings["draft_n"], "draft_n"),
        accepted=count(timings.get("draft_n_accepted", 0), "draft_n_accepted"),
    )
    if isinstance(obj.get("id_slot"), int):
        record.labels["slot"] = str(obj["id_slot"])
    if isinstance(obj.get("model"), str):
        record.labels["model"] = obj["model"]
    return [record]
