"""Every script in scripts/ runs, in CI, in seconds: it answers `--help`, a shell script passes `bash -n`, and a
short run (one prompt, a few tokens, one repeat, the embedded pair) goes through the script's real code, the Python
in its heredocs and subprocess strings included. Why: the scripts are run by hand, rarely, often on a lent GPU;
after the restructuring two of them still imported a module that had moved, and nothing ran them to notice.

The smoke runs are parametrized over the files found in scripts/, so a new script fails here until it has an
entry in SMOKE. `scripts/gpu_check.sh` is rehearsed with `DEVICE=cpu SHORT=1` and fails when any of its blocks
fails, so a broken GPU check fails here and not on a lent GPU.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import lzma
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
FOUND = sorted(p.name for p in SCRIPTS.iterdir() if p.suffix in (".py", ".sh"))


def command(name: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """How a script is run from the repository root, as README shows them (subprocess keywords)."""
    head = ["bash", str(SCRIPTS / name)] if name.endswith(".sh") else [sys.executable, str(SCRIPTS / name)]
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    full_env.update({"PY": sys.executable, "PYTHON": sys.executable, "TOKENIZERS_PARALLELISM": "false"})
    return {"args": head + args, "cwd": ROOT, "env": {**full_env, **(env or {})}, "text": True}


def run_script(name: str, args: list[str], env: dict[str, str] | None = None, limit_s: float = 300):
    return subprocess.run(**command(name, args, env), capture_output=True, timeout=limit_s)


def embedded_corpus(where: Path) -> Path:
    """A corpus folder as specviz.workshop.corpus writes it, tokenized by the embedded target's tokenizer, from
    three standard-library modules: enough for a trainer's first steps, built in a second."""
    from specviz.models.hub import EMBEDDED_DIR, load_tokenizer
    from specviz.workshop.text import encode

    tok = load_tokenizer(str(EMBEDDED_DIR / "target"))
    where.mkdir(parents=True, exist_ok=True)
    splits = {"train": [inspect, textwrap], "heldout": [string], "heldout_stdlib": [textwrap]}
    tokens = {}
    for split, modules in splits.items():
        ids = encode(tok, [inspect.getsource(m) for m in modules]).astype(np.uint16)
        np.save(where / f"{split}.npy", ids)
        tokens[split] = len(ids)
    vocab_sha = hashlib.sha1(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest()
    manifest = {"tokens": tokens, "tokenizer_sha1": vocab_sha, "packages": [], "files": 3, "bytes": 0}
    (where / "manifest.json").write_text(json.dumps(manifest))
    return where


@dataclass(frozen=True)
class Smoke:
    """How CI runs one script in seconds."""

    # the runs, in order: each a command line after the script, given a scratch folder (the folder may be
    # prepared there, e.g. a corpus or a fake run folder)
    runs: Callable[[Path], list[list[str]]]
    # what the last run prints once it got to its end (a crash prints no such line)
    expect: str
    env: Callable[[Path], dict[str, str]] = field(default=lambda tmp: {})
    # exit statuses that count as a run that worked (app_timing exits 1 when a figure is off by 10 %: on a busy
    # CI machine a timing may be, and that is not what a smoke run checks)
    codes: tuple[int, ...] = (0,)
    limit_s: float = 300
    after: Callable[[Path], None] | None = None  # a check of what the run left behind


def remeasure_runs(tmp: Path) -> list[list[str]]:
    """--list, one command in its --smoke size (the first on bundled prompts that writes no summary), then
    --apply of its table to a copy of the file it came from."""
    listed = run_script("remeasure_readme.py", ["--list"], limit_s=60).stdout.splitlines()
    number = next(
        int(line.split()[0])
        for line in listed
        if not any(part in line for part in ("--json", "--ray", "--per-category", "spec_bench"))
    )
    readme = tmp / "README.md"
    shutil.copy(ROOT / "README.md", readme)
    out = tmp / "tables"
    return [["--out", str(out), "--only", str(number), "--smoke"], ["--apply", str(out), "--files", str(readme)]]


def table_applied(tmp: Path) -> None:
    """--apply put the smoke run's table into the copy (the copy is no longer the README)."""
    assert (tmp / "README.md").read_text() != (ROOT / "README.md").read_text()


def fake_family(tmp: Path) -> dict[str, str]:
    """scripts/make_family.sh's inputs: a run folder whose target reached its planned tokens, and a family whose
    students, quality and Learn summary exist (links to assets/models), so the script snapshots the target, skips
    the steps whose outputs exist, as a resumed run does, and writes the card."""
    run = tmp / "run"
    (run / "hf" / "target").mkdir(parents=True)
    (run / "hf" / "target" / "specviz.json").write_text(json.dumps({"continued": {"tokens": 1000}}))
    (run / "train.log").write_text('config {"total_tokens": 1000}\n')
    family = tmp / "family"
    family.mkdir()
    for entry in (ROOT / "assets" / "models").iterdir():
        if entry.name != "README.md":  # the card is written there
            (family / entry.name).symlink_to(entry)
    return {"SPECVIZ_TRAIN_DIR": str(run), "SPECVIZ_FAMILY_DIR": str(family)}


def gpu_family_env(tmp: Path) -> dict[str, str]:
    """scripts/gpu_family.sh students only (the shipped target), with a lease too short for them: the corpus is
    unpacked, the students are skipped, the packing finds nothing to pack."""
    corpus = embedded_corpus(tmp / "corpus")
    pack = tmp / "pack"
    pack.mkdir()
    for f in corpus.glob("*.npy"):
        (pack / f"{f.name}.xz").write_bytes(lzma.compress(f.read_bytes()))
    shutil.copy(corpus / "manifest.json", pack)
    return {"OUT": str(tmp / "out"), "WORK": str(tmp / "work"), "CORPUS_PACK": str(pack)} | {
        "TARGET_SECONDS": "0",
        "LEASE_SECONDS": "1",
        "THREADS": "1",
    }


def train_background_runs(tmp: Path) -> list[list[str]]:
    corpus = embedded_corpus(tmp / "corpus")
    init = ["--init", str(ROOT / "assets" / "models" / "target")]
    return [["--quick", "--max-steps", "2", "--corpus", str(corpus), *init]]


def trained_in_background(tmp: Path) -> None:
    """The detached trainer train_background.sh started: it finishes its two steps and saves the HF copy."""
    run = tmp / "run"
    pid = int((run / "train.pid").read_text())
    deadline = time.time() + 240
    while time.time() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.5)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGTERM)
        pytest.fail(f"the background trainer still ran after 240 s: {(run / 'train.log').read_text()[-2000:]}")
    assert (run / "hf" / "target" / "config.json").exists(), (run / "train.log").read_text()[-3000:]


def stdlib_source(tmp: Path) -> str:
    return inspect.getsourcefile(inspect)


SMOKE: dict[str, Smoke] = {
    "app_timing.py": Smoke(
        lambda tmp: [["--tabs", "playground", "--tokens", "8", "--repeats", "1"]],
        "figures within",
        codes=(0, 1),
    ),
    "compare_adapters.py": Smoke(
        lambda tmp: [
            ["--new", str(ROOT / "assets/models/kangaroo-adapter"), "--limit", "1", "--repeats", "1"]
            + ["--max-new-tokens", "8", "--text", stdlib_source(tmp)]
        ],
        "new adapter",
    ),
    "compare_trees.py": Smoke(
        lambda tmp: [
            ["--old", "HEAD", "--methods", "autoregressive,draft_model", "--limit", "1", "--max-new-tokens", "8"]
            + ["--repeats", "1", "--tolerance", "100", "--out", str(tmp)]
        ],
        "rows with different outputs: 0",
    ),
    "decode_penalty_probe.py": Smoke(
        lambda tmp: [["--limit", "1", "--max-new-tokens", "4", "--threads", "1"]], "| no_repeat_ngram_size=6 |"
    ),
    "gpu_check.sh": Smoke(
        lambda tmp: [[]],
        "every block passed",
        env=lambda tmp: (
            {"DEVICE": "cpu", "SHORT": "1", "OUT": str(tmp)}
            | {"SPEC_BENCH": str(ROOT / "tests/data/spec_bench_fixture.jsonl")}
        ),
        limit_s=600,
    ),
    "gpu_family.sh": Smoke(lambda tmp: [[]], "packed", env=gpu_family_env),
    "interpolate_family.py": Smoke(
        lambda tmp: [["assets/models", "assets/models", str(tmp / "mix"), "--lam", "0.5"]], "tensors mixed"
    ),
    "lean_transposed_ab.py": Smoke(
        lambda tmp: [["--limit", "1", "--repeats", "1", "--max-new-tokens", "8"]], "[F.linear]"
    ),
    "load_test.py": Smoke(
        lambda tmp: [["--users", "2", "--memory-runs", "2", "--out", str(tmp / "load.json")]],
        "(d) {",
        limit_s=600,
    ),
    "lookup_ceiling.py": Smoke(
        lambda tmp: [
            ["--prompts", "assets/prompts/code.jsonl", "--limit", "1", "--max-new-tokens", "8", "--repeats", "1"]
            + ["--trie-nodes", "16"]
        ],
        "needs",
    ),
    "lookup_cost.py": Smoke(lambda tmp: [["--tokens", "300", "--rounds", "5"]], "a rescan of the whole text"),
    "make_family.sh": Smoke(lambda tmp: [[]], "5. card", env=fake_family),
    "make_stream_prompts.py": Smoke(lambda tmp: [["--count", "3", "--out", str(tmp / "stream.jsonl")]], "3 prompts"),
    "onpolicy_agreement.py": Smoke(
        lambda tmp: [["--family", "assets/models", "--code-prompts", "--prompts", "1", "--new", "4"]],
        "Kangaroo adapter",
    ),
    # --apply ends with "every table replaced" or the list left for a hand edit: the copy's change is the check
    "remeasure_readme.py": Smoke(remeasure_runs, "", after=table_applied),
    "selfcheck_cost.py": Smoke(lambda tmp: [["--repeats", "1"]], "of which the self-check"),
    "train_background.sh": Smoke(
        train_background_runs,
        "started PID",
        env=lambda tmp: {"SPECVIZ_TRAIN_DIR": str(tmp / "run")},
        after=trained_in_background,
    ),
    "tree_cost.py": Smoke(lambda tmp: [["--repeats", "1"]], "break-even"),
    "observe_throughput.py": Smoke(lambda tmp: [["--lines", "2000"]], "lines/s"),
    "eagle_cost.py": Smoke(lambda tmp: [["--repeats", "2", "--context", "16"]], "EAGLE-1 head"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", FOUND)
def test_the_script_runs(name, tmp_path):
    assert name in SMOKE, f"scripts/{name} has no smoke run: add one to SMOKE in tests/test_scripts.py"
    smoke = SMOKE[name]
    # --help beside the run (most of either is imports, one thread each: CI's second core takes it)
    helping = subprocess.Popen(**command(name, ["--help"]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        env = smoke.env(tmp_path)
        for args in smoke.runs(tmp_path):
            done = run_script(name, args, env, smoke.limit_s)
            shown = f"{name} {' '.join(args)} (rc {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
            assert done.returncode in smoke.codes, shown
        assert smoke.expect in done.stdout, shown
    finally:
        helped = helping.communicate(timeout=120)[0]
    assert helping.returncode == 0 and helped.strip(), f"{name} --help (rc {helping.returncode}): {helped[-3000:]}"
    if smoke.after is not None:
        smoke.after(tmp_path)


def test_every_script_parses():
    """Syntax only, in a second: `bash -n` for shell, compile() for Python (the slow smoke runs do the rest)."""
    for name in FOUND:
        path = SCRIPTS / name
        if name.endswith(".sh"):
            checked = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert checked.returncode == 0, f"{name}: {checked.stderr}"
        else:
            compile(path.read_text(), str(path), "exec")


# `from specviz.x import a, b` and `import specviz.x` anywhere in a script's text: its own code, the Python in
# its heredocs and in its subprocess strings alike
FROM_IMPORT = re.compile(r"^\s*from (specviz(?:\.\w+)*) import \(?([\w, \n]+?)\)?\s*(?:#.*)?$", re.M)
PLAIN_IMPORT = re.compile(r"^\s*import (specviz(?:\.\w+)*)", re.M)


def named_imports(text: str) -> list[tuple[str, str | None]]:
    found: list[tuple[str, str | None]] = [(m.group(1), None) for m in PLAIN_IMPORT.finditer(text)]
    for m in FROM_IMPORT.finditer(text):
        found += [(m.group(1), n.strip().split(" as ")[0]) for n in m.group(2).split(",") if n.strip()]
    return found


def test_named_imports_finds_heredoc_and_string_imports():
    text = 'CHILD = """\nfrom specviz import selfcheck\n"""\n$PY - <<\'PY\'\nimport specviz.paths as p\nPY\n'
    assert named_imports(text) == [("specviz.paths", None), ("specviz", "selfcheck")]


def test_every_specviz_name_a_script_imports_exists():
    """What broke after the restructuring (`from specviz import selfcheck` in a heredoc and a subprocess string),
    caught in the fast suite: each name is a submodule or an attribute of the module it is imported from."""
    missing = []
    for name in FOUND:
        for module, attribute in named_imports((SCRIPTS / name).read_text()):
            try:
                imported = importlib.import_module(module)
                if attribute is not None and not hasattr(imported, attribute):
                    importlib.import_module(f"{module}.{attribute}")
            except ImportError as exc:
                missing.append(f"{name}: {module} {attribute or ''} ({exc})")
    assert missing == []
