"""The one event schema every method reports through, and the Trace that holds a run.

Everything the UI, plots, metrics and bench show is read from a Trace: a method never prints,
times or counts anything by itself. A Trace is plain data (JSON round trip, pandas frame,
Chrome trace for Perfetto), so a saved run can be viewed again anywhere.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Iterable

import pandas as pd
import torch

from specviz.engine.acceptance import AcceptanceRecord, acceptance_record_from_trace

# 3: token trees (the `tree` method): a round's draft / accept / reject events carry info.node, info.parent (node
#    numbers within the round; 0 is the root, the last committed token) and info.sibling (rank among the parent's
#    children), so several drafts of a round may share a depth; reject's info.cause adds "sibling_accepted" and
#    "past_end".
# 2: verdict events (accept / reject / correct / bonus, and emit) carry in `info` the distributions the rule
#    used: top_q / top_p ([[token_id, prob], ...], top `dist_top_k` after temperature / top-k / top-p),
#    rule ("argmax" or "ratio"), and in sampling u and accept_prob, residual_top on a correction.
# 1: the same without them. All three load; a version-1 trace simply has no distributions to show.
SCHEMA_VERSION = 3
READABLE_SCHEMAS = (1, 2, 3)
MAX_TRACE_BYTES = 20_000_000  # uploaded trace files larger than this are refused unread

# Kinds of event. Every generated token is produced by exactly one event of a TOKEN_KINDS kind.
EVENT_KINDS = (
    "prefill",  # target (or drafter) forward over the prompt
    "draft",  # the drafter proposed a token
    "early_exit",  # drafting stopped (confidence under a threshold) or an early-exit signal fired
    "branch",  # Mirror-SD: a rollout prepared from an early-exit candidate (info: fate)
    "verify",  # one target forward over a block of drafts
    "accept",  # a draft the target accepted: it becomes an output token
    "reject",  # a draft the target rejected (info.cause: "mismatch"/"ratio" for the first, "after_reject" after it)
    "correct",  # the target's own token emitted at the first rejection (info.residual_top after a sampling rejection)
    "bonus",  # the extra target token when every draft passed
    # accept / reject / correct / bonus info (schema 2): rule, top_q, top_p, and in sampling u, accept_prob
    "emit",  # a token produced without speculation (autoregressive step, or an opaque method)
    "realign",  # batch: padding / positions / KV of a row changed
    "schedule",  # batch: which rows were grouped into a round and why
)
TOKEN_KINDS = frozenset({"accept", "correct", "bonus", "emit"})
SPAN_KINDS = frozenset({"prefill", "draft", "verify", "realign", "branch", "emit"})  # kinds whose t0..t1 is work done
HEALING_STEP = -1  # token healing's first token is emitted before round 0, by a target forward of its own


def is_healed_token(e: Event) -> bool:
    """The token that token healing chose (api.heal_first): it extends the text backed off the prompt."""
    return e.kind == "emit" and e.step == HEALING_STEP and "removed_text" in e.info


@dataclass(slots=True)
class Event:
    kind: str  # one of EVENT_KINDS
    step: int = -1  # verification round (0-based); -1 for prefill
    row: int = 0  # sequence index in a batch (0 for single-sequence runs)
    position: int = -1  # index in the generated output this event concerns (-1: none)
    token_id: int = -1  # token concerned (-1: none)
    text: str = ""  # decoded text of token_id (filled when the trace is finished)
    q: float | None = None  # drafter probability of token_id (after temperature / top-k / top-p)
    p: float | None = None  # target probability of token_id (same processing; softmax at T=1 when greedy)
    depth: int = -1  # index inside the draft block (0-based)
    source: str = ""  # what produced it: "target", "draft", "target[:2]+adapter", "sorted[:1]" ...
    t0: float = 0.0  # seconds from run start
    t1: float = 0.0  # seconds from run start (t1 >= t0)
    info: dict[str, Any] = field(default_factory=dict)  # kind-specific detail (reason, confidence, counts)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class RowResult:
    """One sequence's prompt and output (a batch Trace has one per row)."""

    prompt: str
    prompt_ids: list[int]
    output_ids: list[int] = field(default_factory=list)  # generated tokens only
    text: str = ""  # decoded output_ids
    finish_reason: str = ""  # "length", "eos", "context", "cancelled"


@dataclass
class Trace:
    method: str
    params: dict[str, Any]
    rows: list[RowResult]
    events: list[Event] = field(default_factory=list)
    target_name: str = ""
    draft_name: str | None = None
    device: str = "cpu"
    dtype: str = "float32"
    wall_time: float = 0.0  # seconds, prefill included
    started_at: float = 0.0  # unix time of the run's start
    meta: dict[str, Any] = field(default_factory=dict)  # method extras (costs, notes, labels)
    # what else took the CPU while the run was timed: specviz.engine.quiet.Disturbance.to_dict() (others' share of
    # the machine's CPU time, whether that disturbed the run); None: not probed (a trace from before the probe)
    disturbance: dict[str, Any] | None = None

    # -- single-sequence conveniences (a batch Trace uses .rows) ---------------------------
    @property
    def output_ids(self) -> list[int]:
        return self.rows[0].output_ids

    @property
    def text(self) -> str:
        return self.rows[0].text

    @property
    def prompt(self) -> str:
        return self.rows[0].prompt

    @property
    def new_tokens(self) -> int:
        return sum(len(r.output_ids) for r in self.rows)

    def token_events(self, row: int | None = None) -> list[Event]:
        """The events that produced output tokens, in output order."""
        return [e for e in self.events if e.kind in TOKEN_KINDS and (row is None or e.row == row)]

    # -- export ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {
            "schema": SCHEMA_VERSION,
            **{k: v for k, v in asdict(self).items() if k not in ("events", "rows")},
            "rows": [asdict(r) for r in self.rows],
            "events": [e.to_dict() for e in self.events],
        }
        return d

    def to_json(self, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)

    def acceptance_record(self) -> AcceptanceRecord:
        """This run under vLLM's acceptance definitions (`specviz.engine.acceptance`), the shape a deployment's
        records take in `specviz.observe`: one plot, one set of definitions."""
        return acceptance_record_from_trace(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Trace":
        if not isinstance(d, dict) or d.get("schema") not in READABLE_SCHEMAS or "events" not in d or "rows" not in d:
            raise ValueError(
                "not a specviz trace (expected a JSON object with schema %s, rows and events)"
                % " or ".join(map(str, READABLE_SCHEMAS))
            )
        try:
            rows = [RowResult(**r) for r in d["rows"]]
            events = [Event(**e) for e in d["events"]]
            for e in events:
                if e.kind not in EVENT_KINDS:
                    raise ValueError(f"unknown event kind {e.kind!r}")
            rest = {k: v for k, v in d.items() if k not in ("schema", "rows", "events")}
            return cls(rows=rows, events=events, **rest)
        except TypeError as exc:
            raise ValueError(f"not a specviz trace: {exc}") from None

    @classmethod
    def from_json(cls, s: str | bytes) -> "Trace":
        try:
            d = json.loads(s)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"not a specviz trace: invalid JSON ({exc})") from None
        return cls.from_dict(d)

    @classmethod
    def read(cls, path: str | os.PathLike, max_bytes: int = MAX_TRACE_BYTES) -> "Trace":
        """A trace file from a user (upload): size-capped before it is read, then schema-checked."""
        size = os.path.getsize(path)
        if size > max_bytes:
            raise ValueError(f"trace file is {size / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB")
        with open(path, "rb") as f:
            return cls.from_json(f.read())

    def to_frame(self):
        """One row per event; `info` stays a dict column."""
        cols = [f.name for f in fields(Event)]
        return pd.DataFrame([e.to_dict() for e in self.events], columns=cols)

    def to_chrome_trace(self) -> dict[str, Any]:
        """Chrome trace-event JSON (open in ui.perfetto.dev): one process per row, one thread per lane."""
        lanes = {kind: i for i, kind in enumerate(EVENT_KINDS)}
        out: list[dict[str, Any]] = []
        for row in sorted({e.row for e in self.events} | {0}):
            out.append({"ph": "M", "name": "process_name", "pid": row, "tid": 0, "args": {"name": f"row {row}"}})
            for kind, tid in lanes.items():
                out.append({"ph": "M", "name": "thread_name", "pid": row, "tid": tid, "args": {"name": kind}})
        for e in self.events:
            args = {
                k: v
                for k, v in (
                    ("step", e.step),
                    ("position", e.position),
                    ("token", e.text),
                    ("token_id", e.token_id),
                    ("p", e.p),
                    ("q", e.q),
                    ("depth", e.depth),
                    ("source", e.source),
                )
                if v not in (None, -1, "")
            }
            args.update({k: v for k, v in e.info.items() if isinstance(v, (int, float, str, bool))})
            name = e.kind if not e.text else f"{e.kind} {e.text!r}"
            base = {"name": name, "cat": e.kind, "pid": e.row, "tid": lanes[e.kind], "ts": e.t0 * 1e6, "args": args}
            if e.t1 > e.t0:
                out.append({**base, "ph": "X", "dur": (e.t1 - e.t0) * 1e6})
            else:
                out.append({**base, "ph": "i", "s": "t"})
        return {
            "traceEvents": out,
            "displayTimeUnit": "ms",
            "otherData": {"method": self.method, "params": self.params},
        }


class Recorder:
    """Collects a run's events with timestamps relative to its start.

    On CUDA and MPS, `now()` synchronizes first so that a span covers the kernels it launched; that is
    the price of exact per-step times, and `sync=False` turns it off for throughput runs.
    With `enabled=False` nothing is stored (used to measure the recording overhead itself).
    """

    def __init__(self, device: Any = "cpu", *, enabled: bool = True, sync: bool = True):
        self.enabled = enabled
        self.events: list[Event] = []
        kind = str(device).split(":")[0]
        self._sync = kind if enabled and sync and kind in ("cuda", "mps") else None
        self.started_at = time.time()
        self._t_start = time.perf_counter()

    def now(self) -> float:
        if not self.enabled:
            return 0.0
        if self._sync is not None:
            torch.cuda.synchronize() if self._sync == "cuda" else torch.mps.synchronize()
        return time.perf_counter() - self._t_start

    def add(self, kind: str, **fields: Any) -> None:
        if self.enabled:
            self.events.append(Event(kind, **fields))

    def extend(self, events: Iterable[Event]) -> None:
        if self.enabled:
            self.events.extend(events)


def fill_token_text(events: list[Event], tokenizer) -> None:
    """Decode each event's token once per distinct id, after the run (kept off the hot loop)."""
    ids = {e.token_id for e in events if e.token_id >= 0}
    texts = {i: tokenizer.decode([i], skip_special_tokens=False, clean_up_tokenization_spaces=False) for i in ids}
    for e in events:
        if e.token_id >= 0:
            e.text = texts[e.token_id]
