"""Train what Kangaroo and S2D need for YOUR target (`specviz.models.parts` loads it beside the target).

    python -m specviz.workshop.train kangaroo-adapter --target ID_OR_PATH [--out DIR] [--steps 400] [--text FILE]
    python -m specviz.workshop.train sorted-drafter   --target ID_OR_PATH [--out DIR] [--steps 400] [--layers 3]

Both distil from the target (soft cross-entropy to its final distribution, what acceptance rewards)
on text from `--text` (any UTF-8 file) or the built-in corpus (the standard library's sources):
- the Kangaroo adapter: one attention layer over the target's layer-l state, read through the
  target's own final norm and head (Liu et al. 2024); it must beat the untrained "logit lens" (the
  layer-l state straight through the norm and head) at agreeing with the target;
- the sorted drafter (S2D): the target's architecture cut to `--layers` layers, initialised from the
  target's first layers and embeddings, trained with an exit after every layer (SoFT).
A checkpoint is written every `--checkpoint-every` steps; the same command resumes it. The result is a
folder `load_pair(..., parts=DIR)` reads (for a local target the default is `<target>/specviz-parts`,
found without being named, so the app's model field needs only the target's path).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import AutoModelForCausalLM

from specviz.engine.adapter import KangarooAdapter
from specviz.engine.layers import cut_config, split_parts
from specviz.models.hub import PARTS_DIR, check_source, load_causal_lm, load_tokenizer
from specviz.models.parts import ADAPTER_DIR, CHECKPOINT, REPORT, SORTED_DIR, fingerprint
from specviz.workshop.config import TrainConfig
from specviz.workshop.kit import adapter_logits, exit_logits, lr_at, save_atomic, soft_ce
from specviz.workshop.text import read_corpus


@dataclass(frozen=True)
class PartsConfig:
    part: str  # "kangaroo-adapter" | "sorted-drafter"
    target: str
    out: str = ""  # default: beside a local target, else ./specviz-parts/<org>--<name>
    text: str = ""  # a UTF-8 file; default: the standard library's sources
    steps: int = 400
    batch_size: int = 8
    seq_len: int = 256
    lr: float = 2e-3
    exit_layer: int = 0  # adapter: 0 = about a sixth of the target's depth
    layers: int = 3  # sorted drafter depth
    heldout_share: float = 0.05
    max_text_chars: int = 4_000_000
    checkpoint_every: int = 50
    seed: int = 0
    threads: int = 0


def default_out(target: str) -> Path:
    local = Path(target).expanduser()
    if local.is_dir():
        return local / PARTS_DIR
    return Path(PARTS_DIR) / re.sub(r"[^A-Za-z0-9._-]+", "--", target)


def training_text(cfg: PartsConfig) -> str:
    if cfg.text:
        return Path(cfg.text).read_text(encoding="utf-8", errors="replace")[: cfg.max_text_chars]

    train, heldout = read_corpus(TrainConfig())
    text = "\n\n".join(train + heldout)  # the corpus's held-out files last: they land in our held-out tail
    return text[-cfg.max_text_chars :]


def token_split(tok, text: str, cfg: PartsConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) token streams: the last `heldout_share` of the text is never trained on."""
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    cut = int(len(ids) * (1 - cfg.heldout_share))
    if cut < cfg.seq_len + 2 or len(ids) - cut < cfg.seq_len + 2:
        raise ValueError(f"the training text is too short: {len(ids)} tokens (need well over {2 * cfg.seq_len})")
    return ids[:cut], ids[cut:]


def windows(stream: torch.Tensor, cfg: PartsConfig, gen: torch.Generator, count: int | None = None) -> torch.Tensor:
    n = len(stream) - cfg.seq_len - 1
    starts = torch.randint(0, n, (count or cfg.batch_size,), generator=gen)
    return torch.stack([stream[s : s + cfg.seq_len] for s in starts.tolist()])


def heldout_windows(stream: torch.Tensor, cfg: PartsConfig, count: int = 8) -> torch.Tensor:
    return windows(stream, cfg, torch.Generator().manual_seed(cfg.seed + 99), count)


def agreement(draft_logits: torch.Tensor, target_logits: torch.Tensor) -> float:
    """Share of positions where the draft's greedy token is the target's (what greedy acceptance counts)."""
    return float((draft_logits.argmax(-1) == target_logits.argmax(-1)).float().mean())


@torch.no_grad()
def measure_adapter(target, adapter, ids: torch.Tensor) -> dict:
    out = target(ids, output_hidden_states=True)
    hidden_l = out.hidden_states[adapter.config.exit_layer]
    return {
        "agreement_trained": agreement(adapter_logits(adapter, target, hidden_l), out.logits),
        "agreement_logit_lens": agreement(exit_logits(target, hidden_l), out.logits),
    }


def sorted_exits(drafter, x: torch.Tensor) -> list[torch.Tensor]:
    out = drafter(x, output_hidden_states=True)
    return [exit_logits(drafter, h) for h in out.hidden_states[1:-1]] + [out.logits]


@torch.no_grad()
def measure_sorted(target, drafter, ids: torch.Tensor) -> dict:
    teacher = target(ids).logits
    return {f"agreement_k{k + 1}": agreement(logits, teacher) for k, logits in enumerate(sorted_exits(drafter, ids))}


def sorted_from_target(target, layers: int):
    """The target's architecture cut to `layers` layers, initialised from its first layers, embeddings,
    final norm and head (a strong start for distillation; every prefix is a drafter)."""
    depth = target.config.num_hidden_layers
    if not 1 <= layers < depth:
        raise ValueError(f"--layers must be between 1 and {depth - 1} for this {depth}-layer target; got {layers}")
    drafter = AutoModelForCausalLM.from_config(cut_config(target.config, layers))
    drafter.load_state_dict(target.state_dict(), strict=False)  # layers 0..k-1, embeddings, norm, head
    return drafter


def save_checkpoint(path: Path, step: int, model, opt, gen: torch.Generator) -> None:
    save_atomic({"step": step, "model": model.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state()}, path)


def train_part(cfg: PartsConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) one part; returns its report (agreements before/after on held-out text, cost)."""

    if cfg.part not in (ADAPTER_DIR, SORTED_DIR):
        raise ValueError(f"part must be {ADAPTER_DIR} or {SORTED_DIR}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    source = check_source(cfg.target, "target")
    target = load_causal_lm(source, torch.device("cpu"), torch.float32)
    split_parts(target)  # Llama-family layout (rotary at model level): what Kangaroo and S2D run on
    tok = load_tokenizer(source)
    out = Path(cfg.out) if cfg.out else default_out(cfg.target)
    part_dir = out / cfg.part
    part_dir.mkdir(parents=True, exist_ok=True)
    train_ids, held_ids = token_split(tok, training_text(cfg), cfg)
    held = heldout_windows(held_ids, cfg)
    depth = target.config.num_hidden_layers
    if cfg.part == ADAPTER_DIR:
        exit_layer = cfg.exit_layer or max(1, round(depth / 6))
        if not 1 <= exit_layer < depth:
            raise ValueError(f"--exit-layer must be between 1 and {depth - 1}; got {exit_layer}")
        model = KangarooAdapter.for_target(target.config, exit_layer, identity=True)
    else:
        model = sorted_from_target(target, cfg.layers)
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0
    )
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    ckpt, start_step = part_dir / CHECKPOINT, 0
    if ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        start_step = state["step"]
        log(f"resuming {cfg.part} at step {start_step} from {ckpt}")
    before = (
        measure_adapter(target, model.eval(), held)
        if cfg.part == ADAPTER_DIR
        else measure_sorted(target, model.eval(), held)
    )
    for p in target.parameters():
        p.requires_grad_(False)
    model.train()
    started = time.time()
    bar = tqdm(range(start_step, cfg.steps), desc=f"train {cfg.part}", initial=start_step, total=cfg.steps)
    for step in bar:
        lr = lr_at(step, cfg.steps, cfg.lr, warmup=20)
        for group in opt.param_groups:
            group["lr"] = lr
        x = windows(train_ids, cfg, gen)
        with torch.no_grad():
            teacher = target(x, output_hidden_states=cfg.part == ADAPTER_DIR)
            teacher_logp = F.log_softmax(teacher.logits.float(), dim=-1)
        if cfg.part == ADAPTER_DIR:
            loss = soft_ce(adapter_logits(model, target, teacher.hidden_states[model.config.exit_layer]), teacher_logp)
        else:
            exits = sorted_exits(model, x)
            loss = sum(soft_ce(logits, teacher_logp) for logits in exits) / len(exits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps:
            save_checkpoint(ckpt, step + 1, model, opt, gen)
    model.eval()
    after = measure_adapter(target, model, held) if cfg.part == ADAPTER_DIR else measure_sorted(target, model, held)
    if cfg.part == ADAPTER_DIR:
        model.save(part_dir)
    else:
        model.save_pretrained(part_dir)
        tok.save_pretrained(part_dir)
        (part_dir / "specviz.json").write_text(
            json.dumps(
                {"exits": list(range(1, cfg.layers + 1)), "sorted": True, "distilled_from": cfg.target}, indent=2
            )
        )
    report = {
        "part": cfg.part,
        "target": cfg.target,
        "fingerprint": fingerprint(target.config),
        "before": before,
        "after": after,
        "steps": cfg.steps,
        "train_seconds": round(time.time() - started, 1),
        "tokens_seen": (cfg.steps - start_step) * cfg.batch_size * cfg.seq_len,
        "config": asdict(cfg),
    }
    (part_dir / REPORT).write_text(json.dumps(report, indent=2))
    ckpt.unlink(missing_ok=True)
    log(f"{cfg.part} -> {part_dir}: held-out agreement {json.dumps(after)} (before training {json.dumps(before)})")
    return report


def main(part: str, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog=f"python -m specviz.workshop.train {part}", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--target", required=True, help="a local model directory or a Hugging Face id")
    parser.add_argument("--out", default="", help=f"default: <target>/{PARTS_DIR} for a local target")
    parser.add_argument("--text", default="", help="a UTF-8 training text file (default: the standard library)")
    parser.add_argument("--steps", type=int, default=PartsConfig.steps)
    parser.add_argument("--batch-size", type=int, default=PartsConfig.batch_size)
    parser.add_argument("--seq-len", type=int, default=PartsConfig.seq_len)
    parser.add_argument("--lr", type=float, default=PartsConfig.lr)
    parser.add_argument(
        "--exit-layer", type=int, default=0, help="adapter: the target layer it reads (default depth/6)"
    )
    parser.add_argument("--layers", type=int, default=PartsConfig.layers, help="sorted drafter: its depth")
    parser.add_argument("--checkpoint-every", type=int, default=PartsConfig.checkpoint_every)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    cfg = PartsConfig(
        part=part,
        target=args.target,
        out=args.out,
        text=args.text,
        steps=args.steps,
        batch_size=args.batch_size,
        seq_len=args.seq_len,
        lr=args.lr,
        exit_layer=args.exit_layer,
        layers=args.layers,
        checkpoint_every=args.checkpoint_every,
        threads=args.threads,
        seed=args.seed,
    )
    try:
        train_part(cfg)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
