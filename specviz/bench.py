"""`python -m specviz.bench`: methods x prompts -> one row per (method, prompt) with medians.

Speed is measured as ratios inside one process: for every prompt and repeat the methods run one
after another (their order rotated each repeat), and each method's speedup is its tokens/s over
the `autoregressive` run of the same prompt (always run, even when not listed).

A method may be given with parameters, `draft_model:gamma=3:vocab_trim=2048`, so variants of
one method compare side by side; `--param name=value` applies to every method that has it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from dataclasses import asdict
from statistics import median
from typing import Any

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


def run_matrix(pair, methods: list[tuple[str, str, dict]], prompts: list[dict], repeats: int, progress: bool = True,
               overhead: bool = False) -> "pd.DataFrame":
    import pandas as pd
    from tqdm import tqdm

    from .api import run
    from .divergence import annotate
    from .methods.base import common_values
    from .metrics import compare, mirror_stats

    if not any(label == BASELINE for label, _, _ in methods):
        methods = [(BASELINE, BASELINE, common_values(methods[0][2]) if methods else {})] + methods
    for label, name, params in methods:  # warm-up: first calls pay one-off allocations
        run(name, pair, prompts[0]["prompt"], **{**params, "max_new_tokens": 8})
    rows = []
    total = len(prompts) * repeats * (len(methods) * (2 if overhead else 1))
    bar = tqdm(total=total, desc="bench", file=sys.stderr, disable=not progress)
    for prompt in prompts:
        traces: dict[str, list] = {label: [] for label, _, _ in methods}
        bare: dict[str, list[float]] = {label: [] for label, _, _ in methods}
        for r in range(repeats):
            order = methods[r % len(methods):] + methods[: r % len(methods)]
            for label, name, params in order:
                traces[label].append(run(name, pair, prompt["prompt"], **params))
                bar.update()
                if overhead:
                    bare[label].append(run(name, pair, prompt["prompt"], record=False, **params).wall_time)
                    bar.update()
        base = min(traces[BASELINE], key=lambda t: abs(t.wall_time - median(x.wall_time for x in traces[BASELINE])))
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
            rows.append(row)
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


def run_batch_matrix(pair, methods: list[tuple[str, str, dict]], prompts: list[dict], repeats: int,
                     progress: bool = True, pool_factor: int | None = None) -> "pd.DataFrame":
    """Batch methods over a request stream: the whole prompt list, or with `pool_factor` the first
    pool_factor x batch_size prompts (EXSPEC's pool then holds them all: pool_factor is its parameter too).
    One row per method variant (medians over repeats, the variants' order rotated per repeat); rows are
    compared with single-sequence autoregressive outputs."""
    import pandas as pd
    from tqdm import tqdm

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
    bar = tqdm(total=len(methods) * repeats, desc="bench (batch)", file=sys.stderr, disable=not progress)
    for r in range(repeats):
        for label, name, params in methods[r % len(methods):] + methods[: r % len(methods)]:
            traces[label].append(run_batch(name, pair, texts[: sizes[label]], **params))
            bar.update()
    bar.close()
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
        })
    return pd.DataFrame(rows)


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


def summary_record(table: "pd.DataFrame", args: argparse.Namespace, command: str, pair, prompts: int) -> dict[str, Any]:
    """The summary with what it was measured on: a file the app can show beside the papers' figures."""
    def plain(v: Any) -> Any:
        v = v.item() if hasattr(v, "item") else v  # numpy scalars
        return None if isinstance(v, float) and v != v else v

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
    import pandas as pd

    from .models import load_pair

    try:
        pair = load_pair(args.target, args.draft, device=args.device, dtype=args.dtype)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.time()
    from .methods import METHODS

    single = [m for m in methods if not METHODS[m[1]].batch]
    batched = [m for m in methods if METHODS[m[1]].batch]
    frames = []
    if single or not batched:
        frames.append(run_matrix(pair, single, prompts, args.repeats, progress=not args.quiet, overhead=args.overhead))
    if batched:
        frames.append(run_batch_matrix(pair, batched, prompts, args.repeats, progress=not args.quiet,
                                       pool_factor=args.pool_factor))
    df = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out) if out.suffix == ".parquet" else df.to_csv(out, index=False)
    table = summary(df)

    with pd.option_context("display.width", 200, "display.max_columns", 20, "display.float_format", "{:.3f}".format):
        print(table.to_string())
    if "real_divergences" in df and (df["tie_divergences"].fillna(0).sum() or df["real_divergences"].fillna(0).sum()):
        print(f"\ndivergences from autoregressive: {int(df['tie_divergences'].fillna(0).sum())} proven numerical ties, "
              f"{int(df['real_divergences'].fillna(0).sum())} REAL (not ties: a bug)")
    command = "python -m specviz.bench " + " ".join(_quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    print(f"\n{len(prompts)} prompts x {len(methods)} methods x {args.repeats} repeats in {time.time() - start:.0f} s on "
          f"{pair.device} ({pair.dtype}); rows in {out}\nreproduce: {command}")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(table) + f"\n`{command}`\n")
    if args.json:
        Path(args.json).write_text(json.dumps(summary_record(table, args, command, pair, len(prompts)), indent=1) + "\n")
    if args.html:
        from .report import write_report

        write_report(df, table, args.html, command=command, pair=pair)
        print(f"report: {args.html}")
    return 0


def _quote(arg: str) -> str:
    return arg if all(ch.isalnum() or ch in "-_=.,:/" for ch in arg) else "'" + arg.replace("'", "'\\''") + "'"


if __name__ == "__main__":
    sys.exit(main())
