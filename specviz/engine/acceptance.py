"""One acceptance record for every engine, and the definitions it is read under.

A deployment's logs, metrics and responses (vLLM, SGLang, llama.cpp, TensorRT-LLM, MLX, AIPerf) and a specviz
trace all become an `AcceptanceRecord`, so their curves share one plot under one set of definitions. The record
follows AIPerf's `SpecDecodeAcceptanceRecord` where they overlap: the histogram comes first and no fixed k is
assumed (a log cannot tell whether every step drafted k).

Definitions (vLLM's, which llama.cpp adopted):

- step: one verification of a draft by the target (vLLM's "num_drafts", llama.cpp's "verification steps").
- drafted: draft tokens proposed to the target, summed over steps.
- accepted: draft tokens the target accepted, summed over steps; the bonus or correction token is not counted.
- acceptance rate = accepted / drafted.
- mean acceptance length = 1 + accepted / steps: tokens a step emits, the bonus or correction token included.
- accepted at position i = steps whose i-th draft (0-based here, 1-based in prose) was accepted; accepting it
  needs every draft before it accepted, so these counts never rise with i.
- per-position rate i = accepted at position i / steps.
- histogram: accepted count j -> steps that accepted exactly j drafts.

A value is derived only where the record implies it, and every derived field is named in `derived`:

- steps = sum of the histogram, or the length of the per-step arrays, or accepted / the sum of the per-position
  rates (a vLLM V1 log line: the rates are rounded to 3 decimals, so the steps are rounded to an integer).
- accepted = the histogram's weighted sum, or the sum of the per-step accepted counts.
- accepted at position i = histogram steps with j > i; per-position rates from those counts / steps.
- acceptance rate and mean acceptance length from the counts above.

This module is a leaf of the engine floor: it imports nothing from specviz, so `Trace` can use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

SCOPES = ("request", "interval", "lifetime", "iteration", "recent", "run")
COUNT_FIELDS = ("k", "steps", "drafted", "accepted")


@dataclass
class AcceptanceRecord:
    """What one source says about acceptance: counts as stated, derived values marked in `derived`."""

    engine: str  # "vllm", "sglang", "llama.cpp", "tensorrt_llm", "mlx_vlm", "aiperf", "specviz"
    scope: str  # one of SCOPES: one request, one logging interval, a server's lifetime, one iteration ...
    k: int | None = None  # speculative tokens per step where the source states it (an upper bound, not a promise)
    steps: int | None = None  # verification steps
    drafted: int | None = None  # draft tokens proposed
    accepted: int | None = None  # draft tokens accepted (no bonus token)
    accepted_per_position: list[int] | None = None  # steps whose i-th draft was accepted, i = 0..
    per_position: list[float] | None = None  # accepted_per_position / steps, as given or derived
    histogram: dict[int, int] | None = None  # accepted count j -> steps that accepted exactly j
    per_step_accepted: list[int] | None = None  # accepted drafts of each step, in order
    per_step_drafted: list[int] | None = None  # drafts proposed at each step, in order
    acceptance_rate: float | None = None  # accepted / drafted (0..1)
    mean_acceptance_length: float | None = None  # 1 + accepted / steps (tokens per step, bonus included)
    time: str | None = None  # when, as the source wrote it (a log's timestamp, an ISO time, unix seconds)
    labels: dict[str, str] = field(default_factory=dict)  # model, engine index, method, request id ...
    derived: list[str] = field(default_factory=list)  # names of the fields computed here, not read
    reported: dict[str, Any] = field(default_factory=dict)  # the engine's own values under its own counting
    notes: list[str] = field(default_factory=list)  # how this engine's counting maps to the definitions
    warnings: list[str] = field(default_factory=list)  # doubts about the values that did not reject them
    source: str = ""  # file and line (or URL) it was read from

    def mark(self, name: str, value: Any) -> None:
        """Set a derived value and say so."""
        setattr(self, name, value)
        if name not in self.derived:
            self.derived.append(name)

    def to_dict(self) -> dict[str, Any]:
        """The --json contract: engine, drafted, accepted, steps, mean_acceptance_length and per_position are
        always present (null where the record neither gives nor implies them)."""
        return {
            "engine": self.engine,
            "scope": self.scope,
            "k": self.k,
            "steps": self.steps,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "acceptance_rate": self.acceptance_rate,
            "mean_acceptance_length": self.mean_acceptance_length,
            "per_position": self.per_position,
            "accepted_per_position": self.accepted_per_position,
            "histogram": {str(j): n for j, n in sorted(self.histogram.items())} if self.histogram is not None else None,
            "per_step_accepted": self.per_step_accepted,
            "per_step_drafted": self.per_step_drafted,
            "time": self.time,
            "labels": dict(self.labels),
            "derived": sorted(self.derived),
            "reported": dict(self.reported),
            "notes": list(self.notes),
            "warnings": list(self.warnings),
            "source": self.source,
        }


class BadRecord(ValueError):
    """Values no engine could have counted (negative, NaN, a rate above 1, more accepted than drafted)."""


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check(record: AcceptanceRecord) -> None:
    """Refuse impossible values with a message that names them; add warnings for doubtful ones."""
    for name in COUNT_FIELDS:
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise BadRecord(f"{name} is {value}: a count must be a finite number")
        if not _is_count(value) or value < 0:
            raise BadRecord(f"{name} is {value!r}: a count must be a whole number of at least 0")
    for name in ("accepted_per_position", "per_step_accepted", "per_step_drafted"):
        values = getattr(record, name)
        if values is not None and any(not _is_count(v) or v < 0 for v in values):
            raise BadRecord(f"{name} holds {values!r}: counts must be whole numbers of at least 0")
    if record.histogram is not None:
        if any(not _is_count(j) or not _is_count(n) or j < 0 or n < 0 for j, n in record.histogram.items()):
            raise BadRecord(f"histogram {record.histogram!r}: accepted counts and steps must be whole numbers >= 0")
    for name in ("acceptance_rate",):
        _check_rate(name, getattr(record, name))
    for i, rate in enumerate(record.per_position or []):
        _check_rate(f"per-position rate {i + 1}", rate)
    mal = record.mean_acceptance_length
    if mal is not None:
        if not isinstance(mal, (int, float)) or isinstance(mal, bool) or not math.isfinite(mal):
            raise BadRecord(f"mean acceptance length is {mal!r}: it must be a finite number")
        if mal < 1 and not (mal == 0 and record.steps in (None, 0)):
            raise BadRecord(f"mean acceptance length is {mal}: it counts the bonus token, so it is at least 1")
    if record.accepted is not None and record.drafted is not None and record.accepted > record.drafted:
        raise BadRecord(f"accepted ({record.accepted}) is more than drafted ({record.drafted})")
    if record.k is not None and record.accepted is not None and record.steps is not None:
        if record.accepted > record.k * record.steps:
            raise BadRecord(f"accepted ({record.accepted}) is more than k x steps ({record.k} x {record.steps})")
    if record.histogram is not None and record.k is not None and record.histogram and max(record.histogram) > record.k:
        raise BadRecord(
            f"the histogram has a step that accepted {max(record.histogram)} drafts, more than k={record.k}"
        )
    if record.per_step_accepted is not None and record.per_step_drafted is not None:
        if len(record.per_step_accepted) != len(record.per_step_drafted):
            raise BadRecord("per-step accepted and drafted arrays differ in length")
        over = [i for i, (a, d) in enumerate(zip(record.per_step_accepted, record.per_step_drafted)) if a > d]
        if over:
            raise BadRecord(f"step {over[0]} accepted more drafts than it proposed")
    _check_falls(record)


def _check_rate(name: str, rate: Any) -> None:
    if rate is None:
        return
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not math.isfinite(rate):
        raise BadRecord(f"{name} is {rate!r}: a rate must be a finite number")
    if rate < 0 or rate > 1:
        raise BadRecord(f"{name} is {rate}: a rate lies between 0 and 1")


def _check_falls(record: AcceptanceRecord) -> None:
    """Accepting the i-th draft needs the one before it, so per-position values cannot rise; a rise beyond the
    record's rounding (0.0015 for rates printed to 3 decimals) means the source counted something else."""
    counts = record.accepted_per_position
    rates = record.per_position
    rise = None
    if counts is not None:
        rise = next((i for i in range(1, len(counts)) if counts[i] > counts[i - 1]), None)
    elif rates is not None:
        rise = next((i for i in range(1, len(rates)) if rates[i] > rates[i - 1] + 0.0015), None)
    if rise is not None:
        record.warnings.append(
            f"per-position acceptance rises at position {rise + 1}: a chain accepts position {rise + 1} only after "
            f"position {rise}, so the source counts positions some other way (a tree, or positions that passed "
            "after a rejection); read the curve with care"
        )


def complete(record: AcceptanceRecord) -> AcceptanceRecord:
    """Fill what the record implies, mark it derived, and check the result (raises BadRecord)."""
    check(record)
    r = record
    if r.per_step_accepted is not None:
        if r.steps is None:
            r.mark("steps", len(r.per_step_accepted))
        if r.accepted is None:
            r.mark("accepted", sum(r.per_step_accepted))
        if r.histogram is None:
            hist: dict[int, int] = {}
            for a in r.per_step_accepted:
                hist[a] = hist.get(a, 0) + 1
            r.mark("histogram", hist)
    if r.per_step_drafted is not None and r.drafted is None:
        r.mark("drafted", sum(r.per_step_drafted))
    if r.histogram is not None:
        steps = sum(r.histogram.values())
        weighted = sum(j * n for j, n in r.histogram.items())
        if r.steps is None:
            r.mark("steps", steps)
        elif r.steps != steps:
            raise BadRecord(f"the histogram counts {steps} steps but the record says {r.steps}")
        if r.accepted is None:
            r.mark("accepted", weighted)
        elif r.accepted != weighted:
            raise BadRecord(f"the histogram accepts {weighted} drafts but the record says {r.accepted}")
        if r.accepted_per_position is None and r.histogram:
            depth = max(r.histogram)
            r.mark("accepted_per_position", [sum(n for j, n in r.histogram.items() if j > i) for i in range(depth)])
    if r.steps is None and r.accepted is not None and r.per_position:
        total = sum(r.per_position)
        if total > 0:
            r.mark("steps", round(r.accepted / total))
            r.notes.append("steps = accepted / the sum of the per-position rates (rounded rates: rounded steps)")
    if r.accepted_per_position is not None and r.per_position is None and r.steps:
        r.mark("per_position", [n / r.steps for n in r.accepted_per_position])
    if r.acceptance_rate is None and r.accepted is not None and r.drafted:
        r.mark("acceptance_rate", r.accepted / r.drafted)
    if r.mean_acceptance_length is None and r.accepted is not None and r.steps:
        r.mark("mean_acceptance_length", 1 + r.accepted / r.steps)
    check(r)
    return r


def _round_key(event: Any) -> tuple[int, int]:
    return (event.row, event.step)


def acceptance_record_from_trace(trace: Any) -> AcceptanceRecord:
    """A specviz Trace counted under the definitions above (duck-typed: this module cannot import `trace`).

    A step is a round that verified at least one draft (a round that drafted nothing is not a speculative step,
    as in vLLM). A token tree's drafts are its nodes, so `drafted` counts nodes and the record says so."""
    drafted: dict[tuple[int, int], int] = {}
    accepted: dict[tuple[int, int], int] = {}
    by_depth: dict[int, int] = {}
    tree = False
    for e in trace.events:
        # every draft event is verified: Mirror-SD's unverified rollouts are `branch` events, and a reused rollout's
        # drafts (a draft with info["branch"]) are its next round's verified drafts
        if e.kind == "draft":
            drafted[_round_key(e)] = drafted.get(_round_key(e), 0) + 1
            tree = tree or "node" in e.info
        elif e.kind == "accept":
            accepted[_round_key(e)] = accepted.get(_round_key(e), 0) + 1
            by_depth[e.depth] = by_depth.get(e.depth, 0) + 1
    rounds = sorted(drafted)
    per_step_accepted = [accepted.get(key, 0) for key in rounds]
    depth = max(by_depth) + 1 if by_depth else 0
    rows = getattr(trace, "rows", [None])
    labels = {"method": str(trace.method), "target": str(getattr(trace, "target_name", "") or "")}
    if getattr(trace, "draft_name", None):
        labels["draft"] = str(trace.draft_name)
    # k: the most drafts a round may hold, the drafter's gamma or the copy's lookup_gamma (a hybrid copies more
    # than it drafts), and never less than a round really drafted; a tree's rounds hold nodes, not a chain's k
    params = trace.params if isinstance(getattr(trace, "params", None), dict) else {}
    budgets = [params.get("gamma"), params.get("lookup_gamma") if params.get("lookup") else None]
    budgets.append(max(drafted.values(), default=0))
    k = None if tree else max((b for b in budgets if _is_count(b)), default=0) or None
    record = AcceptanceRecord(
        engine="specviz",
        scope="request" if len(rows) == 1 else "run",
        k=k,
        drafted=sum(drafted.values()),
        accepted_per_position=[by_depth.get(d, 0) for d in range(depth)],
        per_step_accepted=per_step_accepted,
        per_step_drafted=[drafted[key] for key in rounds],
        labels=labels,
    )
    if tree:
        record.notes.append("token tree: drafted counts tree nodes, so the acceptance rate is per node")
    return complete(record)


def merge(records: Iterable[AcceptanceRecord], engine: str, scope: str = "run") -> AcceptanceRecord:
    """Sum the counts of several records (requests of one run); a count missing from any of them stays unknown."""
    items = list(records)

    def total(name: str) -> int | None:
        values = [getattr(r, name) for r in items]
        return sum(values) if values and all(v is not None for v in values) else None

    positions = [r.accepted_per_position for r in items]
    per_pos = None
    if positions and all(p is not None for p in positions):
        width = max(len(p) for p in positions)
        per_pos = [sum(p[i] for p in positions if i < len(p)) for i in range(width)]
    merged = AcceptanceRecord(
        engine=engine,
        scope=scope,
        steps=total("steps"),
        drafted=total("drafted"),
        accepted=total("accepted"),
        accepted_per_position=per_pos,
    )
    return complete(merged)
