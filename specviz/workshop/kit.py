"""The training kit every trainer shares: batches, models from configs, the schedule, the losses, saving."""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from specviz.engine.adapter import KangarooAdapter
from specviz.workshop.config import SPECVIZ_META, TrainConfig


class Batches:
    """Random windows of a token stream, from a seeded generator."""

    def __init__(self, stream: np.ndarray, cfg: TrainConfig, seed: int):
        self.stream = torch.from_numpy(stream.astype(np.int64))
        self.cfg = cfg
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        n = len(self.stream) - self.cfg.seq_len - 1
        starts = torch.randint(0, n, (self.cfg.batch_size,), generator=self.gen)
        return torch.stack([self.stream[s : s + self.cfg.seq_len + 1] for s in starts.tolist()])  # (B, T+1)


# ----------------------------------------------------------------------------- models
def llama(cfg: TrainConfig, tok, layers: int, hidden: int, heads: int, ffn: int):
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=ffn,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.eos_token_id,
        rms_norm_eps=1e-6,
    )
    return LlamaForCausalLM(config)


def model_device(model) -> torch.device:
    return next(model.parameters()).device


def autocast(device: str | torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision for training on a GPU ("bf16" or "fp16"); "" = full precision (the CPU default)."""
    if not amp:
        return contextlib.nullcontext()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if amp not in dtypes:
        raise SystemExit(f"--amp {amp!r}: choose bf16, fp16 or nothing")
    return torch.autocast(device_type=torch.device(device).type, dtype=dtypes[amp])


def exit_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """Logits of an early exit: the shared final norm and LM head on a layer's output (an exit anywhere)."""
    return model.get_output_embeddings()(model.model.norm(hidden))


def lr_at(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer(params, lr: float) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95)
    )


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def multi_exit_loss(model, batch: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Next-token CE at the last layer plus weighted CE at each auxiliary exit (on a share of positions)."""
    x, y = batch[:, :-1], batch[:, 1:]
    out = model(x, output_hidden_states=True)
    vocab = out.logits.shape[-1]
    final = F.cross_entropy(out.logits.reshape(-1, vocab), y.reshape(-1))
    losses = {"final": final.item()}
    total = final
    flat_hidden = [h.reshape(-1, h.shape[-1]) for h in out.hidden_states]
    n = y.numel()
    keep = torch.randperm(n, generator=gen)[: max(1, int(n * cfg.aux_position_share))]
    for layer, weight in zip(cfg.target_exits, cfg.exit_weights):
        logits = exit_logits(model, flat_hidden[layer][keep])
        loss = F.cross_entropy(logits, y.reshape(-1)[keep])
        losses[f"exit{layer}"] = loss.item()
        total = total + weight * loss
    return total, losses


def soft_ce(student_logits: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """-sum_v p_T(v) log p_S(v), mean over positions: the distillation loss Kangaroo uses."""
    return -(teacher_logp.exp() * F.log_softmax(student_logits.float(), dim=-1)).sum(-1).mean()


@torch.no_grad()
def evaluate(models: dict, heldout: np.ndarray, cfg: TrainConfig, target, windows: int = 24) -> dict:
    """Held-out next-token loss of the target at each exit and of each student, plus each student's
    expected greedy agreement with the target (share of positions where the argmaxes match)."""
    gen = torch.Generator().manual_seed(1234)
    data = Batches(heldout, cfg, seed=4321)
    data.gen = gen
    sums: dict[str, float] = {}
    count = 0
    for _ in range(max(1, windows // cfg.batch_size)):
        batch = data.next().to(model_device(target))
        x, y = batch[:, :-1], batch[:, 1:]
        out = target(x, output_hidden_states=True)
        t_arg = out.logits.argmax(-1)
        parts = {"target": out.logits}
        for layer in cfg.target_exits:
            parts[f"target_exit{layer}"] = exit_logits(target, out.hidden_states[layer])
        for name, fn in models.items():
            for sub, logits in fn(x, out).items():
                parts[f"{name}{sub}"] = logits
        for name, logits in parts.items():
            sums[f"loss/{name}"] = (
                sums.get(f"loss/{name}", 0.0)
                + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
            )
            sums[f"agree/{name}"] = sums.get(f"agree/{name}", 0.0) + (logits.argmax(-1) == t_arg).float().mean().item()
        count += 1
    return {k: round(v / count, 4) for k, v in sums.items()}


def save_hf(model, tok, directory: Path, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(directory, max_shard_size="9MB")
    model.to(torch.float32)
    tok.save_pretrained(directory)
    (directory / SPECVIZ_META).write_text(json.dumps(meta, indent=2) + "\n")


def sorted_logits(model, x: torch.Tensor, layers: int) -> dict[str, torch.Tensor]:
    """Logits after each of the sorted drafter's first k layers (SoFT exits share norm and head)."""
    out = model(x, output_hidden_states=True)
    subs = {f"_k{k}": exit_logits(model, out.hidden_states[k]) for k in range(1, layers)}
    subs[f"_k{layers}"] = out.logits
    return subs


def adapter_logits(adapter: KangarooAdapter, target, hidden_l: torch.Tensor) -> torch.Tensor:
    b, t, _ = hidden_l.shape
    pos = torch.arange(t, device=hidden_l.device).unsqueeze(0).expand(b, t)
    return exit_logits(target, adapter(hidden_l, pos))


@contextlib.contextmanager
def stop_flag():
    """{"signal": None}, set by SIGTERM/SIGINT: the loop saves at the next step boundary and returns.
    The previous handlers come back afterwards (tests run this in-process)."""
    flag: dict = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def on_signal(signum, _frame):
        flag["signal"] = signum

    for sig in previous:
        signal.signal(sig, on_signal)
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def save_atomic(state: dict, path: Path) -> None:
    """A checkpoint written beside `path` and then swapped in, so a kill mid-write leaves the previous one whole."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
