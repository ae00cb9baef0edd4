"""`python -m specviz.bench`: methods x prompts -> one row per (method, prompt) with medians.

Speed is measured as ratios inside one process: for every prompt and repeat the methods run one
after another (their order rotated each repeat), and each method's speedup is its tokens/s over
the `autoregressive` run of the same prompt (always run, even when not listed).

A method may be given with parameters, `draft_model:gamma=3:vocab_trim=2048`, so variants of
one method compare side by side; `--param name=value` applies to every method that has it.

The work is cut into units (`Unit`): one prompt with every single-sequence method and repeat, or the
batch methods over the prompt stream. `run_unit` measures one unit on one pair, so each row's ratios come
from one device; the local loop below and `specviz.cluster` (`--ray`) both call it, and `specviz.journal`
keeps finished units so an interrupted run resumes (`--resume`; always on with `--ray`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Callable

DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "assets" / "prompts" / "code.jsonl"
BASELINE = "autoregressive"


def load_prompts(path: str | Path, limit: int | None = None) -> list[dict[str, str]]:
    """jsonl: {"id", "prompt"[, "category"]} or Spec-Bench's {"question_id", "category", "turns"} (first turn)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt file not found: {path}")
    prompts = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not JSON ({exc})") from None
        if isinstance(obj, dict) and "prompt" in obj:
            prompts.append({"id": str(obj.get("id", n)), "category": str(obj.get("category", "")), "prompt": str(obj["prompt"])})
        elif isinstance(obj, dict) and obj.get("turns"):
            prompts.append({"id": str(obj.get("question_id", n)), "category": str(obj.get("category", "")), "prompt": str(obj["turns"][0])})
        else:
            raise ValueError(f"{path}:{n}: expected {{'id', 'prompt'}} or {{'question_id', 'category', 'turns'}}")
    if not prompts:
        raise ValueError(f"{path} holds no prompts")
    return prompts[:limit] if limit else prompts


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_method(spec: str, shared: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """'draft_model:gamma=3:vocab_trim=2048' -> (label, name, params). Validated against the registry."""
    from .api import method_class
    from .methods.base import all_params, validate_params

    name, *items = spec.split(":")
    cls = method_class(name.strip())
    known = {p.name for p in all_params(cls)}
    params = {k: v for k, v in shared.items() if k in known}
    for item in filter(None, (s.strip() for s in items)):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"method parameter {item!r} in {spec!r} must be name=value")
        params[key.strip()] = parse_value(value.strip())
    validate_params(cls, params)
    return spec.strip(), name.strip(), params


MethodSpec = tuple[str, str, dict[str, Any]]  # (label as given, registry name, parameters)
Tick = Callable[[], None]  # called after each timed run (progress bars)


def with_baseline(methods: list[MethodSpec]) -> list[MethodSpec]:
    """`methods` with the autoregressive baseline first when it is not listed (speedups need it)."""
    from .methods.base import common_values

    if any(label == BASELINE for label, _, _ in methods):
        return list(methods)
    return [(BASELINE, BASELINE, common_values(methods[0][2]) if methods else {})] + list(methods)


def output_digest(rows_of_ids: list[list[int]]) -> str:
    """A short digest of generated token ids: rows of two runs (two machines) compare without the ids."""
    return hashlib.sha256(json.dumps(rows_of_ids).encode()).hexdigest()[:16]


def warm_up(pair, methods: list[MethodSpec], prompt: str) -> None:
    """First calls pay one-off allocations: one short run of each method before anything is timed."""
    from .api import run

    for label, name, params in methods:
        run(name, pair, prompt, **{**params, "max_new_tokens": 8})


def prompt_rows(pair, methods: list[MethodSpec], prompt: dict, repeats: int, overhead: bool = False,
                tick: Tick | None = None, digest: bool = False) -> list[dict[str, Any]]:
    """One prompt, every method `repeats` times interleaved (order rotated per repeat): one row per method,
    medians over repeats, speedup over the baseline's run of this prompt here. `methods` holds the baseline."""
    from .api import run
    from .divergence import annotate
    from .metrics import compare, mirror_stats

    traces: dict[str, list] = {label: [] for label, _, _ in methods}
    bare: dict[str, list[float]] = {label: [] for label, _, _ in methods}
    for r in range(repeats):
        order = methods[r % len(methods):] + methods[: r % len(methods)]
        for label, name, params in order:
            traces[label].append(run(name, pair, prompt["prompt"], **params))
            if tick:
                tick()
            if overhead:
                bare[label].append(run(name, pair, prompt["prompt"], record=False, **params).wall_time)
                if tick:
                    tick()
    base = min(traces[BASELINE], key=lambda t: abs(t.wall_time - median(x.wall_time for x in traces[BASELINE])))
    rows = []
    for label, name, params in methods:
        runs = traces[label]
        typical = min(runs, key=lambda t: abs(t.wall_time - median(x.wall_time for x in runs)))
        if not typical.params.get("temperature") and typical.output_ids != base.output_ids:
            annotate(pair, typical, base)  # tie or bug, recorded in the trace
        stats = compare(typical, base)
        seconds = median(t.wall_time for t in runs)
        tps = typical.new_tokens / seconds if seconds else 0.0
        base_tps = base.new_tokens / median(t.wall_time for t in traces[BASELINE])
        row = {
            "method": label,
            "prompt_id": prompt["id"],
            "category": prompt["category"],
            **{k: stats[k] for k in ("new_tokens", "alpha", "tau", "c", "v", "alpha_iid", "theoretical_speedup",
                                      "modeled_speedup", "mean_drafts_per_round", "early_exits", "wasted_drafts",
                                      "equal_to_autoregressive", "mbsu", "tie_divergences", "real_divergences")},
            "seconds": seconds,
            "tokens_per_s": tps,
            "speedup": tps / base_tps if base_tps else None,
            "draft_step_ms": stats["draft_step_s"] * 1e3 if stats["draft_step_s"] else None,
            **mirror_stats(typical),
            "verify_ms": stats["verify_s"] * 1e3 if stats["verify_s"] else None,
        }
        row["efficiency"] = row["speedup"] / row["theoretical_speedup"] if row["theoretical_speedup"] else None
        if overhead:
            plain = median(bare[label])
            row["recording_overhead"] = (seconds - plain) / plain if plain else None
        row.update({f"param_{k}": v for k, v in typical.params.items()})
        if digest:
            row["output_digest"] = output_digest([typical.output_ids])
        rows.append(row)
    return rows


def run_matrix(pair, methods: list[tuple[str, str, dict]], prompts: list[dict], repeats: int, progress: bool = True,
               overhead: bool = False) -> "pd.DataFrame":
    """Every prompt's rows (`prompt_rows`) in one frame, the baseline added and warmed up first."""
    import pandas as pd
    from tqdm import tqdm

    methods = with_baseline(methods)
    warm_up(pair, methods, prompts[0]["prompt"])
    total = len(prompts) * repeats * (len(methods) * (2 if overhead else 1))
    bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=not progress)
    rows = [row for prompt in prompts for row in prompt_rows(pair, methods, prompt, repeats, overhead, bar.update)]
    bar.close()
    return pd.DataFrame(rows)


def stream_size(params: dict, pool_factor: int | None, available: int) -> int | None:
    """Requests in one batch run's stream: pool_factor x batch_size (None: the whole prompt list)."""
    if pool_factor is None:
        return None
    need = pool_factor * int(params.get("batch_size", 1))
    if need > available:
        raise ValueError(f"--pool-factor {pool_factor} x batch size {params.get('batch_size')} needs {need} prompts; "
                         f"the prompt file has {available} (assets/prompts/stream.jsonl has 96)")
    return need


def batch_rows(pair, methods: list[MethodSpec], prompts: list[dict], repeats: int, pool_factor: int | None = None,
               tick: Tick | None = None, digest: bool = False) -> list[dict[str, Any]]:
    """Batch methods over a request stream: the whole prompt list, or with `pool_factor` the first
    pool_factor x batch_size prompts (EXSPEC's pool then holds them all: pool_factor is its parameter too).
    One row per method variant (medians over repeats, the variants' order rotated per repeat); rows are
    compared with single-sequence autoregressive outputs."""
    from .api import run, run_batch
    from .divergence import classify
    from .methods.base import common_values

    texts = [p["prompt"] for p in prompts]
    sizes = {label: stream_size(params, pool_factor, len(texts)) or len(texts) for label, _, params in methods}
    if pool_factor is not None:
        methods = [(label, name, {**params, "pool_factor": pool_factor} if name == "exspec" else params)
                   for label, name, params in methods]
    base_params = common_values(methods[0][2])
    reference_traces = [run(BASELINE, pair, t, **base_params) for t in texts[: max(sizes.values())]]
    reference = [t.output_ids for t in reference_traces]
    for label, name, params in methods:  # warm-up
        run_batch(name, pair, texts[:2], **{**params, "max_new_tokens": 4})
    traces: dict[str, list] = {label: [] for label, _, _ in methods}
    for r in range(repeats):
        for label, name, params in methods[r % len(methods):] + methods[: r % len(methods)]:
            traces[label].append(run_batch(name, pair, texts[: sizes[label]], **params))
            if tick:
                tick()
    rows = []
    for label, name, params in methods:
        runs = traces[label]
        seconds = median(t.wall_time for t in runs)
        typical = min(runs, key=lambda t: abs(t.wall_time - seconds))
        equal = [row.output_ids == ref for row, ref in zip(typical.rows, reference)]
        greedy = not typical.params.get("temperature")
        found = [d for j, e in enumerate(equal) if greedy and not e
                 and (d := classify(pair, typical, reference_traces[j], row=j)) is not None]
        typical.meta["divergence"] = [asdict(d) for d in found]
        rows.append({
            "method": label, "prompt_id": "all", "category": "batch", "batch_size": typical.params["batch_size"],
            "pool_factor": pool_factor,
            "rows": len(typical.rows), "new_tokens": typical.new_tokens, "seconds": seconds,
            "tokens_per_s": typical.new_tokens / seconds if seconds else 0.0,
            "realign_share": median(t.meta["realign_seconds"] / t.wall_time for t in runs if t.wall_time),
            "realigned_rounds": typical.meta["realigned_rounds"], "rounds": typical.meta["rounds"],
            "equal_to_autoregressive": all(equal), "share_equal_rows": sum(equal) / len(equal),
            "tie_divergences": sum(d.tie for d in found), "real_divergences": sum(not d.tie for d in found),
            **{f"param_{k}": v for k, v in typical.params.items()},
            **({"output_digest": output_digest([row.output_ids for row in typical.rows])} if digest else {}),
        })
    return rows


def run_batch_matrix(pair, methods: list[tuple[str, str, dict]], prompts: list[dict], repeats: int,
                     progress: bool = True, pool_factor: int | None = None) -> "pd.DataFrame":
    """`batch_rows` as a frame, with a progress bar."""
    import pandas as pd
    from tqdm import tqdm

    bar = tqdm(total=len(methods) * repeats, desc="bench (batch)", file=sys.stderr, disable=not progress)
    rows = batch_rows(pair, methods, prompts, repeats, pool_factor, bar.update)
    bar.close()
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------- units of work
@dataclass(frozen=True)
class Plan:
    """What every unit of one bench command runs: its methods (validated) and settings."""

    single: tuple[MethodSpec, ...]  # single-sequence methods, the autoregressive baseline first when not listed
    batched: tuple[MethodSpec, ...]  # batch methods: together one unit over the prompt stream
    repeats: int  # timed runs of every method per unit; rows hold medians
    overhead: bool  # also run each method without recording (recording_overhead column)
    pool_factor: int | None  # batch methods: a stream of pool_factor x batch_size prompts (None: all prompts)

    def runs_per_unit(self, unit: "Unit") -> int:
        """Timed runs in `unit` (progress bars)."""
        if unit.kind == "batch":
            return len(self.batched) * self.repeats
        return len(self.single) * self.repeats * (2 if self.overhead else 1)


@dataclass(frozen=True)
class Unit:
    """One unit of work, measured on one device so that every ratio in its rows is."""

    index: int  # place in the output: prompt order, the batch unit last
    kind: str  # "prompt": one prompt x every single-sequence method and repeat; "batch": batch methods over the stream
    prompts: tuple[dict[str, str], ...]  # the prompt ("prompt") or the whole stream ("batch")

    @property
    def label(self) -> str:
        return f"prompt {self.prompts[0]['id']}" if self.kind == "prompt" else "batch methods"


def make_plan(methods: list[MethodSpec], repeats: int, overhead: bool = False, pool_factor: int | None = None) -> Plan:
    from .methods import METHODS

    single = [m for m in methods if not METHODS[m[1]].batch]
    batched = [m for m in methods if METHODS[m[1]].batch]
    if single or not batched:
        single = with_baseline(single)
    return Plan(tuple(single), tuple(batched), repeats, overhead, pool_factor)


def make_units(plan: Plan, prompts: list[dict[str, str]]) -> list[Unit]:
    units = [Unit(i, "prompt", (p,)) for i, p in enumerate(prompts)] if plan.single else []
    if plan.batched:
        units.append(Unit(len(units), "batch", tuple(prompts)))
    return units


def run_unit(pair, plan: Plan, unit: Unit, tick: Tick | None = None) -> list[dict[str, Any]]:
    """Measure one unit on `pair`: its rows, each with its output's digest. The one function every path runs."""
    if unit.kind == "batch":
        return batch_rows(pair, list(plan.batched), list(unit.prompts), plan.repeats, plan.pool_factor, tick,
                          digest=True)
    return prompt_rows(pair, list(plan.single), unit.prompts[0], plan.repeats, plan.overhead, tick, digest=True)


def device_label(device) -> str:
    """What a row was measured on, for the per-device table: 'cuda:0 NVIDIA H100 80GB HBM3', 'cpu', 'mps'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{device.index or 0} {torch.cuda.get_device_name(device)}"
    return str(device)


def where(device: str, worker: str) -> dict[str, str]:
    """The columns that say where a unit ran."""
    return {"host": socket.gethostname(), "device": device, "worker": worker}


@dataclass
class Outcome:
    """What a bench run produced: rows of finished units (this run's and a journal's), and what did not finish."""

    rows: list[dict[str, Any]]  # every finished unit's rows, in unit order
    units: int  # units in the command
    done: int  # units finished, with those taken from the journal
    resumed: int  # units taken from the journal (measured by an earlier run of the same command)
    measured_on: Any  # the pair, or a PairInfo from the cluster's workers: device, dtype, model names
    failed: list[dict[str, Any]] = field(default_factory=list)  # units that failed twice: label, prompt ids, errors
    interrupted: bool = False  # Ctrl-C: the outputs hold what finished
    workers: list[dict[str, Any]] = field(default_factory=list)  # cluster workers: host, device, worker, unfit reason


@dataclass(frozen=True)
class PairInfo:
    """What the report says was measured when no pair lives in this process (the cluster's driver)."""

    device: str
    dtype: str
    target_name: str
    draft_name: str | None


def plain(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN to None."""
    value = value.item() if hasattr(value, "item") else value
    return None if isinstance(value, float) and value != value else value


def plain_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: plain(v) for k, v in row.items()} for row in rows]


def run_local(args: argparse.Namespace, plan: Plan, units: list[Unit]) -> Outcome:
    """Every unit on this process's pair, in order; with `--resume`, finished units come from the journal."""
    from tqdm import tqdm

    from .journal import check_journal, open_journal, pair_fingerprint
    from .models import load_pair

    if args.resume:
        check_journal(args.out, plan, units)
    pair = load_pair(args.target, args.draft, device=args.device, dtype=args.dtype)
    journal = open_journal(args.out, plan, units, pair_fingerprint(pair)) if args.resume else None
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
    return Outcome(rows=[r for i in sorted(rows) for r in rows[i]], units=len(units), done=len(rows),
                   resumed=resumed, measured_on=pair, interrupted=interrupted)


def summary(df) -> "pd.DataFrame":
    agg = {"speedup": "median", "tau": "median", "alpha": "median", "tokens_per_s": "median",
           "equal_to_autoregressive": "mean", "c": "median", "efficiency": "median", "mbsu": "median",
           "draft_step_ms": "median", "tie_divergences": "sum", "real_divergences": "sum"}
    for optional in ("mean_drafts_per_round", "wasted_drafts", "recording_overhead", "realign_share", "share_equal_rows",
                     "branch_hit_rate", "overlap", "modeled_speedup_over_ar", "modeled_speedup_over_sd"):
        if optional in df:
            agg[optional] = "median"
    out = df.groupby("method", sort=False).agg({k: v for k, v in agg.items() if k in df}).rename(
        columns={"equal_to_autoregressive": "share_equal"})
    return out


def device_summary(df) -> "pd.DataFrame":
    """Medians per device and method (a cluster run): a slow or odd device shows as its own line."""
    keys = [k for k in ("host", "device", "worker") if k in df]
    agg = {"units": ("prompt_id", "size"), "tokens_per_s": ("tokens_per_s", "median"),
           "share_equal": ("equal_to_autoregressive", "mean"), "seconds": ("seconds", "median")}
    if "speedup" in df:
        agg["speedup"] = ("speedup", "median")
    return df.groupby(keys + ["method"], sort=False).agg(**agg)


def summary_record(table: "pd.DataFrame", args: argparse.Namespace, command: str, pair, prompts: int) -> dict[str, Any]:
    """The summary with what it was measured on: a file the app can show beside the papers' figures."""
    rows = {method: {k: plain(v) for k, v in row.items()} for method, row in table.to_dict(orient="index").items()}
    return {"command": command, "measured": time.strftime("%Y-%m-%d", time.gmtime()), "device": str(pair.device),
            "dtype": str(pair.dtype).removeprefix("torch."), "prompts": prompts, "repeats": args.repeats,
            "max_new_tokens": args.max_new_tokens, "target": args.target, "rows": rows}


def markdown_table(table: "pd.DataFrame", digits: int = 3) -> str:
    """The summary as a GitHub markdown table (README results), empty columns left out."""
    frame = table.reset_index().dropna(axis=1, how="all")

    def cell(v) -> str:
        if isinstance(v, float):
            return "" if v != v else f"{v:.{digits}f}"
        return str(v)

    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m specviz.bench", description=__doc__.split("\n")[0])
    p.add_argument("--methods", default="autoregressive,draft_model,hf_assisted",
                   help="comma-separated methods; parameters after colons, e.g. 'draft_model:gamma=3:vocab_trim=2048'")
    p.add_argument("--prompts", default=str(DEFAULT_PROMPTS), help="jsonl prompt file (ours or Spec-Bench's)")
    p.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="results.csv", help=".csv or .parquet")
    p.add_argument("--html", default=None, help="write a self-contained HTML report")
    p.add_argument("--markdown", default=None, help="also write the summary as a markdown table to this file")
    p.add_argument("--json", default=None, help="also write the summary as JSON (the Learn tab reads "
                                                  "assets/models/bench-summary.json)")
    p.add_argument("--target", default="embedded")
    p.add_argument("--draft", default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=None, help="batch methods: rows per batch")
    p.add_argument("--pool-factor", type=int, default=None,
                   help="batch methods: a request stream of pool_factor x batch_size prompts (EXSPEC's pool holds "
                        "them all); use with --prompts assets/prompts/stream.jsonl (96 prompts of mixed lengths)")
    p.add_argument("--vocab-trim", type=int, default=None, help="VocabTrim K for drafting methods")
    p.add_argument("--param", action="append", default=[], help="name=value for every method that has it (repeatable)")
    p.add_argument("--overhead", action="store_true", help="also run each method without recording: recording overhead column")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="keep a journal of finished units beside --out and skip the units it holds "
                        "(always on with --ray)")
    p.add_argument("--ray", default=None, metavar="ADDRESS|local[:N]",
                   help="run the units on Ray workers: a cluster's address (auto, host:port, ray://host:port), or "
                        "local[:N] for N CPU workers on this machine (a rehearsal); pip install -r "
                        "requirements-cluster.txt; see docs/cluster.md")
    p.add_argument("--worker-cpus", type=int, default=None,
                   help="with --ray on CPU nodes: cores per worker (default: all of a node's cores, one worker a node)")
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
        from .cluster import RayTarget  # the address's form only: Ray itself is imported when the run starts

        RayTarget.parse(args.ray)
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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        methods, prompts = prepare(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m specviz.bench " + " ".join(_quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    plan = make_plan(methods, args.repeats, args.overhead, args.pool_factor)
    units = make_units(plan, prompts)
    start = time.time()
    try:
        if args.ray:
            from .cluster import run_cluster

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


CONTRACT_COLUMNS = ("method", "prompt_id", "category", "new_tokens", "seconds", "tokens_per_s", "speedup", "alpha",
                    "tau", "equal_to_autoregressive", "host", "device", "worker")


def write_outputs(args: argparse.Namespace, outcome: Outcome, command: str, prompts: int, methods: int,
                  seconds: float) -> int:
    """--out, the printed summary, --markdown, --json and --html from what finished; the exit code says the rest
    (0 all done, 1 units failed twice, 130 interrupted: the files then hold a valid partial result)."""
    import pandas as pd

    from .journal import journal_path

    df = pd.DataFrame(outcome.rows) if outcome.rows else pd.DataFrame(columns=list(CONTRACT_COLUMNS))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out) if out.suffix == ".parquet" else df.to_csv(out, index=False)
    table = summary(df) if outcome.rows else None
    devices = device_summary(df) if outcome.rows and args.ray else None
    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        if table is not None:
            print(table.to_string())
        if devices is not None:
            print("\nper device:\n" + devices.to_string())
    if "real_divergences" in df and (df["tie_divergences"].fillna(0).sum() or df["real_divergences"].fillna(0).sum()):
        print(f"\ndivergences from autoregressive: {int(df['tie_divergences'].fillna(0).sum())} proven numerical ties, "
              f"{int(df['real_divergences'].fillna(0).sum())} REAL (not ties: a bug)")
    for failure in outcome.failed:
        print(f"\nFAILED twice, no rows: {failure['unit']}: " + " | ".join(failure["errors"]))
    on = outcome.measured_on
    print(f"\n{prompts} prompts x {methods} methods x {args.repeats} repeats in {seconds:.0f} s on "
          f"{on.device} ({str(on.dtype).removeprefix('torch.')}); rows in {out}\nreproduce: {command}")
    if outcome.resumed:
        print(f"{outcome.resumed} of {outcome.units} units came from the journal {journal_path(args.out)} "
              f"(measured by an earlier run of this command; delete it to measure all again)")
    if outcome.interrupted:
        again = ("re-run the same command to finish" if (args.ray or args.resume)
                 else "add --resume next time to keep them")
        print(f"interrupted: {outcome.done} of {outcome.units} units finished and written; {again}")
    if table is not None:
        if args.markdown:
            Path(args.markdown).write_text(markdown_table(table) + f"\n`{command}`\n")
        record = summary_record(table, args, command, on, prompts)
        if devices is not None:
            record["by_device"] = [{k: plain(v) for k, v in r.items()}
                                   for r in devices.reset_index().to_dict("records")]
            record["workers"] = outcome.workers
        if outcome.failed or outcome.interrupted:
            record["incomplete"] = {"units": outcome.units, "done": outcome.done, "failed": outcome.failed}
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
        if args.html:
            from .report import write_report

            sections = {"Per device (median per device and method)": devices} if devices is not None else {}
            if outcome.failed:
                sections["Units that failed twice (no rows)"] = pd.DataFrame(outcome.failed)
            write_report(df, table, args.html, command=command, pair=on, sections=sections)
            print(f"report: {args.html}")
    return 130 if outcome.interrupted else 1 if outcome.failed else 0


def _quote(arg: str) -> str:
    return arg if all(ch.isalnum() or ch in "-_=.,:/" for ch in arg) else "'" + arg.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(main())
