"""The Learn tab's measured column says what the shipped bench summary holds, and says plainly when none does."""

from __future__ import annotations

from specviz.views.headlines import cell, provenance


def test_cells_read_the_summary_and_admit_its_absence():
    summary = {
        "command": "python -m specviz.bench --json x",
        "measured": "2026-11-26",
        "device": "cpu",
        "dtype": "float32",
        "prompts": 8,
        "repeats": 3,
        "rows": {
            "autoregressive": {"speedup": 1.0, "tau": 1.0},
            "draft_model": {"speedup": 1.97, "tau": 4.07},
            "kangaroo": {"speedup": 1.23, "tau": 1.9},
            "kangaroo:eta=0:gamma=4:vocab_trim=2048": {"speedup": 1.56, "tau": 3.05},
            "sorted": {"speedup": None, "tau": None},
            "batch_autoregressive:batch_size=4": {"tokens_per_s": 500.0},
            "eqspec:batch_size=4": {"tokens_per_s": 650.0},
            "exspec:batch_size=4": {"tokens_per_s": 450.0},
        },
    }
    assert cell("draft_model", summary) == "`draft_model` 1.97x (τ 4.07)"
    assert (
        cell("kangaroo", summary)
        == "`kangaroo` 1.23x (τ 1.90); `kangaroo:eta=0:gamma=4:vocab_trim=2048` 1.56x (τ 3.05)"
    )
    assert cell("sorted", summary) == "not measured"  # a row without a speedup is not shown as one
    assert cell("batch", summary) == (
        "`eqspec:batch_size=4` 1.30x batched AR throughput; `exspec:batch_size=4` 0.90x batched AR throughput"
    )
    assert cell("mirror", summary) == "not measured" and cell("draft_model", None) == "not measured"
    assert "python -m specviz.bench --json x" in provenance(summary) and "No bench summary" in provenance(None)
