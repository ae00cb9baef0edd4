"""Loading pairs: anatomy of every supported family, local paths, what may not be loaded, the model cache."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from conftest import ARCHS, make_tiny_model, make_tiny_pair

from specviz.models import hub
from specviz.models.anatomy import anatomy
from specviz.models.cache import ModelCache
from specviz.models.device import resolve_device, resolve_dtype
from specviz.models.hub import check_tokenizers_match
from specviz.models.pair import load_pair


@pytest.mark.parametrize("arch", ARCHS)
def test_anatomy_finds_every_part(arch):
    model = make_tiny_model(arch, 100, layers=3)
    parts = anatomy(model)
    assert len(parts.layers) == 3
    assert parts.lm_head is model.get_output_embeddings()
    assert parts.final_norm is not None
    ids = torch.tensor([[1, 2, 3]])
    assert parts.embed(ids).shape[-1] in (32, model.config.get_text_config().hidden_size)


def test_anatomy_refuses_an_unknown_layout():
    with pytest.raises(ValueError, match="unknown layout"):
        anatomy(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_local_paths_load_with_from_pretrained(arch, tiny_tokenizer, tmp_path):
    make_tiny_pair(arch, tiny_tokenizer, save_dir=tmp_path)
    pair = load_pair(str(tmp_path / "target"), str(tmp_path / "draft"), device="cpu", cache=ModelCache())
    assert pair.target.config.model_type == arch and pair.draft is not None
    assert pair.device == torch.device("cpu") and pair.dtype == torch.float32
    assert not pair.target.training and not any(p.requires_grad for p in pair.target.parameters())


def test_drafter_with_another_tokenizer_is_refused(tiny_tokenizer, tmp_path):
    from helpers import word_tokenizer

    make_tiny_pair("llama", tiny_tokenizer, save_dir=tmp_path / "a")
    other = word_tokenizer(20)
    make_tiny_pair("llama", other, save_dir=tmp_path / "b")
    with pytest.raises(ValueError, match="tokenizer does not match"):
        load_pair(str(tmp_path / "a" / "target"), str(tmp_path / "b" / "draft"), device="cpu", cache=ModelCache())
    check_tokenizers_match(tiny_tokenizer, tiny_tokenizer)


def test_non_causal_models_and_bad_references_get_clear_messages(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(tmp_path / "bert")
    cache = ModelCache()
    with pytest.raises(ValueError, match="not a causal language model"):
        load_pair(str(tmp_path / "bert"), cache=cache)
    with pytest.raises(ValueError, match="neither a local directory nor a Hugging Face id"):
        load_pair("../../etc/passwd", cache=cache)
    with pytest.raises(ValueError, match="give a Hugging Face id"):
        load_pair("", cache=cache)
    with pytest.raises(ValueError, match="hub is unreachable"):
        load_pair("nobody/no-such-model-here", cache=cache)
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu9")
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int3", torch.device("cpu"))


def test_allowlist_blocks_everything_not_listed(monkeypatch, tiny_tokenizer, tmp_path):
    make_tiny_pair("llama", tiny_tokenizer, save_dir=tmp_path)
    allowed = str(tmp_path / "target")
    monkeypatch.setenv(hub.ALLOWLIST_ENV, f"{allowed}, org/model")
    cache = ModelCache()
    assert load_pair(allowed, cache=cache).draft is None
    with pytest.raises(ValueError, match="not allowed on this server"):
        load_pair(allowed, str(tmp_path / "draft"), cache=cache)
    with pytest.raises(ValueError, match="not allowed on this server"):
        load_pair("someone/else", cache=cache)


def test_device_and_dtype_defaults():
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    assert resolve_device("cpu") == cpu
    assert resolve_device(None).type in ("cpu", "cuda", "mps")


def test_cache_loads_each_key_once_under_concurrency():
    cache = ModelCache(max_items=2, max_bytes=10**9)
    calls: list[str] = []

    def loader(name: str):
        def load():
            calls.append(name)
            time.sleep(0.05)
            return object(), 10

        return load

    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(cache.get(("a",), loader("a")))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == ["a"] and len({id(r) for r in results}) == 1
    held = results[0]
    cache.get(("b",), loader("b"))
    cache.get(("c",), loader("c"))  # evicts "a" (least recently used, count bound 2)
    assert cache.keys() == [("b",), ("c",)]
    assert held is not None  # a holder of an evicted model keeps a working reference


def test_cache_respects_the_memory_bound_and_failed_loads_are_not_cached():
    cache = ModelCache(max_items=10, max_bytes=100)
    cache.get(("x",), lambda: ("x", 60))
    cache.get(("y",), lambda: ("y", 60))
    assert cache.keys() == [("y",)]

    def broken():
        raise ValueError("could not load")

    with pytest.raises(ValueError):
        cache.get(("z",), broken)
    assert ("z",) not in cache.keys()
    assert cache.get(("z",), lambda: ("z", 1)) == "z"


def test_embedded_pair_ships_everything(embedded_pair):
    pair = embedded_pair
    assert pair.target_name == "embedded" and pair.draft is not None
    assert {"kangaroo_adapter", "sorted_drafter", "vocab_ranking", "target_meta"} <= set(pair.extras)
    assert anatomy(pair.target).family == "llama-like"
    assert pair.target.config.model_type == "llama"

    def body(model) -> int:  # parameters past the (tied) embedding: what a drafter adds per token
        return sum(p.numel() for p in model.parameters()) - model.get_input_embeddings().weight.numel()

    assert body(pair.draft) < body(pair.target) / 3  # the grafted drafter: 3 of the target's 12 layers' worth
    assert pair.draft.config.num_hidden_layers <= pair.target.config.num_hidden_layers // 4
    nested = load_pair("embedded", target_depth=pair.extras["target_meta"]["nested_targets"][0], device="cpu")
    assert nested.target_name.startswith("embedded[:") and nested.target_layers < pair.target_layers
    assert load_pair(f"embedded[:{nested.target_layers}]", device="cpu").target_layers == nested.target_layers
    with pytest.raises(ValueError, match="target_depth must be between"):
        load_pair("embedded", target_depth=99, device="cpu")


def test_embedded_target_writes_plausible_python(embedded_pair):
    from specviz.api import run

    text = run("autoregressive", embedded_pair, "def read_config(path):\n", max_new_tokens=48).text
    assert any(word in text for word in ("return", "self", "if ", "=", "(")), text
    assert len(set(text.split())) > 4, f"degenerate output: {text!r}"


@pytest.mark.slow  # torch.compile
def test_compiled_forwards_give_the_same_tokens(tiny_tokenizer, tmp_path):
    """The GPU path's optional torch.compile, run here with dynamo's eager backend (no C compiler needed)."""
    from specviz.api import run

    make_tiny_pair("llama", tiny_tokenizer, save_dir=tmp_path)
    plain = load_pair(str(tmp_path / "target"), str(tmp_path / "draft"), cache=ModelCache())
    fast = load_pair(str(tmp_path / "target"), str(tmp_path / "draft"), cache=ModelCache(), compile="eager")
    assert fast.target.forward is not plain.target.forward
    assert (
        run("draft_model", fast, "def f(x):", max_new_tokens=8).output_ids
        == run("draft_model", plain, "def f(x):", max_new_tokens=8).output_ids
    )


def test_gpu_choices_without_a_gpu(monkeypatch):
    """The CUDA path's decisions, exercised on CPU by faking what torch reports."""
    from specviz.engine.trace import Recorder

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype(None, torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype(None, torch.device("mps")) == torch.float16
    synced: list[int] = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: synced.append(1))
    rec = Recorder("cuda:0")
    rec.now()
    Recorder("cuda", sync=False).now()
    Recorder("cpu").now()
    assert synced == [1], "only a synchronizing CUDA recorder waits for the GPU"


@pytest.mark.parametrize("public", [{"SPACE_ID": "user/space"}, {"SPECVIZ_PUBLIC": "1"}])
def test_a_public_server_allows_only_the_curated_hub_models(monkeypatch, tmp_path, public):
    monkeypatch.delenv(hub.ALLOWLIST_ENV, raising=False)
    for name, value in public.items():
        monkeypatch.setenv(name, value)
    curated = hub.CURATED_PAIRS[0][1]
    assert hub.check_source(curated, "draft") == curated
    assert hub.check_source("embedded", "target") == "embedded"
    for probe in ("/etc", str(tmp_path), "nobody/anything", "x" * 5000, "../../etc/passwd"):
        with pytest.raises(ValueError, match="not allowed on this server") as err:
            hub.check_source(probe, "target")
        assert str(tmp_path) not in str(err.value) or probe == str(tmp_path)
    monkeypatch.setenv(hub.ALLOWLIST_ENV, "*")  # the operator lifts every limit
    assert hub.check_source(str(tmp_path), "target") == str(tmp_path)


def test_a_private_server_rejects_overlong_ids_clearly(monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("SPECVIZ_PUBLIC", raising=False)
    monkeypatch.delenv(hub.ALLOWLIST_ENV, raising=False)
    with pytest.raises(ValueError, match="too long"):
        hub.check_source("a/" + "x" * 5000, "target")


def test_cuda_loads_keep_cudnn_out_of_attention():
    """cuDNN attention builds a plan per new key length (seconds each on an H100, bf16): decoding on CUDA
    must not pick it, and a CPU load must leave the process's attention settings alone."""
    from specviz.models.pair import steady_attention

    was = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        steady_attention(torch.device("cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled()
        steady_attention(torch.device("cuda"))
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(was)
