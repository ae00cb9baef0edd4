"""Reproduce the embedded models: `python -m specviz.workshop.train [--quick] [--out assets/models]`.

Why these shapes: on a 2-core CPU a transformers forward costs about 0.3-0.4 ms per decoder layer
of framework overhead before any arithmetic, so speculation pays only when the target has many
layers and the drafter few. The target is deep and narrow (12 x 256), the drafter one layer.

Phases (seeded, fixed step counts, about 40 minutes on 2 cores):
1. tokenizer: byte-level BPE (8,192 ids) on the standard library's sources and pydoc topics;
2. target: Llama 12 x 256, next-token losses at exits after layers 2, 4, 6, 8 and 12, all through
   the shared final norm and LM head, so its shallow sub-networks are usable drafters (Kangaroo,
   Mirror-SD) and its first 8 layers form a second, nested target (S2D);
3. distillation, one teacher forward per batch feeding three students at once: the separate
   drafter (Llama 1 x 256), the sorted drafter (Llama 3 x 256, SoFT losses after layers 1, 2, 3)
   and the Kangaroo adapter on the target's layer-2 state; loss = soft cross-entropy to the
   target's final distribution (what acceptance rewards);
4. VocabTrim calibration: token frequencies of text the target itself generates greedily from
   prefixes of held-out files.

Continued training of the saved target (issue 16), a separate command, resumable over sessions:

    python -m specviz.workshop.train --continue-target --threads 1 --until 08:15   # or scripts/train_background.sh
    python -m specviz.workshop.train --continue-target --quick                     # smoke test, seconds

It warm-starts assets/models/target (same shape, tokenizer and exits 2/4/6/8) on the bigger corpus of
specviz.workshop.corpus (the standard library plus pinned, permissively licensed packages fetched by pip),
with a 256 -> 512 -> 1024 -> 2048-token sequence curriculum, AdamW and a warmup-stable-decay schedule
over --total-tokens; checkpoints (model, optimizer, data position, RNG, step), an HF fp32 copy,
the corpus and the logs live in --run-dir (default ~/.cache/specviz/train, specviz.paths),
and the same command resumes from there. Nothing is written into assets/models.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from transformers import AutoTokenizer

from specviz.workshop.config import TrainConfig
from specviz.workshop.continued import ContinueConfig, continue_corpus, continue_target
from specviz.workshop.eagle_training import main as eagle_main
from specviz.workshop.family import calibrate_vocab, distill, model_card, refine_drafter, refine_saved, train_target
from specviz.workshop.kit import adapter_logits, evaluate, save_hf, sorted_logits
from specviz.workshop.parts_training import main as parts_main
from specviz.workshop.text import encode, read_corpus, train_tokenizer


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("kangaroo-adapter", "sorted-drafter"):  # parts for a user's own target
        parts_main(argv[0], argv[1:])
        return
    if argv and argv[0] == "eagle-head":  # an EAGLE head for a target (specviz.workshop.eagle_training)
        eagle_main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        description="Train specviz's embedded models; `kangaroo-adapter` and "
        "`sorted-drafter` train those parts for any Llama-family target (specviz.workshop.parts_training)."
    )
    parser.add_argument("--out", default="assets/models")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test of every phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--target-steps", type=int, default=None)
    parser.add_argument("--distill-steps", type=int, default=None)
    parser.add_argument("--refine-steps", type=int, default=None)
    parser.add_argument(
        "--refine-only",
        action="store_true",
        help="load the target and drafter saved in --out and run only the drafter refinement phase",
    )
    cont = parser.add_argument_group("continued training of the saved target on the bigger corpus (issue 16)")
    cont.add_argument(
        "--continue-target",
        action="store_true",
        help="warm-start --init (or resume --run-dir/ckpt.pt) on specviz.workshop.corpus with a 256->2048 curriculum",
    )
    cont.add_argument(
        "--run-dir", default=None, help="checkpoints, HF fp32 copy, corpus and logs (default ~/.cache/specviz/train)"
    )
    cont.add_argument("--init", default="assets/models/target")
    cont.add_argument("--corpus", default="", help="a built corpus dir (manifest.json) or a tree of .py files")
    cont.add_argument("--cache-dir", default="", help="pip download cache (default ~/.cache/specviz-corpus)")
    cont.add_argument("--budget-minutes", type=float, default=110.0)
    cont.add_argument("--until", default="", help="HH:MM UTC: also stop (and save) before this")
    cont.add_argument("--total-tokens", type=int, default=None, help="the plan over all sessions (lr, curriculum)")
    cont.add_argument("--tokens-per-step", type=int, default=None)
    cont.add_argument("--peak-lr", type=float, default=None)
    cont.add_argument("--ckpt-minutes", type=float, default=None)
    cont.add_argument("--eval-minutes", type=float, default=None)
    cont.add_argument("--max-steps", type=int, default=0)
    cont.add_argument("--build-corpus-only", action="store_true", help="build --run-dir/corpus and stop")
    cont.add_argument("--device", default=None, help="cpu (default), cuda, mps")
    cont.add_argument("--amp", default=None, choices=("", "bf16", "fp16"), help="mixed precision (on a GPU: bf16)")
    cont.add_argument(
        "--fit-to-budget",
        action="store_true",
        help="re-plan --total-tokens from the measured speed so the lr decay ends at the deadline",
    )
    cont.add_argument(
        "--reserve-seconds", type=float, default=None, help="kept before the deadline for the last eval and save"
    )
    cont.add_argument("--warmup-steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.continue_target or args.build_corpus_only:
        ccfg = ContinueConfig(seed=args.seed, threads=args.threads or 1)
        if args.quick:
            ccfg = ccfg.quickened()
        overrides = {
            "run_dir": args.run_dir,
            "init": args.init,
            "corpus": args.corpus,
            "cache_dir": args.cache_dir,
            "budget_minutes": args.budget_minutes,
            "until": args.until,
            "total_tokens": args.total_tokens,
            "tokens_per_step": args.tokens_per_step,
            "peak_lr": args.peak_lr,
            "ckpt_minutes": args.ckpt_minutes,
            "eval_minutes": args.eval_minutes,
            "max_steps": args.max_steps,
            "device": args.device,
            "amp": args.amp,
            "fit_to_budget": args.fit_to_budget or None,
            "reserve_seconds": args.reserve_seconds,
            "warmup_steps": args.warmup_steps,
        }
        ccfg = ContinueConfig(**{**asdict(ccfg), **{k: v for k, v in overrides.items() if v not in (None, "")}})
        t0 = time.time()

        def clog(msg: str) -> None:
            print(f"[{time.strftime('%H:%M:%S', time.gmtime())} {(time.time() - t0) / 60:6.1f} min] {msg}", flush=True)

        clog(f"config: {json.dumps(asdict(ccfg))}")
        if args.build_corpus_only:
            if ccfg.threads:
                torch.set_num_threads(ccfg.threads)
            continue_corpus(ccfg, AutoTokenizer.from_pretrained(ccfg.init), Path(ccfg.run_dir), clog)
            return
        continue_target(ccfg, clog)
        return
    cfg = TrainConfig(out=args.out, seed=args.seed, threads=args.threads)
    if args.quick:
        cfg = cfg.quickened()
    overrides = {
        k: v
        for k, v in {
            "target_steps": args.target_steps,
            "distill_steps": args.distill_steps,
            "refine_steps": args.refine_steps,
        }.items()
        if v
    }
    if overrides:
        cfg = TrainConfig(**{**asdict(cfg), **overrides})
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(cfg.out)
    t_start = time.time()

    def log(msg: str) -> None:
        print(f"[{(time.time() - t_start) / 60:6.1f} min] {msg}", flush=True)

    minutes: dict[str, float] = {}
    t = time.time()
    train_texts, heldout_texts = read_corpus(cfg)
    tok = train_tokenizer(train_texts, cfg)
    train_ids, heldout_ids = encode(tok, train_texts), encode(tok, heldout_texts)
    minutes["tokenizer"] = (time.time() - t) / 60
    log(
        f"corpus: {len(train_texts)} train files ({len(train_ids)} tokens), "
        f"{len(heldout_texts)} held out ({len(heldout_ids)} tokens)"
    )

    if args.refine_only:
        refine_saved(cfg, tok, train_ids, heldout_ids, out, log)
        return
    t = time.time()
    target = train_target(cfg, tok, train_ids, log)
    minutes["target"] = (time.time() - t) / 60
    t = time.time()
    drafter, sorted_drafter, adapter = distill(cfg, tok, target, train_ids, log)
    minutes["distillation"] = (time.time() - t) / 60
    t = time.time()
    drafter = refine_drafter(cfg, target, drafter, train_ids, log)
    minutes["drafter refinement"] = (time.time() - t) / 60

    stats = evaluate(
        {
            "drafter": lambda x, out: {"": drafter(x).logits},
            "sorted": lambda x, out: sorted_logits(sorted_drafter, x, cfg.sorted_layers),
            "kangaroo": lambda x, out: {"": adapter_logits(adapter, target, out.hidden_states[cfg.kangaroo_exit])},
        },
        heldout_ids,
        cfg,
        target,
    )
    log(f"held-out: {stats}")
    t = time.time()
    ranking = calibrate_vocab(cfg, tok, target, heldout_texts, log)
    minutes["calibration"] = (time.time() - t) / 60

    exits = sorted(set(cfg.target_exits) | {cfg.target_layers})
    save_hf(
        target,
        tok,
        out / "target",
        {
            "exits": exits,
            "nested_targets": [cfg.target_exits[-1], cfg.target_layers],
            "kangaroo_exit": cfg.kangaroo_exit,
        },
    )
    save_hf(drafter, tok, out / "drafter", {"exits": [cfg.drafter_layers], "distilled_from": "target"})
    save_hf(
        sorted_drafter,
        tok,
        out / "sorted-drafter",
        {"exits": list(range(1, cfg.sorted_layers + 1)), "distilled_from": "target", "sorted": True},
    )
    adapter.save(out / "kangaroo-adapter")
    (out / "vocabtrim").mkdir(parents=True, exist_ok=True)
    (out / "vocabtrim" / "target-token-ranking.json").write_text(json.dumps(ranking) + "\n")
    params = {
        "target": sum(p.numel() for p in target.parameters()),
        "drafter": sum(p.numel() for p in drafter.parameters()),
        "sorted drafter": sum(p.numel() for p in sorted_drafter.parameters()),
        "Kangaroo adapter": adapter.num_parameters(),
    }
    (out / "README.md").write_text(model_card(cfg, stats, params, minutes))
    (out / "training-stats.json").write_text(
        json.dumps({"config": asdict(cfg), "heldout": stats, "params": params, "minutes": minutes}, indent=2) + "\n"
    )
    log(f"saved to {out}; total {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
