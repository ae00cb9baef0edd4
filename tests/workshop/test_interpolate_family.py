"""scripts/interpolate_family.py: every tensor of every sub-model mixed as (1 - lam) * A + lam * B, the rest
taken from B; the mix loads with from_pretrained, and families of other shapes are refused."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_model
from transformers import AutoModelForCausalLM

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "interpolate_family.py"


def load_script():
    spec = importlib.util.spec_from_file_location("interpolate_family", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def family(root: Path, seed: int, hidden: int = 32, shard: str | None = None) -> Path:
    """A target folder (sharded when `shard` is a size), and a link into it, as assets/models has them."""
    model = make_tiny_model("llama", 64, layers=2, hidden=hidden, seed=seed)
    model.save_pretrained(root / "target", **({"max_shard_size": shard} if shard else {}))
    (root / "note.txt").write_text(f"family {seed}")
    (root / "vocabtrim").mkdir()
    (root / "vocabtrim" / "ranking.json").write_text("[]")
    (root / "target" / "ranking.json").symlink_to("../vocabtrim/ranking.json")
    return root


def test_the_mix_is_the_weighted_mean_and_loads(tmp_path):
    a, b = family(tmp_path / "a", 1), family(tmp_path / "b", 2, shard="20KB")  # sharded otherwise than a
    assert len(list((b / "target").glob("*.safetensors"))) > 1 == len(list((a / "target").glob("*.safetensors")))
    mixed = load_script().interpolate(a, b, tmp_path / "mix", 0.25)
    assert mixed > 0 and (tmp_path / "mix" / "note.txt").read_text() == "family 2"
    assert (tmp_path / "mix" / "target" / "ranking.json").is_symlink()
    with pytest.raises(SystemExit, match="not empty"):
        load_script().interpolate(a, b, tmp_path / "mix", 0.25)
    first, second, mix = (AutoModelForCausalLM.from_pretrained(d / "target") for d in (a, b, tmp_path / "mix"))
    for (name, p), q, m in zip(first.named_parameters(), second.parameters(), mix.parameters()):
        torch.testing.assert_close(m, 0.75 * p + 0.25 * q, msg=name)


def test_families_of_other_shapes_are_refused(tmp_path):
    a, b = family(tmp_path / "a", 1), family(tmp_path / "b", 2, hidden=48)
    with pytest.raises(SystemExit, match="differ"):
        load_script().interpolate(a, b, tmp_path / "mix", 0.5)
    with pytest.raises(SystemExit, match="new folder"):
        load_script().interpolate(a, b, b, 0.5)
