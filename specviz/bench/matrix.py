"""The bench's units of work and their rows: each method beside the `autoregressive` run of the same prompt.

For every prompt and repeat the methods run one after another in one process (their order rotated each
repeat), and each method's speedup is its tokens/s over the autoregressive run of that prompt. A unit
(`Unit`) is one prompt with every single-sequence method and repeat, or the batch methods over the prompt
stream; `run_unit` measures one unit on one pair, so each row's ratios come from one device.
"""

from __future__ import annotations

import hashlib
import json
import socket
import sys
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Any, Callable

import pandas as pd
import torch
from tqdm import tqdm

from specviz.analysis.divergence import annotate, classify
from specviz.analysis.metrics import compare, mirror_stats
from specviz.api import method_class, run, run_batch
from specviz.engine.acceptance import acceptance_record_from_trace
from specviz.methods import METHODS
from specviz.methods.base import all_params, common_values, validate_params
from specviz.observe.local import acceptance_columns

BASELINE = "autoregressive"


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_method(spec: str, shared: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    """'draft_model:gamma=3:vocab_trim=2048' -> (label, name, params). Validated against the registry."""
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
    if any(label == BASELINE for label, _, _ in methods):
        return list(methods)
    return [(BASELINE, BASELINE, common_values(methods[0][2]) if methods else {})] + list(methods)


def output_digest(rows_of_ids: list[list[int]]) -> str:
    """A short digest of generated token ids: rows of two runs (two machines) compare without the ids."""
    return hashlib.sha256(json.dumps(rows_of_ids).encode()).hexdigest()[:16]


def warm_up(pair, methods: list[MethodSpec], prompt: str) -> None:
    """First calls pay one-off allocations: one short run of each method before anything is timed."""
    for label, name, params in methods:
        run(name, pair, prompt, **{**params, "max_new_tokens": 8})


def prompt_rows(
    pair,
    methods: list[MethodSpec],
    prompt: dict,
    repeats: int,
    overhead: bool = False,
    tick: Tick | None = None,
    digest: bool = False,
) -> list[dict[str, Any]]:
    """One prompt, every method `repeats` times interleaved (order rotated per repeat): one row per method,
    medians over repeats, speedup over the baseline's run of this prompt here. `methods` holds the baseline."""
    traces: dict[str, list] = {label: [] for label, _, _ in methods}
    bare: dict[str, list[float]] = {label: [] for label, _, _ in methods}
    for r in range(repeats):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
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
            **{
                k: stats[k]
                for k in (
                    "new_tokens",
                    "alpha",
                    "tau",
                    "c",
                    "v",
                    "alpha_iid",
                    "theoretical_speedup",
                    "modeled_speedup",
                    "mean_drafts_per_round",
                    "forwards_per_round",
                    "early_exits",
                    "wasted_drafts",
                    "equal_to_autoregressive",
                    "mbsu",
                    "tie_divergences",
                    "real_divergences",
                )
            },
            "seconds": seconds,
            "tokens_per_s": tps,
            "speedup": tps / base_tps if base_tps else None,
            "draft_step_ms": stats["draft_step_s"] * 1e3 if stats["draft_step_s"] else None,
            **mirror_stats(typical),
            "verify_ms": stats["verify_s"] * 1e3 if stats["verify_s"] else None,
        }
        # None where the theoretical speedup is (a tree: a chain-only formula): an empty cell, not a number
        row["efficiency"] = row["speedup"] / row["theoretical_speedup"] if row["theoretical_speedup"] else None
        row.update(after_prefill(runs, traces[BASELINE]))
        if overhead:
            plain = median(bare[label])
            row["recording_overhead"] = (seconds - plain) / plain if plain else None
        row.update({f"param_{k}": v for k, v in typical.params.items()})
        if digest:
            row["output_digest"] = output_digest([typical.output_ids])
        row.update(acceptance_columns(acceptance_record_from_trace(typical)))  # exact counts: --acceptance-out
        rows.append(row)
    return rows


def target_prefill_s(trace) -> float | None:
    """Seconds of the target's prompt prefill (healing's too), which every method pays alike; None where the
    trace does not show it (transformers' opaque rows)."""
    prefills = [e for e in trace.events if e.kind == "prefill"]
    if any(e.info.get("opaque") for e in prefills):  # one span over the whole generate(): no prefill of its own
        return None
    spans = [e.t1 - e.t0 for e in prefills if e.source == "target"]
    return sum(spans) if spans else None


def after_prefill(runs: list, baseline: list) -> dict:
    """The share of the run spent in the target's prefill, and the speedup of what follows it: on long prompts
    (summarization, RAG) the prefill every method pays bounds the speedup of the whole run."""
    mine, base = [target_prefill_s(t) for t in runs], [target_prefill_s(t) for t in baseline]
    if None in mine or None in base:
        return {"prefill_share": None, "speedup_after_prefill": None}
    after = median(t.wall_time - p for t, p in zip(runs, mine))
    base_after = median(t.wall_time - p for t, p in zip(baseline, base))
    return {
        "prefill_share": median(p / t.wall_time for t, p in zip(runs, mine) if t.wall_time),
        "speedup_after_prefill": base_after / after if after > 0 else None,
    }


def run_matrix(
    pair,
    methods: list[tuple[str, str, dict]],
    prompts: list[dict],
    repeats: int,
    progress: bool = True,
    overhead: bool = False,
) -> "pd.DataFrame":
    """Every prompt's rows (`prompt_rows`) in one frame, the baseline added and warmed up first."""
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
        raise ValueError(
            f"--pool-factor {pool_factor} x batch size {params.get('batch_size')} needs {need} prompts; "
            f"the prompt file has {available} (assets/prompts/stream.jsonl has 96)"
        )
    return need


def batch_rows(
    pair,
    methods: list[MethodSpec],
    prompts: list[dict],
    repeats: int,
    pool_factor: int | None = None,
    tick: Tick | None = None,
    digest: bool = False,
) -> list[dict[str, Any]]:
    """Batch methods over a request stream: the whole prompt list, or with `pool_factor` the first
    pool_factor x batch_size prompts (EXSPEC's pool then holds them all: pool_factor is its parameter too).
    One row per method variant (medians over repeats, the variants' order rotated per repeat); rows are
    compared with single-sequence autoregressive outputs."""
    texts = [p["prompt"] for p in prompts]
    sizes = {label: stream_size(params, pool_factor, len(texts)) or len(texts) for label, _, params in methods}
    if pool_factor is not None:
        methods = [
            (label, name, {**params, "pool_factor": pool_factor} if name == "exspec" else params)
            for label, name, params in methods
        ]
    base_params = common_values(methods[0][2])
    reference_traces = [run(BASELINE, pair, t, **base_params) for t in texts[: max(sizes.values())]]
    reference = [t.output_ids for t in reference_traces]
    for label, name, params in methods:  # warm-up
        run_batch(name, pair, texts[:2], **{**params, "max_new_tokens": 4})
    traces: dict[str, list] = {label: [] for label, _, _ in methods}
    for r in range(repeats):
        for label, name, params in methods[r % len(methods) :] + methods[: r % len(methods)]:
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
        found = [
            d
            for j, e in enumerate(equal)
            if greedy and not e and (d := classify(pair, typical, reference_traces[j], row=j)) is not None
        ]
        typical.meta["divergence"] = [asdict(d) for d in found]
        rows.append(
            {
                "method": label,
                "prompt_id": "all",
                "category": "batch",
                "batch_size": typical.params["batch_size"],
                "pool_factor": pool_factor,
                "rows": len(typical.rows),
                "new_tokens": typical.new_tokens,
                "seconds": seconds,
                "tokens_per_s": typical.new_tokens / seconds if seconds else 0.0,
                "realign_share": median(t.meta["realign_seconds"] / t.wall_time for t in runs if t.wall_time),
                "realigned_rounds": typical.meta["realigned_rounds"],
                "rounds": typical.meta["rounds"],
                "equal_to_autoregressive": all(equal),
                "share_equal_rows": sum(equal) / len(equal),
                "tie_divergences": sum(d.tie for d in found),
                "real_divergences": sum(not d.tie for d in found),
                **{f"param_{k}": v for k, v in typical.params.items()},
                **({"output_digest": output_digest([row.output_ids for row in typical.rows])} if digest else {}),
            }
        )
    return rows


def run_batch_matrix(
    pair,
    methods: list[tuple[str, str, dict]],
    prompts: list[dict],
    repeats: int,
    progress: bool = True,
    pool_factor: int | None = None,
) -> "pd.DataFrame":
    """`batch_rows` as a frame, with a progress bar."""
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
        return batch_rows(
            pair, list(plan.batched), list(unit.prompts), plan.repeats, plan.pool_factor, tick, digest=True
        )
    return prompt_rows(pair, list(plan.single), unit.prompts[0], plan.repeats, plan.overhead, tick, digest=True)


def device_label(device) -> str:
    """What a row was measured on, for the per-device table: 'cuda:0 NVIDIA H100 80GB HBM3', 'cpu', 'mps'."""
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


def summary(df) -> "pd.DataFrame":
    """Medians per method. A figure a method does not define (a tree's efficiency, a lookup's c) is None in every
    row of it, so its median is NaN: an empty cell in the markdown, JSON null, a dash in the printed table and
    the HTML report."""
    agg = {
        "speedup": "median",
        "tau": "median",
        "alpha": "median",
        "tokens_per_s": "median",
        "equal_to_autoregressive": "mean",
        "c": "median",
        "efficiency": "median",
        "mbsu": "median",
        "draft_step_ms": "median",
        "tie_divergences": "sum",
        "real_divergences": "sum",
    }
    for optional in (
        "mean_drafts_per_round",
        "forwards_per_round",
        "wasted_drafts",
        "recording_overhead",
        "realign_share",
        "share_equal_rows",
        "prefill_share",
        "speedup_after_prefill",
        "branch_hit_rate",
        "overlap",
        "modeled_speedup_over_ar",
        "modeled_speedup_over_sd",
    ):
        if optional in df:
            agg[optional] = "median"
    out = (
        df.groupby("method", sort=False)
        .agg({k: v for k, v in agg.items() if k in df})
        .rename(columns={"equal_to_autoregressive": "share_equal"})
    )
    return out


def device_summary(df) -> "pd.DataFrame":
    """Medians per device and method (a cluster run): a slow or odd device shows as its own line."""
    keys = [k for k in ("host", "device", "worker") if k in df]
    agg = {
        "units": ("prompt_id", "size"),
        "tokens_per_s": ("tokens_per_s", "median"),
        "share_equal": ("equal_to_autoregressive", "mean"),
        "seconds": ("seconds", "median"),
    }
    if "speedup" in df:
        agg["speedup"] = ("speedup", "median")
    return df.groupby(keys + ["method"], sort=False).agg(**agg)


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
