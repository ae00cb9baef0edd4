"""`python -m specviz.bench`: methods x prompts -> one row per (method, prompt) with medians.

A method may be given with parameters, `draft_model:gamma=3:vocab_trim=2048`, so variants of one method
compare side by side; `--param name=value` applies to every method that has it. The units
(`specviz.bench.matrix`) run here one after another, or on Ray (`--ray`, `specviz.bench.cluster`);
`specviz.bench.journal` keeps finished units so an interrupted run resumes (`--resume`; always on with `--ray`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from specviz.analysis.categories import first_per_task, task_markdown, task_of, task_table
from specviz.api import fits_context
from specviz.bench.cluster import RayTarget, run_cluster
from specviz.bench.journal import check_journal, journal_path, open_journal
from specviz.bench.matrix import (
    Outcome,
    Plan,
    Unit,
    device_label,
    device_summary,
    make_plan,
    make_units,
    markdown_table,
    parse_method,
    parse_value,
    plain,
    plain_rows,
    run_unit,
    stream_size,
    summary,
    warm_up,
    where,
)
from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts
from specviz.engine.decoder import context_limit
from specviz.models.fingerprint import loaded_pair_fingerprint
from specviz.models.pair import load_pair
from specviz.observe.local import records_from_bench_rows
from specviz.observe.writers import write_acceptance
from specviz.views.report import write_report


def run_local(args: argparse.Namespace, plan: Plan, units: list[Unit]) -> Outcome:
    """Every unit on this process's pair, in order; with `--resume`, finished units come from the journal."""

    if args.resume:
        check_journal(args.out, plan, units)
    pair = load_pair(args.target, args.draft, device=args.device, dtype=args.dtype)
    journal = open_journal(args.out, plan, units, loaded_pair_fingerprint(pair)) if args.resume else None
    found = journal.done_rows() if journal else {}
    pending = [u for u in units if journal is None or journal.key(u) not in found]
    here = where(device_label(pair.device), "local")
    rows = {u.index: found[journal.key(u)] for u in units if journal and journal.key(u) in found}
    resumed = len(rows)
    bar = tqdm(total=sum(plan.runs_per_unit(u) for u in pending), desc="bench", file=sys.stderr, disable=args.quiet)
    interrupted = False
    try:
        first = next((u for u in pending if u.kind == "prompt"), None)
        if first is not None:
            warm_up(pair, list(plan.single), first.prompts[0]["prompt"])
        for unit in pending:
            unit_rows = plain_rows([{**row, **here} for row in run_unit(pair, plan, unit, bar.update)])
            rows[unit.index] = unit_rows
            if journal:
                journal.record_done(unit, unit_rows, here)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if journal:
            journal.close()
    return Outcome(
        rows=[r for i in sorted(rows) for r in rows[i]],
        units=len(units),
        done=len(rows),
        resumed=resumed,
        measured_on=pair,
        interrupted=interrupted,
    )


def summary_record(table: "pd.DataFrame", args: argparse.Namespace, command: str, pair, prompts: int) -> dict[str, Any]:
    """The summary with what it was measured on: a file the app can show beside the papers' figures."""
    rows = {method: {k: plain(v) for k, v in row.items()} for method, row in table.to_dict(orient="index").items()}
    return {
        "command": command,
        "measured": time.strftime("%Y-%m-%d", time.gmtime()),
        "device": str(pair.device),
        "dtype": str(pair.dtype).removeprefix("torch."),
        "prompts": prompts,
        "repeats": args.repeats,
        "max_new_tokens": args.max_new_tokens,
        "target": args.target,
        "rows": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specviz.bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--methods",
        default="autoregressive,draft_model,prompt_lookup,hf_assisted,hf_prompt_lookup",
        help="comma-separated methods; parameters after colons, e.g. 'draft_model:gamma=3:vocab_trim=2048'",
    )
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="jsonl prompt file (ours or Spec-Bench's)")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    p.add_argument(
        "--per-category",
        type=int,
        default=None,
        metavar="N",
        help="the first N prompts of each task that fit the context (Spec-Bench: MT-bench's eight "
        "sub-categories are one task); writes the table by task",
    )
    p.add_argument(
        "--tasks",
        default=None,
        help="with --per-category: only these tasks (comma-separated, e.g. "
        "'summarization,rag'; MT-bench's sub-categories are 'mt_bench')",
    )
    p.add_argument(
        "--skip-per-category",
        type=int,
        default=0,
        metavar="K",
        help="with --per-category: pass over the first K fitting prompts of each task first (a tuning set, "
        "questions K+1..K+N; apart from a goal set of the first N when K >= N and both runs take the "
        "same --max-new-tokens, which decides what fits)",
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results.csv", help=".csv or .parquet")
    p.add_argument("--html", default=None, help="write a self-contained HTML report")
    p.add_argument("--markdown", default=None, help="also write the summary as a markdown table to this file")
    p.add_argument(
        "--json",
        default=None,
        help="also write the summary as JSON (the Learn tab reads assets/models/bench-summary.json)",
    )
    p.add_argument("--target", default="embedded")
    p.add_argument("--draft", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None, help="batch methods: rows per batch")
    p.add_argument(
        "--pool-factor",
        type=int,
        default=None,
        help="batch methods: a request stream of pool_factor x batch_size prompts (EXSPEC's pool holds "
        "them all); use with --prompts assets/prompts/stream.jsonl (96 prompts of mixed lengths)",
    )
    p.add_argument("--vocab-trim", type=int, default=None, help="VocabTrim K for drafting methods")
    p.add_argument("--param", action="append", default=[], help="name=value for every method that has it (repeatable)")
    p.add_argument(
        "--overhead", action="store_true", help="also run each method without recording: recording overhead column"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--acceptance-out",
        default=None,
        metavar="FILE",
        help="also write each row's acceptance record as vLLM-style per-request JSONL to FILE and as Prometheus text "
        "beside it (.prom): the same records a deployment gives `python -m specviz.observe` (docs/observe.md)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep a journal of finished units beside --out and skip the units it holds (always on with --ray)",
    )
    p.add_argument(
        "--ray",
        default=None,
        metavar="ADDRESS|local[:N]",
        help="run the units on Ray workers: a cluster's address (auto, host:port, ray://host:port), or "
        "local[:N] for N CPU workers on this machine (a rehearsal); pip install -r "
        "requirements-cluster.txt; see docs/cluster.md",
    )
    p.add_argument(
        "--worker-cpus",
        type=int,
        default=None,
        help="with --ray on CPU nodes: cores per worker (default: all of a node's cores, one worker a node)",
    )
    return p


def split_methods(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def prepare(args: argparse.Namespace) -> tuple[list[tuple[str, str, dict[str, Any]]], list[dict[str, str]]]:
    """Everything a run checks before loading a model: methods and their parameters, the prompt file, the
    pool factor. Raises ValueError with the message the CLI prints (README's commands are checked by it)."""
    if args.repeats < 1 or args.max_new_tokens < 1:
        raise ValueError("--repeats and --max-new-tokens must be positive")
    if not args.out.endswith((".csv", ".parquet")):
        raise ValueError("--out must end in .csv or .parquet")
    if args.ray is not None:
        RayTarget.parse(args.ray)
    if (args.tasks or args.skip_per_category) and args.per_category is None:
        raise ValueError("--tasks and --skip-per-category go with --per-category")
    if args.skip_per_category < 0:
        raise ValueError("--skip-per-category must be 0 or more")
    if args.worker_cpus is not None and (args.worker_cpus < 1 or not args.ray):
        raise ValueError("--worker-cpus needs --ray and a positive number of cores")
    shared: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature}
    if args.vocab_trim is not None:
        shared["vocab_trim"] = args.vocab_trim
    if args.batch_size is not None:
        shared["batch_size"] = args.batch_size
    for item in args.param:
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"--param {item!r} must be name=value")
        shared[key.strip()] = parse_value(value.strip())
    methods = [parse_method(spec, shared) for spec in split_methods(args.methods)]
    prompts = load_prompts(args.prompts, args.limit)
    if args.pool_factor is not None:
        if not 1 <= args.pool_factor <= 8:
            raise ValueError("--pool-factor must be between 1 and 8")
        for _, name, params in methods:
            if name in ("batch_autoregressive", "eqspec", "exspec"):
                stream_size(params, args.pool_factor, len(prompts))
    return methods, prompts


def per_task(args: argparse.Namespace, prompts: list[dict[str, str]]) -> list[dict[str, str]]:
    """--per-category N: the first N prompts of each task whose tokens and the new tokens fit the target's context
    (longer ones are passed over and counted, never cut: a cut prompt would be another question)."""
    pair = load_pair(args.target, args.draft, device=args.device, dtype=args.dtype)

    def fits(prompt: dict) -> bool:
        return fits_context(pair, prompt["prompt"], args.max_new_tokens)

    if args.tasks:
        wanted = set(split_methods(args.tasks))
        prompts = [p for p in prompts if task_of(p["category"]) in wanted]
        if not prompts:
            raise ValueError(f"no prompt of the file is in the tasks {args.tasks}")
    chosen, too_long = first_per_task(prompts, args.per_category, fits, skip=args.skip_per_category)
    tasks = len({task_of(p["category"]) for p in chosen})
    after = f" after the first {args.skip_per_category} of each task" if args.skip_per_category else ""
    print(
        f"--per-category {args.per_category}{after}: {len(chosen)} prompts in {tasks} tasks; {too_long} passed over "
        f"as longer than the context ({context_limit(pair.target)} tokens) minus {args.max_new_tokens} new tokens"
    )
    if not chosen:
        raise ValueError(f"no prompt of the file fits the target's context with the new tokens{after}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        methods, prompts = prepare(args)
        if args.per_category is not None:
            prompts = per_task(args, prompts)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m specviz.bench " + " ".join(_quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    plan = make_plan(methods, args.repeats, args.overhead, args.pool_factor)
    units = make_units(plan, prompts)
    start = time.time()
    try:
        if args.ray:
            outcome = run_cluster(args, plan, units)
        else:
            outcome = run_local(args, plan, units)
    except ValueError as exc:  # a model that does not load, a journal of another command, a cluster that cannot run
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before any unit ran (loading, starting workers): nothing to write
        print("interrupted before any unit finished", file=sys.stderr)
        return 130
    return write_outputs(args, outcome, command, len(prompts), len(methods), time.time() - start)


CONTRACT_COLUMNS = (
    "method",
    "prompt_id",
    "category",
    "new_tokens",
    "seconds",
    "tokens_per_s",
    "speedup",
    "alpha",
    "tau",
    "equal_to_autoregressive",
    "host",
    "device",
    "worker",
)


def write_outputs(
    args: argparse.Namespace, outcome: Outcome, command: str, prompts: int, methods: int, seconds: float
) -> int:
    """--out, the printed summary, --markdown, --json and --html from what finished; the exit code says the rest
    (0 all done, 1 units failed twice, 130 interrupted: the files then hold a valid partial result)."""

    df = pd.DataFrame(outcome.rows) if outcome.rows else pd.DataFrame(columns=list(CONTRACT_COLUMNS))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out) if out.suffix == ".parquet" else df.to_csv(out, index=False)
    table = summary(df) if outcome.rows else None
    devices = device_summary(df) if outcome.rows and args.ray else None
    tasks = task_table(df) if outcome.rows else None
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        if table is not None:
            print(table.to_string(na_rep="—"))  # a figure the method does not define (a tree's efficiency)
        if tasks is not None:
            print("\nby task (median speedup, tau, alpha):\n" + task_markdown(tasks))
        if devices is not None:
            print("\nper device:\n" + devices.to_string())
    if "real_divergences" in df and (df["tie_divergences"].fillna(0).sum() or df["real_divergences"].fillna(0).sum()):
        print(
            f"\ndivergences from autoregressive: {int(df['tie_divergences'].fillna(0).sum())} proven numerical ties, "
            f"{int(df['real_divergences'].fillna(0).sum())} REAL (not ties: a bug)"
        )
    for failure in outcome.failed:
        print(f"\nFAILED twice, no rows: {failure['unit']}: " + " | ".join(failure["errors"]))
    on = outcome.measured_on
    print(
        f"\n{prompts} prompts x {methods} methods x {args.repeats} repeats in {seconds:.0f} s on "
        f"{on.device} ({str(on.dtype).removeprefix('torch.')}); rows in {out}\nreproduce: {command}"
    )
    if args.acceptance_out and outcome.rows:
        jsonl, prom = write_acceptance(records_from_bench_rows(outcome.rows), args.acceptance_out)
        print(f"acceptance records: {jsonl} and {prom}")
    if outcome.resumed:
        print(
            f"{outcome.resumed} of {outcome.units} units came from the journal {journal_path(args.out)} "
            f"(measured by an earlier run of this command; delete it to measure all again)"
        )
    if outcome.interrupted:
        again = (
            "re-run the same command to finish" if (args.ray or args.resume) else "add --resume next time to keep them"
        )
        print(f"interrupted: {outcome.done} of {outcome.units} units finished and written; {again}")
    if table is not None:
        if args.markdown:
            by_task = "\n" + task_markdown(tasks) if tasks is not None else ""
            Path(args.markdown).write_text(markdown_table(table) + by_task + f"\n`{command}`\n")
        record = summary_record(table, args, command, on, prompts)
        if tasks is not None:
            record["by_task"] = [{k: plain(v) for k, v in r.items()} for r in tasks.reset_index().to_dict("records")]
        if devices is not None:
            record["by_device"] = [
                {k: plain(v) for k, v in r.items()} for r in devices.reset_index().to_dict("records")
            ]
            record["workers"] = outcome.workers
        if outcome.failed or outcome.interrupted:
            record["incomplete"] = {"units": outcome.units, "done": outcome.done, "failed": outcome.failed}
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        if args.html:
            sections = {"Per device (median per device and method)": devices} if devices is not None else {}
            if tasks is not None:
                sections["By task (Spec-Bench: MT-bench's sub-categories as one task)"] = tasks
            if outcome.failed:
                sections["Units that failed twice (no rows)"] = pd.DataFrame(outcome.failed)
            write_report(df, table, args.html, command=command, pair=on, sections=sections)
            print(f"report: {args.html}")
    return 130 if outcome.interrupted else 1 if outcome.failed else 0


def _quote(arg: str) -> str:
    return arg if all(ch.isalnum() or ch in "-_=.,:/" for ch in arg) else "'" + arg.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(main())
