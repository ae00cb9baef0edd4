"""Sequence-level unlikelihood fine-tuning of a target (Welleck et al. 2019, "Neural Text Generation with
Unlikelihood Training"): the target's own greedy continuations of corpus prefixes are penalised at every
token that completes an n-gram seen earlier in the sequence (loss -log(1 - p(token))), while the ordinary
next-token loss (final layer and trained exits, train.multi_exit_loss) on corpus windows keeps held-out
loss and the early exits in place.

Why: issue 16 measures the repeated 4-gram share of the target's greedy text. The continued target's lower
loss came with stronger copying of its own output (0.83 against the first target's 0.44). The goal is about
the target's own greedy decoding, so it can only move through the weights.

    python -m specviz.workshop.unlikelihood --target DIR --corpus ~/.cache/specviz/train/corpus --out DIR [--steps 300]
        [--until HH:MM] [--threads 2] [--device cuda --amp bf16 --ul-batch 256 --mle-batch 64 --seconds 150]

--anchor-weight W adds KL(starting target || target) on the continuations' unpenalized tokens
(own_text_losses).

--objective ditto swaps the penalty for pseudo-repetition penalization (after Xu et al. 2022, "Learning to
Break the Loop", DITTO): no greedy text; a corpus span of 4-40 tokens is repeated after a corpus prefix, and
each token of the n-th copy is pulled towards ratio x (its probability in copy n-1), with loss
-log(1 - |p_n - ratio * p_(n-1)|). It teaches repetition to decay instead of pushing every repeat to zero,
which is what flattened the target under unlikelihood (docs/embedded-models.md). The repeated share of the
model's greedy text is logged at each evaluation.

On a lent GPU the greedy continuations come 256 rows at a time (the CPU runs had 8), and --seconds ends
the run on time (the lr is constant after warm-up, so any stop is a finished run).

Resumable (OUT/ckpt.pt), never writes into --target; OUT is an HF directory with its specviz.json carried
over and an "unlikelihood" record added.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from specviz.paths import scrub
from specviz.workshop.config import SPECVIZ_META, TrainConfig, exit_weights_for
from specviz.workshop.continued import heldout_loss, save_hf_fp32, until_epoch
from specviz.workshop.kit import autocast, multi_exit_loss, save_atomic, set_lr


@dataclass(frozen=True)
class UnlikelihoodConfig:
    target: str
    corpus: str  # a built specviz.workshop.corpus dir: train.npy, heldout.npy
    out: str
    seed: int = 0
    threads: int = 1
    steps: int = 300
    lr: float = 1e-4
    warmup_steps: int = 20
    mle_seq_len: int = 512
    mle_batch: int = 4
    prefix_tokens: int = 64  # corpus tokens before each greedy continuation
    new_tokens: int = 96  # as specviz.workshop.quality's continuations
    ul_batch: int = 8
    ngram: int = 4  # 8 aims at loops only: real code repeats 2 % of its 8-grams within 96 tokens, 8 % of its 4-grams
    ul_weight: float = 1.0
    eval_every: int = 50  # steps
    eval_windows: int = 16
    ckpt_minutes: float = 5.0
    until: str = ""  # "HH:MM" UTC: stop (and save) before this
    max_steps: int = 0  # steps in this invocation (0 = no limit): tests
    seconds: float = 0.0  # also stop (finished, saved as final) after this many seconds of this invocation
    device: str = "cpu"
    amp: str = ""  # "bf16" on a GPU: autocast forwards, fp32 weights and optimizer state
    freeze_layers: int = 0  # > 0: the embedding (tied head), final norm and first N layers stay as they are
    anchor_weight: float = 0.0  # > 0: KL(start || model) on the greedy text's unpenalized tokens (own_text_losses)
    objective: str = "unlikelihood"  # or "ditto": pseudo-repetition penalization (pseudo_repetitions, ditto_loss)
    ditto_ratio: float = 0.5  # DITTO's lambda: each copy's probability, as a share of the copy before
    ditto_len: int = 256  # a pseudo-repetitive row's length, prefix included
    span_min: int = 4  # the repeated span's length in tokens, drawn uniformly from [span_min, span_max]
    span_max: int = 40


def repeat_mask(ids: torch.Tensor, start: int, n: int) -> torch.Tensor:
    """(B, T) bool: position t >= start whose n-gram ids[t-n+1 .. t] already ended at an earlier position."""
    mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, seq in enumerate(ids.tolist()):
        seen: set[tuple[int, ...]] = set()
        for t in range(n - 1, len(seq)):
            gram = tuple(seq[t - n + 1 : t + 1])
            if t >= start and gram in seen:
                mask[row, t] = True
            seen.add(gram)
    return mask


@torch.no_grad()
def greedy_continuations(model, prefixes: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """prefixes (B, P) -> (B, P + new_tokens): the model's own greedy text, the end-of-text token suppressed
    (a continuation must be as long as the one specviz.workshop.quality scores)."""
    was_training = model.training
    model.eval()
    out = model.generate(
        prefixes,
        attention_mask=torch.ones_like(prefixes),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=0,
    )
    model.train(was_training)
    return out


def unlikelihood_loss(model, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """-log(1 - p(x_t | x_<t)) averaged over the masked positions t of seq (B, T)."""
    return own_text_losses(model, None, seq, mask, seq.shape[1])[0]


def own_text_losses(
    model, reference, seq: torch.Tensor, mask: torch.Tensor, start: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(unlikelihood, anchor) on one batch of the model's own text seq (B, T), from one forward.

    unlikelihood: -log(1 - p(x_t | x_<t)) averaged over the masked (repeating) tokens t.
    anchor: KL(reference || model), averaged over the tokens t >= start that are not masked, where
    `reference` is the target as the fine-tune found it (None: 0). Why: a penalty on the repeats alone
    taught the target to doubt every token (the median probability of its greedy token fell from 0.83 to
    0.16, and with it every drafter's acceptance); the anchor keeps its distribution where it did not repeat.
    Measured (docs/embedded-models.md): it helped a little at the mild end and not at all at the strong one."""
    logits = model(seq[:, :-1]).logits.float()  # position j predicts seq[:, j + 1]
    logp = logits.log_softmax(-1)
    penalized = mask[:, 1:]
    p = logp.gather(-1, seq[:, 1:, None]).squeeze(-1).exp()
    picked = p[penalized]
    ul = -torch.log((1.0 - picked).clamp_min(1e-5)).mean() if picked.numel() else logits.sum() * 0.0
    kept = ~penalized
    kept[:, : max(0, start - 1)] = False
    if reference is None or not kept.any():
        return ul, logits.sum() * 0.0
    with torch.no_grad():
        ref = reference(seq[:, :-1]).logits.float().log_softmax(-1)[kept]
    anchor = F.kl_div(logp[kept], ref, log_target=True, reduction="batchmean")
    return ul, anchor


def pseudo_repetitions(
    train, gen: torch.Generator, rows: int, prefix: int, length: int, span_min: int, span_max: int
) -> tuple[torch.Tensor, list[int]]:
    """(rows, length) token ids and each row's period: a corpus prefix of `prefix` tokens, then one corpus
    span of span_min..span_max tokens repeated up to `length` (DITTO's pseudo-repetitive data, with a
    prefix so that the loop follows real context, as it does in the target's own greedy text)."""
    out, periods = [], []
    for _ in range(rows):
        period = int(torch.randint(span_min, span_max + 1, (1,), generator=gen))
        begin = int(torch.randint(0, len(train) - prefix - period - 1, (1,), generator=gen))
        head = train[begin : begin + prefix].astype(np.int64)
        span = train[begin + prefix : begin + prefix + period].astype(np.int64)
        loop = np.resize(span, length - prefix)  # np.resize repeats the span cyclically
        out.append(np.concatenate([head, loop]))
        periods.append(period)
    return torch.from_numpy(np.stack(out)), periods


def ditto_loss(model, seq: torch.Tensor, prefix: int, periods: list[int], ratio: float) -> torch.Tensor:
    """-log(1 - |p_t - ratio * sg(p_(t - period))|) averaged over every token t of the second and later copies
    of each row's span (p_t = p(x_t | x_<t); the earlier copy's probability is a fixed target)."""
    logits = model(seq[:, :-1]).logits.float()  # position j predicts seq[:, j + 1]
    p = logits.log_softmax(-1).gather(-1, seq[:, 1:, None]).squeeze(-1).exp()  # p[:, t - 1] = p(x_t | x_<t)
    terms = []
    for row, period in enumerate(periods):
        t = torch.arange(prefix + period, seq.shape[1], device=seq.device)
        now, before = p[row, t - 1], p[row, t - 1 - period].detach()
        terms.append(-torch.log((1.0 - (now - ratio * before).abs()).clamp_min(1e-5)))
    return torch.cat(terms).mean() if terms else logits.sum() * 0.0


def freeze_shared(model, layers: int) -> int:
    """Freeze what the rest of the family reads from the target: the embedding (tied to the head), the final
    norm and the first `layers` decoder layers. With layers >= the Kangaroo exit, the early exit's state, the
    grafted drafter's body and every exit's head stay bit-identical, so only the adapter must follow the
    fine-tuned target. Returns the number of frozen parameters."""
    if layers <= 0:
        return 0
    body = model.get_decoder()
    if layers > len(body.layers):
        raise ValueError(f"--freeze-layers {layers}: the target has {len(body.layers)} layers")
    parts = [model.get_input_embeddings(), model.get_output_embeddings(), body.norm, *body.layers[:layers]]
    frozen = {id(p): p for part in parts for p in part.parameters()}
    for p in frozen.values():
        p.requires_grad_(False)
    return sum(p.numel() for p in frozen.values())


def finetune(cfg: UnlikelihoodConfig, log=print) -> dict:
    torch.set_num_threads(cfg.threads)
    start = time.time()
    deadline = until_epoch(cfg.until, start) if cfg.until else float("inf")
    time_limit = start + cfg.seconds if cfg.seconds else float("inf")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "ckpt.pt"
    tok = AutoTokenizer.from_pretrained(cfg.target)
    model = AutoModelForCausalLM.from_pretrained(cfg.target, dtype=torch.float32).to(cfg.device)
    meta = (
        json.loads((Path(cfg.target) / SPECVIZ_META).read_text()) if (Path(cfg.target) / SPECVIZ_META).exists() else {}
    )
    # the target's trained exits (the default ones when it records none), those its depth has
    layers = model.config.num_hidden_layers
    exits = tuple(e for e in (meta.get("exits") or TrainConfig().target_exits) if e < layers)
    tcfg = TrainConfig(target_exits=exits, exit_weights=exit_weights_for(exits))
    if cfg.objective not in ("unlikelihood", "ditto"):
        raise ValueError(f"objective {cfg.objective!r}: unlikelihood or ditto")
    if cfg.objective == "ditto" and cfg.anchor_weight > 0:
        raise ValueError("--anchor-weight anchors the greedy text that only the unlikelihood objective generates")
    train = np.load(Path(cfg.corpus) / "train.npy", mmap_mode="r")
    heldout = np.load(Path(cfg.corpus) / "heldout.npy", mmap_mode="r")
    frozen = freeze_shared(model, cfg.freeze_layers)
    if frozen:
        log(f"frozen: {frozen:,} parameters (embedding and head, final norm, layers 0-{cfg.freeze_layers - 1})")
    trainable = [p for p in model.parameters() if p.requires_grad]
    reference = None
    if cfg.anchor_weight > 0:  # the target as this run found it (also on resume: --target is never written)
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, history = 0, []
    if ckpt_path.exists():
        state = torch.load(ckpt_path, weights_only=False, map_location=cfg.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["gen"])
        step, history = state["step"], state["history"]
        log(f"resumed {ckpt_path} at step {step}")
    model.train()

    def windows(length: int, count: int) -> torch.Tensor:
        starts = torch.randint(0, len(train) - length - 1, (count,), generator=gen).tolist()
        return torch.from_numpy(np.stack([train[s : s + length].astype(np.int64) for s in starts])).to(cfg.device)

    def evaluate() -> dict:
        with torch.no_grad(), autocast(cfg.device, cfg.amp):
            loss, _ = heldout_loss(model, heldout, cfg.eval_windows, 256)
        rec = {"event": "eval", "step": step, "heldout": round(loss, 4)}
        if cfg.objective == "ditto":  # the penalty never sees the greedy text: look at it here
            with torch.no_grad(), autocast(cfg.device, cfg.amp):
                seq = greedy_continuations(model, windows(cfg.prefix_tokens, cfg.ul_batch), cfg.new_tokens)
            rec["repeat_share"] = round(
                repeat_mask(seq.cpu(), cfg.prefix_tokens, cfg.ngram)[:, cfg.prefix_tokens :].float().mean().item(), 4
            )
        history.append(rec)
        log(
            f"eval step {step}: held-out {loss:.4f}"
            + (f", repeated share of its greedy text {rec['repeat_share']:.3f}" if "repeat_share" in rec else "")
        )
        return rec

    def save(final: bool) -> None:
        save_atomic(
            {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "gen": gen.get_state(),
                "step": step,
                "history": history,
                "config": asdict(cfg),
            },
            ckpt_path,
        )
        if final:
            # the target's specviz.json travels with the model: no machine's paths in it
            record = scrub({"steps": step, "from": cfg.target, "config": asdict(cfg), "history": history})
            save_hf_fp32(model, tok, out / "target", {**meta, "unlikelihood": record})

    if not history:
        evaluate()
    last_ckpt = time.time()
    steps_here, step_seconds = 0, 0.0
    timed_out = False
    while step < cfg.steps:
        if cfg.max_steps and steps_here >= cfg.max_steps:
            break
        if time.time() + step_seconds > time_limit:
            log(f"--seconds {cfg.seconds:g}: finishing at step {step}")
            timed_out = True
            break
        if time.time() + 2 * step_seconds + 30 > deadline:
            log("deadline: stopping")
            break
        t = time.time()
        set_lr(opt, cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps))
        with autocast(cfg.device, cfg.amp):
            mle, parts = multi_exit_loss(model, windows(cfg.mle_seq_len + 1, cfg.mle_batch), tcfg, gen)
            if cfg.objective == "ditto":
                seq, periods = pseudo_repetitions(
                    train, gen, cfg.ul_batch, cfg.prefix_tokens, cfg.ditto_len, cfg.span_min, cfg.span_max
                )
                ul, anchor = (
                    ditto_loss(model, seq.to(cfg.device), cfg.prefix_tokens, periods, cfg.ditto_ratio),
                    mle * 0.0,
                )
                share = None  # no greedy text in a DITTO step; evaluate() measures it
            else:
                seq = greedy_continuations(model, windows(cfg.prefix_tokens, cfg.ul_batch), cfg.new_tokens)
                mask = repeat_mask(seq.cpu(), cfg.prefix_tokens, cfg.ngram).to(seq.device)
                ul, anchor = own_text_losses(model, reference, seq, mask, cfg.prefix_tokens)
                share = mask[:, cfg.prefix_tokens :].float().mean().item()
            loss = mle + cfg.ul_weight * ul + cfg.anchor_weight * anchor
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        step += 1
        steps_here += 1
        step_seconds = time.time() - t
        history.append(
            {
                "event": "train",
                "step": step,
                "mle": round(parts["final"], 4),
                "ul": round(ul.item(), 4),
                "anchor": round(anchor.item(), 6),
                "seconds": round(step_seconds, 2),
            }
            | ({} if share is None else {"repeat_share": round(share, 4)})
        )
        log(
            f"step {step}/{cfg.steps} mle {parts['final']:.3f} {cfg.objective} {ul.item():.3f} "
            f"anchor {anchor.item():.3f}"
            + ("" if share is None else f" repeated share of its greedy text {share:.3f}")
            + f" [{step_seconds:.1f} s]"
        )
        if cfg.eval_every and step % cfg.eval_every == 0:
            evaluate()
        if time.time() - last_ckpt >= cfg.ckpt_minutes * 60:
            save(final=False)
            last_ckpt = time.time()
    done = step >= cfg.steps or timed_out
    if done and history[-1].get("event") != "eval":
        evaluate()
    save(final=done)
    log(
        f"{'done' if done else 'stopped'} at step {step}/{cfg.steps}"
        + (f": {out / 'target'}" if done else ": run the same command to resume")
    )
    return {"step": step, "done": done, "history": history}


def main(argv: list[str] | None = None) -> int:
    d = UnlikelihoodConfig(target="", corpus="", out="")
    parser = argparse.ArgumentParser(
        prog="python -m specviz.workshop.unlikelihood", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--target", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--out", required=True)
    for name in (
        "steps",
        "threads",
        "max_steps",
        "ul_batch",
        "new_tokens",
        "prefix_tokens",
        "mle_batch",
        "mle_seq_len",
        "eval_every",
        "eval_windows",
        "ngram",
        "warmup_steps",
        "freeze_layers",
        "ditto_len",
        "span_min",
        "span_max",
    ):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "ul_weight", "ckpt_minutes", "anchor_weight", "ditto_ratio"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    parser.add_argument("--objective", default=d.objective, choices=("unlikelihood", "ditto"))
    parser.add_argument("--until", default="")
    parser.add_argument("--seconds", type=float, default=0.0, help="finish after this many seconds")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default="", choices=("", "bf16", "fp16"))
    args = parser.parse_args(argv)
    result = finetune(UnlikelihoodConfig(**vars(args)))
    return 0 if result["done"] else 75


if __name__ == "__main__":
    raise SystemExit(main())
