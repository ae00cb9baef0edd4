"""Re-run every benchmark the README and docs/ show (the `python -m specviz.bench ...` line under each table), one
after another, each into its own CSV and markdown table: what a new embedded family or a new machine
needs before those figures can be replaced. Nothing else may run meanwhile (pause training first).

    python scripts/remeasure_readme.py --list
    python scripts/remeasure_readme.py --out results/2026-11-27   # resumable: finished tables are kept
    python scripts/remeasure_readme.py --apply results/2026-11-27  # put them back into README.md and docs/
    python scripts/remeasure_readme.py --out DIR --only 1 --smoke  # a rehearsal in seconds (CI)

The files are README.md, then docs/*.md in name order (or the ones given with --files); commands are numbered
across them in that order. --apply replaces each table that stands right above its command (blank lines
between) with the new one; a command with placeholders or an optional part, or with prose above it, is listed
for a hand edit. A command that writes a bench summary (`--json`) has its record's paths made portable
(specviz.paths) after it ran, so the committed file names no folder of this machine.

Lines written with a placeholder, e.g. `--pool-factor F` followed by "(F = 1, 2, 4, 8)", run once per value;
an optional part in brackets, e.g. `[--target 'embedded[:8]']`, runs without it and with it.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file from anywhere: specviz.paths
COMMAND = re.compile(r"`python -m specviz\.bench ([^`]+)`(?:\s*\((\w) = ([\d, ]+)\))?")
SMOKE = ["--limit", "1", "--max-new-tokens", "8", "--repeats", "1"]  # --smoke: seconds, not a measurement
OPTIONAL = re.compile(r"\[(--[a-z-]+ '[^']*')\]")  # "[--target 'embedded[:8]']": with and without


def readme_bench_commands(text: str) -> list[list[str]]:
    """The argument lists of README's bench commands, placeholders expanded; "..." examples left out."""
    commands = []
    for match in COMMAND.finditer(text):
        line, name, values = match.groups()
        if "..." in line:
            continue
        optional = OPTIONAL.search(line)
        lines = [OPTIONAL.sub("", line), OPTIONAL.sub(r"\1", line)] if optional else [line]
        for variant in lines:
            for value in [v.strip() for v in values.split(",")] if name else [None]:
                argv = shlex.split(variant)
                commands.append([value if (name and a == name) else a for a in argv])
    return commands


def retarget(argv: list[str], out_dir: Path, index: int) -> tuple[list[str], Path]:
    """The command with its --out moved into out_dir (numbered: two commands may share a file name), plus
    --markdown beside it, and no --html (a report per table is not what this is for)."""
    args, i = [], 0
    stem = f"{index:02d}"
    while i < len(argv):
        if argv[i] == "--out":
            stem += "-" + Path(argv[i + 1]).stem
            i += 2
        elif argv[i] == "--html":
            i += 2
        else:
            args.append(argv[i])
            i += 1
    markdown = out_dir / f"{stem}.md"
    return args + ["--out", str(out_dir / f"{stem}.csv"), "--markdown", str(markdown)], markdown


def table_above(lines: list[str], at: int) -> tuple[int, int] | None:
    """[start, end) of the markdown table right above line `at` (blank lines between), or None."""
    end = at
    while end > 0 and not lines[end - 1].strip():
        end -= 1
    start = end
    while start > 0 and lines[start - 1].startswith("|"):
        start -= 1
    return (start, end) if start < end else None


def default_files() -> list[Path]:
    """README.md, then every page of docs/ in name order: where the tables and their commands live."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def documents(files: list[Path]) -> list[tuple[Path, str, int]]:
    """(file, its text, how many commands come before it) for each file, in order."""
    out, before = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        out.append((path, text, before))
        before += len(readme_bench_commands(text))
    return out


def apply_tables(text: str, out_dir: Path, before: int = 0, name: str = "") -> tuple[str, list[str]]:
    """The text with every single-run table replaced by out_dir's, and what was left for a hand edit. `before`:
    the commands of earlier files (the numbering runs across files); `name`: the file, for the hand-edit list."""
    lines, todo, index, swaps = text.split("\n"), [], before, []
    where = f"{name}, " if name else ""
    for match in COMMAND.finditer(text):
        if "..." in match.group(1):
            continue
        runs = len(readme_bench_commands(match.group(0)))
        first, index = index + 1, index + runs
        at = text.count("\n", 0, match.start())
        block = table_above(lines, at)
        if runs != 1 or block is None:
            todo.append(
                f"{first}{f'-{index}' if runs > 1 else ''} ({where}line {at + 1}): "
                + ("placeholders or an optional part" if runs != 1 else "no table right above")
                + ": by hand"
            )
            continue
        found = sorted(out_dir.glob(f"{first:02d}*.md"))
        if not found:
            todo.append(f"{first} ({where}line {at + 1}): not measured in {out_dir}")
            continue
        table = [row for row in found[0].read_text(encoding="utf-8").split("\n") if row.startswith("|")]
        swaps.append((block, table))
    for (start, end), table in reversed(swaps):  # bottom up: a longer table moves no block still to replace
        lines[start:end] = table
    return "\n".join(lines), todo


def json_output(argv: list[str]) -> Path | None:
    return ROOT / argv[argv.index("--json") + 1] if "--json" in argv[:-1] else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--files",
        nargs="+",
        default=None,
        help="markdown files holding the tables (default: README.md, then docs/*.md)",
    )
    parser.add_argument("--readme", help=argparse.SUPPRESS)  # the old single-file form: same as --files FILE
    parser.add_argument("--out", help="folder for the CSVs and markdown tables")
    parser.add_argument("--apply", help="a folder this script filled: its tables into the files")
    parser.add_argument("--list", action="store_true", help="print the commands (numbered as --only counts) and stop")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated command numbers (1-based, as --list): the tables a "
        "session has time for, the rest on the next run",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="each command on its first prompt, 8 new tokens, one repeat: a rehearsal of this script, no figures",
    )
    args = parser.parse_args(argv)
    files = [Path(f) for f in args.files] if args.files else [Path(args.readme)] if args.readme else default_files()
    docs = documents(files)
    commands = [c for _, text, _ in docs for c in readme_bench_commands(text)]
    if args.apply:
        todo = []
        for path, text, before in docs:
            new, left = apply_tables(text, Path(args.apply), before, name=path.name)
            todo += left
            if new != text:
                path.write_text(new, encoding="utf-8")
        print("\n".join(["left for a hand edit:", *todo]) if todo else "every table replaced")
        return 0
    if args.list or not args.out:
        for index, command in enumerate(commands, 1):
            print(f"{index:2d}  python -m specviz.bench " + shlex.join(command))
        return 0
    only = {int(n) for n in args.only.split(",") if n.strip()}
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, command in enumerate(commands, 1):
        full, markdown = retarget(command, out_dir, index)
        if only and index not in only:
            continue
        if markdown.exists():
            print(f"[{index}/{len(commands)}] kept {markdown}")
            continue
        if args.smoke:  # the last of a repeated option wins; a rehearsal writes no committed summary
            full += SMOKE
            if "--json" in full[:-1]:
                full[full.index("--json") + 1] = str(out_dir / f"{index:02d}-summary.json")
        print(f"[{index}/{len(commands)}] python -m specviz.bench {shlex.join(full)}", flush=True)
        done = subprocess.run([sys.executable, "-m", "specviz.bench", *full], cwd=ROOT)
        if done.returncode:
            print(f"failed ({done.returncode}): stopping; rerun to resume", file=sys.stderr)
            return done.returncode
        summary = json_output(full)
        if summary is not None and summary.is_file():
            from specviz.paths import scrub_file

            scrub_file(summary)  # its command names out_dir: keep the committed record free of this machine's folders
    print(f"{len(commands)} tables in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
