"""The trace cache: what its key covers, LRU by bytes, the order of measurements, labels, and the model and
engine fingerprints it keys on. No model is loaded and no server runs."""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path

import pytest

from specviz.app import trace_cache
from specviz.app.trace_cache import CacheLimits, TraceCache, label, request_key
from specviz.engine.quiet import Reading, between
from specviz.engine.trace import RowResult, Trace
from specviz.models import fingerprint, hub

BASE = dict(
    job="playground",
    pair_fp="ab" * 8,
    method="draft_model",
    params={"max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "gamma": 4},
    prompt="def f(x):",
    seed=0,
)


def key(**changes) -> str:
    return request_key(**{**BASE, **changes})


# ----------------------------------------------------------------------------- the key
@pytest.mark.parametrize(
    "name, value",
    [("max_new_tokens", 33), ("temperature", 0.5), ("top_k", 5), ("top_p", 0.9), ("gamma", 5), ("heal_prompt", True)],
)
def test_key_changes_with_every_parameter(name, value):
    assert key(params={**BASE["params"], name: value}) != key()


def test_key_changes_with_seed_prompt_model_method_job_extra():
    reference = key()
    others = [
        key(seed=1),
        key(prompt="def f(x): "),
        key(prompt=["def f(x):"]),
        key(pair_fp="cd" * 8),
        key(method="autoregressive"),
        key(job="single"),
        key(extra={"n": 100}),
    ]
    assert reference not in others and len(set(others)) == len(others)


def test_key_changes_with_engine_sources(monkeypatch, tmp_path):
    (tmp_path / "engine.py").write_text("x = 1\n")
    monkeypatch.setattr(trace_cache, "engine_source_hash", lambda: fingerprint.engine_source_hash(tmp_path))
    before = key()
    (tmp_path / "engine.py").write_text("x = 2\n")  # same size, new content
    bump_mtime(tmp_path / "engine.py")
    assert key() != before
    (tmp_path / "methods").mkdir()
    changed = key()
    (tmp_path / "methods" / "new.py").write_text("")
    assert key() != changed


def test_key_is_canonical():
    shuffled = dict(reversed(list(BASE["params"].items())))
    assert key(params=shuffled) == key()
    assert key(params={**BASE["params"], "temperature": 0, "top_p": 1}) == key()  # the engine coerces 0 -> 0.0
    assert key(params={**BASE["params"], "gamma": 4.0}) == key()
    assert key(params={**BASE["params"], "gamma": "4"}) != key()  # strings are not guessed at
    assert key(params={**BASE["params"], "heal_prompt": 1}) != key(params={**BASE["params"], "heal_prompt": True})


def test_seed_is_always_in_the_key():
    assert key(seed=None) == key(seed=0) == key(seed=None, params={**BASE["params"], "seed": 0})
    assert key(seed=None, params={**BASE["params"], "seed": 7}) == key(seed=7)
    assert key(seed=None, params={**BASE["params"], "seed": 7}) != key(seed=None)
    with pytest.raises(ValueError, match="two seeds"):
        key(seed=1, params={**BASE["params"], "seed": 2})


def test_default_seed_is_the_engines():
    from specviz.methods.base import COMMON_PARAMS

    assert {p.name: p.default for p in COMMON_PARAMS}["seed"] == trace_cache.DEFAULT_SEED


def test_unknown_pair_is_not_keyed():
    with pytest.raises(ValueError, match="without the cache"):
        key(pair_fp=None)


# ----------------------------------------------------------------------------- storing
def test_lru_eviction_by_bytes():
    cache = TraceCache(CacheLimits(max_bytes=250, max_entries=100))
    for order, name in enumerate("abc"):
        cache.put(name, "x" * 100, time.time(), order)
    assert cache.get("a") is None and cache.get("b") and cache.get("c")  # 300 bytes > 250: the oldest went
    cache.get("b")  # b is now the most recently used
    cache.put("d", "y" * 100, time.time())
    assert cache.get("c") is None and cache.get("b") and cache.get("d")
    assert cache.stats()["bytes"] == 200 and cache.stats()["entries"] == 2
    entry = cache.put("huge", "z" * 1000, time.time())
    assert entry.value == "z" * 1000 and cache.get("huge") is None  # served, never stored


def test_lru_eviction_by_count():
    cache = TraceCache(CacheLimits(max_bytes=1 << 20, max_entries=2))
    for name in "abc":
        cache.put(name, {"trace": "{}"}, time.time())
    assert len(cache) == 2 and cache.get("a") is None


def test_a_stored_entry_comes_back_with_its_measurement_time():
    cache = TraceCache()
    assert cache.get("k") is None
    first = cache.put("k", "trace", 1234.5)
    again = cache.get("k")
    assert again is first and again.measured_at == 1234.5
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1 and cache.stats()["stored"] == 1


def test_label_format():
    at = datetime(2026, 12, 6, 14, 3, 22).timestamp()
    assert label(at, "cache", now=at + 60) == "measured at 14:03:22, served from cache"
    assert label(at, "cache", now=at + 2 * 86400) == "measured at 2026-12-06 14:03:22, served from cache"
    assert label(at, "shared", now=at) == "measured at 14:03:22, shared with an identical request in flight"
    assert label(at, "engine", now=at) == "measured at 14:03:22 for this request"


def test_a_later_measurement_is_never_replaced_by_an_earlier_one():
    cache = TraceCache()
    cache.put("k", "measured again", time.time(), order=2)
    cache.put("k", "older run that finished late", time.time(), order=1)
    assert cache.get("k").value == "measured again"
    cache.put("k", "newest", time.time(), order=3)
    assert cache.get("k").value == "newest" and len(cache) == 1


def test_cancelled_traces_are_not_stored():
    cancelled = json.dumps({"rows": [{"finish_reason": "cancelled"}], "events": []})
    finished = json.dumps({"rows": [{"finish_reason": "length"}], "events": []})
    cache = TraceCache()
    cache.put("k", {"trace": finished, "baseline": cancelled}, time.time())
    assert cache.get("k") is None
    cache.put("k", {"trace": finished, "baseline": finished}, time.time())
    assert cache.get("k") is not None
    nested = {"rows": [{"method": "eqspec"}], "traces": {"eqspec": cancelled}}  # batch_compare's shape
    assert not trace_cache.complete(nested) and trace_cache.complete({**nested, "traces": {"eqspec": finished}})


def probed_trace(others_share: float | None, cold: bool = False) -> Trace:
    """A finished trace whose probe saw other processes take `others_share` of 2 CPUs for 1 s (None: unreadable),
    and, if `cold`, the first run of its method in its engine process."""
    busy = None if others_share is None else round(200 * others_share) + 50  # + the run's own 0.5 CPU seconds
    end = Reading(wall_s=1.0, own_cpu_s=0.5, busy_ticks=busy, total_ticks=None if busy is None else 200, cpus=2)
    start = Reading(wall_s=0.0, own_cpu_s=0.0, busy_ticks=None if busy is None else 0, total_ticks=0, cpus=2)
    trace = Trace(method="draft_model", params={}, rows=[RowResult("p", [1], [2], "x", "length")], wall_time=1.0)
    trace.disturbance = between(start, end).to_dict()
    trace.meta["engine"] = {"where": "engine process, main thread", "runs_at_once": 1} | (
        {"cold_start": True} if cold else {}
    )
    return trace


def test_a_disturbed_run_is_served_but_never_stored():
    quiet, busy = probed_trace(0.02).to_json(), probed_trace(0.62).to_json()
    cache = TraceCache()
    for value in (busy, {"trace": busy, "baseline": quiet}, {"trace": quiet, "baseline": busy}, json.loads(busy)):
        entry = cache.put("k", value, time.time())
        assert entry.value is value and "k" not in cache and cache.get("k") is None
    assert cache.stats()["refused"] == 4 and cache.stats()["stored"] == 0
    cache.put("k", {"trace": quiet, "baseline": quiet}, time.time())
    assert "k" in cache and cache.stats()["stored"] == 1
    unknown = probed_trace(None).to_json()  # macOS: nothing says it was disturbed
    assert trace_cache.undisturbed(unknown) and trace_cache.undisturbed(json.dumps({"rows": [], "events": []}))


def test_a_cold_start_is_never_stored():
    cold, warm = probed_trace(0.0, cold=True).to_json(), probed_trace(0.0).to_json()
    cache = TraceCache()
    cache.put("k", {"trace": warm, "baseline": cold}, time.time())
    assert "k" not in cache
    cache.put("k", {"trace": warm, "baseline": warm}, time.time())
    assert "k" in cache


def test_a_disturbed_measure_again_leaves_the_quiet_entry():
    cache = TraceCache()
    cache.put("k", probed_trace(0.0).to_json(), 1.0, order=1)
    cache.put("k", probed_trace(0.5).to_json(), 2.0, order=2)
    assert cache.get("k").measured_at == 1.0


def test_token_text_that_looks_like_the_flag_does_not_refuse_a_quiet_run():
    trace = probed_trace(0.0)
    trace.rows[0].text = '"disturbed": true, "cold_start": true'
    assert trace_cache.undisturbed(trace.to_json())


# ----------------------------------------------------------------------------- fingerprints
def bump_mtime(path: Path) -> None:
    """Writes within one clock tick can share an mtime (the module's stated limit): step it explicitly."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def model_dir(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"\x00" * 64)
    (folder / "README.md").write_text("notes")
    return folder


def test_model_dir_fingerprint_follows_content_and_is_memoised(model_dir, monkeypatch):
    reads = []
    real_digest = fingerprint.file_digest
    monkeypatch.setattr(fingerprint, "file_digest", lambda path: reads.append(path) or real_digest(path))
    first = fingerprint.weights_fingerprint(str(model_dir))
    assert first and len(reads) == 2  # config and weights; the README decides nothing
    assert fingerprint.weights_fingerprint(str(model_dir)) == first and len(reads) == 2  # memoised
    (model_dir / "model.safetensors").write_bytes(b"\x01" * 64)  # same size, new content
    bump_mtime(model_dir / "model.safetensors")
    changed = fingerprint.weights_fingerprint(str(model_dir))
    assert changed != first and len(reads) == 3
    (model_dir / "specviz-parts").mkdir()
    (model_dir / "specviz-parts" / "adapter.safetensors").write_bytes(b"a")
    assert fingerprint.weights_fingerprint(str(model_dir)) != changed  # the pair's extras beside a target count


def test_nested_name_is_another_model(model_dir):
    whole = fingerprint.weights_fingerprint(str(model_dir))
    assert fingerprint.weights_fingerprint(f"{model_dir}[:1]") not in (None, whole)
    assert fingerprint.weights_fingerprint(f"{model_dir}[:1]") != fingerprint.weights_fingerprint(f"{model_dir}[:2]")


def test_embedded_fingerprint_is_stable():
    if not (hub.EMBEDDED_DIR / "target" / "config.json").exists():
        pytest.skip("the embedded models are not here")
    first = fingerprint.weights_fingerprint(hub.EMBEDDED)
    assert first and fingerprint.weights_fingerprint(hub.EMBEDDED) == first
    assert fingerprint.weights_fingerprint("embedded[:8]") != first
    own = fingerprint.pair_fingerprint("", None)
    assert own == fingerprint.pair_fingerprint("embedded", "embedded") == fingerprint.pair_fingerprint(" embedded ", "")
    assert fingerprint.pair_fingerprint("embedded[:8]", "") not in (None, own)


def test_embedded_fingerprint_covers_the_extras(tmp_path, monkeypatch):
    root = tmp_path / "models"
    for part in ("target", "drafter", "kangaroo-adapter", "vocabtrim"):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(part)
    monkeypatch.setattr(hub, "EMBEDDED_DIR", root)
    before = fingerprint.weights_fingerprint(hub.EMBEDDED)
    (root / "vocabtrim" / "target-token-ranking.json").write_text("[1, 2]")
    assert fingerprint.weights_fingerprint(hub.EMBEDDED) not in (None, before)


def test_unresolvable_models_have_no_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv(hub.ALLOWLIST_ENV, "*")
    assert fingerprint.weights_fingerprint("") is None
    assert fingerprint.weights_fingerprint("not a model") is None
    assert fingerprint.hub_fingerprint("org/never-downloaded", cache_dir=tmp_path) is None
    monkeypatch.setattr(fingerprint, "hub_fingerprint", lambda repo_id, cache_dir=None: None)
    assert fingerprint.weights_fingerprint("org/never-downloaded") is None
    assert fingerprint.pair_fingerprint("embedded", "org/never-downloaded") is None


def test_allowlist_is_checked_before_any_path_is_read(model_dir, monkeypatch):
    monkeypatch.setenv(hub.ALLOWLIST_ENV, "org/allowed")
    monkeypatch.setattr(fingerprint, "file_digest", lambda path: pytest.fail(f"read {path}"))
    assert fingerprint.weights_fingerprint(str(model_dir)) is None


def test_hub_fingerprint_is_the_cached_commit(tmp_path):
    def snapshot(commit: str) -> None:
        repo = tmp_path / "models--org--name"
        (repo / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (repo / "snapshots" / commit / "config.json").write_text("{}")
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    snapshot("a" * 40)
    first = fingerprint.hub_fingerprint("org/name", cache_dir=tmp_path)
    assert first and fingerprint.hub_fingerprint("org/name", cache_dir=tmp_path) == first
    snapshot("b" * 40)  # a newer revision downloaded: refs/main moved
    assert fingerprint.hub_fingerprint("org/name", cache_dir=tmp_path) not in (None, first)


def test_engine_source_hash_reads_every_py_once(tmp_path, monkeypatch):
    (tmp_path / "a.py").write_text("a = 1\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.py").write_text("b = 1\n")
    (tmp_path / "sub" / "notes.md").write_text("not code")
    reads = []
    real_digest = fingerprint.file_digest
    monkeypatch.setattr(fingerprint, "file_digest", lambda path: reads.append(path.name) or real_digest(path))
    first = fingerprint.engine_source_hash(tmp_path)
    assert sorted(reads) == ["a.py", "b.py"]
    assert fingerprint.engine_source_hash(tmp_path) == first and len(reads) == 2
    (tmp_path / "sub" / "b.py").rename(tmp_path / "sub" / "c.py")  # a rename alone changes the engine
    assert fingerprint.engine_source_hash(tmp_path) != first
    assert fingerprint.engine_source_hash() == fingerprint.engine_source_hash()  # the package's own


def test_the_weights_walk_follows_linked_folders_once_and_never_loops(tmp_path):
    from specviz.models.fingerprint import _walk, directory_fingerprint

    (tmp_path / "target").mkdir()
    (tmp_path / "target" / "model.safetensors").write_bytes(b"w")
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "adapter.safetensors").write_bytes(b"a")
    (tmp_path / "target" / "parts").symlink_to("../parts")  # a linked sibling: followed
    (tmp_path / "parts" / "up").symlink_to("..")  # a link back to a folder above: not followed
    files = [rel for rel, _ in _walk(tmp_path, (".safetensors",))]
    assert files == ["parts/adapter.safetensors", "target/model.safetensors", "target/parts/adapter.safetensors"]
    before = directory_fingerprint(tmp_path)
    (tmp_path / "parts" / "adapter.safetensors").write_bytes(b"changed")
    assert directory_fingerprint(tmp_path) != before
