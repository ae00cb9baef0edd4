"""The training text (the interpreter's standard library and pydoc topics) and the byte-level BPE tokenizer."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import numpy as np
from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from specviz.workshop.config import EOS, TrainConfig


# ----------------------------------------------------------------------------- corpus
def corpus_files(cfg: TrainConfig) -> list[Path]:
    """Standard-library sources (no tests, no site-packages) and the pydoc topics, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__", "dist-packages"}
    files = [
        p
        for p in sorted(root.rglob("*.py"))
        if not (set(p.relative_to(root).parts) & skip) and p.stat().st_size <= cfg.max_file_bytes
    ]
    topics = root / "pydoc_data" / "topics.py"
    if topics.exists() and topics not in files:
        files.append(topics)
    if cfg.quick:
        files = files[::25]
    return files


def pydoc_topics_text(path: Path) -> str:
    """pydoc_data/topics.py holds the language reference as a dict of strings: train on the prose."""
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # stdlib file, trusted
    return "\n\n".join(namespace.get("topics", {}).values())


def stdlib_texts(cfg: TrainConfig):
    """(path, text) of every readable corpus file (pydoc topics as their prose)."""
    for path in corpus_files(cfg):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.name == "topics.py" and path.parent.name == "pydoc_data":
            text = pydoc_topics_text(path)
        yield path, text


def read_corpus(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts), split by a hash of the file name so the split is stable."""
    train, heldout = [], []
    for path, text in stdlib_texts(cfg):
        bucket = int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % 1000
        (heldout if bucket < cfg.heldout_share * 1000 else train).append(text)
    return train, heldout


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], cfg: TrainConfig):
    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(
        texts, vocab_size=cfg.vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
    tok.model_max_length = 2048
    return tok


def encode(tok, texts: list[str]) -> np.ndarray:
    eos = tok.eos_token_id
    ids: list[int] = []
    for batch_start in range(0, len(texts), 64):
        for row in tok(texts[batch_start : batch_start + 64], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    return np.asarray(ids, dtype=np.int32)
