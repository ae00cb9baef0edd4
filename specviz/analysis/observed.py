"""Flags an operator can act on, read from an acceptance record, each in plain words with what usually causes it.

The thresholds (module constants) are judgement, not physics; each says why it sits where it does. A flag reads
only the record's counts and rates under `specviz.engine.acceptance`'s definitions, so it means the same for a
deployment's log and for a specviz trace.
"""

from __future__ import annotations

from dataclasses import dataclass

from specviz.engine.acceptance import AcceptanceRecord

# A per-position rate at or under this is "about zero": one step in 100 reaching the position gains 0.01 tokens a
# step, less than a single extra draft step costs any drafter.
ABOUT_ZERO = 0.01
# ... and the positions before the drop must still do real work for the drop to mean something.
STILL_HELPING = 0.05
# A mean acceptance length under this gains under 0.15 tokens a step: less than k draft steps plus a wider
# verification cost on any hardware we know of (a one-layer head at k = 3 already costs about 0.15 steps on a GPU).
NEAR_ONE = 1.15
# labels that name one request, task, slot or iteration: they vary along a series
VARYING = frozenset({"request", "task", "slot", "iter", "request_id", "id"})


@dataclass(frozen=True)
class Flag:
    code: str  # "nothing_accepted", "drop_after", "near_one", "rises"
    title: str  # what the record shows, in plain words
    cause: str  # what usually causes it, and what to try


def flags(record: AcceptanceRecord) -> list[Flag]:
    """Every flag the record raises, most serious first."""
    found: list[Flag] = []
    rates = record.per_position or []
    nothing = (record.drafted or 0) > 0 and record.accepted == 0
    if nothing or (rates and all(rate == 0 for rate in rates) and (record.steps or 0) > 0):
        found.append(
            Flag(
                "nothing_accepted",
                "Nothing was accepted at any position.",
                "Usually a drafter that does not match its target: a head trained for another model or revision, "
                "a different tokenizer or chat template, or weights loaded into the wrong places (an EAGLE head's "
                "layer ids off by one, a missing d2t map). Check that the drafter was made for this exact target.",
            )
        )
    elif rates:
        drop = next(
            (
                i
                for i in range(1, len(rates))
                if rates[i - 1] >= STILL_HELPING and all(rate <= ABOUT_ZERO for rate in rates[i:])
            ),
            None,
        )
        if drop is not None:
            found.append(
                Flag(
                    "drop_after",
                    f"Acceptance drops to about zero after position {drop}.",
                    f"Usually a drafter that stops helping past position {drop}: a head or MTP layer trained to "
                    f"predict only {drop} step(s) ahead, or a drafter whose context breaks beyond it (a sliding "
                    f"window or position bug in the drafter). Drafting more than {drop} tokens only costs: use "
                    f"k = {drop}, or fix the drafter's later positions.",
                )
            )
    length = record.mean_acceptance_length
    if length is not None and (record.steps or 0) > 0 and length < NEAR_ONE and not nothing:
        found.append(
            Flag(
                "near_one",
                f"The mean acceptance length is {length:.2f}: about one token per step.",
                "Speculation that costs more than it gives: every step pays for its draft steps and a wider "
                "verification and gains almost nothing over plain decoding. Lower k, pick a drafter closer to the "
                "target, or turn speculation off for this workload.",
            )
        )
    for warning in record.warnings:
        if "rises" in warning:
            found.append(Flag("rises", "Per-position acceptance rises with position.", warning))
    return found


def group_key(record: AcceptanceRecord) -> tuple:
    """Records of one series: the same engine, scope and labels, but for the labels that name one request, task,
    slot or iteration (those vary along a series)."""
    return (record.engine, record.scope) + tuple(sorted((k, v) for k, v in record.labels.items() if k not in VARYING))


def overall(records: list[AcceptanceRecord]) -> AcceptanceRecord:
    """One record for a series: counts summed, per-position rates weighted by steps. A total stays unknown when
    any record lacks it; everything computed here is marked derived."""
    if len(records) == 1:
        return records[0]
    first = records[0]
    out = AcceptanceRecord(
        engine=first.engine, scope="series", labels={k: v for k, v in first.labels.items() if k not in VARYING}
    )

    def total(name: str) -> int | None:
        values = [getattr(r, name) for r in records]
        return sum(values) if all(v is not None for v in values) else None

    for name in ("steps", "drafted", "accepted"):
        value = total(name)
        if value is not None:
            out.mark(name, value)
    ks = {r.k for r in records}
    if len(ks) == 1:
        out.k = ks.pop()
    if all(r.histogram is not None for r in records):
        hist: dict[int, int] = {}
        for r in records:
            for j, n in r.histogram.items():
                hist[j] = hist.get(j, 0) + n
        out.mark("histogram", hist)
    if out.steps and all(r.per_position is not None and r.steps is not None for r in records):
        width = max(len(r.per_position) for r in records)
        out.mark(
            "per_position",
            [
                sum(r.per_position[i] * r.steps for r in records if i < len(r.per_position)) / out.steps
                for i in range(width)
            ],
        )
    if out.accepted is not None and out.drafted:
        out.mark("acceptance_rate", out.accepted / out.drafted)
    if out.accepted is not None and out.steps:
        out.mark("mean_acceptance_length", 1 + out.accepted / out.steps)
    for r in records:
        for warning in r.warnings:
            if warning not in out.warnings:
                out.warnings.append(warning)
    return out


def histogram_of(record: AcceptanceRecord) -> tuple[dict[int, int] | None, bool]:
    """Steps by accepted count: the record's own histogram, or the one its per-position values imply, and whether
    it was derived. A step accepted exactly j drafts when it reached position j but not j + 1 (accepting a draft
    needs the one before it), so steps(j) = reached(j) - reached(j + 1), with reached(0) = steps; this holds for a
    dynamic k too. From rates printed to 3 decimals the counts are rounded to whole steps."""
    if record.histogram is not None:
        return record.histogram, "histogram" in record.derived
    if not record.steps:
        return None, False
    if record.accepted_per_position is not None:
        reached = [record.steps] + list(record.accepted_per_position)
    elif record.per_position is not None:
        reached = [record.steps] + [round(rate * record.steps) for rate in record.per_position]
    else:
        return None, False
    reached.append(0)
    return {j: max(0, reached[j] - reached[j + 1]) for j in range(len(reached) - 1)}, True
