"""The bench's journal: every finished unit appended as it arrives, so an interrupted run loses nothing.

One JSON line per record beside `--out` (`results.csv` -> `results.csv.journal.jsonl`): a header that names
what the command measures, then one line per unit that finished (its rows) or failed twice (its errors).
A unit is keyed by a digest of everything that determines it: its prompt(s), every method with all its
parameters (tokens, temperature, seed ...), the repeats, and the pair's weights fingerprint. A re-run of
the same command skips finished units; a journal written by another command is refused, naming what
differs. Each line is flushed and synced before the next unit is counted, and a last line cut short by a
crash is ignored (that unit simply runs again). No Ray here: the local `--resume` path uses it too.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from specviz.methods import METHODS

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
from specviz.methods.base import validate_params

VERSION = 1  # the journal's own format; a header of another version is refused


def journal_path(out: str | Path) -> Path:
    """Where a run's journal lives: beside --out."""
    out = Path(out)
    return out.with_name(out.name + ".journal.jsonl")


def digest(obj: Any) -> str:
    """A stable digest of JSON-able data (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def identity(plan, units, fingerprint: str) -> dict[str, Any]:
    """Everything one command's units depend on. Every parameter is written out (defaults included), so
    `draft_model` and `draft_model:gamma=4` are the same unit while a changed default is not."""

    def methods(specs) -> list:
        return [[label, name, validate_params(METHODS[name], params)] for label, name, params in specs]

    return {
        "journal": VERSION,
        "methods": methods(plan.single),
        "batch_methods": methods(plan.batched),
        "repeats": plan.repeats,
        "overhead": plan.overhead,
        "pool_factor": plan.pool_factor,
        "pair": fingerprint,
        "prompts": digest([[u.kind, list(u.prompts)] for u in units]),
    }


class JournalMismatch(ValueError):
    """The journal beside --out was written by another command (or is not a journal)."""


def flatten(ident: dict[str, Any]) -> dict[str, Any]:
    """An identity as dotted names: 'draft_model:gamma=3 max_new_tokens' -> 64 (methods by label)."""
    flat: dict[str, Any] = {}
    for key, value in ident.items():
        if key in ("methods", "batch_methods") and isinstance(value, list):
            flat[key] = ",".join(m[0] for m in value)
            for label, name, params in value:
                flat.update({f"{label} {k}": v for k, v in params.items()})
        else:
            flat[key] = value
    return flat


NAMES = {"pair": "the pair's weights fingerprint", "prompts": "the prompt set's digest"}


def differences(theirs: dict[str, Any], ours: dict[str, Any], most: int = 6) -> list[str]:
    """What differs between two identities, one phrase each ('draft_model max_new_tokens: 8 there, 9 here')."""
    a, b = flatten(theirs), flatten(ours)
    found = [
        f"{NAMES.get(k, k)}: {json.dumps(a.get(k))} there, {json.dumps(b.get(k))} here"
        for k in sorted(set(a) | set(b), key=lambda k: (" " in k, k))
        if a.get(k) != b.get(k)
    ]
    return found[:most] + ([f"{len(found) - most} more"] if len(found) > most else [])


@dataclass
class Journal:
    """An open journal: what earlier runs of this command finished, and an append-only handle for this run."""

    path: Path
    identity: dict[str, Any]  # the header: what the command's units depend on
    records: list[dict[str, Any]] = field(default_factory=list)  # unit records read at open, in file order
    handle: TextIO | None = None  # open for appending (locked against a second run on the same file)

    def key(self, unit) -> str:
        """The unit's key: its prompt(s) and kind with everything else the command fixes."""
        fixed = {k: v for k, v in self.identity.items() if k != "prompts"}
        return digest({**fixed, "kind": unit.kind, "prompts": list(unit.prompts)})

    def done_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Rows of finished units by key (the first record of a key wins)."""
        found: dict[str, list[dict[str, Any]]] = {}
        for record in self.records:
            if record.get("status") == "done":
                found.setdefault(record["unit"], record["rows"])
        return found

    def _append(self, record: dict[str, Any]) -> None:
        assert self.handle is not None, "journal not open for writing"
        self.handle.write(json.dumps(record) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.records.append(record)

    def record_done(
        self, unit, rows: list[dict[str, Any]], where: dict[str, Any], attempts: int = 1, seconds: float | None = None
    ) -> None:
        self._append(
            {
                "unit": self.key(unit),
                "index": unit.index,
                "label": unit.label,
                "status": "done",
                "attempts": attempts,
                "seconds": seconds,
                "where": where,
                "at": time.time(),
                "rows": rows,
            }
        )

    def record_failed(self, unit, errors: list[str]) -> None:
        self._append(
            {
                "unit": self.key(unit),
                "index": unit.index,
                "label": unit.label,
                "status": "failed",
                "errors": errors,
                "at": time.time(),
            }
        )

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def read_records(path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The header and the unit records; a line that does not parse (a write cut short) is skipped."""
    header, records = None, []
    lines = path.read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if n == 0:
            header = record if isinstance(record, dict) and "identity" in record else None
        elif isinstance(record, dict) and "unit" in record:
            records.append(record)
    return header, records


def _lock(handle: TextIO, path: Path) -> None:
    if fcntl is None:  # Windows: no advisory lock; one run per --out is then the user's care
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise JournalMismatch(f"another bench run is writing {path}; wait for it or use another --out") from None


def mismatch(path: Path, theirs: dict[str, Any], ours: dict[str, Any]) -> JournalMismatch:
    return JournalMismatch(
        f"{path} was written by a different command, so its units cannot be reused here: "
        + "; ".join(differences(theirs, ours))
        + f". Run that command again to finish it, or use another --out (or delete {path.name} to start over)"
    )


def read_header(path: Path) -> dict[str, Any] | None:
    """The identity in the journal at `path` (None: no journal yet); refuses a file that is not one."""
    if not path.exists() or not path.stat().st_size:
        return None
    header, _ = read_records(path)
    if header is None:
        raise JournalMismatch(
            f"{path} is not a bench journal (its first line is no header); move it away or use another --out"
        )
    return header["identity"]


def check_journal(out: str | Path, plan, units) -> None:
    """Before any model loads: refuse a journal of another command on everything but the pair's weights
    (the fingerprint needs the loaded pair; open_journal checks it)."""
    path = journal_path(out)
    theirs = read_header(path)
    if theirs is not None and theirs != identity(plan, units, theirs.get("pair", "")):
        raise mismatch(path, theirs, identity(plan, units, theirs.get("pair", "")))


def open_journal(out: str | Path, plan, units, fingerprint: str) -> Journal:
    """Open (or start) the journal beside `out` for this command; refuse one written by another command."""
    path = journal_path(out)
    ours = identity(plan, units, fingerprint)
    theirs = read_header(path)
    if theirs is not None and theirs != ours:
        raise mismatch(path, theirs, ours)
    records = read_records(path)[1] if theirs is not None else []
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a", encoding="utf-8")
    _lock(handle, path)
    if theirs is not None and not path.read_bytes().endswith(b"\n"):
        handle.write("\n")  # a line cut short by a crash stays alone on its line (and is skipped)
    if theirs is None:
        handle.write(json.dumps({"identity": ours, "units": len(units), "created": time.time()}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    return Journal(path, ours, records, handle)
