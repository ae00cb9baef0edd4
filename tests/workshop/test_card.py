"""The model card is written from the family's records: every package with its version and licence, the
training curve, the students' before/after and the quality tables, so none of it can be typed wrong."""

from __future__ import annotations

import json
import re

import pytest

from specviz.workshop.card import card


def write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_card_carries_every_record(tmp_path):
    llama = {"num_hidden_layers": 12, "hidden_size": 256, "intermediate_size": 768, "max_position_embeddings": 2048}
    for part, layers in (("target", 12), ("drafter", 1), ("sorted-drafter", 3)):
        write(tmp_path / part / "config.json", {**llama, "num_hidden_layers": layers})
    write(tmp_path / "kangaroo-adapter" / "adapter_config.json", {"exit_layer": 2})
    manifest = {
        "built": "2026-11-26T05:45:32Z",
        "python": "3.11.7",
        "files": 3,
        "bytes": 3_000_000,
        "tokens": {"train": 900, "heldout": 50, "heldout_stdlib": 40},
        "split_rule": "by hash",
        "filters": {"skip_dirs": ["tests", "vendor"], "skip_files": "test_*.py"},
        "stdlib": {"train": 1, "heldout": 0, "heldout_stdlib": 1, "bytes": 1_000_000},
        "packages": [
            {
                "name": "numpy",
                "version": "2.2.6",
                "licence": "BSD-3-Clause",
                "url": "https://numpy.org",
                "train": 1,
                "heldout": 1,
                "bytes": 2_000_000,
            }
        ],
    }
    ckpt = {
        "step": 10,
        "tokens": 40960,
        "train_seconds": 7200.0,
        "config": {
            "curriculum": [[0.0, 256], [0.75, 2048]],
            "tokens_per_step": 4096,
            "total_tokens": 40960,
            "weight_decay": 0.1,
            "peak_lr": 1e-3,
            "final_lr_share": 0.1,
            "decay_share": 0.2,
        },
    }
    evals = [
        {"tokens": t, "heldout": 5.0 - t / 1e5, "heldout_stdlib_card_metric": 4.5 - t / 1e5, "heldout_2048": 5.5}
        for t in range(0, 40961, 2048)
    ]
    report = {
        "target": {"sha1": "ab" * 20},
        "steps": {"distill": 450, "refine": 500},
        "warm_start": {},
        "minutes": {"distill": 1.0},
        "params": {
            "target": 12_330_000,
            "drafter": 2_950_000,
            "sorted drafter": 4_650_000,
            "Kangaroo adapter": 262_400,
        },
        "config": {"curriculum": [[0.0, 256]], "tokens_per_step": 2048},
        "metrics_before": {"seq_256": {"agree/drafter": 0.5}},
        "metrics": {"seq_256": {"agree/drafter": 0.8125}},
    }
    text = card(tmp_path, manifest, ckpt, evals, report, "### Quality: a table")
    assert "| [numpy](https://numpy.org) | 2.2.6 | BSD-3-Clause | 1 / 1 | 2.0 |" in text
    assert "| Python standard library | 3.11.7 | PSF-2.0 | 1 / 1 | 1.0 |" in text
    assert "Llama 12 x 256" in text and "Llama 1 x 256" in text and "attention-only block on layer 2" in text
    assert "| agree/drafter | 0.5 | 0.8125 |" in text
    rows = [line for line in text.splitlines() if re.match(r"\| [\d,]+ \| \d\.\d{3} \|", line)]
    assert rows[0].startswith("| 0 |") and rows[-1].startswith("| 40,960 |")  # first and last evaluation always shown
    assert len(rows) == 12 and "2.0 h of wall time" in text and "### Quality: a table" in text


def test_card_reports_an_unlikelihood_fine_tune(tmp_path):
    test_card_carries_every_record(tmp_path)  # the family folder, without the fine-tune
    history = (
        [{"event": "eval", "step": 0, "heldout": 3.29}]
        + [
            {"event": "train", "step": i, "mle": 3.0, "ul": 1.0, "repeat_share": 0.6 - i / 1000, "seconds": 4.0}
            for i in range(1, 101)
        ]
        + [{"event": "eval", "step": 100, "heldout": 3.35}]
    )
    config = {
        "lr": 3e-5,
        "ul_batch": 8,
        "new_tokens": 96,
        "prefix_tokens": 64,
        "ngram": 4,
        "ul_weight": 2.0,
        "mle_batch": 4,
        "mle_seq_len": 512,
        "eval_windows": 16,
    }
    meta = {"exits": [2, 4, 6, 8], "unlikelihood": {"steps": 100, "config": config, "history": history}}
    write(tmp_path / "target" / "specviz.json", meta)
    from specviz.workshop.card import unlikelihood_section

    text = "\n".join(unlikelihood_section(meta["unlikelihood"]))
    assert "100 steps at lr 3e-05" in text and "weight 2.0" in text
    assert "0.587 (first 25 steps) -> 0.512 (last 25)" in text and "3.290 -> 3.350" in text


def test_card_says_where_the_target_trained(tmp_path):
    from specviz.workshop.card import training_section

    config = {
        "curriculum": [[0.0, 256], [0.75, 2048]],
        "tokens_per_step": 131072,
        "total_tokens": 176_448_011,
        "weight_decay": 0.1,
        "peak_lr": 1.5e-3,
        "final_lr_share": 0.1,
        "decay_share": 0.2,
    }
    evals = [{"tokens": 0, "heldout": 5.49, "heldout_stdlib_card_metric": 4.5, "heldout_2048": 5.7}]
    cpu = "\n".join(training_section({"step": 10, "tokens": 1, "train_seconds": 7200.0, "config": config}, evals, None))
    gpu = "\n".join(
        training_section(
            {
                "step": 1335,
                "tokens": 174_981_120,
                "train_seconds": 273.0,
                "device_name": "NVIDIA H100",
                "config": {**config, "device": "cuda", "amp": "bf16"},
            },
            evals,
            None,
        )
    )
    assert "2.0 h of wall time at 1-2 threads" in cpu and "several sessions" in cpu
    assert "on a lent GPU (NVIDIA H100, bf16 autocast)" in gpu and "4.5 min of wall time" in gpu
    assert "174,981,120 tokens in 1335 steps of 131,072 tokens" in gpu and "threads" not in gpu


def test_card_tells_each_student_run_in_order():
    from specviz.workshop.card import students_section

    config = {"curriculum": [[0.0, 256]], "tokens_per_step": 65536, "device": "cuda", "amp": "bf16"}
    first = {
        "config": config,
        "steps": {"distill": 459, "refine": 65},
        "warm_start": {"drafter": "assets/models/drafter"},
        "minutes": {"distill": 1.2},
        "metrics_before": {"seq_256": {"agree/drafter": 0.3}},
        "metrics": {"seq_256": {"agree/drafter": 0.48}},
        "target": {"sha1": "cd" * 20},
    }
    second = {
        **first,
        "config": {
            **config,
            "device": "cpu",
            "amp": "",
            "tokens_per_step": 2048,
            "drafter_layers": 2,
            "refine_sorted": True,
            "pool_reuse": 2,
        },
        "steps": {"distill": 140, "refine": 350},
        "metrics_before": {"seq_256": {"agree/drafter": 0.49}},
        "metrics": {"seq_256": {"agree/drafter": 0.6}},
        "earlier": first,
        "pool": {"fills": 25, "generated_tokens": 148_800},
    }
    text = "\n".join(students_section(second))
    assert "2 run(s)" in text and text.index("1. 459 distillation steps") < text.index("2. 140 distillation steps")
    assert "on cuda (bf16 autocast)" in text and "2-layer drafter, on cpu;" in text
    first_line, second_line = (line for line in text.splitlines() if line[:3] in ("1. ", "2. "))
    assert "(the drafter and the adapter;" in first_line and "generate calls" not in first_line  # before the pool
    assert "(all three students;" in second_line
    assert "148,800 greedy tokens from 25 generate calls, each row served 2 times" in second_line
    assert "| agree/drafter | 0.3 | 0.6 |" in text  # before the first run, after the last


def test_card_keeps_the_training_records_with_the_family(tmp_path):
    """The run folder is read when it is there and its records are kept in the family; without it (the lease
    or session that trained is gone) the card is rewritten from the kept copy, identically."""
    from specviz.workshop.card import TRAINING_RECORD, training_records

    run_dir, family = tmp_path / "run", tmp_path / "family"
    manifest = {"built": "2026-11-26T05:45:32Z", "tokens": {"train": 9}}
    run = {"step": 3, "tokens": 12, "train_seconds": 1.0, "config": {"device": "cuda"}, "saved": "x"}
    write(run_dir / "corpus" / "manifest.json", manifest)
    write(run_dir / "run.json", run)
    (run_dir / "metrics.jsonl").write_text(
        "\n".join(
            json.dumps(r) for r in ({"event": "train", "step": 1}, {"event": "eval", "tokens": 0, "heldout": 5.0})
        )
        + "\n"
    )
    family.mkdir()
    first = training_records(family, run_dir)
    assert first == (manifest, run, [{"event": "eval", "tokens": 0, "heldout": 5.0}])
    assert (family / TRAINING_RECORD).is_file()
    assert training_records(family, tmp_path / "gone") == first
    (family / TRAINING_RECORD).unlink()
    with pytest.raises(OSError, match="records are gone"):
        training_records(family, tmp_path / "gone")
