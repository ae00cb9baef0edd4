"""Shared fixtures: tiny random-weight models of several architectures built from configs, a small
byte-level BPE tokenizer trained in a second, and the committed embedded pair. Nothing touches the network."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pytest  # noqa: E402
import torch  # noqa: E402

from specviz.models.pair import ModelPair

# Tiny models run fastest on one thread, and two busy threads per core (a training run beside the tests)
# make tiny ops 20x slower. The app and bench set their own thread counts.
torch.set_num_threads(1)


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: browser, server, training, Ray and chi-square tests; "
        "`python -m pytest -m 'not slow' tests` leaves them out (CI runs everything)",
    )


ARCHS = ["llama", "qwen2", "mistral", "gpt2", "gpt_neox", "opt"]


def tiny_config(arch: str, vocab: int, layers: int, hidden: int):
    """A few-thousand-parameter config of each family (same positions limit for all: 512)."""
    import transformers as tf

    common = dict(vocab_size=vocab, eos_token_id=0, bos_token_id=0, pad_token_id=0)
    if arch in ("llama", "qwen2", "qwen3", "mistral"):
        cls = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config, "mistral": tf.MistralConfig}[
            arch
        ]
        return cls(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            tie_word_embeddings=False,
            **common,
        )
    if arch == "gpt2":
        return tf.GPT2Config(n_embd=hidden, n_layer=layers, n_head=4, n_positions=512, **common)
    if arch == "gpt_neox":
        return tf.GPTNeoXConfig(
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            **common,
        )
    if arch == "opt":
        return tf.OPTConfig(
            hidden_size=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            max_position_embeddings=512,
            word_embed_proj_dim=hidden,
            **common,
        )
    raise ValueError(arch)


def make_tiny_model(arch: str, vocab: int, *, layers: int = 2, hidden: int = 32, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab, layers, hidden))
    return model.eval().requires_grad_(False)


def make_tiny_pair(
    arch: str, tokenizer, *, target_layers: int = 2, draft_layers: int = 1, seed: int = 0, save_dir: Path | None = None
) -> ModelPair:
    """Random target + drafter of one family sharing `tokenizer`; saved in HF format if `save_dir`."""
    vocab = len(tokenizer)
    target = make_tiny_model(arch, vocab, layers=target_layers, seed=seed)
    draft = make_tiny_model(arch, vocab, layers=draft_layers, seed=seed + 100)
    if save_dir is not None:
        for name, model in (("target", target), ("draft", draft)):
            model.save_pretrained(Path(save_dir) / name)
            tokenizer.save_pretrained(Path(save_dir) / name)
    return ModelPair(
        target=target,
        tokenizer=tokenizer,
        draft=draft,
        target_name=f"tiny-{arch}",
        draft_name=f"tiny-{arch}-draft",
        device=torch.device("cpu"),
        dtype=torch.float32,
        extras={},
    )


def build_tiny_tokenizer():
    """A 320-id byte-level BPE trained on a few standard-library files (deterministic, ~1 s)."""
    import inspect
    import json as json_module
    import textwrap

    from specviz.workshop.config import TrainConfig
    from specviz.workshop.text import train_tokenizer

    texts = [inspect.getsource(m) for m in (json_module, textwrap)]
    return train_tokenizer(texts, TrainConfig(vocab_size=320))


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tiny_tokenizer()


@pytest.fixture(scope="session")
def embedded_pair():
    from specviz.models.pair import load_pair

    return load_pair("embedded", device="cpu")


@pytest.fixture(scope="session")
def saved_pairs(tiny_tokenizer, tmp_path_factory):
    """Saved on disk for loading by path: a tiny llama pair (ok/), one with another tokenizer (other/),
    and an encoder-only BERT (bert/) - the bad model references of the validation tests."""
    from helpers import word_tokenizer
    from transformers import BertConfig, BertModel

    root = tmp_path_factory.mktemp("pairs")
    make_tiny_pair("llama", tiny_tokenizer, save_dir=root / "ok")
    make_tiny_pair("llama", word_tokenizer(30), save_dir=root / "other")
    BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(root / "bert")
    return root


@pytest.fixture(scope="module")
def server():
    """The real `python app.py` for a module of browser tests."""
    from appserver import running_app

    with running_app({"SPECVIZ_CONCURRENCY": "4"}) as app:
        yield app
