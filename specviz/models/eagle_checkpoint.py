"""Load and save EAGLE heads in the layouts they are published in, for Llama-family targets.

Three layouts, told apart by their content (config fields and weight names), never by file name:

- `eagle3`: EAGLE-3's own (SafeAILab/EAGLE, eagle/model/cnets.py and ea_model.py): config.json is a Llama config
  of the head (`num_hidden_layers` 1, `vocab_size` = the target's, `draft_vocab_size`, optionally
  `target_hidden_size`), weights `fc.weight` (h, 3h), `midlayer.*` (q/k/v take 2h inputs; `hidden_norm`,
  `input_layernorm`, `post_attention_layernorm`, `mlp`), `norm.weight`, `lm_head.weight` (draft vocabulary rows),
  `d2t` (offsets: target id = draft id + d2t[draft id]) and `t2d` (bool over the target vocabulary). The
  embedding is not stored: the target's is used. EAGLE-3's code reads the target's hidden states at
  (2, L//2, L-3) and stores no layer ids; specviz writes `eagle_aux_hidden_state_layer_ids` (the field vLLM
  reads from a draft config) and falls back to (2, L//2, L-3) when a config has none.
- `speculators` (vllm-project/speculators, models/eagle3/config.py and core.py): config.json with
  `speculators_model_type` "eagle3", `speculators_config` (algorithm, proposal methods, verifier),
  `transformer_layer_config` (the head's Llama config; its `vocab_size` is the target's), `draft_vocab_size`,
  `eagle_aux_hidden_state_layer_ids`, `norm_before_residual`, `target_hidden_size`; weights as EAGLE-3's with
  `layers.0.*` for `midlayer.*` (an `embed_tokens.weight` copy of the target's may be present and is ignored).
- `eagle1`: EAGLE-1's own (eagle/model/cnets1.py): a Llama config with `bias` (fc's bias, default true),
  weights `fc.weight` (h, 2h), `fc.bias`, `layers.0.*` without `input_layernorm`; it reads the target's final
  (normed) hidden state, hidden_states[L], and drafts through the target's LM head.

Weights are `model.safetensors` (EAGLE's heads also ship `pytorch_model.bin`, read when no safetensors file is
there). Layer ids index transformers' `hidden_states` (0 = embeddings), as in `specviz.engine.eagle`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file, save_file

from specviz.engine.eagle import EagleConfig, EagleHead, default_layer_ids

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "pytorch_model.bin"
LAYOUTS = ("eagle3", "speculators", "eagle1")
SPECULATORS_FLAGS = ("norm_before_fc", "fc_norm", "norm_output")  # speculators variants this head does not build


@dataclass(frozen=True)
class TargetShape:
    """What a head must fit: the target's width, vocabulary and depth."""

    hidden_size: int  # h of the target's hidden states and embedding
    vocab_size: int  # rows of the target's embedding and LM head
    num_hidden_layers: int  # L: valid layer ids are 0..L

    @classmethod
    def of(cls, target_config) -> "TargetShape":
        text = target_config.get_text_config() if hasattr(target_config, "get_text_config") else target_config
        return cls(int(text.hidden_size), int(text.vocab_size), int(text.num_hidden_layers))


def detect_layout(config: dict, keys) -> str:
    """Which published layout a head is in, from its config fields and weight names."""
    keys = set(keys)
    if "speculators_model_type" in config:
        kind = config["speculators_model_type"]
        if kind != "eagle3":
            raise ValueError(f"speculators_model_type is {kind!r}: only 'eagle3' heads load here")
        return "speculators"
    if any(k.startswith("midlayer.") for k in keys):
        return "eagle3"
    if "fc.weight" in keys and any(k.startswith("layers.0.") for k in keys):
        return "eagle1"
    raise ValueError(
        "not an EAGLE head in a known layout: no speculators_model_type in its config, and its weights have "
        f"neither midlayer.* (EAGLE-3) nor fc and layers.0.* (EAGLE-1); weights: {sorted(keys)[:8]}"
    )


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / WEIGHTS).exists():
        return load_file(str(directory / WEIGHTS))
    if (directory / LEGACY_WEIGHTS).exists():
        return torch.load(directory / LEGACY_WEIGHTS, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no {WEIGHTS} or {LEGACY_WEIGHTS} in {directory}")


def _mismatch(field: str, head_value, target_value) -> ValueError:
    return ValueError(
        f"EAGLE head does not fit its target: {field} is {head_value} in the head, {target_value} in the target"
    )


def check_fits(config: EagleConfig, target: TargetShape) -> None:
    """A ValueError naming the field and both values when the head cannot run on this target."""
    if config.hidden_size != target.hidden_size:
        raise _mismatch("hidden_size", config.hidden_size, target.hidden_size)  # the target's embedding is shared
    if config.feature_width != target.hidden_size:
        raise _mismatch("target_hidden_size", config.feature_width, target.hidden_size)
    if config.vocab_size != target.vocab_size:
        raise _mismatch("vocab_size", config.vocab_size, target.vocab_size)
    bad = [i for i in config.layer_ids if not 0 <= i <= target.num_hidden_layers]
    if bad:
        raise ValueError(
            f"EAGLE head does not fit its target: eagle_aux_hidden_state_layer_ids {list(config.layer_ids)} has "
            f"{bad} outside 0..{target.num_hidden_layers} (the target's hidden_states: 0 = embeddings, "
            f"{target.num_hidden_layers} = its last layer)"
        )


def _layer_config(cfg: dict) -> dict:
    """The fields of a Llama config an EagleConfig takes (EAGLE's config.json, or speculators'
    transformer_layer_config)."""
    heads = int(cfg["num_attention_heads"])
    rope = cfg.get("rope_parameters") or {}
    return dict(
        hidden_size=int(cfg["hidden_size"]),
        intermediate_size=int(cfg["intermediate_size"]),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(cfg.get("head_dim") or int(cfg["hidden_size"]) // heads),
        vocab_size=int(cfg["vocab_size"]),
        rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0)) or 10000.0),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
        hidden_act=cfg.get("hidden_act", "silu"),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
    )


def _one_layer(cfg: dict, where: str) -> None:
    layers = int(cfg.get("num_hidden_layers", 1))
    if layers != 1:
        raise ValueError(f"{where} num_hidden_layers is {layers}: only one-layer EAGLE heads load here")
    scaling = cfg.get("rope_scaling")
    if scaling:
        raise ValueError(f"{where} rope_scaling is {scaling}: RoPE scaling in a head is not supported here")


def head_config(layout: str, cfg: dict, target: TargetShape, layer_ids=None) -> EagleConfig:
    """The EagleConfig a published config describes (layer ids: `layer_ids` if given, else the config's, else
    the layout's default for this target)."""
    if layout == "speculators":
        for flag in SPECULATORS_FLAGS:
            if cfg.get(flag):
                raise ValueError(f"speculators {flag} is true: this EAGLE-3 variant is not supported here")
        layer = cfg["transformer_layer_config"]
        _one_layer(layer, "transformer_layer_config")
        fields = _layer_config(layer)
        ids = layer_ids or cfg.get("eagle_aux_hidden_state_layer_ids") or default_layer_ids(target.num_hidden_layers)
        return EagleConfig(
            version=3,
            draft_vocab_size=int(cfg.get("draft_vocab_size") or fields["vocab_size"]),
            layer_ids=tuple(int(i) for i in ids),
            target_hidden_size=cfg.get("target_hidden_size"),
            norm_before_residual=bool(cfg.get("norm_before_residual", False)),
            **fields,
        )
    _one_layer(cfg, CONFIG)
    fields = _layer_config(cfg)
    if layout == "eagle3":
        ids = layer_ids or cfg.get("eagle_aux_hidden_state_layer_ids") or default_layer_ids(target.num_hidden_layers)
        return EagleConfig(
            version=3,
            draft_vocab_size=int(cfg.get("draft_vocab_size") or fields["vocab_size"]),
            layer_ids=tuple(int(i) for i in ids),
            target_hidden_size=cfg.get("target_hidden_size"),
            **fields,
        )
    ids = layer_ids or (target.num_hidden_layers,)  # EAGLE-1: the final, normed hidden state
    return EagleConfig(
        version=1,
        draft_vocab_size=fields["vocab_size"],
        layer_ids=tuple(ids),
        fc_bias=bool(cfg.get("bias", True)),
        **fields,
    )


def _to_head_keys(layout: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if layout == "eagle3":
        return dict(weights)
    return {k.replace("layers.0.", "midlayer.", 1) if k.startswith("layers.0.") else k: v for k, v in weights.items()}


def load_head(
    directory: str | Path,
    target_config,
    layer_ids=None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> EagleHead:
    """A published (or specviz-saved) head, checked against its target. `layer_ids` overrides the stored ids."""
    directory = Path(directory)
    cfg = json.loads((directory / CONFIG).read_text())
    weights = read_weights(directory)
    layout = detect_layout(cfg, weights)
    target = TargetShape.of(target_config)
    config = head_config(layout, cfg, target, layer_ids)
    check_fits(config, target)
    state = _to_head_keys(layout, weights)
    embed = state.pop("embed_tokens.weight", None)
    if embed is not None and tuple(embed.shape) != (target.vocab_size, target.hidden_size):
        raise _mismatch("embed_tokens shape", tuple(embed.shape), (target.vocab_size, target.hidden_size))
    head = EagleHead(config)
    expected = head.trainable_state()
    if config.version == 3 and config.draft_vocab_size == config.vocab_size:
        for name in ("d2t", "t2d"):  # a full-vocabulary head may omit its identity map
            state.setdefault(name, expected[name])
    for name, tensor in state.items():
        if name in expected and tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{layout} head in {directory}: {name} has shape {tuple(tensor.shape)}, its config implies "
                f"{tuple(expected[name].shape)} (layer ids {list(config.layer_ids)}, "
                f"draft_vocab_size {config.draft_vocab_size})"
            )
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{layout} head in {directory}: weights missing {missing}, unexpected {unexpected}")
    head.load_state_dict(state, strict=False)  # rotary tables are rebuilt, not stored
    head.check_vocab_map()
    return head.to(device=device, dtype=dtype).eval()


def _llama_fields(config: EagleConfig) -> dict:
    return {
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_attention_heads": config.num_attention_heads,
        "num_key_value_heads": config.num_key_value_heads,
        "head_dim": config.head_dim,
        "num_hidden_layers": 1,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": None,
        "attention_bias": config.attention_bias,
        "mlp_bias": config.mlp_bias,
        "vocab_size": config.vocab_size,
        "tie_word_embeddings": False,
        "model_type": "llama",
    }


def _dtype_name(state: dict[str, torch.Tensor]) -> str:
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    return str(floats[0]).removeprefix("torch.") if floats else "float32"


def published_config(
    head: EagleHead, layout: str, dtype_name: str, verifier: str | None = None, verifier_arch: str = "LlamaForCausalLM"
) -> dict:
    """config.json of `head` in `layout`, with the publishers' field names."""
    config = head.config
    common = {"torch_dtype": dtype_name, "transformers_version": transformers.__version__}
    if layout == "eagle1":
        if config.version != 1:
            raise ValueError(f"the eagle1 layout holds EAGLE-1 heads, this head is EAGLE-{config.version}")
        return {"architectures": ["LlamaForCausalLM"], **_llama_fields(config), "bias": config.fc_bias, **common}
    if config.version != 3:
        raise ValueError(f"the {layout} layout holds EAGLE-3 heads, this head is EAGLE-{config.version}")
    if layout == "eagle3":
        return {
            "architectures": ["LlamaForCausalLMEagle3"],
            **_llama_fields(config),
            "draft_vocab_size": config.draft_vocab_size,
            **({"target_hidden_size": config.target_hidden_size} if config.target_hidden_size else {}),
            "eagle_aux_hidden_state_layer_ids": list(config.layer_ids),
            **common,
        }
    if layout == "speculators":
        return {
            "architectures": ["Eagle3Speculator"],
            "speculators_model_type": "eagle3",
            "speculators_config": {
                "algorithm": "eagle3",
                "proposal_methods": [
                    {
                        "proposal_type": "greedy",
                        "speculative_tokens": 3,
                        "verifier_accept_k": 1,
                        "accept_tolerance": 0.0,
                    }
                ],
                "default_proposal_method": "greedy",
                "verifier": {"name_or_path": verifier, "architectures": [verifier_arch]},
            },
            "transformer_layer_config": {**_llama_fields(config), "torch_dtype": dtype_name},
            "draft_vocab_size": config.draft_vocab_size,
            "norm_before_residual": config.norm_before_residual,
            "target_hidden_size": config.target_hidden_size,
            "eagle_aux_hidden_state_layer_ids": list(config.layer_ids),
            "norm_before_fc": False,
            "fc_norm": False,
            "norm_output": False,
            "embed_requires_grad": False,
            **common,
        }
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def published_weights(head: EagleHead, layout: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The head's weights under `layout`'s key names (the embedding never included)."""
    state = {}
    for name, tensor in head.trainable_state().items():
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        if layout in ("speculators", "eagle1") and name.startswith("midlayer."):
            name = "layers.0." + name.removeprefix("midlayer.")
        state[name] = tensor.detach().contiguous().cpu()
    return state


def save_head(
    head: EagleHead,
    directory: str | Path,
    layout: str = "eagle3",
    dtype: torch.dtype | None = None,
    verifier: str | None = None,
) -> Path:
    """Write config.json and model.safetensors of `head` in `layout` (weights in `dtype`, else as they are)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = published_weights(head, layout, dtype)
    config = published_config(head, layout, _dtype_name(state), verifier)
    (directory / CONFIG).write_text(json.dumps(config, indent=2))
    save_file(state, str(directory / WEIGHTS))
    return directory
