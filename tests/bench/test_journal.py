"""The bench's journal and the cluster's plans, without Ray: units keyed by what determines them, an
interrupted local run (`--resume`) that completes to the same result, another command refused, a torn line
skipped; `--ray` parsed and worker slots planned from a cluster's node list; Ray never imported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import make_tiny_pair

from specviz.bench import cli as bench
from specviz.bench import journal, matrix
from specviz.bench import prompts as prompt_files
from specviz.bench.cluster import RayTarget, Slot, plan_slots
from specviz.models.fingerprint import loaded_pair_fingerprint

ROOT = Path(__file__).resolve().parents[2]
# What does not depend on timing: two runs of one command must agree on these.
STABLE = [
    "method",
    "prompt_id",
    "category",
    "new_tokens",
    "alpha",
    "tau",
    "equal_to_autoregressive",
    "output_digest",
    "tie_divergences",
    "real_divergences",
    "early_exits",
    "wasted_drafts",
]


@pytest.fixture(scope="module")
def saved_pair(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    make_tiny_pair("llama", tiny_tokenizer, save_dir=root)
    return root


def write_prompts(path: Path, n: int = 3) -> Path:
    path.write_text(
        "".join(json.dumps({"id": f"p{i}", "category": "code", "prompt": f"def f{i}(x):"}) + "\n" for i in range(n))
    )
    return path


def command(pair: Path, prompts: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--methods",
        "draft_model,draft_model:gamma=2",
        "--prompts",
        str(prompts),
        "--max-new-tokens",
        "6",
        "--repeats",
        "1",
        "--target",
        str(pair / "target"),
        "--draft",
        str(pair / "draft"),
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


def stable(df: pd.DataFrame) -> pd.DataFrame:
    return df[[c for c in STABLE if c in df]].reset_index(drop=True)


def test_interrupted_local_run_resumes_to_the_same_result(saved_pair, tmp_path, monkeypatch, capsys):
    prompts = write_prompts(tmp_path / "p.jsonl")
    assert bench.main(command(saved_pair, prompts, tmp_path / "whole.csv")) == 0
    whole = pd.read_csv(tmp_path / "whole.csv")
    assert {"host", "device", "worker", "output_digest"} <= set(whole.columns)

    out = tmp_path / "r.csv"
    real_run_unit, calls = matrix.run_unit, []

    def interrupted(pair, plan, unit, tick=None):  # Ctrl-C while the second unit runs
        calls.append(unit.index)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_run_unit(pair, plan, unit, tick)

    monkeypatch.setattr(bench, "run_unit", interrupted)
    assert bench.main(command(saved_pair, prompts, out, "--resume")) == 130
    partial = pd.read_csv(out)  # a valid result of the unit that finished
    assert list(partial.prompt_id.unique()) == ["p0"] and len(partial) == 3
    assert "interrupted: 1 of 3 units" in capsys.readouterr().out

    monkeypatch.setattr(bench, "run_unit", real_run_unit)
    calls.clear()
    ran = []
    monkeypatch.setattr(bench, "run_unit", lambda *a, **k: ran.append(a[2].index) or real_run_unit(*a, **k))
    assert bench.main(command(saved_pair, prompts, out, "--resume")) == 0
    assert ran == [1, 2], "the finished unit must not run again"
    assert "1 of 3 units came from the journal" in capsys.readouterr().out
    pd.testing.assert_frame_equal(stable(pd.read_csv(out)), stable(whole))
    records = [json.loads(line) for line in journal.journal_path(out).read_text().splitlines()[1:]]
    assert sorted(r["index"] for r in records if r["status"] == "done") == [0, 1, 2]

    ran.clear()
    assert bench.main(command(saved_pair, prompts, out, "--resume")) == 0 and ran == []  # all from the journal

    changed = command(saved_pair, prompts, out, "--resume")
    changed[changed.index("--max-new-tokens") + 1] = "7"
    assert bench.main(changed) == 2
    err = capsys.readouterr().err
    assert "written by a different command" in err and "draft_model max_new_tokens: 6 there, 7 here" in err


def test_units_are_keyed_by_what_determines_them(saved_pair, tmp_path):
    from specviz.models.pair import load_pair

    prompts = prompt_files.load_prompts(write_prompts(tmp_path / "p.jsonl"))
    pair = load_pair(str(saved_pair / "target"), str(saved_pair / "draft"), device="cpu")

    def keys(spec: str, *, seed: int = 0, fingerprint: str | None = None, **shared) -> list[str]:
        plan = matrix.make_plan([matrix.parse_method(spec, {"max_new_tokens": 6, "seed": seed, **shared})], repeats=1)
        units = matrix.make_units(plan, prompts)
        ident = journal.identity(plan, units, fingerprint or loaded_pair_fingerprint(pair))
        j = journal.Journal(tmp_path / "j", ident)
        return [j.key(u) for u in units]

    base = keys("draft_model")
    assert len(set(base)) == 3  # one per prompt
    assert keys("draft_model", gamma=4) == base  # the default given (--param gamma=4): the same units
    assert keys("draft_model", gamma=3) != base
    assert keys("draft_model:gamma=4") != base  # another label: its rows say another method
    assert keys("draft_model", seed=1) != base
    assert keys("draft_model", fingerprint="other weights") != base


def test_pair_fingerprint_follows_the_weights(tiny_tokenizer):
    a = make_tiny_pair("llama", tiny_tokenizer, seed=0)
    assert loaded_pair_fingerprint(a) == loaded_pair_fingerprint(make_tiny_pair("llama", tiny_tokenizer, seed=0))
    assert loaded_pair_fingerprint(a) != loaded_pair_fingerprint(make_tiny_pair("llama", tiny_tokenizer, seed=1))
    half = make_tiny_pair("llama", tiny_tokenizer, seed=0)
    half.target.to(torch.float16)
    assert loaded_pair_fingerprint(half) != loaded_pair_fingerprint(a)


def test_a_torn_last_line_is_skipped_and_a_second_writer_refused(tmp_path):
    prompts = prompt_files.load_prompts(write_prompts(tmp_path / "p.jsonl", 2))
    plan = matrix.make_plan([matrix.parse_method("autoregressive", {})], repeats=1)
    units = matrix.make_units(plan, prompts)
    out = tmp_path / "r.csv"
    j = journal.open_journal(out, plan, units, "fp")
    j.record_done(units[0], [{"method": "autoregressive", "prompt_id": "p0"}], {"worker": "w0"})
    with pytest.raises(journal.JournalMismatch, match="another bench run is writing"):
        journal.open_journal(out, plan, units, "fp")
    j.close()
    with journal.journal_path(out).open("a") as f:
        f.write('{"unit": "cut sho')  # a crash mid-write
    again = journal.open_journal(out, plan, units, "fp")
    assert list(again.done_rows()) == [again.key(units[0])]
    again.record_done(units[1], [{"method": "autoregressive", "prompt_id": "p1"}], {"worker": "w1"})
    again.close()
    assert len(journal.open_journal(out, plan, units, "fp").done_rows()) == 2
    with pytest.raises(journal.JournalMismatch, match="weights fingerprint"):
        journal.open_journal(out, plan, units, "other")


def test_ray_addresses_parse():
    assert RayTarget.parse("local:2") == RayTarget(None, 2) and RayTarget.parse("local").local_workers >= 1
    assert RayTarget.parse("auto").address == "auto" and not RayTarget.parse("10.0.0.5:6379").loopback
    assert RayTarget.parse("127.0.0.1:6379").loopback and RayTarget.parse("ray://head:10001").address
    for bad in ("local:0", "local:x", "http://x", "10.0.0.5", ""):
        with pytest.raises(ValueError, match="--ray"):
            RayTarget.parse(bad)
    args = bench.build_parser().parse_args(["--ray", "nowhere", "--quiet"])
    with pytest.raises(ValueError, match="cluster address"):
        bench.prepare(args)


def node(node_id: str, cpus: int, gpus: int = 0, alive: bool = True) -> dict:
    resources = {"CPU": float(cpus), **({"GPU": float(gpus)} if gpus else {})}
    return {"NodeID": node_id, "Alive": alive, "Resources": resources}


def test_worker_slots_one_per_gpu_or_per_cpu_node():
    gpu = [node("a", 16, 2), node("b", 8, 1), node("c", 32), node("dead", 8, 8, alive=False)]
    slots = plan_slots(gpu)
    assert [(s.node_id, s.gpus, s.device) for s in slots] == [("a", 1, "cuda")] * 2 + [("b", 1, "cuda")]
    assert [s.threads for s in slots] == [8, 8, 8]
    cpu = plan_slots(gpu, device="cpu")  # --device cpu: one worker a CPU node, all its cores
    assert [(s.node_id, s.cpus, s.threads) for s in cpu] == [("a", 16, 16), ("b", 8, 8), ("c", 32, 32)]
    split = plan_slots([node("c", 32)], worker_cpus=8)
    assert len(split) == 4 and all(s == Slot("c", 8, 0, 8, "cpu") for s in split)
    assert plan_slots([], local_workers=2) == [Slot(None, 1, 0, 1, "cpu")] * 2
    with pytest.raises(ValueError, match="no GPU"):
        plan_slots([node("c", 4)], device="cuda")
    with pytest.raises(ValueError, match="no CPU or GPU"):
        plan_slots([node("c", 0)])


@pytest.mark.slow  # fresh interpreters import the app
def test_the_app_and_the_bench_never_import_ray(tmp_path):
    """Ray is optional: the core modules, the bench's parser and its --ray check work without importing it."""
    code = (
        "import sys, specviz, specviz.api, specviz.models.pair, specviz.bench as b, specviz.bench.journal, "
        "specviz.bench.cluster\n"
        "b.prepare(b.build_parser().parse_args(['--ray', 'local:2', '--methods', 'draft_model']))\n"
        "assert 'ray' not in sys.modules, 'ray imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lock = (ROOT / "requirements.txt").read_text()
    cluster = (ROOT / "requirements-cluster.txt").read_text().splitlines()
    assert "ray" not in lock.lower().split() and "-r requirements.txt" in cluster
    pins = [line for line in cluster if line and not line.startswith(("#", "-r"))]
    assert any(p.startswith("ray==2.60.") for p in pins) and all("==" in p for p in pins)
