"""A bigger, permissively licensed Python corpus for the embedded target (issue 16).

Sources: the standard library exactly as `specviz.workshop.text.read_corpus` reads it, plus the Python
sources (code and docstrings) of widely used permissively licensed packages, each pinned to one
version and fetched as a wheel by `pip download --no-deps` into a cache directory. Each package's
licence is read back from the wheel's own metadata and checked against the pinned SPDX id before a
single file is used. Tests, vendored copies and generated files are left out; exact duplicates
(by content) are kept once.

Splits:
- `heldout_stdlib`: the OLD held-out split of the standard library (the rule of
  `train.read_corpus`: a hash of the file name), never trained on, so losses stay comparable with
  the first embedded models (4.50 nats/token);
- `heldout`: every other file whose content hash falls in the held-out share (stable: it depends
  on the file's bytes only, not on which packages are in the list or in what order);
- `train`: the rest.

`build_corpus(...)` writes token streams (uint16 .npy, EOS between files) and `manifest.json`
(package, version, licence, files, bytes, tokens per split) into one directory.
"""

from __future__ import annotations

import email
import hashlib
import json
import os
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from specviz.workshop.config import TrainConfig
from specviz.workshop.text import encode, stdlib_texts

DEFAULT_CACHE = Path(os.environ.get("SPECVIZ_CORPUS_CACHE", Path.home() / ".cache" / "specviz-corpus"))
WHEEL_PLATFORM_ARGS = [
    "--only-binary",
    ":all:",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
]


@dataclass(frozen=True)
class Package:
    name: str  # distribution name as pip knows it
    version: str  # exact pin
    licence: str  # SPDX id, checked against the wheel's metadata (see licence_ok)
    url: str = ""


# Pinned 2026-11-26; every wheel was fetched by pip from PyPI here and its metadata read back.
# Left out on purpose: docutils (some files GPL), anything copyleft or MPL.
PACKAGES: tuple[Package, ...] = (
    Package("numpy", "2.2.6", "BSD-3-Clause", "https://numpy.org"),
    Package("scipy", "1.16.3", "BSD-3-Clause", "https://scipy.org"),
    Package("pandas", "2.3.2", "BSD-3-Clause", "https://pandas.pydata.org"),
    Package("sympy", "1.14.0", "BSD-3-Clause", "https://sympy.org"),
    Package("networkx", "3.6.1", "BSD-3-Clause", "https://networkx.org"),
    Package("scikit-learn", "1.7.2", "BSD-3-Clause", "https://scikit-learn.org"),
    Package("statsmodels", "0.14.6", "BSD-3-Clause", "https://www.statsmodels.org"),
    Package("astropy", "8.0.2", "BSD-3-Clause", "https://www.astropy.org"),
    Package("django", "5.2.19", "BSD-3-Clause", "https://www.djangoproject.com"),
    Package("flask", "3.1.3", "BSD-3-Clause", "https://flask.palletsprojects.com"),
    Package("werkzeug", "3.1.9", "BSD-3-Clause", "https://werkzeug.palletsprojects.com"),
    Package("jinja2", "3.1.6", "BSD-3-Clause", "https://jinja.palletsprojects.com"),
    Package("click", "8.5.1", "BSD-3-Clause", "https://click.palletsprojects.com"),
    Package("requests", "2.34.2", "Apache-2.0", "https://requests.readthedocs.io"),
    Package("tornado", "6.6.1", "Apache-2.0", "https://www.tornadoweb.org"),
    Package("sqlalchemy", "2.1.9", "MIT", "https://www.sqlalchemy.org"),
    Package("attrs", "26.1.0", "MIT", "https://www.attrs.org"),
    Package("pytest", "9.2.0", "MIT", "https://pytest.org"),
    Package("rich", "15.0.0", "MIT", "https://github.com/Textualize/rich"),
    Package("setuptools", "84.2.1", "MIT", "https://setuptools.pypa.io"),
    Package("pygments", "2.21.0", "BSD-2-Clause", "https://pygments.org"),
    Package("sphinx", "9.0.4", "BSD-2-Clause", "https://www.sphinx-doc.org"),
)

# Path parts that mark tests or vendored third-party copies.
SKIP_DIRS = frozenset(
    {
        "tests",
        "test",
        "testing_data",
        "__pycache__",
        "_vendor",
        "vendor",
        "vendored",
        "_vendored",
        "externals",
        "_externals",
        "extern",
        "_extern",
        "third_party",
        "_third_party",
        "thirdparty",
        "array_api_compat",
        "array_api_extra",
        "site-packages",
        "dist-packages",
        "idle_test",
    }
)
SPDX_FAMILY = {"BSD-3-Clause": "BSD", "BSD-2-Clause": "BSD", "MIT": "MIT", "Apache-2.0": "Apache", "PSF-2.0": "Python"}


@dataclass(frozen=True)
class CorpusConfig:
    max_file_bytes: int = 400_000
    min_file_bytes: int = 64
    long_line_chars: int = 300  # a file with more than long_line_share of lines this long is generated data
    long_line_share: float = 0.02
    heldout_share: float = 0.02
    old_heldout_share: float = 0.03  # train.TrainConfig.heldout_share, the OLD stdlib split


# ----------------------------------------------------------------------------- filters and split
def path_ok(path: str) -> bool:
    """Keep a .py file unless it is a test or lives in a test or vendored directory."""
    p = PurePosixPath(path.replace("\\", "/"))
    if p.suffix != ".py":
        return False
    name = p.name
    if name.startswith("test_") or name.endswith("_test.py") or name in ("conftest.py", "tests.py"):
        return False
    return not (set(p.parts[:-1]) & SKIP_DIRS)


def text_ok(text: str, cfg: CorpusConfig = CorpusConfig()) -> bool:
    """Reject tiny files, huge ones and generated data (many very long lines)."""
    size = len(text.encode("utf-8"))
    if size < cfg.min_file_bytes or size > cfg.max_file_bytes:
        return False
    lines = text.splitlines() or [""]
    long = sum(1 for ln in lines if len(ln) > cfg.long_line_chars)
    return long <= cfg.long_line_share * len(lines)


def content_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def content_bucket(text: str) -> int:
    """0..999 from the file's content only: the same file lands in the same split on every build."""
    return int(content_hash(text)[:12], 16) % 1000


def is_heldout(text: str, share: float) -> bool:
    return content_bucket(text) < share * 1000


def old_stdlib_heldout(name: str, share: float = 0.03) -> bool:
    """The first embedded models' rule (train.read_corpus): a hash of the file NAME."""
    return int(hashlib.sha1(name.encode()).hexdigest(), 16) % 1000 < share * 1000


# ----------------------------------------------------------------------------- licences and fetching
def wheel_metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        return email.message_from_bytes(z.read(meta))


def metadata_licence(meta) -> str:
    """What the package itself declares: License-Expression, else License's first line, else classifiers."""
    expr = str(meta.get("License-Expression") or "").strip()
    if expr:
        return expr
    lic = str(meta.get("License") or "").strip().splitlines()
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    return "; ".join(([lic[0].strip()] if lic else []) + classifiers)


def licence_ok(spdx: str, declared: str) -> bool:
    """The pin's SPDX id agrees with the metadata, and nothing copyleft is declared beside it."""
    low = declared.lower()
    if any(word in low for word in ("gpl", "mpl", "mozilla", "copyleft", "affero", "eupl")):
        return False
    if declared.strip() == spdx:
        return True
    return SPDX_FAMILY.get(spdx, spdx).lower() in low


def wheel_for(pkg: Package, wheels: Path) -> Path | None:
    stem = pkg.name.replace("-", "_").lower()
    for w in sorted(wheels.glob("*.whl")):
        parts = w.name.split("-")
        if parts[0].lower() == stem and parts[1] == pkg.version:
            return w
    return None


def fetch(pkg: Package, cache: Path = DEFAULT_CACHE, log=print) -> Path | None:
    """The package's wheel from the cache, else `pip download --no-deps` of exactly that version."""
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = wheel_for(pkg, wheels)
    if found:
        return found
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        "-d",
        str(wheels),
        *WHEEL_PLATFORM_ARGS,
        f"{pkg.name}=={pkg.version}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = wheel_for(pkg, wheels)
    if proc.returncode or not found:
        log(f"corpus: pip could not fetch {pkg.name}=={pkg.version}: dropped ({proc.stderr.strip()[-200:]})")
        return None
    return found


def wheel_sources(wheel: Path, cfg: CorpusConfig = CorpusConfig()):
    """(path inside the wheel, text) of each kept .py file, sorted by path."""
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            if ".dist-info/" in name or ".data/" in name or not path_ok(name):
                continue
            if z.getinfo(name).file_size > cfg.max_file_bytes:
                continue
            try:
                text = z.read(name).decode("utf-8")
            except UnicodeDecodeError:
                continue
            if text_ok(text, cfg):
                yield name, text


def directory_sources(root: Path, cfg: CorpusConfig = CorpusConfig()):
    """(relative path, text) of each kept .py file under a user-given corpus directory."""
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).as_posix()
        if not path_ok(rel) or p.stat().st_size > cfg.max_file_bytes:
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if text_ok(text, cfg):
            yield rel, text


def stdlib_sources(quick: bool = False):
    """(name, text, old-split held out?) exactly as train.read_corpus reads the standard library."""
    tcfg = TrainConfig(quick=quick)
    for path, text in stdlib_texts(tcfg):
        yield path.name, text, old_stdlib_heldout(path.name, tcfg.heldout_share)


# ----------------------------------------------------------------------------- building
def split_documents(sources, cfg: CorpusConfig = CorpusConfig()):
    """sources: iterable of (source name, [(path, text, forced split or None)]).
    Returns ({split: [texts]}, {source: {files, bytes, per-split files}}); exact duplicates kept once."""
    seen: set[str] = set()
    splits: dict[str, list[str]] = {"train": [], "heldout": [], "heldout_stdlib": []}
    stats: dict[str, dict] = {}
    for source, docs in sources:
        s = stats.setdefault(
            source, {"files": 0, "bytes": 0, "duplicates": 0, "train": 0, "heldout": 0, "heldout_stdlib": 0}
        )
        for _path, text, forced in docs:
            h = content_hash(text)
            if h in seen and forced is None:  # forced splits (the old stdlib held-out) stay complete
                s["duplicates"] += 1
                continue
            seen.add(h)
            split = forced or ("heldout" if is_heldout(text, cfg.heldout_share) else "train")
            splits[split].append(text)
            s["files"] += 1
            s["bytes"] += len(text.encode("utf-8"))
            s[split] += 1
    return splits, stats


def build_corpus(
    out: Path,
    tok,
    packages: tuple[Package, ...] = PACKAGES,
    cache: Path = DEFAULT_CACHE,
    corpus_dir: Path | None = None,
    cfg: CorpusConfig = CorpusConfig(),
    log=print,
    include_stdlib: bool = True,
    quick_stdlib: bool = False,
) -> dict:
    """Fetch, filter, split and tokenize; write {train,heldout,heldout_stdlib}.npy and manifest.json into out."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    sources, package_rows = [], []
    if include_stdlib:
        sources.append(
            ("stdlib", [(n, t, "heldout_stdlib" if old else None) for n, t, old in stdlib_sources(quick_stdlib)])
        )
    for pkg in packages:
        wheel = fetch(pkg, cache, log)
        if wheel is None:
            continue
        declared = metadata_licence(wheel_metadata(wheel))
        if not licence_ok(pkg.licence, declared):
            log(f"corpus: {pkg.name} declares {declared!r}, not {pkg.licence}: dropped")
            continue
        sources.append((pkg.name, [(p, t, None) for p, t in wheel_sources(wheel, cfg)]))
        package_rows.append(
            {
                **asdict(pkg),
                "declared_licence": declared,
                "wheel": wheel.name,
                "wheel_sha256": hashlib.sha256(wheel.read_bytes()).hexdigest(),
            }
        )
    if corpus_dir is not None:
        sources.append((f"dir:{corpus_dir}", [(p, t, None) for p, t in directory_sources(Path(corpus_dir), cfg)]))
    splits, stats = split_documents(sources, cfg)
    log(f"corpus: {sum(len(v) for v in splits.values())} files read in {time.time() - t0:.0f} s; tokenizing")
    tokens = {}
    for split, texts in splits.items():
        ids = encode(tok, texts) if texts else np.zeros(0, dtype=np.int32)
        assert len(tok) <= 65535
        np.save(out / f"{split}.npy", ids.astype(np.uint16))
        tokens[split] = int(len(ids))
    for row in package_rows:
        row.update(stats.get(row["name"], {}))
    manifest = {
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": sys.version.split()[0],
        "filters": {
            **asdict(cfg),
            "skip_dirs": sorted(SKIP_DIRS),
            "skip_files": "test_*.py, *_test.py, conftest.py, tests.py; exact duplicates kept once",
        },
        "split_rule": "heldout_stdlib: sha1(file name) % 1000 < 30 (the first models' split); heldout: "
        f"int(sha1(content)[:12], 16) % 1000 < {int(cfg.heldout_share * 1000)}",
        "stdlib": stats.get("stdlib", {}),
        "packages": package_rows,
        "directory": {k: v for k, v in stats.items() if k.startswith("dir:")},
        "tokens": tokens,
        "bytes": sum(s["bytes"] for s in stats.values()),
        "files": sum(s["files"] for s in stats.values()),
        "tokenizer_sha1": hashlib.sha1(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest(),
        "seconds": round(time.time() - t0, 1),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log(f"corpus: {manifest['files']} files, {manifest['bytes'] / 1e6:.1f} MB, tokens {tokens} -> {out}")
    return manifest


def load_corpus(out: Path) -> tuple[dict[str, np.ndarray], dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {s: np.load(out / f"{s}.npy") for s in ("train", "heldout", "heldout_stdlib")}, manifest


def licence_table(manifest: dict) -> str:
    """Markdown rows for the model card: package, version, licence, files, MB, tokens share."""
    rows = ["| package | version | licence | files | MB |", "|---|---|---|---|---|"]
    st = manifest.get("stdlib")
    if st:
        rows.append(
            f"| Python standard library | {manifest['python']} | PSF-2.0 | {st['files']} | {st['bytes'] / 1e6:.1f} |"
        )
    for p in manifest["packages"]:
        rows.append(
            f"| {p['name']} | {p['version']} | {p['licence']} | {p.get('files', 0)} | {p.get('bytes', 0) / 1e6:.1f} |"
        )
    return "\n".join(rows)
