"""Measured traces kept in memory, so an identical request is answered without running the engine again.

A trace is a measurement (timings, acceptances); serving it again is honest only when it is labelled as
such ("measured at 14:03:22, served from cache") and when everything that decides it is the same: the
key (`request_key`) covers the pair's weights (specviz.models.fingerprint), the job, the method, every parameter,
the seed, the prompt(s) and the engine's sources. Identical requests already running share one
measurement and "measure again" bypasses the stored trace: both are `specviz.app.serving`'s.

Only a measurement that is the engine's alone is kept (`complete`, `undisturbed`): never a stopped run, never a
run disturbed by other processes taking the CPU (`specviz.engine.quiet`), never the first run of a method in a
fresh engine process (its cold start, `specviz.app.jobs.first_run`). Those are served once, to the requests
that waited for them, with what disturbed them named, and the next identical request measures again.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Mapping

from specviz.models.fingerprint import engine_source_hash

KEY_VERSION = 1  # bump when what a key covers changes
DEFAULT_SEED = 0  # the seed a run takes when none is given: methods.base COMMON_PARAMS "seed" (a test checks)
BYTES_ENV = "SPECVIZ_TRACE_CACHE_MB"  # most stored trace data, MiB (default 32; 0 stores nothing)
ENTRIES_ENV = "SPECVIZ_TRACE_CACHE_ENTRIES"  # most stored results (default 256)

Served = Literal["cache", "shared", "engine"]


# ----------------------------------------------------------------------------- the key
def canonical(value: Any) -> Any:
    """A JSON value that is the same for requests the engine cannot tell apart.

    Numbers: an integral float becomes an int (4.0 -> 4, -0.0 -> 0) and numpy scalars become Python
    numbers, because the engine coerces every numeric parameter (`Param.coerce`: int params through
    float(v).is_integer(), float params through float(v)), so 4, 4.0 and numpy.int64(4) run the same trace.
    Nothing else is merged: "4" stays apart from 4 and True from 1 (str and bool parameters exist, and this
    module does not know which name has which kind), and an absent parameter stays apart from its default.
    A missed merge costs one measurement; a wrong one would serve a trace of another run.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        number = float(value)
        return int(number) if number.is_integer() else number  # NaN and inf stay floats (the engine refuses them)
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise TypeError("request keys take dicts with string keys only")
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    raise TypeError(f"cannot key a request on a {type(value).__name__} value: {value!r:.80}")


def request_key(
    job: str,
    pair_fp: str,
    method: str,
    params: Mapping[str, Any],
    prompt: str | list[str],
    seed: Any = None,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """The cache key of one engine request: a 32-hex digest of canonical JSON (sorted keys) of

    - `job`: the engine job ("single", "playground", ...: their results differ for the same run);
    - `pair_fp`: `fingerprint.pair_fingerprint(target, draft)` (never None: such a request is not cached);
    - `method` and `params` (every parameter as sent, seed excepted; see `canonical` for what is merged);
    - `seed`: always present: the argument, else params["seed"], else DEFAULT_SEED (they must agree);
    - `prompt`: the exact text, or the list of prompts of a batch, whitespace included;
    - `extra`: the job's other arguments (exactness_lab's n, tokens, broken; compare's specs, repeats) and
      anything else the caller knows decides the trace (the engine's device, where it is not fixed);
    - the engine's sources (`fingerprint.engine_source_hash`) and KEY_VERSION.

    Not covered: the machine's load and the library versions (both fixed for a server's life, and the
    label says when the trace was measured).
    """
    if not isinstance(pair_fp, str) or not pair_fp:
        raise ValueError("no fingerprint for this pair: run it without the cache")
    params = canonical(dict(params))
    in_params = params.pop("seed", None)
    seed = canonical(seed)
    if seed is not None and in_params is not None and seed != in_params:
        raise ValueError(f"two seeds for one request: {seed!r} and params' {in_params!r}")
    seed = next((s for s in (seed, in_params) if s is not None), DEFAULT_SEED)
    payload = {
        "v": KEY_VERSION,
        "job": job,
        "pair": pair_fp,
        "method": method,
        "params": params,
        "seed": seed,
        "prompt": canonical(prompt),
        "extra": canonical(dict(extra or {})),
        "engine": engine_source_hash(),
    }
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- what is stored
def value_bytes(value: Any) -> int:
    """Bytes a result holds, counted against the cache's bound: UTF-8 text of its strings, 8 per scalar."""
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bytes):
        return len(value)
    if isinstance(value, Mapping):
        return sum(value_bytes(k) + value_bytes(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value)
    return 8


def complete(value: Any) -> bool:
    """False when a result holds a trace stopped before its end (Stop, a closed page, the run deadline: the
    engine returns those as traces with finish_reason "cancelled"); such a result is never stored, and its
    waiters ask again. Values that are not traces count as complete."""
    if isinstance(value, Mapping):  # a trace's row, or any dict holding traces (playground, batch_compare)
        return value.get("finish_reason") != "cancelled" and all(complete(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(complete(v) for v in value)
    if isinstance(value, str) and value.startswith("{") and '"cancelled"' in value:
        try:
            return complete(json.loads(value))
        except ValueError:
            return True
    return True


DISTURBED_JSON = re.compile(r'"(?:disturbed|cold_start)"\s*:\s*true')  # a trace's JSON that may hold either


def undisturbed(value: Any) -> bool:
    """False when a result holds a trace measured while other processes took the CPU (its `disturbance` says
    `disturbed`, specviz.engine.quiet) or a cold start (its `meta["engine"]["cold_start"]`, the first run of its
    method in a fresh engine process). Such a result is never stored. Results that are not traces count as
    undisturbed, and so do traces that were not probed (nothing says they were disturbed)."""
    if isinstance(value, Mapping):
        if "events" in value and "rows" in value:  # a trace's dict
            record = value.get("disturbance")
            meta = value.get("meta")
            engine = meta.get("engine") if isinstance(meta, Mapping) else None
            if isinstance(record, Mapping) and record.get("disturbed") is True:
                return False
            if isinstance(engine, Mapping) and engine.get("cold_start") is True:
                return False
        return all(undisturbed(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(undisturbed(v) for v in value)
    if isinstance(value, str) and value.startswith("{") and DISTURBED_JSON.search(value):
        try:
            return undisturbed(json.loads(value))
        except ValueError:
            return True
    return True


@dataclass(frozen=True)
class Entry:
    """One measured result. Shared by every request served it: treat `value` as read-only."""

    value: Any  # the engine job's result: a trace's JSON, or a dict of them (JSON-able)
    measured_at: float  # epoch seconds when the engine's measurement finished
    nbytes: int  # size counted against the cache's bound, bytes (see value_bytes)


@dataclass(frozen=True)
class CacheLimits:
    max_bytes: int = 32 << 20  # most bytes of stored results (0: store nothing, still share flights)
    max_entries: int = 256  # most stored results, count

    @classmethod
    def from_env(cls) -> "CacheLimits":
        return cls(
            max_bytes=int(float(os.environ.get(BYTES_ENV, "32")) * (1 << 20)),
            max_entries=int(os.environ.get(ENTRIES_ENV, "256")),
        )


@dataclass
class CacheStats:
    hits: int = 0  # lookups that found a stored result
    misses: int = 0  # lookups that found none
    stored: int = 0  # results stored
    refused: int = 0  # complete results not stored: disturbed or a cold start (`undisturbed`)


# ----------------------------------------------------------------------------- the cache
class TraceCache:
    """LRU of measured results, bounded by bytes and count, thread-safe. Who measures, and how identical
    requests in flight share one measurement, is `specviz.app.serving`'s job; this class only keeps results."""

    def __init__(self, limits: CacheLimits | None = None) -> None:
        self.limits = limits or CacheLimits()
        self._items: OrderedDict[str, tuple[Entry, int]] = OrderedDict()  # key -> (entry, its measurement's order)
        self._lock = threading.Lock()
        self._bytes = 0
        self._stats = CacheStats()

    @classmethod
    def from_env(cls) -> "TraceCache":
        return cls(CacheLimits.from_env())

    def get(self, key: str) -> Entry | None:
        """The stored entry (now the most recently used), or None."""
        with self._lock:
            if key not in self._items:
                self._stats.misses += 1
                return None
            self._stats.hits += 1
            self._items.move_to_end(key)
            return self._items[key][0]

    def __contains__(self, key: str) -> bool:
        """Whether `key` is stored (no hit or miss counted: the start-up measurement asks whether it kept a run)."""
        with self._lock:
            return key in self._items

    def put(self, key: str, value: Any, measured_at: float, order: int = 0) -> Entry:
        """Keep a measured result unless it is a stopped run (`complete`), a disturbed run or a cold start
        (`undisturbed`), larger than the whole cache, or a measurement started later (a higher `order`: "measure
        again" runs) is already stored for `key`."""
        entry = Entry(value=value, measured_at=measured_at, nbytes=value_bytes(value))
        if not complete(value):
            return entry
        if not undisturbed(value):
            with self._lock:
                self._stats.refused += 1
            return entry
        with self._lock:
            if key in self._items:
                if self._items[key][1] > order:
                    return entry
                self._bytes -= self._items.pop(key)[0].nbytes
            if entry.nbytes > self.limits.max_bytes or self.limits.max_entries < 1:
                return entry  # larger than the whole cache: served once, never stored
            self._items[key] = (entry, order)
            self._bytes += entry.nbytes
            self._stats.stored += 1
            while len(self._items) > self.limits.max_entries or self._bytes > self.limits.max_bytes:
                _, (old, _) = self._items.popitem(last=False)
                self._bytes -= old.nbytes
        return entry

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def stats(self) -> dict[str, int]:
        """For the health endpoint: entries, bytes, hits, misses, stored, limits."""
        with self._lock:
            return {
                "entries": len(self._items),
                "bytes": self._bytes,
                "hits": self._stats.hits,
                "misses": self._stats.misses,
                "stored": self._stats.stored,
                "refused": self._stats.refused,
                "max_bytes": self.limits.max_bytes,
                "max_entries": self.limits.max_entries,
            }


def label(measured_at: float | None, served_from: Served, now: float | None = None) -> str:
    """Plain text shown beside a result (the HTML side escapes it), in the server's local time:
    "measured at 14:03:22, served from cache"; the date is added when it was another day."""
    if measured_at is None:
        return ""
    moment = datetime.fromtimestamp(measured_at)
    today = datetime.fromtimestamp(time.time() if now is None else now).date()
    at = moment.strftime("%H:%M:%S" if moment.date() == today else "%Y-%m-%d %H:%M:%S")
    if served_from == "cache":
        return f"measured at {at}, served from cache"
    if served_from == "shared":
        return f"measured at {at}, shared with an identical request in flight"
    return f"measured at {at} for this request"
