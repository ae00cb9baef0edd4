"""The embedded family's model card (assets/models/README.md), written from the records its making left:
the corpus manifest (each package's name, version and licence), the continued training's checkpoint and
held-out curve, the students' report and the quality script's figures. Nothing in it is typed by hand, so
the card cannot drift from the weights it describes.

    python -m specviz.workshop.card --family DIR [--train-dir RUN_DIR] --quality q.json [--out DIR/README.md]

Paths in the records are written portable (specviz.paths.scrub): relative in the repository, else no machine's layout.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from specviz.paths import cache_dir, scrub
from specviz.workshop.continued import RUN_RECORD, RUN_RECORD_KEYS
from specviz.workshop.quality import markdown_report

SHAPES = (  # (model, directory, role); shapes are read from each config.json
    ("target", "target", "exits share the final norm + LM head; nested targets are its first layers"),
    ("drafter", "drafter", "separate drafter (draft_model); where it started and how it trained: Students"),
    ("sorted drafter", "sorted-drafter", "S2D: SoFT-trained exits after each layer"),
    ("Kangaroo adapter", "kangaroo-adapter", "Kangaroo self-drafter on the target's early exit, with its norm + head"),
)


TRAINING_RECORD = "training-record.json"  # the continued training's records, kept with the family


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def shape_of(directory: Path) -> str:
    name = "config.json" if (directory / "config.json").exists() else "adapter_config.json"
    cfg = read_json(directory / name)
    if "num_hidden_layers" in cfg:
        return f"Llama {cfg['num_hidden_layers']} x {cfg['hidden_size']}, FFN {cfg['intermediate_size']}"
    return "attention-only block" + (f" on layer {cfg['exit_layer']}" if "exit_layer" in cfg else "")


def corpus_section(manifest: dict) -> list[str]:
    tokens = manifest["tokens"]
    lines = [
        "## Corpus",
        "",
        f"Built {manifest['built']} by `python -m specviz.workshop.train` (specviz/workshop/corpus.py) "
        "from wheels pip fetched, with "
        f"Python {manifest['python']}'s standard library: {manifest['files']:,} files, "
        f"{manifest['bytes'] / 1e6:.1f} MB; "
        f"tokens: {tokens['train']:,} train, {tokens['heldout']:,} held-out, {tokens['heldout_stdlib']:,} in the first "
        "models' standard-library held-out split. Tests, vendored copies and generated files are left out "
        f"(skipped folders: {', '.join(manifest['filters']['skip_dirs'])}; "
        f"files: {manifest['filters']['skip_files']}).",
        "",
        f"Held-out splits: {manifest['split_rule']}.",
        "",
        "| source | version | licence | files (train / held-out) | MB |",
        "|---|---|---|---|---|",
    ]
    std = manifest["stdlib"]
    lines.append(
        f"| Python standard library | {manifest['python']} | PSF-2.0 | {std['train']} / "
        f"{std['heldout'] + std['heldout_stdlib']} | {std['bytes'] / 1e6:.1f} |"
    )
    for p in manifest["packages"]:
        lines.append(
            f"| [{p['name']}]({p['url']}) | {p['version']} | {p['licence']} | {p['train']} / "
            f"{p['heldout'] + p.get('heldout_stdlib', 0)} | {p['bytes'] / 1e6:.1f} |"
        )
    return lines + [""]


def training_section(ckpt: dict, evals: list[dict], first: dict | None) -> list[str]:
    cfg = ckpt["config"]
    curriculum = ", ".join(f"{length} from {share:.0%}" for share, length in cfg["curriculum"])
    lines = ["## Training", ""]
    if first:
        f = first["config"]
        lines.append(
            f"The target started as the first embedded target: {f['target_steps']} steps of {f['batch_size']} x "
            f"{f['seq_len']} tokens of the standard library ({first['minutes']['target']:.0f} min)."
        )
    if cfg.get("device", "cpu") == "cpu":
        how, took = "(resumable, several sessions)", f"{ckpt['train_seconds'] / 3600:.1f} h of wall time at 1-2 threads"
    else:
        how = f"on a lent GPU ({ckpt.get('device_name') or cfg['device']}, {cfg.get('amp') or 'fp32'} autocast)"
        took = (
            f"{ckpt['train_seconds'] / 60:.1f} min of wall time "
            "(`--fit-to-budget` planned the tokens from the measured speed)"
        )
    lines += [
        f"Then `python -m specviz.workshop.train --continue-target` {how}: {ckpt['tokens']:,} tokens "
        f"in {ckpt['step']} steps of {cfg['tokens_per_step']:,} tokens, {took}; sequence length {curriculum} "
        f"of {cfg['total_tokens']:,} planned tokens; AdamW "
        f"(0.9, 0.95, weight decay {cfg['weight_decay']}), warmup-stable-decay: peak lr {cfg['peak_lr']}, linear "
        f"decay to {cfg['final_lr_share']:.0%} over the last {cfg['decay_share']:.0%}.",
        "",
        "Held-out loss (nats/token) while it trained (256-token windows; the old split's figure is the first "
        "card's metric):",
        "",
        "| tokens | new split | old stdlib split | at 2,048 tokens |",
        "|---|---|---|---|",
    ]
    shown = evals if len(evals) <= 12 else [evals[round(i * (len(evals) - 1) / 11)] for i in range(12)]
    for e in shown:
        lines.append(
            f"| {e['tokens']:,} | {e['heldout']:.3f} | {e['heldout_stdlib_card_metric']:.3f} | "
            f"{e.get('heldout_2048', float('nan')):.3f} |"
        )
    return lines + [""]


def unlikelihood_section(record: dict) -> list[str]:
    """The sequence-level unlikelihood fine-tune (specviz.workshop.unlikelihood), from the target's specviz.json."""
    cfg = record["config"]
    train = [h for h in record["history"] if h["event"] == "train"]
    evals = [h for h in record["history"] if h["event"] == "eval"]
    head, tail = train[: min(25, len(train))], train[-min(25, len(train)) :]

    def mean(rows: list[dict], key: str) -> float:
        return sum(r[key] for r in rows) / len(rows) if rows else float("nan")

    return [
        "## Unlikelihood fine-tune",
        "",
        "Then `python -m specviz.workshop.unlikelihood` (Welleck et al. 2019, sequence level): "
        f"{record['steps']} steps at lr "
        f"{cfg['lr']}, each penalizing -log(1 - p) at every token of the target's own greedy continuations "
        f"({cfg['ul_batch']} x {cfg['new_tokens']} tokens after {cfg['prefix_tokens']} corpus tokens) that completes "
        f"an earlier {cfg['ngram']}-gram, weight {cfg['ul_weight']}, beside the multi-exit next-token loss on "
        f"{cfg['mle_batch']} x {cfg['mle_seq_len']} corpus tokens. Why: lower loss had come with greedy loops "
        "(a continuation copying its own last line).",
        "",
        f"Repeated {cfg['ngram']}-gram share of its greedy training continuations: {mean(head, 'repeat_share'):.3f} "
        f"(first {len(head)} steps) -> {mean(tail, 'repeat_share'):.3f} (last {len(tail)}); held-out loss on "
        f"{cfg['eval_windows']} windows of the new split: {evals[0]['heldout']:.3f} -> {evals[-1]['heldout']:.3f}."
        if evals
        else "",
        "",
    ]


def student_runs(report: dict) -> list[dict]:
    """The chain of student runs, oldest first: each report carries the one it warm-started from ("earlier")."""
    runs = []
    while report:
        runs.append(report)
        report = report.get("earlier")
    return runs[::-1]


def run_sentence(report: dict) -> str:
    cfg = report["config"]
    curriculum = ", ".join(f"{length} from {share:.0%}" for share, length in cfg["curriculum"])
    where = f"on {cfg.get('device', 'cpu')}" + (f" ({cfg['amp']} autocast)" if cfg.get("amp") else "")
    refined = "all three students" if cfg.get("refine_sorted") else "the drafter and the adapter"
    pool = report.get("pool") or {}
    pooled = ""
    if pool.get("fills"):
        pooled = (
            f", {pool['generated_tokens']:,} greedy tokens from {pool['fills']} generate calls, each row served "
            f"{cfg['pool_reuse']} times" + (f" ({pool['note']})" if pool.get("note") else "")
        )
    return (
        f"{report['steps']['distill']} distillation steps (soft cross-entropy to the target's distribution, all three "
        f"students) and {report['steps']['refine']} on-policy refinement steps ({refined}; every "
        f"second batch the target's own greedy continuation{pooled}), {cfg['tokens_per_step']:,} tokens a step, "
        "sequence "
        f"length {curriculum}, {cfg.get('drafter_layers', 1)}-layer drafter, {where}; warm start: "
        f"{json.dumps(report['warm_start'])}; minutes: {json.dumps(report['minutes'])}."
    )


def students_section(report: dict) -> list[str]:
    runs = student_runs(report)
    lines = [
        "## Students",
        "",
        f"`python -m specviz.workshop.students` against that target (sha1 {report['target']['sha1'][:12]}), "
        f"{len(runs)} run(s), each warm from the one before:",
        "",
    ]
    lines += [f"{i}. {run_sentence(run)}" for i, run in enumerate(runs, 1)]
    lines += [
        "",
        "Held-out next-token loss (nats/token) and greedy agreement with the target's argmax, before the first "
        "run and after the last, at each evaluated sequence length:",
        "",
    ]
    lengths = list(report["metrics"])
    before = runs[0].get("metrics_before", {})
    lines += [
        "| metric | "
        + " | ".join(f"{n.removeprefix('seq_')} before | {n.removeprefix('seq_')} after" for n in lengths)
        + " |",
        "|---|" + "---|---|" * len(lengths),
    ]
    for key in sorted(report["metrics"][lengths[0]]):
        cells = [f"{before.get(n, {}).get(key, '')} | {report['metrics'][n].get(key, '')}" for n in lengths]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines + [""]


def card(
    family: Path,
    manifest: dict,
    ckpt: dict,
    evals: list[dict],
    report: dict,
    quality_md: str,
    first: dict | None = None,
) -> str:
    params = report["params"]
    lines = [
        "# specviz embedded models",
        "",
        "A 12-layer Llama-shaped target trained on permissively licensed Python sources, and the parts every "
        "method needs: a separate drafter, a sorted (S2D) drafter, a Kangaroo adapter and a VocabTrim ranking. "
        f"Weights in float16; the whole folder must stay under 45 MB. Context: "
        f"{read_json(family / 'target' / 'config.json')['max_position_embeddings']} positions, trained at that length.",
        "",
        "| model | directory | shape | parameters | role |",
        "|---|---|---|---|---|",
    ]
    for name, directory, role in SHAPES:
        lines.append(
            f"| {name} | `{directory}/` | {shape_of(family / directory)} | {params[name] / 1e6:.2f} M | {role} |"
        )
    lines += [
        "| VocabTrim ranking | `vocabtrim/target-token-ranking.json` | ids by target-generated frequency | | "
        "VocabTrim's drafter head subset |",
        "",
    ]
    target_meta = family / "target" / "specviz.json"
    tuned = read_json(target_meta).get("unlikelihood") if target_meta.is_file() else None
    lines += corpus_section(manifest) + training_section(ckpt, evals, first)
    lines += (unlikelihood_section(tuned) if tuned else []) + students_section(report)
    lines += ["## Quality", "", quality_md.strip(), ""]
    return "\n".join(lines)


def load_run_record(train_dir: Path) -> dict:
    """The continued training's bookkeeping (step, tokens, wall time, config, device): run.json, which every
    checkpoint writes beside ckpt.pt; older run folders have only ckpt.pt, read then (148 MB)."""
    if (train_dir / RUN_RECORD).exists():
        return read_json(train_dir / RUN_RECORD)

    ckpt = torch.load(train_dir / "ckpt.pt", map_location="cpu", weights_only=False)
    return {k: ckpt[k] for k in RUN_RECORD_KEYS if k in ckpt}


def training_records(family: Path, train_dir: Path) -> tuple[dict, dict, list[dict]]:
    """(corpus manifest, run record, held-out evals) of the target's continued training. From the run folder
    when it is there, and then also kept in FAMILY/training-record.json; otherwise from that file. Why: the run
    folder lives on the machine that trained (a lent GPU's is gone with the lease, a CPU session's with the
    session), while the family, and the card it must be able to rewrite, is committed."""
    kept = family / TRAINING_RECORD
    if (train_dir / "metrics.jsonl").is_file():
        manifest = read_json(train_dir / "corpus" / "manifest.json")
        evals = [
            r for r in map(json.loads, (train_dir / "metrics.jsonl").read_text().splitlines()) if r["event"] == "eval"
        ]
        run = load_run_record(train_dir)
        manifest, run = scrub(manifest), scrub(run)  # the run's config names its folders: no machine's paths
        kept.write_text(
            json.dumps({"manifest": manifest, "run": run, "evals": evals}, indent=1) + "\n", encoding="utf-8"
        )
        return manifest, run, evals
    if not kept.is_file():
        raise OSError(f"neither {train_dir / 'metrics.jsonl'} nor {kept}: the continued training's records are gone")
    record = read_json(kept)
    return record["manifest"], record["run"], record["evals"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--family", required=True, help="the family's folder (python -m specviz.workshop.students --out)"
    )
    parser.add_argument(
        "--train-dir",
        default=str(cache_dir("train")),
        help="the continued training's run folder (python -m specviz.workshop.train --run-dir)",
    )
    parser.add_argument("--quality", required=True, help="python -m specviz.workshop.quality --json output")
    parser.add_argument("--first", default="", help="the first family's training-stats.json (its origin)")
    parser.add_argument("--out", default="", help="default: FAMILY/README.md")
    args = parser.parse_args(argv)

    family, train_dir = Path(args.family), Path(args.train_dir)
    try:
        manifest, ckpt, evals = training_records(family, train_dir)
        report = scrub(read_json(family / "students-report.json"))
        quality = scrub(read_json(Path(args.quality)))
        first = read_json(Path(args.first)) if args.first else None
    except (OSError, KeyError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else family / "README.md"
    out.write_text(card(family, manifest, ckpt, evals, report, markdown_report(quality), first))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
