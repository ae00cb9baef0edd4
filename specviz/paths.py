"""Where specviz keeps what it makes outside the work tree, and how a record names a path without naming the
machine it was made on.

- `cache_dir(name)`: the default home of run folders, corpora and staged families,
  `$XDG_CACHE_HOME/specviz/<name>` (`~/.cache/specviz/<name>` when XDG_CACHE_HOME is unset). Every CLI that
  writes outside the tree takes an explicit folder (`--out`, `--run-dir`, ...) and defaults to this.
- `portable(path)`: a path as a committed record may show it: relative inside the repository, under
  `~/.cache/specviz` (or `$XDG_CACHE_HOME/specviz`) inside the cache, else only its folder and name.
- `portable_text(text)` and `scrub(obj)`: the same for every absolute path in a command line or in a JSON
  record (what the workshop's quality, students and card and the bench summary write).

    python -m specviz.paths NAME          # print cache_dir(NAME): the shell scripts' defaults
    python -m specviz.paths --scrub FILE  # rewrite a JSON record's absolute paths in place
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path, PurePosixPath
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# an absolute POSIX path inside text: not preceded by a word character or a dot ("tokens/s", "a/b" stay)
ABSOLUTE = re.compile(r"(?<![\w.~$/])/(?:[\w.+@%=:-]+/)*[\w.+@%=:-]+/?")


def cache_base() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "specviz"


def cache_dir(name: str = "") -> Path:
    """`$XDG_CACHE_HOME/specviz/<name>`: where a run folder goes unless told otherwise."""
    return cache_base() / name if name else cache_base()


def _under(path: PurePosixPath, base: Path) -> PurePosixPath | None:
    try:
        return path.relative_to(PurePosixPath(os.path.normpath(base)))
    except ValueError:
        return None


def portable(path: str | os.PathLike) -> str:
    """A path as a committed record may show it: relative paths unchanged; inside the repository relative to
    it; inside the cache as `~/.cache/specviz/...` (or `$XDG_CACHE_HOME/specviz/...`); anywhere else its
    folder and name only (the name alone when the folder is a top-level one or the home directory)."""
    text = os.fspath(path)
    if not text.startswith("/") or not text.strip("/"):
        return text
    trail = "/" if text.endswith("/") and text != "/" else ""
    p = PurePosixPath(os.path.normpath(text))
    inside = _under(p, ROOT)
    if inside is not None:
        return (str(inside) if str(inside) != "." else ".") + trail
    inside = _under(p, cache_base())
    if inside is not None:
        base = "$XDG_CACHE_HOME/specviz" if os.environ.get("XDG_CACHE_HOME") else "~/.cache/specviz"
        return (base if str(inside) == "." else f"{base}/{inside}") + trail
    parent = p.parent
    if len(parent.parts) <= 2 or _under(parent, Path.home()) == PurePosixPath("."):
        return p.name + trail
    return f"{parent.name}/{p.name}{trail}"


def portable_text(text: str) -> str:
    """Every absolute path in `text` (a command line, a message) made portable."""
    return ABSOLUTE.sub(lambda m: portable(m.group(0)), text)


def scrub(obj: Any) -> Any:
    """A JSON-like record with every absolute path in its strings made portable (keys and numbers untouched)."""
    if isinstance(obj, dict):
        return {k: scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub(v) for v in obj]
    if isinstance(obj, str):
        return portable_text(obj)
    return obj


def scrub_file(path: str | os.PathLike, indent: int | None = None) -> bool:
    """Rewrite a JSON file with its paths made portable (keeping its indentation); True when it changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    record = json.loads(text)
    clean = scrub(record)
    if clean == record:
        return False
    if indent is None:
        match = re.search(r"\n( +)\S", text)
        indent = len(match.group(1)) if match else 1
    p.write_text(json.dumps(clean, indent=indent) + "\n", encoding="utf-8")
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--scrub"]:
        for name in args[1:]:
            print(f"{name}: {'rewritten' if scrub_file(name) else 'clean'}")
        return 0
    if len(args) > 1 or args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    print(cache_dir(args[0] if args else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
