"""The bench: `python -m specviz.bench`, interleaved runs, one row per method x prompt x repeat.

`prompts` (prompt files), `matrix` (the units of work and their rows), `journal` (resumable runs), `cluster` (the
same units on Ray), `cli` (the command line and its outputs).

Rule: imports analysis and below, and `views.report` for `--html`.


The names the flat module of the same name offered are re-exported, imported on first use.
"""

from __future__ import annotations

from specviz.lazy import exports

_EXPORTS = {
    "DEFAULT_PROMPTS": "specviz.bench.prompts",
    "BASELINE": "specviz.bench.matrix",
    "load_prompts": "specviz.bench.prompts",
    "parse_value": "specviz.bench.matrix",
    "parse_method": "specviz.bench.matrix",
    "MethodSpec": "specviz.bench.matrix",
    "Tick": "specviz.bench.matrix",
    "with_baseline": "specviz.bench.matrix",
    "output_digest": "specviz.bench.matrix",
    "warm_up": "specviz.bench.matrix",
    "prompt_rows": "specviz.bench.matrix",
    "run_matrix": "specviz.bench.matrix",
    "stream_size": "specviz.bench.matrix",
    "batch_rows": "specviz.bench.matrix",
    "run_batch_matrix": "specviz.bench.matrix",
    "Plan": "specviz.bench.matrix",
    "Unit": "specviz.bench.matrix",
    "make_plan": "specviz.bench.matrix",
    "make_units": "specviz.bench.matrix",
    "run_unit": "specviz.bench.matrix",
    "device_label": "specviz.bench.matrix",
    "where": "specviz.bench.matrix",
    "Outcome": "specviz.bench.matrix",
    "PairInfo": "specviz.bench.matrix",
    "plain": "specviz.bench.matrix",
    "plain_rows": "specviz.bench.matrix",
    "run_local": "specviz.bench.cli",
    "summary": "specviz.bench.matrix",
    "device_summary": "specviz.bench.matrix",
    "summary_record": "specviz.bench.cli",
    "markdown_table": "specviz.bench.matrix",
    "build_parser": "specviz.bench.cli",
    "split_methods": "specviz.bench.cli",
    "prepare": "specviz.bench.cli",
    "main": "specviz.bench.cli",
    "CONTRACT_COLUMNS": "specviz.bench.cli",
    "write_outputs": "specviz.bench.cli",
}
__all__ = list(_EXPORTS)
__getattr__ = exports(__name__, _EXPORTS)
