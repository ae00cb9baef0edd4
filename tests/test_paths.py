"""Defaults live under the cache, and a record names a path without naming the machine it was made on."""

from __future__ import annotations

import json

from specviz import paths


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.cache_dir("train") == tmp_path / "specviz" / "train"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(paths.cache_dir()).endswith("/.cache/specviz")


def test_portable_paths_and_records(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert paths.portable(paths.ROOT / "assets" / "prompts" / "code.jsonl") == "assets/prompts/code.jsonl"
    assert paths.portable(paths.cache_dir("train") / "corpus") == "~/.cache/specviz/train/corpus"
    assert paths.portable("/srv/runs/specviz-train/corpus") == "specviz-train/corpus"
    assert paths.portable("/tmp/quality.json") == "quality.json" and paths.portable("rel/x") == "rel/x"
    text = "python -m specviz.bench --out /srv/results/a.csv --methods draft_model  # tokens/s, https://hf.co/a/b"
    assert paths.portable_text(text) == (
        "python -m specviz.bench --out results/a.csv --methods draft_model  # tokens/s, https://hf.co/a/b"
    )
    record = {"config": {"corpus": "/srv/runs/train/corpus", "steps": 3}, "files": ["/opt/x/y.json"], "n": 1.5}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    assert paths.scrub_file(path) and not paths.scrub_file(path)
    assert json.loads(path.read_text()) == {
        "config": {"corpus": "train/corpus", "steps": 3},
        "files": ["x/y.json"],
        "n": 1.5,
    }
