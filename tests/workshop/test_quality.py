"""specviz.workshop.quality: the metric definitions on hand-made inputs, and the CLI end to end on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import make_tiny_pair

from specviz.workshop import quality
from specviz.workshop.quality import cut_to_lines, parses, pooled_share, repair, repeated_ngram_share, repeated_ngrams


# ----------------------------------------------------------------------------- repeated 4-gram share
def test_repeated_ngrams_counts_repeats_of_earlier_start_positions():
    # 4-grams 1234 2341 3412 4123 1234: only the last repeats an earlier one
    assert repeated_ngrams([1, 2, 3, 4, 1, 2, 3, 4]) == (1, 5)
    assert repeated_ngram_share([1, 2, 3, 4, 1, 2, 3, 4]) == pytest.approx(0.2)
    assert repeated_ngrams([7] * 10) == (6, 7)  # overlapping repeats count
    assert repeated_ngram_share(list(range(20))) == 0.0
    assert repeated_ngrams([1, 2, 3]) == (0, 0) and repeated_ngram_share([1, 2, 3]) == 0.0
    assert repeated_ngrams([5, 6, 5, 6, 5], n=2) == (2, 4)


def test_pooled_share_counts_repeats_within_one_continuation_only():
    # the second continuation's 1234 is new to it: 1 repeat of 6 4-grams, not 2
    assert pooled_share([[1, 2, 3, 4, 1, 2, 3, 4], [1, 2, 3, 4]]) == pytest.approx(1 / 6)
    assert pooled_share([[1, 2], []]) == 0.0


# ----------------------------------------------------------------------------- parse rule
def test_cut_to_lines_drops_the_partial_last_line_unless_complete():
    assert cut_to_lines("a = 1\nb = (") == "a = 1\n"
    assert cut_to_lines("no newline") == ""
    assert cut_to_lines("a = 1\nb = 2", complete=True) == "a = 1\nb = 2\n"


def test_repair_closes_what_the_cut_left_open():
    assert repair("def f():\n") == "def f():\n    pass\n"
    assert (
        repair("class A:\n    def f(self,\n          x):  # c\n")
        == "class A:\n    def f(self,\n          x):  # c\n        pass\n"
    )
    assert repair('def f():\n    """Doc\n    more\n') == 'def f():\n    """Doc\n    more\n"""'
    assert repair("x = foo(1, [2,  # c\n") == "x = foo(1, [2,  # c\n])\n"
    assert repair("x = 1\n") == "x = 1\n"
    applied: list[str] = []
    assert quality.parses("    x = (1,\n", "    2,\n    '''doc\n", applied=applied)
    assert applied == ["wrapped", "string", "brackets"]


def test_parses_an_open_block_after_the_rule_and_not_garbage():
    assert parses("import os\n", "def f():\n    return 1\n\ndef g():\n    ")  # open def g(): gets a pass
    assert parses('def f(n):\n    """Doc\n', "    more doc\n    and")  # dangling docstring closed
    assert parses("    def __repr__(self):\n        return", " 1\n")  # indented prompt wrapped in if True:
    assert not parses("def f(:\n", "    return\n")
    assert not parses("def f():\n", "    return )(\n")
    assert not parses("x = 1\n", "def f():\n\ndef g():\n    pass\n")  # an empty body the model wrote


def test_parses_cuts_the_partial_line():
    assert parses("x = 1\n", "y = 2\nz = 3 +")  # the broken partial line is cut away
    assert not parses("x = 1\n", "y = 2\nz = 3 +", complete=True)  # ...but kept when the model ended the file
    assert not parses("def f():\n    return", " self.x + self.y")  # nothing of the continuation survives


# ----------------------------------------------------------------------------- held-out and Spec-Bench helpers
def test_bits_per_byte_and_windows():
    assert quality.bits_per_byte(math.log(2), tokens=10, n_bytes=10) == pytest.approx(1.0)
    ids = np.arange(100)
    windows = quality.window_targets(ids, windows=3, seq_len=8)
    assert [w.tolist()[0] for w in windows] == [1, 46, 91] and all(len(w) == 8 for w in windows)


def test_first_per_category_keeps_file_order_and_skips_what_does_not_fit():
    prompts = [{"id": str(i), "category": c} for i, c in enumerate("aabab")]
    chosen = quality.first_per_category(prompts, 2, lambda p: p["id"] != "1")
    assert [p["id"] for p in chosen] == ["0", "2", "3", "4"]


# ----------------------------------------------------------------------------- CLI end to end
@pytest.fixture(scope="module")
def saved_pair(tiny_tokenizer, tmp_path_factory):
    root = tmp_path_factory.mktemp("quality-pair")
    make_tiny_pair("llama", tiny_tokenizer, save_dir=root)
    return root


def test_cli_writes_every_figure_with_corpus_and_spec_bench_skipped(saved_pair, tmp_path, capsys):
    out = tmp_path / "q.json"
    code = quality.main(
        [
            "--target",
            str(saved_pair / "target"),
            "--draft",
            str(saved_pair / "draft"),
            "--limit",
            "2",
            "--max-new-tokens",
            "8",
            "--corpus",
            str(tmp_path / "no-corpus"),
            "--json",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    got = json.loads(out.read_text())
    for key in (
        "reproduce",
        "target",
        "draft",
        "versions",
        "config",
        "goals",
        "continuations",
        "heldout",
        "spec_bench",
    ):
        assert key in got, key
    assert set(got["versions"]) >= {"torch", "transformers"}
    assert got["reproduce"].startswith("python -m specviz.workshop.quality --target ")
    cont = got["continuations"]
    assert cont["prompts"] == 2 and 0.0 <= cont["repeated_4gram_share"] <= 1.0 and 0.0 <= cont["parse_rate"] <= 1.0
    assert {"id", "parses", "repairs", "repeated", "ngrams", "text", "ids", "p"} <= set(cont["per_prompt"][0])
    check_greedy_token_probabilities(saved_pair / "target", cont["without_healing"])
    assert set(got["goals"]) == {"repeated_4gram_share", "parse_rate"}
    assert "skipped" in got["heldout"] and "skipped" in got["spec_bench"]
    printed = capsys.readouterr().out
    assert "| repeated 4-gram share" in printed and "reproduce: python -m specviz.workshop.quality" in printed
    assert "| the target's probability of its greedy token, median" in printed


def check_greedy_token_probabilities(target_dir, section: dict) -> None:
    """Each p is the target's softmax probability of the id it wrote there, its top-1 (greedy); the median pools
    them."""
    from statistics import median

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts

    model, tok = AutoModelForCausalLM.from_pretrained(target_dir).eval(), AutoTokenizer.from_pretrained(target_dir)
    for prompt, row in zip(load_prompts(DEFAULT_PROMPTS, 2), section["per_prompt"]):
        assert len(row["p"]) == len(row["ids"]) > 0
        prompt_ids = tok(prompt["prompt"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            probs = model(torch.tensor([prompt_ids + row["ids"]])).logits[0].float().softmax(-1)
        expected = [probs[len(prompt_ids) - 1 + i] for i in range(len(row["ids"]))]
        assert row["p"] == pytest.approx([float(e[t]) for e, t in zip(expected, row["ids"])], abs=1e-4)
        assert all(int(e.argmax()) == t for e, t in zip(expected, row["ids"]))
    assert section["greedy_token_p_median"] == median(x for r in section["per_prompt"] for x in r["p"])


def test_cli_held_out_and_spec_bench_sections(saved_pair, tiny_tokenizer, tmp_path):
    import inspect
    import textwrap

    from specviz.workshop.continued import heldout_loss
    from specviz.workshop.text import encode

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    stream = encode(tiny_tokenizer, [inspect.getsource(textwrap)]).astype(np.uint16)
    np.save(corpus / "heldout.npy", stream)
    np.save(corpus / "heldout_stdlib.npy", stream[:300])
    (corpus / "manifest.json").write_text(json.dumps({"tokenizer_sha1": quality.vocab_sha1(tiny_tokenizer)}))
    questions = tmp_path / "questions.jsonl"
    questions.write_text(
        "\n".join(
            json.dumps({"question_id": i, "category": c, "turns": [f"Say {i} things."]})
            for i, c in enumerate(["qa", "qa", "rag"])
        )
        + "\n"
    )
    out = tmp_path / "q.json"
    assert (
        quality.main(
            [
                "--target",
                str(saved_pair / "target"),
                "--draft",
                str(saved_pair / "draft"),
                "--limit",
                "1",
                "--max-new-tokens",
                "4",
                "--corpus",
                str(corpus),
                "--windows",
                "2",
                "--seq-len",
                "16",
                "--spec-bench",
                str(questions),
                "--per-category",
                "1",
                "--bench-tokens",
                "4",
                "--json",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    got = json.loads(out.read_text())
    new = got["heldout"]["heldout"]
    from specviz.models.pair import load_pair

    model = load_pair(str(saved_pair / "target"), device="cpu").target
    assert new["nats_per_token"] == pytest.approx(heldout_loss(model, stream, 2, 16)[0])
    assert new["tokens"] == 32 and new["bytes"] > 0 and new["bits_per_byte"] > 0
    assert "nats_per_token" in got["heldout"]["heldout_stdlib"]
    ref = new["corpus_text"]  # the reference share: stretches as long as the continuations, evenly spaced, pooled
    starts = np.linspace(0, len(stream) - 4, ref["stretches"]).astype(int)
    assert ref["length"] == 4 and ref["stretches"] == min(2000, len(stream) - 3)
    assert ref["repeated_4gram_share"] == quality.pooled_share([stream[s : s + 4].tolist() for s in starts])
    assert quality.corpus_repeated_share(np.array([1, 2, 3, 4] * 30), 96)["repeated_4gram_share"] > 0.9
    assert "skipped" in quality.corpus_repeated_share(stream[:10], 96)
    pair = load_pair(str(saved_pair / "target"), str(saved_pair / "draft"), device="cpu")
    x = torch.from_numpy(stream[:16].astype(np.int64))[None]  # window 0 starts at 0; positions 8..15 are scored
    probs = pair.target(x).logits[0, 8:].softmax(-1)
    agree = (pair.draft(x).logits[0, 8:].argmax(-1) == probs.argmax(-1)).float().mean().item()
    one = quality.real_text_agreement(pair, stream[:18], 1, 16)
    assert one["positions"] == 8 and one["target_top1_p_median"] == pytest.approx(
        float(np.median(probs.max(-1).values.tolist()))
    )
    assert one["drafter_agrees"] == pytest.approx(agree)
    assert 0 < ref["target_top1_p_median"] <= 1 and 0 <= ref["drafter_agrees"] <= 1 and ref["positions"] == 2 * 8
    sb = got["spec_bench"]
    assert [r["category"] for r in sb["per_category"]] == ["qa", "rag"] and sb["prompts"] == 2
    assert all(r["share_equal"] == 1.0 for r in sb["per_category"])  # lossless greedy


def test_a_healed_first_token_is_left_out_of_the_probabilities(saved_pair):
    """Healing renormalizes the first token over the tokens it allows: that probability is not the target's."""
    from specviz.api import run
    from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts
    from specviz.models.pair import load_pair

    pair = load_pair(str(saved_pair / "target"), str(saved_pair / "draft"), device="cpu", cache=None)
    prompts = load_prompts(DEFAULT_PROMPTS, 4)
    rows = quality.continue_prompts(pair, prompts, 6, 4, heal=True)
    healed = [
        (
            run("autoregressive", pair, p["prompt"], max_new_tokens=6, heal_prompt=True).meta.get("token_healing")
            or [None]
        )[0]
        is not None
        for p in prompts
    ]
    assert any(healed), "no bundled prompt was healed: the test shows nothing"
    assert [r.p[0] is None for r in rows] == healed
    assert all(x is not None for r in rows for x in r.p[1:])
