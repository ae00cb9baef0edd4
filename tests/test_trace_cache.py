"""The trace cache: what its key covers, LRU by bytes, single flight, measure-again, labels, and the model and
engine fingerprints it keys on. No model is loaded and no server runs."""
from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from specviz import fingerprint, models, trace_cache
from specviz.trace_cache import Abandoned, CacheLimits, Entry, TraceCache, label, request_key

BASE = dict(job="playground", pair_fp="ab" * 8, method="draft_model",
            params={"max_new_tokens": 32, "temperature": 0.0, "top_k": 0, "top_p": 1.0, "gamma": 4}, prompt="def f(x):",
            seed=0)


def key(**changes) -> str:
    return request_key(**{**BASE, **changes})


# ----------------------------------------------------------------------------- the key
@pytest.mark.parametrize("name, value", [("max_new_tokens", 33), ("temperature", 0.5), ("top_k", 5), ("top_p", 0.9),
                                         ("gamma", 5), ("heal_prompt", True)])
def test_key_changes_with_every_parameter(name, value):
    assert key(params={**BASE["params"], name: value}) != key()


def test_key_changes_with_seed_prompt_model_method_job_extra():
    reference = key()
    others = [key(seed=1), key(prompt="def f(x): "), key(prompt=["def f(x):"]), key(pair_fp="cd" * 8),
              key(method="autoregressive"), key(job="single"), key(extra={"n": 100})]
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
    for name in "abc":
        cache.measure(name, lambda: "x" * 100)
    assert cache.get("a") is None and cache.get("b") and cache.get("c")  # 300 bytes > 250: the oldest went
    cache.get("b")  # b is now the most recently used
    cache.measure("d", lambda: "y" * 100)
    assert cache.get("c") is None and cache.get("b") and cache.get("d")
    assert cache.stats()["bytes"] == 200 and cache.stats()["entries"] == 2
    entry, served = cache.measure("huge", lambda: "z" * 1000)
    assert served == "engine" and entry.value == "z" * 1000 and cache.get("huge") is None  # served, never stored


def test_lru_eviction_by_count():
    cache = TraceCache(CacheLimits(max_bytes=1 << 20, max_entries=2))
    for name in "abc":
        cache.measure(name, lambda: {"trace": "{}"})
    assert len(cache) == 2 and cache.get("a") is None


def test_cached_entry_is_labelled():
    cache = TraceCache()
    first, served = cache.measure("k", lambda: "trace")
    assert served == "engine" and label(first, served) == "measured just now"
    again, served = cache.measure("k", lambda: pytest.fail("the engine must not run for a stored key"))
    assert served == "cache" and again is first
    at = datetime.fromtimestamp(first.measured_at)
    assert label(again, served) == f"measured at {at:%H:%M:%S}, served from cache"
    assert cache.stats()["hits"] == 1 and cache.stats()["misses"] == 1


def test_label_format():
    at = datetime(2026, 12, 6, 14, 3, 22).timestamp()
    entry = Entry(value="t", measured_at=at, nbytes=1)
    assert label(entry, "cache", now=at + 60) == "measured at 14:03:22, served from cache"
    assert label(entry, "cache", now=at + 2 * 86400) == "measured at 2026-12-06 14:03:22, served from cache"
    assert label(entry, "shared", now=at) == "measured just now (at 14:03:22), shared with an identical request"
    assert label(entry, "engine", now=at) == "measured just now"


def test_measure_again_bypasses_and_replaces():
    cache = TraceCache()
    old, _ = cache.measure("k", lambda: "first")
    new, served = cache.measure("k", lambda: "second", fresh=True)
    assert served == "engine" and new.value == "second" and new.measured_at >= old.measured_at
    assert cache.measure("k", lambda: "third") == (new, "cache")
    assert cache.stats()["fresh"] == 1 and len(cache) == 1


def test_cancelled_traces_are_not_stored():
    cancelled = json.dumps({"rows": [{"finish_reason": "cancelled"}], "events": []})
    finished = json.dumps({"rows": [{"finish_reason": "length"}], "events": []})
    cache = TraceCache()
    _, served = cache.measure("k", lambda: {"trace": finished, "baseline": cancelled})
    assert served == "engine" and cache.get("k") is None
    cache.measure("k", lambda: {"trace": finished, "baseline": finished})
    assert cache.get("k") is not None
    nested = {"rows": [{"method": "eqspec"}], "traces": {"eqspec": cancelled}}  # batch_compare's shape
    assert not trace_cache.complete(nested) and trace_cache.complete({**nested, "traces": {"eqspec": finished}})


# ----------------------------------------------------------------------------- single flight
def run_threads(n: int, target) -> list:
    results: list = [None] * n
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, target(i))) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_identical_requests_share_one_measurement():
    cache, calls, started, asked = TraceCache(), [], threading.Event(), []

    def engine():
        calls.append(1)
        started.set()
        deadline = time.monotonic() + 5
        while len(asked) < 7 and time.monotonic() < deadline:  # every other request has been made
            time.sleep(0.01)
        time.sleep(0.2)
        return {"trace": "measured"}

    def ask(i):
        if i:
            started.wait(5)  # the leader is in the engine when the others ask
            asked.append(i)
        return cache.measure("k", engine)

    results = run_threads(8, ask)
    assert len(calls) == 1
    assert all(entry == results[0][0] for entry, _ in results)
    served = [s for _, s in results]
    assert served.count("engine") == 1 and served.count("shared") == 7
    assert cache.stats()["shared"] == 7 and cache.stats()["in_flight"] == 0


def test_an_error_reaches_every_waiter_and_nothing_is_stored():
    cache, started, calls = TraceCache(), threading.Event(), []

    def engine():
        calls.append(1)
        started.set()
        time.sleep(0.2)
        raise RuntimeError("the engine process stopped")

    def ask(i):
        if i:
            started.wait(5)
        try:
            cache.measure("k", engine)
        except RuntimeError as exc:
            return str(exc)

    assert run_threads(4, ask) == ["the engine process stopped"] * 4 and len(calls) == 1
    assert cache.get("k") is None
    assert cache.measure("k", lambda: "again")[1] == "engine"  # a later request tries again


def test_a_waiter_can_give_up_without_breaking_the_flight():
    cache, started, release = TraceCache(), threading.Event(), threading.Event()

    def engine():
        started.set()
        release.wait(5)
        return "measured"

    leader = []
    thread = threading.Thread(target=lambda: leader.append(cache.measure("k", engine)))
    thread.start()
    started.wait(5)
    stop = threading.Event()
    stop.set()
    with pytest.raises(Abandoned):
        cache.measure("k", engine, cancel=stop)
    with pytest.raises(Abandoned):
        cache.measure("k", engine, timeout=0.05)
    release.set()
    thread.join(5)
    assert leader[0][1] == "engine" and cache.measure("k", engine)[1] == "cache"


def test_waiters_of_a_cancelled_run_measure_their_own():
    cache, started, calls = TraceCache(), threading.Event(), []
    cancelled = json.dumps({"rows": [{"finish_reason": "cancelled"}]})

    def engine(value):
        def run():
            calls.append(value)
            started.set()
            time.sleep(0.2)
            return value
        return run

    def ask(i):
        if i:
            started.wait(5)
            return cache.measure("k", engine("complete"))
        return cache.measure("k", engine(cancelled))  # the leader's requester pressed Stop

    results = run_threads(3, ask)
    assert results[0][0].value == cancelled and calls.count(cancelled) == 1
    assert {entry.value for entry, _ in results[1:]} == {"complete"} and calls.count("complete") == 1
    assert sorted(s for _, s in results[1:]) == ["engine", "shared"]


def test_measure_again_does_not_join_a_flight_in_progress():
    cache, started, release = TraceCache(), threading.Event(), threading.Event()

    def slow():
        started.set()
        release.wait(5)
        return "older"

    thread = threading.Thread(target=lambda: cache.measure("k", slow))
    thread.start()
    started.wait(5)
    entry, served = cache.measure("k", lambda: "newer", fresh=True)
    assert (entry.value, served) == ("newer", "engine")
    release.set()
    thread.join(5)
    assert cache.get("k").value == "newer"  # the earlier-started run does not overwrite the later one


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
    if not (models.EMBEDDED_DIR / "target" / "config.json").exists():
        pytest.skip("the embedded models are not here")
    first = fingerprint.weights_fingerprint(models.EMBEDDED)
    assert first and fingerprint.weights_fingerprint(models.EMBEDDED) == first
    assert fingerprint.weights_fingerprint("embedded[:8]") != first
    own = fingerprint.pair_fingerprint("", None)
    assert own == fingerprint.pair_fingerprint("embedded", "embedded") == fingerprint.pair_fingerprint(" embedded ", "")
    assert fingerprint.pair_fingerprint("embedded[:8]", "") not in (None, own)


def test_embedded_fingerprint_covers_the_extras(tmp_path, monkeypatch):
    root = tmp_path / "models"
    for part in ("target", "drafter", "kangaroo-adapter", "vocabtrim"):
        (root / part).mkdir(parents=True)
        (root / part / "config.json").write_text(part)
    monkeypatch.setattr(models, "EMBEDDED_DIR", root)
    before = fingerprint.weights_fingerprint(models.EMBEDDED)
    (root / "vocabtrim" / "target-token-ranking.json").write_text("[1, 2]")
    assert fingerprint.weights_fingerprint(models.EMBEDDED) not in (None, before)


def test_unresolvable_models_have_no_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv(models.ALLOWLIST_ENV, "*")
    assert fingerprint.weights_fingerprint("") is None
    assert fingerprint.weights_fingerprint("not a model") is None
    assert fingerprint.hub_fingerprint("org/never-downloaded", cache_dir=tmp_path) is None
    monkeypatch.setattr(fingerprint, "hub_fingerprint", lambda repo_id, cache_dir=None: None)
    assert fingerprint.weights_fingerprint("org/never-downloaded") is None
    assert fingerprint.pair_fingerprint("embedded", "org/never-downloaded") is None


def test_allowlist_is_checked_before_any_path_is_read(model_dir, monkeypatch):
    monkeypatch.setenv(models.ALLOWLIST_ENV, "org/allowed")
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
