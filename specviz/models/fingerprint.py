"""Short digests of what a model name and the engine's code stand for, taken without loading a model.

The trace cache (specviz.app.trace_cache) may only serve a stored trace when the same weights would run under
the same engine code; these digests say "the same" in the UI process, where no model is loaded. A local
directory is digested by content (path and hash of every weight, config and tokenizer file), a hub id by
the commit of its locally cached snapshot, the engine by the content of its .py files. Content hashes are
memoised per file version (device, inode, size, mtime, ctime), so a file is read once per process and a
changed file is read again at the next request; only the directory walk (a stat per file) is repeated.
Measured on 2 shared CPU cores: the embedded directory (48 paths, 35 files, 45.7 MB) took 0.10 s with its
pages dropped from the OS cache (0.29 s on the first run in a fresh checkout), then 2-3 ms per request;
the engine's sources 4 ms, then 1.5 ms.

Limit (git's "racy" case): a same-size rewrite that keeps every stat field (within one clock tick, or a
copy that restores mtime, inode and ctime) is not noticed until the process restarts.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache

from specviz.models import hub

DIGEST_CHARS = 16  # hex characters of every fingerprint (64 bits)
# Files `from_pretrained` and the pair's extras read: weights, configs (and the extras' JSON), tokenizers.
MODEL_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".tiktoken", ".jinja")
CHUNK = 1 << 20  # bytes read at a time while hashing a file
PACKAGE_DIR = Path(__file__).resolve().parent  # the engine's sources: every .py below it

_memo: dict[tuple, str] = {}  # (device, inode, size, mtime_ns, ctime_ns) -> content digest
_memo_lock = threading.Lock()
_path_locks: dict[
    tuple, threading.Lock
] = {}  # (device, inode) -> one reader per file: concurrent first requests hash it once


def short(*parts: str) -> str:
    """A DIGEST_CHARS-hex digest of strings (NUL-separated, so ("ab", "c") differs from ("a", "bc"))."""
    return hashlib.blake2b("\0".join(parts).encode("utf-8"), digest_size=DIGEST_CHARS // 2).hexdigest()


def file_digest(path: Path) -> str:
    """Content hash of one file (blake2b, read in chunks). Tests patch this to count reads."""
    h = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def content_digest(path: Path) -> str:
    """`file_digest`, memoised by the file's stat: computed once per file version per process. Keyed by the
    file itself (device and inode, through symlinks), not its real path: resolving the path took a stat per
    component and was most of a request's fingerprint."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _memo_lock:
        if key in _memo:
            return _memo[key]
        lock = _path_locks.setdefault(key[:2], threading.Lock())
    with lock:
        with _memo_lock:
            if key in _memo:  # another thread hashed it while this one waited
                return _memo[key]
        digest = file_digest(Path(path))
        with _memo_lock:
            _memo[key] = digest
        return digest


def _walk(root: Path, suffixes: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(relative posix path, path) of the files under root with one of the suffixes, in sorted order.
    Hidden names (.git, .cache, dotfiles) and __pycache__ are skipped; symlinked folders are followed (the
    embedded target's specviz-parts/ links its siblings, read by `load_pair` under both names) unless
    they lead back to a folder above them."""
    found: list[tuple[str, Path]] = []

    def identity(path) -> tuple[int, int]:  # a folder itself (through symlinks): cheaper than its real path
        st = os.stat(path)
        return st.st_dev, st.st_ino

    def visit(folder: Path, rel: str, above: frozenset[tuple[int, int]]) -> None:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith(".") or entry.name == "__pycache__":
                continue
            if entry.is_dir():
                folder_id = identity(entry.path)
                if folder_id not in above:  # a symlink loop otherwise
                    visit(Path(entry.path), f"{rel}{entry.name}/", above | {folder_id})
            elif entry.is_file() and entry.name.endswith(suffixes):
                found.append((f"{rel}{entry.name}", Path(entry.path)))

    visit(Path(root), "", frozenset({identity(root)}))
    return found


def directory_fingerprint(root: Path, suffixes: tuple[str, ...] = MODEL_SUFFIXES) -> str | None:
    """Digest of every matching file's relative path and content; None when there is none or one is unreadable."""
    try:
        files = _walk(Path(root), suffixes)
        if not files:
            return None
        return short("dir", *(f"{rel}={content_digest(path)}" for rel, path in files))
    except OSError:
        return None


def hub_fingerprint(repo_id: str, cache_dir: str | Path | None = None) -> str | None:
    """The commit of the locally cached snapshot `from_pretrained` would load offline (refs/main), read
    through huggingface_hub's cache API without the network; None when the id is not cached here."""
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except (ValueError, OSError):
        return None
    if not isinstance(found, str):  # None (not cached) or the "known to be missing" sentinel
        return None
    snapshot = Path(found).parent  # .../models--org--name/snapshots/<commit>/config.json
    if snapshot.parent.name != "snapshots":
        return None
    return short("hub", repo_id, snapshot.name)


def weights_fingerprint(name: str | None) -> str | None:
    """What the engine would load for a model name, as a digest; None when it cannot be told (not allowed
    here, not found, a hub id not cached): such a request must not be served from or stored in a cache.

    "embedded" stands for the whole embedded directory (target, drafter, sorted drafter, Kangaroo adapter,
    VocabTrim ranking). A local directory covers the extras `load_pair` reads beside a target
    (vocab_ranking.json, specviz-parts/). "name[:N]" (a nested target) is a model of its own. The name
    passes `hub.check_source` first, so no path outside a public server's allowlist is looked at.
    """
    if not isinstance(name, str) or not name.strip():
        return None
    name, depth = name.strip(), None
    if nested := hub.NESTED.match(name):
        name, depth = nested.group(1), nested.group(2)
    try:
        source = hub.check_source(name, "model")
    except ValueError:
        return None
    if source == hub.EMBEDDED:
        base = directory_fingerprint(hub.EMBEDDED_DIR)
    elif Path(source).is_dir():
        base = directory_fingerprint(Path(source))
    else:
        base = hub_fingerprint(source)
    if base is None or depth is None:
        return base
    return short("nested", base, str(int(depth)))


def pair_fingerprint(target: str | None, draft: str | None) -> str | None:
    """Both models of a pair, named as `hub.pair_names` names them (an empty target is the embedded one; an empty
    draft, or "embedded" beside the embedded target, is the pair's own drafter); None when either cannot be told."""
    target, draft = hub.pair_names(target, draft)
    target_fp = weights_fingerprint(target)
    if target_fp is None:
        return None
    base = hub.NESTED.match(target)
    if not draft or (draft == hub.EMBEDDED and (base.group(1) if base else target) == hub.EMBEDDED):
        return short("pair", target_fp, "own")
    draft_fp = weights_fingerprint(draft)
    return None if draft_fp is None else short("pair", target_fp, draft_fp)


def engine_source_hash(root: Path | None = None) -> str:
    """Digest of the engine's package sources: every .py below `root` (default specviz/), by relative path
    and content. Walked at each call, so an edited engine (started again after a crash, or in development)
    gives new keys; each file version is read once per process."""
    root = Path(root) if root is not None else PACKAGE_DIR
    files = _walk(root, (".py",))
    return short("engine", *(f"{rel}={content_digest(path)}" for rel, path in files))


def loaded_pair_fingerprint(pair) -> str:
    """Which weights and tokenizer a pair holds, as one digest that every device holding the same weights in
    the same dtype computes alike: each tensor's name, shape and dtype and 16 values spread over it (target,
    drafter and every module in `extras`: adapter, sorted drafter), other extras as JSON, and the tokenizer's
    definition. No full pass over the weights, so a 7 B target costs a few hundred small reads. (`pair_fingerprint`
    digests the files a pair's names point at, before anything is loaded: the app's cache keys.)"""
    h = hashlib.sha256()
    parts = [("target", pair.target), ("draft", pair.draft)] + sorted(pair.extras.items(), key=lambda kv: kv[0])
    for name, obj in parts:
        h.update(name.encode())
        if isinstance(obj, torch.nn.Module):
            for key, tensor in obj.state_dict().items():
                h.update(f"{key}{tuple(tensor.shape)}{tensor.dtype}".encode())
                flat = tensor.detach().reshape(-1)
                n = flat.numel()
                if n:
                    k = min(16, n)
                    idx = torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)  # integers: same everywhere
                    h.update(flat[idx.to(flat.device)].float().cpu().numpy().tobytes())
        elif obj is not None:
            try:
                h.update(json.dumps(obj, sort_keys=True).encode())
            except TypeError:
                h.update(type(obj).__name__.encode())
    backend = getattr(pair.tokenizer, "backend_tokenizer", None)
    h.update(
        backend.to_str().encode()
        if backend is not None
        else json.dumps(sorted(pair.tokenizer.get_vocab().items())).encode()
    )
    return h.hexdigest()[:20]
