"""Continued training of the target (checkpointed, resumable, a time budget, a warmup-stable-decay schedule)."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from specviz.paths import cache_dir as specviz_cache
from specviz.paths import portable
from specviz.workshop import corpus as corpus_mod
from specviz.workshop.config import SPECVIZ_META, TrainConfig, exit_weights_for
from specviz.workshop.kit import autocast, evaluate, model_device, multi_exit_loss, save_atomic, set_lr, stop_flag


# ----------------------------------------------------------------------------- continued training (issue 16)
@dataclass(frozen=True)
class ContinueConfig:
    """Warm-start the saved target (same shape, tokenizer and exits) on the bigger corpus of
    specviz.workshop.corpus, with a sequence-length curriculum up to the configs' 2,048 positions, resumable
    from checkpoints in run_dir (outside the work tree) and stopping cleanly at a wall-clock deadline."""

    run_dir: str = field(default_factory=lambda: str(specviz_cache("train")))  # outside the work tree
    init: str = "assets/models/target"  # warm start (first run only; later runs resume run_dir/ckpt.pt)
    corpus: str = ""  # a built corpus (manifest.json + .npy) or a tree of .py files; "" = build from PACKAGES
    cache_dir: str = ""  # pip download cache ("" = specviz.workshop.corpus.DEFAULT_CACHE)
    seed: int = 0
    tokens_per_step: int = 4096
    # (share of total_tokens from which it applies, sequence length): 256 -> 512 -> 1024 -> 2048
    curriculum: tuple[tuple[float, int], ...] = ((0.0, 256), (0.3, 512), (0.55, 1024), (0.75, 2048))
    total_tokens: int = (
        16_000_000  # the plan over all sessions (~4 x 2 h at 1 thread); lr and curriculum follow tokens / this
    )
    peak_lr: float = 1e-3
    final_lr_share: float = 0.1
    warmup_steps: int = 100
    decay_share: float = 0.2  # warmup-stable-decay: linear decay over the last 20 % of total_tokens
    weight_decay: float = 0.1
    ckpt_minutes: float = 5.0
    eval_minutes: float = 10.0
    eval_windows: int = 32  # of 256 tokens per held-out split, fixed positions
    long_eval_windows: int = 4  # of 2,048 tokens from the new held-out split
    budget_minutes: float = 110.0
    until: str = ""  # "HH:MM" UTC: stop (and save) before this time too
    max_steps: int = 0  # steps in this invocation (0 = no limit), for tests
    threads: int = 1
    device: str = "cpu"  # "cuda" on a lent GPU
    amp: str = ""  # "bf16" there: mixed precision (fp32 master weights and optimizer state)
    # Re-plan total_tokens from the measured speed so that the decay ends at the deadline: a single GPU
    # lease has a fixed number of minutes, not a fixed number of tokens. Frozen once the decay begins.
    fit_to_budget: bool = False
    reserve_seconds: float = 60.0  # kept free before the deadline for the last evaluation and save
    quick: bool = False

    def quickened(self) -> "ContinueConfig":
        return ContinueConfig(
            **{
                **asdict(self),
                "run_dir": str(specviz_cache("train-quick")),
                "tokens_per_step": 256,
                "curriculum": ((0.0, 32), (0.5, 64)),
                "total_tokens": 256 * 12,
                "warmup_steps": 2,
                "ckpt_minutes": 0.0,
                "eval_minutes": 0.0,
                "eval_windows": 4,
                "long_eval_windows": 1,
                "quick": True,
            }
        )


RUN_RECORD = "run.json"  # the checkpoint's bookkeeping without its tensors, beside ckpt.pt
RUN_RECORD_KEYS = ("step", "tokens", "train_seconds", "config", "saved")


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


def until_epoch(until: str, start: float) -> float:
    """The first moment at or after `start` whose UTC clock reads `until` ("HH:MM"): a session's stop time."""
    hh, mm = map(int, until.split(":"))
    now = time.gmtime(start)
    moment = start - (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec) + hh * 3600 + mm * 60
    return moment + 86400 if moment < start else moment


def curriculum_seq_len(ccfg: ContinueConfig, tokens: int) -> int:
    seq = ccfg.curriculum[0][1]
    for share, length in ccfg.curriculum:
        if tokens >= share * ccfg.total_tokens:
            seq = length
    return seq


def wsd_lr(ccfg: ContinueConfig, step: int, tokens: int) -> float:
    """Warmup (steps), then flat, then linear decay to final_lr_share over the last decay_share of tokens."""
    peak = ccfg.peak_lr
    if step < ccfg.warmup_steps:
        return peak * (step + 1) / ccfg.warmup_steps
    decay_from = (1 - ccfg.decay_share) * ccfg.total_tokens
    if tokens <= decay_from:
        return peak
    progress = min(1.0, (tokens - decay_from) / max(1.0, ccfg.decay_share * ccfg.total_tokens))
    return peak * (1 - (1 - ccfg.final_lr_share) * progress)


class WindowStream:
    """Non-overlapping windows of seq_len + 1 tokens in a seeded random order, one epoch after another;
    its whole position is {seq_len, epoch, index}, saved in every checkpoint."""

    def __init__(self, stream: np.ndarray, seed: int, state: dict | None = None):
        self.stream = stream
        self.seed = seed
        self.state = dict(state or {"seq_len": 0, "epoch": 0, "index": 0})
        self._order: tuple | None = None

    def _windows(self, seq_len: int, epoch: int) -> tuple[int, np.ndarray]:
        if self._order is None or self._order[:2] != (seq_len, epoch):
            rng = np.random.default_rng([self.seed, seq_len, epoch])
            offset = int(rng.integers(0, seq_len))
            n = (len(self.stream) - offset - 1) // seq_len
            self._order = (seq_len, epoch, offset, rng.permutation(n))
        return self._order[2], self._order[3]

    def next(self, seq_len: int, batch_size: int) -> torch.Tensor:
        if self.state["seq_len"] != seq_len:
            self.state = {"seq_len": seq_len, "epoch": 0, "index": 0}
        rows = []
        while len(rows) < batch_size:
            offset, order = self._windows(seq_len, self.state["epoch"])
            if self.state["index"] >= len(order):
                self.state["epoch"] += 1
                self.state["index"] = 0
                continue
            start = offset + int(order[self.state["index"]]) * seq_len
            self.state["index"] += 1
            rows.append(self.stream[start : start + seq_len + 1].astype(np.int64))
        return torch.from_numpy(np.stack(rows))


def window_starts(length: int, windows: int, seq_len: int) -> np.ndarray:
    """Where heldout_loss's windows start in a split of `length` tokens: evenly spaced, so every evaluation of
    the split (and specviz.workshop.quality's readings of the same windows) sees the same text."""
    return np.linspace(0, length - seq_len - 2, windows).astype(np.int64)


@torch.no_grad()
def heldout_loss(model, ids: np.ndarray, windows: int, seq_len: int, batch: int = 8) -> tuple[float, float]:
    """Mean next-token loss over `windows` evenly spaced windows (fixed positions: comparable across
    runs), and the loss over the second half of each window's positions (what long context buys)."""
    if len(ids) < seq_len + 2 or windows < 1:
        return float("nan"), float("nan")
    starts = window_starts(len(ids), windows, seq_len)
    total, late, count = 0.0, 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(starts), batch):
        x = torch.from_numpy(np.stack([ids[s : s + seq_len + 1].astype(np.int64) for s in starts[i : i + batch]]))
        x = x.to(model_device(model))
        logits = model(x[:, :-1]).logits
        loss = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (B, T)
        total += loss.mean(1).sum().item()
        late += loss[:, seq_len // 2 :].mean(1).sum().item()
        count += x.shape[0]
    model.train(was_training)
    return total / count, late / count


def save_hf_fp32(model, tok, directory: Path, meta: dict) -> None:
    """An fp32 HF checkpoint, written beside and then swapped in (never half-written)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / SPECVIZ_META).write_text(json.dumps(meta, indent=2) + "\n")
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def continue_corpus(ccfg: ContinueConfig, tok, run_dir: Path, log) -> tuple[dict, dict]:
    """The token streams: a built corpus given by --corpus, the one already in run_dir/corpus, or built now."""
    vocab_sha = hashlib.sha1(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest()
    given = Path(ccfg.corpus) if ccfg.corpus else None
    if given is not None and (given / "manifest.json").exists():
        where = given
    else:
        where = run_dir / ("corpus" if given is None else "corpus-from-dir")
        if (
            not (where / "manifest.json").exists()
            or json.loads((where / "manifest.json").read_text())["tokenizer_sha1"] != vocab_sha
        ):
            packages = corpus_mod.PACKAGES
            if ccfg.quick:
                packages = tuple(p for p in packages if p.name in ("attrs", "click"))
            if given is not None:
                packages = ()  # a tree of .py files instead of the pinned packages
            cache = Path(ccfg.cache_dir) if ccfg.cache_dir else corpus_mod.DEFAULT_CACHE
            corpus_mod.build_corpus(where, tok, packages, cache, corpus_dir=given, log=log, quick_stdlib=ccfg.quick)
    streams, manifest = corpus_mod.load_corpus(where)
    if manifest["tokenizer_sha1"] != vocab_sha:
        raise SystemExit(f"{where} was tokenized with another tokenizer")
    return streams, manifest


def continue_target(ccfg: ContinueConfig, log) -> Path:
    """Train the saved target further; resumes run_dir/ckpt.pt when it exists. Returns the HF fp32 dir."""

    hf_logging.disable_progress_bar()
    t_start = time.time()
    deadline = t_start + ccfg.budget_minutes * 60
    if ccfg.until:
        deadline = min(deadline, until_epoch(ccfg.until, t_start))
    if ccfg.threads:
        torch.set_num_threads(ccfg.threads)
    run_dir = Path(ccfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "ckpt.pt"
    metrics = (run_dir / "metrics.jsonl").open("a")
    ckpt = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    init = Path(ckpt["init"]) if ckpt else Path(ccfg.init)
    tok = AutoTokenizer.from_pretrained(init)
    meta = json.loads((init / SPECVIZ_META).read_text()) if (init / SPECVIZ_META).exists() else {}
    streams, manifest = continue_corpus(ccfg, tok, run_dir, log)
    log(f"corpus: tokens {manifest['tokens']}, {manifest['files']} files, {manifest['bytes'] / 1e6:.1f} MB")
    model = AutoModelForCausalLM.from_pretrained(init, dtype=torch.float32).to(ccfg.device)
    if model_device(model).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    n_layers = model.config.num_hidden_layers
    exits = tuple(e for e in meta.get("exits", []) if e < n_layers) or TrainConfig().target_exits
    tcfg = TrainConfig(target_exits=exits, exit_weights=exit_weights_for(exits))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": ccfg.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=ccfg.peak_lr,
        betas=(0.9, 0.95),
        fused=model_device(model).type == "cuda",
    )
    data = WindowStream(streams["train"], ccfg.seed + 11)
    gen = torch.Generator().manual_seed(ccfg.seed + 12)
    step, tokens, seconds_before = 0, 0, 0.0
    if ckpt:
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        data.state = dict(ckpt["data"])
        gen.set_state(ckpt["gen"])
        torch.set_rng_state(ckpt["torch_rng"])
        np.random.set_state(ckpt["numpy_rng"])
        random.setstate(ckpt["python_rng"])
        step, tokens, seconds_before = ckpt["step"], ckpt["tokens"], ckpt.get("train_seconds", 0.0)
        if ccfg.fit_to_budget:  # the plan fitted by the earlier run stays (lr and curriculum follow it)
            ccfg = replace(ccfg, total_tokens=ckpt["config"]["total_tokens"])
        log(f"resumed {ckpt_path}: step {step}, {tokens} tokens, {seconds_before / 3600:.2f} h trained before")
    else:
        torch.manual_seed(ccfg.seed)
        log(f"warm start from {init} ({sum(p.numel() for p in params) / 1e6:.2f} M params), exits {exits}")
    model.train()

    def evaluate_now() -> dict:
        t = time.time()
        new, _ = heldout_loss(model, streams["heldout"], ccfg.eval_windows, 256 if not ccfg.quick else 32)
        old, _ = heldout_loss(model, streams["heldout_stdlib"], ccfg.eval_windows, 256 if not ccfg.quick else 32)
        # the model card's own metric (train.evaluate: 3 seeded batches of 8 x 256) on the same old split: 4.5036 before
        card = (
            evaluate(
                {}, streams["heldout_stdlib"].astype(np.int32), TrainConfig(target_exits=tcfg.target_exits), model
            )["loss/target"]
            if len(streams["heldout_stdlib"]) > 300
            else float("nan")
        )
        model.train()
        long_len = 2048 if not ccfg.quick else 128
        long_all, long_late = heldout_loss(model, streams["heldout"], ccfg.long_eval_windows, long_len, batch=1)
        rec = {
            "event": "eval",
            "step": step,
            "tokens": tokens,
            "heldout": round(new, 4),
            "heldout_stdlib": round(old, 4),
            "heldout_stdlib_card_metric": card,
            f"heldout_{long_len}": round(long_all, 4),
            f"heldout_{long_len}_second_half": round(long_late, 4),
            "seconds": round(time.time() - t, 1),
            "time": time.strftime("%H:%M:%S", time.gmtime()),
        }
        log(
            f"eval step {step} tokens {tokens}: held-out {new:.4f} (new split), "
            f"{old:.4f} (old stdlib split; model-card metric {card:.4f}), "
            f"{long_all:.4f} at {long_len} tokens ({long_late:.4f} on positions >= {long_len // 2}) "
            f"[{rec['seconds']} s]"
        )
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        return rec

    def save(reason: str) -> None:
        t = time.time()
        state = {
            "model": model.state_dict(),
            "optimizer": opt.state_dict(),
            "data": dict(data.state),
            "gen": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": np.random.get_state(),
            "python_rng": random.getstate(),
            "step": step,
            "tokens": tokens,
            "train_seconds": seconds_before + (time.time() - t_start),
            "init": str(init),
            "config": asdict(plan),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        save_atomic(state, ckpt_path)
        record = {k: state[k] for k in RUN_RECORD_KEYS} | {"device_name": device_name(model_device(model))}
        (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")  # what the model card reads
        save_hf_fp32(
            model,
            tok,
            run_dir / "hf" / "target",
            {
                **meta,
                "continued": {
                    "step": step,
                    "tokens": tokens,
                    "corpus_tokens": manifest["tokens"],
                    "init": portable(init),
                },
            },
        )
        log(
            f"checkpoint ({reason}): step {step}, {tokens} tokens -> {ckpt_path} and {run_dir / 'hf' / 'target'} "
            f"[{time.time() - t:.1f} s]"
        )

    with stop_flag() as stop:
        if not ckpt:
            evaluate_now()
        last_ckpt = last_eval = time.time()
        window_t, window_cpu, window_tokens = time.time(), time.process_time(), 0
        step_seconds, steps_here = 0.0, 0
        plan = ccfg  # ccfg with total_tokens re-planned when fit_to_budget
        fit_from = (0, 0.0)  # (tokens, time) where the speed measurement starts: after warm-up steps
        while tokens < plan.total_tokens:
            if stop["signal"] is not None:
                log(f"signal {stop['signal']}: stopping")
                break
            if ccfg.max_steps and steps_here >= ccfg.max_steps:
                break
            if time.time() + 2 * step_seconds + ccfg.reserve_seconds * (not ccfg.quick) > deadline:
                log("wall-clock budget reached: stopping")
                break
            if ccfg.fit_to_budget:
                plan, fit_from = fitted_plan(plan, ccfg, steps_here, tokens, fit_from, deadline, log)
            t = time.time()
            seq_len = curriculum_seq_len(plan, tokens)
            batch_size = max(1, ccfg.tokens_per_step // seq_len)
            lr = wsd_lr(plan, step, tokens)
            set_lr(opt, lr)
            batch = data.next(seq_len, batch_size).to(ccfg.device, non_blocking=True)
            with autocast(ccfg.device, ccfg.amp):
                loss, parts = multi_exit_loss(model, batch, tcfg, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).item()
            opt.step()
            step += 1
            steps_here += 1
            tokens += batch_size * seq_len
            window_tokens += batch_size * seq_len
            step_seconds = time.time() - t
            if step % (1 if ccfg.quick else 10) == 0:
                wall, cpu = time.time() - window_t, time.process_time() - window_cpu
                rec = {
                    "event": "train",
                    "step": step,
                    "tokens": tokens,
                    "seq_len": seq_len,
                    "batch": batch_size,
                    "lr": lr,
                    "grad_norm": round(grad_norm, 3),
                    **{k: round(v, 4) for k, v in parts.items()},
                    "tok_s": round(window_tokens / max(wall, 1e-9)),
                    "tok_cpu_s": round(window_tokens / max(cpu, 1e-9)),
                }
                log(
                    f"step {step} tokens {tokens} seq {seq_len}x{batch_size} lr {lr:.2e} "
                    + " ".join(f"{k}={v:.3f}" for k, v in parts.items())
                    + f" gnorm {grad_norm:.2f} {rec['tok_s']} tok/s ({rec['tok_cpu_s']} per CPU-s)"
                )
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                window_t, window_cpu, window_tokens = time.time(), time.process_time(), 0
            if time.time() - last_eval >= ccfg.eval_minutes * 60:
                evaluate_now()
                last_eval = time.time()
            if time.time() - last_ckpt >= ccfg.ckpt_minutes * 60:
                save("periodic")
                last_ckpt = time.time()
        evaluate_now()
        save("end of run" if tokens < plan.total_tokens else "plan finished")
        metrics.close()
        log(f"done: step {step}, {tokens}/{plan.total_tokens} tokens; resume with the same command")
        return run_dir / "hf" / "target"


def fitted_plan(
    plan: ContinueConfig,
    ccfg: ContinueConfig,
    steps_here: int,
    tokens: int,
    fit_from: tuple[int, float],
    deadline: float,
    log,
) -> tuple[ContinueConfig, tuple[int, float]]:
    """total_tokens = tokens so far + measured tokens/s x the seconds left (less the reserve), re-planned every
    25 steps after 10 warm-up steps, until the decay has begun (then moving the end would bend the lr)."""
    now = time.time()
    if steps_here == 10:
        return plan, (tokens, now)
    if steps_here < 35 or steps_here % 25 or tokens >= (1 - plan.decay_share) * plan.total_tokens:
        return plan, fit_from
    rate = (tokens - fit_from[0]) / max(now - fit_from[1], 1e-9)
    total = int(tokens + rate * max(0.0, deadline - now - ccfg.reserve_seconds))
    if abs(total - plan.total_tokens) > 0.01 * plan.total_tokens:
        log(f"fit to budget: {rate:.0f} tok/s -> total_tokens {plan.total_tokens} -> {total}")
    return replace(plan, total_tokens=total), fit_from
