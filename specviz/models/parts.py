"""Trained parts beside a target (a Kangaroo adapter, a sorted drafter): where they live and how they load.

Training them is the workshop's (`specviz.workshop.parts_training`); loading needs none of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from specviz.engine.adapter import KangarooAdapter
from specviz.models.hub import load_causal_lm

ADAPTER_DIR = "kangaroo-adapter"
SORTED_DIR = "sorted-drafter"
CHECKPOINT = "checkpoint.pt"
REPORT = "report.json"


def fingerprint(config) -> dict:
    """What a part must match in its target (checked at load)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "model_type": text.model_type,
        "hidden_size": text.hidden_size,
        "num_hidden_layers": text.num_hidden_layers,
        "vocab_size": text.vocab_size,
    }


def load_parts(directory: str | Path, target, device: torch.device, dtype: torch.dtype) -> dict:
    """The parts found in `directory` as pair extras, each checked against `target`."""
    root = Path(directory)
    extras: dict = {}
    want = fingerprint(target.config)
    for name in (ADAPTER_DIR, SORTED_DIR):
        report = root / name / REPORT
        if not report.exists():
            continue
        made_for = json.loads(report.read_text()).get("fingerprint")
        if made_for != want:
            raise ValueError(f"the {name} in {root} was trained for another target ({made_for}); this target is {want}")
        if name == ADAPTER_DIR:
            extras["kangaroo_adapter"] = KangarooAdapter.load(root / name, device=device, dtype=dtype)
        else:
            extras["sorted_drafter"] = load_causal_lm(str(root / name), device, dtype)
    return extras
