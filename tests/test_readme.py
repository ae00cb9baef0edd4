"""The shipping surface stays true: README commands = CI's, the Space front matter parses, the Dockerfile
follows the rules we care about, and its CMD really starts the app and serves a page."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
import yaml
from appserver import running_app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = {path.name: path.read_text() for path in sorted((ROOT / "docs").glob("*.md"))}
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README_MAX_LINES = 250  # a newcomer's page: the record lives in docs/
# a folder of one machine: a work tree, a home, root's home, a named temporary folder
MACHINE_PATH = re.compile(r"/work/|/home/|/root/|/tmp/[a-z]")
# where such a path is not a machine's: the image's own layout (the Spaces convention for a uid-1000 user)
MACHINE_PATH_ALLOWED = {("Dockerfile", "WORKDIR /home/user/app")}


def readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", README, re.S)
    assert block, "README has no bash block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def front_matter() -> dict:
    match = re.match(r"---\n(.*?)\n---\n", README, re.S)
    assert match, "README must start with the Space front matter"
    return yaml.safe_load(match.group(1))


def test_readme_opens_with_the_two_commands():
    body = README.split("\n---\n", 1)[1]
    first_block = body.index("```bash")
    assert body[:first_block].count("\n") < 5, "the commands must come first, right after the title"
    start, test = readme_commands()[:2]
    assert start == "pip install -r requirements.txt && python app.py"
    assert test.startswith("pip install -r requirements-dev.txt && ") and "pytest" in test


def test_ci_runs_the_readme_test_command_then_proves_the_floor():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    commands = [line.strip() for line in ci if line.strip() and not line.lstrip().startswith("#")]
    assert readme_commands()[1] in commands, "CI must run exactly the README's test command"
    after = commands[commands.index(readme_commands()[1]) + 1 :]
    assert any("floor-requirements.txt" in c for c in after) and any("pytest" in c for c in after)


def test_readme_states_the_floor_ci_proves_and_the_lock_pins_everything():
    floor = dict(
        line.split("==")
        for line in (ROOT / ".ci" / "floor-requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert f"transformers >= {floor['transformers']}" in README, "README's library range must start at the proven floor"
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            if line and not line.startswith(("#", "-r")):
                assert re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+-]+", line), f"{name}: {line!r} is not an exact pin"


def test_space_front_matter_parses():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py"
    assert (ROOT / meta["app_file"]).exists()
    assert re.fullmatch(r"3\.\d+", str(meta["python_version"]))
    assert 0 < len(meta["short_description"]) <= 60  # the hub's limit
    import gradio

    assert str(meta["sdk_version"]).split(".")[0] == gradio.__version__.split(".")[0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE)
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_lint_rules():
    """The hadolint rules that matter here (hadolint itself is not installable from our registries)."""
    ins = dockerfile_instructions()
    words = [w for w, _ in ins]
    base = dict(ins)["FROM"]
    assert ":" in base and not base.endswith(":latest"), "DL3006/DL3007: pin the base image tag"
    assert "slim" in base
    users = [rest for w, rest in ins if w == "USER"]
    assert users and users[-1] not in ("root", "0"), "DL3002: the last USER must not be root"
    assert any("--uid 1000" in rest for w, rest in ins if w == "RUN"), "Spaces run as uid 1000"
    for w, rest in ins:
        if w == "RUN" and "pip install" in rest:
            assert "--no-cache-dir" in rest, "DL3042: pip install --no-cache-dir"
        if w == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest, "DL3015"
        assert not re.search(r"(TOKEN|SECRET|PASSWORD|API_KEY)\s*=", rest, re.I), "no secrets baked in"
    copies = [i for i, w in enumerate(words) if w == "COPY"]
    pip = next(i for i, (w, rest) in enumerate(ins) if w == "RUN" and "pip install" in rest)
    assert "requirements.txt" in ins[copies[0]][1] and copies[0] < pip < copies[1], "requirements layer cached first"
    assert "HEALTHCHECK" in words and "EXPOSE" in words
    json.loads(dict(ins)["CMD"])  # DL3025: JSON form


def docker_cmd() -> list[str]:
    return json.loads(dict(dockerfile_instructions())["CMD"])


@pytest.mark.slow  # starts the app
def test_docker_cmd_is_the_readme_command_and_serves_a_page():
    cmd = docker_cmd()
    start = readme_commands()[0].split("&&")[-1].split()
    assert cmd[: len(start)] == start, f"Docker CMD {cmd} does not start with the README's {start}"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0" and cmd[cmd.index("--port") + 1] == "7860"
    with running_app(command=cmd) as app:
        with urllib.request.urlopen(app.url, timeout=5) as response:
            assert response.status == 200 and "gradio" in response.read().decode().lower()


def remeasure_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("remeasure_readme", ROOT / "scripts" / "remeasure_readme.py")
    remeasure = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(remeasure)
    return remeasure


def test_readme_is_a_newcomers_page_and_links_every_doc():
    lines = README.count("\n")
    assert lines <= README_MAX_LINES, f"README has {lines} lines: move the record into docs/ (limit {README_MAX_LINES})"
    for name in DOCS:
        assert f"docs/{name}" in README, f"README does not link docs/{name}"
    for target in re.findall(r"\]\(((?:docs/|assets/)[^)#]+)", README):
        assert (ROOT / target).exists(), f"README links {target}, which does not exist"
    for name, text in DOCS.items():
        for target in re.findall(r"\]\(([^)#]+)", text):
            if ":" in target:  # a web address, not a file of ours
                continue
            assert (ROOT / "docs" / target).exists(), f"docs/{name} links {target}, which does not exist"


def test_no_tracked_file_names_a_machines_folder():
    """Defaults go under the cache (specviz.paths) or --out; records keep paths relative. tests/ may use /tmp."""
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    found = []
    for name in (f.decode() for f in files if f and not f.startswith(b"tests/")):
        path = ROOT / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary: weights, screenshots
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if MACHINE_PATH.search(line) and (name, line.strip()) not in MACHINE_PATH_ALLOWED:
                found.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not found, "machine paths in tracked files:\n" + "\n".join(found)


def test_every_benchmark_command_in_readme_is_valid(monkeypatch):
    """The tables in README and docs/ carry the command that made them; each must still name real methods,
    parameters and files (checked as the CLI checks them, without loading a model), or the table cannot be
    reproduced."""
    from specviz.bench import cli as bench

    remeasure = remeasure_module()
    assert remeasure.readme_bench_commands(README), "README's headline table lost its command"
    commands = [
        c
        for _, text, _ in remeasure.documents(remeasure.default_files())
        for c in remeasure.readme_bench_commands(text)
    ]
    assert len(commands) >= 10, "the result tables lost their commands"
    monkeypatch.chdir(ROOT)  # prompt paths in README are relative to the repository
    for argv in commands:
        if "spec_bench_question.jsonl" in argv:  # Spec-Bench's file is not bundled: our fixture has its format
            argv = [
                str(ROOT / "tests" / "data" / "spec_bench_fixture.jsonl") if a == "spec_bench_question.jsonl" else a
                for a in argv
            ]
        bench.prepare(bench.build_parser().parse_args(argv))
    bad = commands[0][:]
    bad[bad.index("--methods") + 1] += ",draft_model:gamma=0"
    with pytest.raises(ValueError):
        bench.prepare(bench.build_parser().parse_args(bad))


def test_remeasured_tables_go_back_above_their_commands(tmp_path):
    """scripts/remeasure_readme.py --apply: a table right above its command is replaced (a longer one too,
    without shifting the next), one with prose above or placeholders is left for a hand edit; the numbering runs
    on from one file to the next."""
    remeasure = remeasure_module()
    cmd = "`python -m specviz.bench --limit {n} --methods autoregressive --out {n}.csv`"
    text = "\n".join(
        [
            "# R",
            "| a |",
            "|---|",
            "| old1 |",
            "",
            cmd.format(n=1),
            "prose",
            "",
            cmd.format(n=2),
            "| b |",
            "|---|",
            "| old3 |",
            "",
            cmd.format(n=3),
            "`python -m specviz.bench --pool-factor F --methods autoregressive` (F = 1, 2)",
        ]
    )
    (tmp_path / "01-1.md").write_text("| a |\n|---|\n| new1 |\n| new1b |\n\n`python -m specviz.bench ...`\n")
    (tmp_path / "03-3.md").write_text("| b |\n|---|\n| new3 |\n")
    out, todo = remeasure.apply_tables(text, tmp_path)
    assert out.split("\n")[:6] == ["# R", "| a |", "|---|", "| new1 |", "| new1b |", ""]
    assert "| new3 |" in out and "old" not in out and out.count("`python -m specviz.bench") == 4
    assert [t.split(" ")[0] for t in todo] == ["2", "4-5"]
    # a second file: its first command is number 6 (5 before it), so 06-*.md goes above it
    (tmp_path / "06-6.md").write_text("| c |\n|---|\n| new6 |\n")
    page = "\n".join(["| c |", "|---|", "| old6 |", "", cmd.format(n=6), ""])
    readme, page_file = tmp_path / "R.md", tmp_path / "P.md"
    readme.write_text(text)
    page_file.write_text(page)
    assert [before for _, _, before in remeasure.documents([readme, page_file])] == [0, 5]
    out, todo = remeasure.apply_tables(page, tmp_path, before=5, name="P.md")
    assert "| new6 |" in out and "old6" not in out and not todo
    assert remeasure.main(["--files", str(readme), str(page_file), "--apply", str(tmp_path)]) == 0
    assert "| new6 |" in page_file.read_text() and "| new3 |" in readme.read_text()
