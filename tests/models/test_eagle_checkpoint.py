"""EAGLE head checkpoints: a head saved in each published layout and loaded back drafts the same tokens with the
same logits; checkpoints written here as their publishers' code writes them load with the right layer ids and
the right reading of d2t (offsets); a head that does not fit its target fails with a message naming the field."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

from specviz.engine.eagle import EagleDrafter, EagleHead, gather_features
from specviz.models.eagle_checkpoint import detect_layout, load_head, save_head

VOCAB, LAYERS, HIDDEN = 64, 8, 32
IDS = torch.tensor([[5, 17, 3, 42, 8, 8, 21, 60, 1, 33, 12, 7]])


@pytest.fixture(scope="module")
def target():
    return make_tiny_model("llama", VOCAB, layers=LAYERS, hidden=HIDDEN, seed=1)


@pytest.fixture(scope="module")
def hidden_states(target):
    with torch.no_grad():
        return target(IDS, output_hidden_states=True).hidden_states


def random_head(target, version: int, layer_ids=None, draft_vocab: int | None = None, seed: int = 3) -> EagleHead:
    torch.manual_seed(seed)
    head = EagleHead.for_target(target.config, version=version, layer_ids=layer_ids, draft_vocab_size=draft_vocab)
    if draft_vocab:
        head.set_draft_vocab(torch.randperm(VOCAB, generator=torch.Generator().manual_seed(seed))[:draft_vocab])
    return head.eval()


def greedy_chain(target, head, hidden_states, k: int = 4) -> tuple[list[int], torch.Tensor]:
    """k greedy drafts after IDS (target ids), and the logits of each step: what the method will run."""
    d = EagleDrafter(head, target.get_input_embeddings(), target.get_output_embeddings())
    f = gather_features(hidden_states, head.config.layer_ids)  # the LOADED head's layer ids pick the features
    logits = [d.start(f[:, :-1], IDS[:, 1:])]
    ids = head.draft_ids()
    tokens = []
    for _ in range(k):
        best = int(logits[-1].argmax())
        tokens.append(best if ids is None else int(ids[best]))
        logits.append(d.step(tokens[-1]))
    return tokens, torch.cat(logits)


@pytest.mark.parametrize(
    "layout, version, draft_vocab",
    [("eagle3", 3, 24), ("speculators", 3, 24), ("eagle3", 3, None), ("speculators", 3, None), ("eagle1", 1, None)],
)
def test_saved_and_loaded_head_drafts_the_same(target, hidden_states, tmp_path, layout, version, draft_vocab):
    head = random_head(target, version, layer_ids=(1, 3, 6) if version == 3 else None, draft_vocab=draft_vocab)
    save_head(head, tmp_path, layout)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert detect_layout(cfg, _keys(tmp_path)) == layout
    loaded = load_head(tmp_path, target.config)
    assert loaded.config == head.config
    want_tokens, want_logits = greedy_chain(target, head, hidden_states)
    got_tokens, got_logits = greedy_chain(target, loaded, hidden_states)
    assert got_tokens == want_tokens
    torch.testing.assert_close(got_logits, want_logits)


def _keys(directory) -> list[str]:
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        return list(f.keys())


@pytest.mark.parametrize("layout", ["eagle3", "speculators"])
def test_layer_ids_shifted_by_one_change_the_drafts(target, hidden_states, tmp_path, layout):
    """An off-by-one in the ids (e.g. reading them as 'output of layer i' = hidden_states[i + 1]) would only lower
    acceptance; the round trip above compares logits, and here we see that a shift moves them far."""
    head = random_head(target, 3, layer_ids=(1, 3, 6), draft_vocab=24)
    save_head(head, tmp_path, layout)
    shifted = load_head(tmp_path, target.config, layer_ids=(2, 4, 7))
    _, want = greedy_chain(target, head, hidden_states, k=0)
    _, got = greedy_chain(target, shifted, hidden_states, k=0)
    assert float((got - want).abs().max()) > 1e-2


def eagle3_official_files(directory, h: int = HIDDEN, vocab: int = VOCAB, draft: int = 24, bin_file: bool = False):
    """A tiny EAGLE-3 head written as SafeAILab/EAGLE writes one: its Llama config (no layer ids), the
    state dict of cnets.Model without embed_tokens, d2t as offsets of the sorted draft ids."""
    config = {
        "architectures": ["LlamaForCausalLMEagle3"],
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": 2 * h,
        "max_position_embeddings": 512,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "pad_token_id": 0,
        "rms_norm_eps": 1e-05,
        "tie_word_embeddings": False,
        "torch_dtype": "float16",
        "transformers_version": "4.28.1",
        "use_cache": True,
        "vocab_size": vocab,
        "draft_vocab_size": draft,
    }
    g = torch.Generator().manual_seed(7)

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.2).to(torch.float16)

    used = sorted(torch.randperm(vocab, generator=g)[:draft].tolist())
    state = {
        "fc.weight": w(h, 3 * h),
        "midlayer.hidden_norm.weight": 1 + w(h),
        "midlayer.input_layernorm.weight": 1 + w(h),
        "midlayer.post_attention_layernorm.weight": 1 + w(h),
        "midlayer.self_attn.q_proj.weight": w(h, 2 * h),
        "midlayer.self_attn.k_proj.weight": w(h // 2, 2 * h),
        "midlayer.self_attn.v_proj.weight": w(h // 2, 2 * h),
        "midlayer.self_attn.o_proj.weight": w(h, h),
        "midlayer.mlp.gate_proj.weight": w(2 * h, h),
        "midlayer.mlp.up_proj.weight": w(2 * h, h),
        "midlayer.mlp.down_proj.weight": w(h, 2 * h),
        "norm.weight": 1 + w(h),
        "lm_head.weight": w(draft, h),
        "d2t": torch.tensor([used[i] - i for i in range(draft)]),
        "t2d": torch.tensor([i in used for i in range(vocab)]),
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if bin_file:
        torch.save(state, directory / "pytorch_model.bin")
    else:
        save_file(state, str(directory / "model.safetensors"))
    return config, state, used


def speculators_files(directory, ids=(1, 4, 6), **overrides):
    """A tiny head as speculators' Eagle3DraftModel.save_pretrained writes one: config with
    speculators_model_type / speculators_config / transformer_layer_config, weights under layers.0.*, and
    the embed_tokens copy it keeps."""
    config, state, used = eagle3_official_files(directory)
    layer = {k: config[k] for k in config if k not in ("architectures", "draft_vocab_size", "transformers_version")}
    spec = {
        "architectures": ["Eagle3Speculator"],
        "speculators_model_type": "eagle3",
        "speculators_version": "0.3.0",
        "speculators_config": {
            "algorithm": "eagle3",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
            "default_proposal_method": "greedy",
            "verifier": {"name_or_path": "tiny-llama", "architectures": ["LlamaForCausalLM"]},
        },
        "transformer_layer_config": layer,
        "draft_vocab_size": config["draft_vocab_size"],
        "norm_before_residual": False,
        "target_hidden_size": None,
        "eagle_aux_hidden_state_layer_ids": list(ids),
        **overrides,
    }
    renamed = {k.replace("midlayer.", "layers.0."): v for k, v in state.items()}
    renamed["embed_tokens.weight"] = torch.randn(VOCAB, HIDDEN).to(torch.float16)
    (directory / "config.json").write_text(json.dumps(spec))
    save_file(renamed, str(directory / "model.safetensors"))
    return state, used


@pytest.mark.parametrize("bin_file", [False, True])
def test_official_eagle3_files_load(target, tmp_path, bin_file):
    _, state, used = eagle3_official_files(tmp_path / "head", bin_file=bin_file)
    head = load_head(tmp_path / "head", target.config)
    assert head.config.layer_ids == (2, LAYERS // 2, LAYERS - 3)  # EAGLE-3's choice when the config names none
    assert head.config.draft_vocab_size == 24 and head.config.version == 3
    assert head.draft_ids().tolist() == used  # d2t read as offsets, not as target ids
    g = torch.randn(1, HIDDEN)
    logits = head.logits(g)
    with torch.no_grad():
        want = torch.nn.functional.linear(head.norm(g), state["lm_head.weight"].float())
    torch.testing.assert_close(logits, want)


def test_speculators_files_load(target, tmp_path):
    state, used = speculators_files(tmp_path)
    head = load_head(tmp_path, target.config)
    assert head.config.layer_ids == (1, 4, 6)
    assert head.draft_ids().tolist() == used
    torch.testing.assert_close(
        head.midlayer.self_attn.q_proj.weight, state["midlayer.self_attn.q_proj.weight"].float(), rtol=0, atol=0
    )


def test_layout_is_detected_by_content_not_file_name(target, tmp_path):
    """The same directory name and file names hold either layout; the config and keys decide."""
    speculators_files(tmp_path / "a")
    eagle3_official_files(tmp_path / "b")
    cfg_a = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert detect_layout(cfg_a, _keys(tmp_path / "a")) == "speculators"
    assert detect_layout(cfg_b, _keys(tmp_path / "b")) == "eagle3"
    with pytest.raises(ValueError, match="not an EAGLE head"):
        detect_layout({"model_type": "llama"}, ["model.layers.0.self_attn.q_proj.weight"])
    with pytest.raises(ValueError, match="speculators_model_type is 'mtp'"):
        detect_layout({"speculators_model_type": "mtp"}, [])


def test_a_head_that_does_not_fit_fails_clearly(target, tmp_path):
    eagle3_official_files(tmp_path / "head")
    wide = make_tiny_model("llama", VOCAB, layers=LAYERS, hidden=48)
    with pytest.raises(ValueError, match="fit its target: hidden_size is 32 in the head, 48 in the target"):
        load_head(tmp_path / "head", wide.config)
    other_vocab = make_tiny_model("llama", 80, layers=LAYERS, hidden=HIDDEN)
    with pytest.raises(ValueError, match="vocab_size is 64 in the head, 80 in the target"):
        load_head(tmp_path / "head", other_vocab.config)
    speculators_files(tmp_path / "spec", ids=(2, 4, 9))
    with pytest.raises(ValueError, match=r"eagle_aux_hidden_state_layer_ids \[2, 4, 9\] has \[9\] outside 0\.\.8"):
        load_head(tmp_path / "spec", target.config)
    speculators_files(tmp_path / "flag", norm_before_fc=True)
    with pytest.raises(ValueError, match="norm_before_fc is true"):
        load_head(tmp_path / "flag", target.config)
    with pytest.raises(ValueError, match="fc.weight has shape"):  # two ids for a 3-feature fc
        load_head(tmp_path / "head", target.config, layer_ids=(2, 4))


def rms(x: torch.Tensor, w: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def first_entry_reference(s: dict, version: int, emb: torch.Tensor, feature: torch.Tensor, lm_head) -> torch.Tensor:
    """The publishers' forward for a head's first entry, written from their code (cnets.py, cnets1.py) with plain
    tensors: with one key, attention returns o_proj of v (each query head reads its key-value head), whatever
    the rotary angle. An independent check of the head's wiring (concat order, norms, residual, fc)."""
    s = {k.replace("layers.0.", "midlayer."): v.float() for k, v in s.items()}
    lin = torch.nn.functional.linear
    if version == 3:
        x = lin(feature, s["fc.weight"])
        attn_in = torch.cat(
            (rms(emb, s["midlayer.input_layernorm.weight"]), rms(x, s["midlayer.hidden_norm.weight"])), -1
        )
    else:
        x = lin(torch.cat((emb, feature), -1), s["fc.weight"], s["fc.bias"])
        attn_in = x
    v = lin(attn_in, s["midlayer.self_attn.v_proj.weight"]).view(2, 8)  # 2 key-value heads of width 8
    a = lin(v.repeat_interleave(2, dim=0).reshape(-1), s["midlayer.self_attn.o_proj.weight"])  # 4 query heads
    h = x + a
    m = rms(h, s["midlayer.post_attention_layernorm.weight"])
    up = torch.nn.functional.silu(lin(m, s["midlayer.mlp.gate_proj.weight"])) * lin(m, s["midlayer.mlp.up_proj.weight"])
    out = h + lin(up, s["midlayer.mlp.down_proj.weight"])
    return lin(rms(out, s["norm.weight"]), s["lm_head.weight"]) if version == 3 else lm_head(out)


def eagle1_official_files(directory, h: int = HIDDEN):
    """A tiny EAGLE-1 head as SafeAILab/EAGLE's cnets1.Model saves one: layers.0.* without input_layernorm, a
    biased fc over cat(embedding, feature), and its embed_tokens copy."""
    g = torch.Generator().manual_seed(11)

    def w(*shape):
        return torch.randn(*shape, generator=g) * 0.2

    state = {
        "embed_tokens.weight": w(VOCAB, h),
        "fc.weight": w(h, 2 * h),
        "fc.bias": w(h),
        "layers.0.self_attn.q_proj.weight": w(h, h),
        "layers.0.self_attn.k_proj.weight": w(h // 2, h),
        "layers.0.self_attn.v_proj.weight": w(h // 2, h),
        "layers.0.self_attn.o_proj.weight": w(h, h),
        "layers.0.mlp.gate_proj.weight": w(2 * h, h),
        "layers.0.mlp.up_proj.weight": w(2 * h, h),
        "layers.0.mlp.down_proj.weight": w(h, 2 * h),
        "layers.0.post_attention_layernorm.weight": 1 + w(h),
    }
    config = {
        "architectures": ["LlamaForCausalLM"],
        "bias": True,
        "hidden_act": "silu",
        "hidden_size": h,
        "intermediate_size": 2 * h,
        "max_position_embeddings": 512,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 1,
        "rms_norm_eps": 1e-05,
        "vocab_size": VOCAB,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    torch.save(state, directory / "pytorch_model.bin")
    return state


@pytest.mark.parametrize("version", [3, 1])
def test_loaded_head_computes_what_the_publishers_code_computes(target, hidden_states, tmp_path, version):
    if version == 3:
        _, state, _ = eagle3_official_files(tmp_path)
    else:
        state = eagle1_official_files(tmp_path)
    head = load_head(tmp_path, target.config)
    d = EagleDrafter(head, target.get_input_embeddings(), target.get_output_embeddings())
    f = gather_features(hidden_states, head.config.layer_ids)
    got = d.start(f[:, :1], IDS[:, 1:2])[0]
    with torch.no_grad():
        emb = target.get_input_embeddings()(IDS[0, 1])
        want = first_entry_reference(state, version, emb, f[0, 0], target.get_output_embeddings())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
