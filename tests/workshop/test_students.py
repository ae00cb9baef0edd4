"""specviz.workshop.students end to end on a tiny random Llama target and a tiny corpus (--quick): the staging dir
loads like assets/models (by path, with the Kangaroo adapter, sorted drafter and VocabTrim ranking found,
and as the embedded models), the report names the target's fingerprint, and every way a run can end
early (--max-steps, SIGTERM, a deleted output) resumes from ckpt.pt instead of starting over."""

from __future__ import annotations

import inspect
import json
import signal

import numpy as np
import pytest
import torch
from conftest import make_tiny_model

from specviz.api import run
from specviz.models import hub
from specviz.models.pair import load_pair
from specviz.workshop import students
from specviz.workshop.text import encode

pytestmark = pytest.mark.slow  # training

TINY_META = {"exits": [1, 2, 4], "nested_targets": [2, 4], "kangaroo_exit": 1}


def save_target(model, tok, directory) -> None:
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    (directory / "specviz.json").write_text(json.dumps(TINY_META))


@pytest.fixture(scope="module")
def inputs(tiny_tokenizer, tmp_path_factory):
    """A 4-layer target with exits 1, 2 and a corpus dir as specviz.workshop.corpus writes it (stdlib sources)."""
    import csv
    import hashlib
    import json as json_module
    import string
    import textwrap

    root = tmp_path_factory.mktemp("students")
    save_target(
        make_tiny_model("llama", len(tiny_tokenizer), layers=4, hidden=32, seed=3), tiny_tokenizer, root / "target"
    )
    corpus = root / "corpus"
    corpus.mkdir()
    splits = {"train": [inspect, json_module.decoder, textwrap, string], "heldout": [csv], "heldout_stdlib": [string]}
    tokens = {}
    for split, modules in splits.items():
        ids = encode(tiny_tokenizer, [inspect.getsource(m) for m in modules]).astype(np.uint16)
        np.save(corpus / f"{split}.npy", ids)
        tokens[split] = len(ids)
    vocab_sha = hashlib.sha1(json.dumps(tiny_tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()
    (corpus / "manifest.json").write_text(json.dumps({"tokens": tokens, "tokenizer_sha1": vocab_sha, "packages": []}))
    return root


def args(root, out, *extra: str) -> list[str]:
    return [
        "--target",
        str(root / "target"),
        "--corpus",
        str(root / "corpus"),
        "--out",
        str(out),
        "--quick",
        "--threads",
        "1",
        *extra,
    ]


@pytest.fixture(scope="module")
def made(inputs):
    """A quick run stopped after 3 steps by --max-steps, then the same command again to the end."""
    out = inputs / "staging"
    first, second = [], []
    assert students.main(args(inputs, out, "--max-steps", "3"), log=first.append) is None
    ckpt = torch.load(out / students.CKPT, weights_only=False)
    assert (ckpt["progress"]["phase"], ckpt["progress"]["step"]) == ("distill", 3)
    assert not (out / students.REPORT).exists()
    report = students.main(args(inputs, out), log=second.append)
    return out, first, second, report


def test_a_stopped_run_resumes_and_finishes(made):
    _, first, second, report = made
    cfg = students.StudentsConfig(target="", corpus="", out="").quickened()
    assert any(line.startswith("stopped (--max-steps 3)") for line in first)
    assert any("resumed" in line and "phase distill step 3" in line for line in second)
    steps = [line.split()[:3] for line in second if line.startswith(("distill step", "refine step"))]
    assert steps[0] == ["distill", "step", f"4/{cfg.distill_steps}"], steps  # continued, not restarted
    assert steps[-1] == ["refine", "step", f"{cfg.refine_steps}/{cfg.refine_steps}"]
    assert report["steps"] == {"distill": cfg.distill_steps, "refine": cfg.refine_steps}
    assert report["pool"]["fills"] >= 1 and report["pool"]["generated_tokens"] >= cfg.refine_new  # on-policy rows made
    assert report["warm_start"]["drafter"].startswith(students.FRESH)  # the shipped drafter has another shape


def test_the_report_names_the_target(made, inputs):
    out = made[0]
    saved = json.loads((out / students.REPORT).read_text())
    assert saved["target"]["sha1"] == students.target_fingerprint(inputs / "target")["sha1"]
    assert saved["target"]["staged_sha1"] == students.target_fingerprint(out / "target")["sha1"]
    assert not students.stale(out, inputs / "target")
    for length in ("seq_16", "seq_32"):
        metrics = saved["metrics"][length]
        assert metrics["agree/target"] == 1.0
        assert {"agree/drafter", "agree/kangaroo", "agree/sorted_k3", "loss/target_exit2"} <= set(metrics)
    assert set(saved["params"]) == {"target", "drafter", "sorted drafter", "Kangaroo adapter"}


def test_the_staging_dir_loads_like_assets_models(made, monkeypatch):
    out, _, _, _ = made
    for name in ("target", "drafter", "sorted-drafter"):
        assert json.loads((out / name / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((out / "sorted-drafter" / "specviz.json").read_text())["exits"] == [1, 2, 3]
    assert json.loads((out / "target" / "specviz.json").read_text()) == TINY_META
    pair = load_pair(str(out / "target"), str(out / "drafter"), device="cpu", cache=None)
    assert {"kangaroo_adapter", "sorted_drafter", "vocab_ranking"} <= set(pair.extras)
    assert pair.extras["kangaroo_adapter"].config.exit_layer == 1
    reference = run("autoregressive", pair, "def f(x):", max_new_tokens=12).output_ids
    for method in ("draft_model", "kangaroo", "sorted"):
        assert run(method, pair, "def f(x):", max_new_tokens=12).output_ids == reference, method
    monkeypatch.setattr(hub, "EMBEDDED_DIR", out)  # SPECVIZ_EMBEDDED_DIR=out: a drop-in for assets/models
    embedded = load_pair("embedded", device="cpu", cache=None)
    assert {"kangaroo_adapter", "sorted_drafter", "vocab_ranking", "target_meta"} <= set(embedded.extras)


def test_a_lease_run_ends_training_at_its_deadline_and_finishes(inputs, tmp_path):
    """--finish-at-deadline (a GPU lease ends whatever still runs): the steps run are the run, and it saves."""
    out = tmp_path / "lease"
    assert students.main(args(inputs, out, "--max-steps", "3"), log=[].append) is None
    said = []
    # a minute's budget less a minute kept for finishing: training is out of time at once (steps take milliseconds)
    report = students.main(
        args(inputs, out, "--finish-at-deadline", "--budget-minutes", "1", "--finish-minutes", "1"), log=said.append
    )
    assert report is not None and report["steps"] == {"distill": 3, "refine": 0}
    assert any(line.startswith("deadline: training ends at distill step 3") for line in said), said
    assert not any(line.startswith(("distill step", "refine step")) for line in said)
    assert json.loads((out / students.REPORT).read_text())["steps"] == {"distill": 3, "refine": 0}
    assert (out / "drafter" / "config.json").is_file() and (out / "kangaroo-adapter" / "adapter_config.json").is_file()


def test_a_deleted_output_is_rewritten_without_training(made, inputs):
    import shutil

    out = made[0]
    before = (out / "drafter" / "model.safetensors").read_bytes()
    shutil.rmtree(out / "drafter")
    said = []
    assert students.main(args(inputs, out), log=said.append) is not None
    assert any("resumed" in line and "phase done" in line for line in said)
    assert not any(line.startswith(("distill step", "refine step")) for line in said)
    assert (out / "drafter" / "model.safetensors").read_bytes() == before
    said.clear()
    students.main(args(inputs, out), log=said.append)
    assert any(line.startswith("already done") for line in said)


def test_sigterm_saves_and_stops_and_a_changed_target_is_refused(made, inputs, tiny_tokenizer, monkeypatch, tmp_path):
    calls = {"n": 0}
    original = students.soft_ce

    def interrupted(*a):
        calls["n"] += 1
        if calls["n"] == 7:  # in distill step 2 (five losses a step: drafter, 3 sorted exits, adapter)
            signal.raise_signal(signal.SIGTERM)
        return original(*a)

    monkeypatch.setattr(students, "soft_ce", interrupted)
    handler = signal.getsignal(signal.SIGTERM)
    said = []
    out = tmp_path / "staging"
    assert students.main(args(inputs, out, "--warm-from", str(made[0])), log=said.append) is None
    assert signal.getsignal(signal.SIGTERM) == handler
    assert any(line.startswith(f"stopped (signal {int(signal.SIGTERM)})") for line in said)
    assert any(
        line == f"students: drafter from {made[0] / 'drafter'}, sorted from {made[0] / 'sorted-drafter'}, "
        f"adapter from {made[0] / 'kangaroo-adapter'}"
        for line in said
    ), said[:6]
    assert torch.load(out / students.CKPT, weights_only=False)["progress"]["step"] == 2  # the step in flight completed

    other = tmp_path / "other"
    save_target(
        make_tiny_model("llama", len(tiny_tokenizer), layers=4, hidden=32, seed=4), tiny_tokenizer, other / "target"
    )
    assert students.stale(made[0], other / "target")
    with pytest.raises(SystemExit, match="another target"):
        students.main(
            ["--target", str(other / "target"), "--corpus", str(inputs / "corpus"), "--out", str(out), "--quick"]
        )


def test_a_drafter_one_layer_past_the_kangaroo_exit_starts_as_the_adapters_draft(tiny_tokenizer):
    """students.graft_adapter: target layers [0, l), the adapter as layer l (MLP adding nothing), the target's
    final norm and head: a plain causal LM whose logits are Kangaroo's draft logits."""
    from dataclasses import replace

    from specviz.engine.adapter import AdapterConfig, KangarooAdapter
    from specviz.workshop.kit import adapter_logits

    target = make_tiny_model("llama", len(tiny_tokenizer), layers=4, hidden=32, seed=3)
    grouped = KangarooAdapter.for_target(target.config, 1)  # all heads keep K/V; this target groups them
    assert students.warm_llama(target, tiny_tokenizer, 2, None, log=lambda _m: None, adapter=grouped)[1] == (
        students.FRESH + "the target's first layers"
    )
    adapter = KangarooAdapter(replace(grouped.config, num_key_value_heads=target.config.num_key_value_heads))
    assert isinstance(adapter.config, AdapterConfig)
    torch.manual_seed(5)
    for p in adapter.parameters():  # not the identity start: a trained-looking adapter
        p.data.normal_(0, 0.2)
    model, start = students.warm_llama(target, tiny_tokenizer, 2, None, log=lambda _m: None, adapter=adapter)
    assert start == students.FRESH + "the target's first layer and the Kangaroo adapter"
    x = torch.randint(1, len(tiny_tokenizer), (2, 12))
    with torch.no_grad():
        hidden = target(x, output_hidden_states=True).hidden_states[1]
        torch.testing.assert_close(model(x).logits, adapter_logits(adapter, target, hidden), rtol=1e-4, atol=1e-4)
    plain, start = students.warm_llama(target, tiny_tokenizer, 3, None, log=lambda _m: None, adapter=adapter)
    assert start == students.FRESH + "the target's first layers"  # another depth: no graft
