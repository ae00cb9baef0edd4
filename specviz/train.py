"""Reproduce the embedded models: `python -m specviz.train [--quick] [--out assets/models]`.

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

    python -m specviz.train --continue-target --threads 1 --until 08:15   # or scripts/train_background.sh
    python -m specviz.train --continue-target --quick                     # smoke test, seconds

It warm-starts assets/models/target (same shape, tokenizer and exits 2/4/6/8) on the bigger corpus of
specviz.corpus (the standard library plus pinned, permissively licensed packages fetched by pip),
with a 256 -> 512 -> 1024 -> 2048-token sequence curriculum, AdamW and a warmup-stable-decay schedule
over --total-tokens; checkpoints (model, optimizer, data position, RNG, step), an HF fp32 copy,
the corpus and the logs live in --run-dir (default ~/.cache/specviz/train, specviz.paths),
and the same command resumes from there. Nothing is written into assets/models.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import random
import sysconfig
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .adapter import KangarooAdapter
from .paths import cache_dir as specviz_cache
from .paths import portable

EOS = "<|endoftext|>"
SPECVIZ_META = "specviz.json"  # extra metadata beside config.json: trained exits, nested targets


@dataclass(frozen=True)
class TrainConfig:
    out: str = "assets/models"
    seed: int = 0
    vocab_size: int = 8192
    seq_len: int = 256
    batch_size: int = 8
    # target
    target_layers: int = 12
    target_hidden: int = 256
    target_heads: int = 4
    target_ffn: int = 768
    target_exits: tuple[int, ...] = (2, 4, 6, 8)  # auxiliary exits; the last layer is always an exit
    exit_weights: tuple[float, ...] = (0.25, 0.25, 0.25, 0.5)
    aux_position_share: float = 0.25  # aux exits see this share of positions (their LM heads are costly)
    target_steps: int = 1000
    target_lr: float = 2e-3
    # students
    drafter_layers: int = 1
    sorted_layers: int = 3
    student_hidden: int = 256
    student_heads: int = 4
    student_ffn: int = 768
    kangaroo_exit: int = 2
    distill_steps: int = 450
    student_lr: float = 2e-3
    # drafter refinement: the separate drafter distilled further, half the batches the target's own
    # greedy continuations (on-policy data, as in DistillSpec), which is the text it drafts at decode time
    refine_steps: int = 700
    refine_lr: float = 4e-4
    refine_prompt: int = 64  # corpus tokens before the target's continuation
    # calibration
    calibration_prompts: int = 48
    calibration_tokens: int = 96
    heldout_share: float = 0.03
    max_file_bytes: int = 400_000
    quick: bool = False
    threads: int = 0  # 0 = torch default

    def quickened(self) -> "TrainConfig":
        """Smoke-test sizes: the same code paths in about a minute."""
        return TrainConfig(
            **{
                **asdict(self),
                "vocab_size": 1024,
                "seq_len": 64,
                "batch_size": 4,
                "target_layers": 4,
                "target_hidden": 64,
                "target_heads": 2,
                "target_ffn": 128,
                "target_exits": (1, 2),
                "exit_weights": (0.5, 0.5),
                "target_steps": 20,
                "drafter_layers": 1,
                "sorted_layers": 2,
                "student_hidden": 64,
                "student_heads": 2,
                "student_ffn": 128,
                "kangaroo_exit": 1,
                "distill_steps": 10,
                "refine_steps": 4,
                "refine_prompt": 16,
                "calibration_prompts": 4,
                "calibration_tokens": 16,
                "max_file_bytes": 20_000,
                "heldout_share": 0.2,
                "quick": True,
            }
        )


# ----------------------------------------------------------------------------- corpus
def corpus_files(cfg: TrainConfig) -> list[Path]:
    """Standard-library sources (no tests, no site-packages) and the pydoc topics, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__", "dist-packages"}
    files = [
        p
        for p in sorted(root.rglob("*.py"))
        if not (set(p.relative_to(root).parts) & skip) and p.stat().st_size <= cfg.max_file_bytes
    ]
    topics = root / "pydoc_data" / "topics.py"
    if topics.exists() and topics not in files:
        files.append(topics)
    if cfg.quick:
        files = files[::25]
    return files


def pydoc_topics_text(path: Path) -> str:
    """pydoc_data/topics.py holds the language reference as a dict of strings: train on the prose."""
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # stdlib file, trusted
    return "\n\n".join(namespace.get("topics", {}).values())


def stdlib_texts(cfg: TrainConfig):
    """(path, text) of every readable corpus file (pydoc topics as their prose)."""
    for path in corpus_files(cfg):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.name == "topics.py" and path.parent.name == "pydoc_data":
            text = pydoc_topics_text(path)
        yield path, text


def read_corpus(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts), split by a hash of the file name so the split is stable."""
    train, heldout = [], []
    for path, text in stdlib_texts(cfg):
        bucket = int(hashlib.sha1(path.name.encode()).hexdigest(), 16) % 1000
        (heldout if bucket < cfg.heldout_share * 1000 else train).append(text)
    return train, heldout


# ----------------------------------------------------------------------------- tokenizer
def train_tokenizer(texts: list[str], cfg: TrainConfig):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    bpe.train_from_iterator(texts, vocab_size=cfg.vocab_size, min_frequency=2, special_tokens=[EOS], show_progress=False)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)
    tok.model_max_length = 2048
    return tok


def encode(tok, texts: list[str]) -> np.ndarray:
    eos = tok.eos_token_id
    ids: list[int] = []
    for batch_start in range(0, len(texts), 64):
        for row in tok(texts[batch_start : batch_start + 64], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
            ids.append(eos)
    return np.asarray(ids, dtype=np.int32)


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
    from transformers import LlamaConfig, LlamaForCausalLM

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
    """Logits of an early exit: the shared final norm and LM head on a layer's output."""
    return model.lm_head(model.model.norm(hidden))


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
            sums[f"loss/{name}"] = sums.get(f"loss/{name}", 0.0) + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()
            sums[f"agree/{name}"] = sums.get(f"agree/{name}", 0.0) + (logits.argmax(-1) == t_arg).float().mean().item()
        count += 1
    return {k: round(v / count, 4) for k, v in sums.items()}


def save_hf(model, tok, directory: Path, meta: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    model.to(torch.float16).save_pretrained(directory, max_shard_size="9MB")
    model.to(torch.float32)
    tok.save_pretrained(directory)
    (directory / SPECVIZ_META).write_text(json.dumps(meta, indent=2) + "\n")


# ----------------------------------------------------------------------------- phases
def train_target(cfg: TrainConfig, tok, train_ids: np.ndarray, log) -> torch.nn.Module:
    model = llama(cfg, tok, cfg.target_layers, cfg.target_hidden, cfg.target_heads, cfg.target_ffn)
    opt = optimizer(model.parameters(), cfg.target_lr)
    data = Batches(train_ids, cfg, seed=cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    model.train()
    start = time.time()
    for step in range(cfg.target_steps):
        set_lr(opt, lr_at(step, cfg.target_steps, cfg.target_lr))
        loss, parts = multi_exit_loss(model, data.next(), cfg, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == cfg.target_steps - 1:
            tps = (step + 1) * cfg.batch_size * cfg.seq_len / (time.time() - start)
            log(f"target step {step}/{cfg.target_steps} " + " ".join(f"{k}={v:.3f}" for k, v in parts.items()) + f" {tps:.0f} tok/s")
    return model.eval()


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


def distill(cfg: TrainConfig, tok, target, train_ids: np.ndarray, log):
    drafter = llama(cfg, tok, cfg.drafter_layers, cfg.student_hidden, cfg.student_heads, cfg.student_ffn)
    sorted_drafter = llama(cfg, tok, cfg.sorted_layers, cfg.student_hidden, cfg.student_heads, cfg.student_ffn)
    adapter = KangarooAdapter.for_target(target.config, cfg.kangaroo_exit)
    for p in target.parameters():
        p.requires_grad_(False)
    opts = {
        "drafter": optimizer(drafter.parameters(), cfg.student_lr),
        "sorted": optimizer(sorted_drafter.parameters(), cfg.student_lr),
        "adapter": optimizer(adapter.parameters(), cfg.student_lr),
    }
    data = Batches(train_ids, cfg, seed=cfg.seed + 3)
    for m in (drafter, sorted_drafter, adapter):
        m.train()
    start = time.time()
    for step in range(cfg.distill_steps):
        lr = lr_at(step, cfg.distill_steps, cfg.student_lr)
        for opt in opts.values():
            set_lr(opt, lr)
        x = data.next()[:, :-1]
        with torch.no_grad():
            out = target(x, output_hidden_states=True)
            teacher_logp = F.log_softmax(out.logits.float(), dim=-1)
            hidden_l = out.hidden_states[cfg.kangaroo_exit]
        losses = {
            "drafter": soft_ce(drafter(x).logits, teacher_logp),
            "sorted": sum(soft_ce(l, teacher_logp) for l in sorted_logits(sorted_drafter, x, cfg.sorted_layers).values())
            / cfg.sorted_layers,
            "adapter": soft_ce(adapter_logits(adapter, target, hidden_l), teacher_logp),
        }
        for name, loss in losses.items():
            opts[name].zero_grad(set_to_none=True)
            loss.backward()
            params = [p for g in opts[name].param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opts[name].step()
        if step % 25 == 0 or step == cfg.distill_steps - 1:
            tps = (step + 1) * cfg.batch_size * cfg.seq_len / (time.time() - start)
            log(f"distill step {step}/{cfg.distill_steps} " + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items()) + f" {tps:.0f} tok/s")
    return drafter.eval(), sorted_drafter.eval(), adapter.eval()


@torch.no_grad()
def target_continuations(target, data: "Batches", cfg: TrainConfig) -> torch.Tensor:
    """A batch of corpus windows whose tail is replaced by the target's own greedy continuation."""
    prompts = data.next()[:, : cfg.refine_prompt].to(model_device(target))
    new = cfg.seq_len + 1 - cfg.refine_prompt
    out = target.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=target.config.pad_token_id)
    return out[:, : cfg.seq_len + 1]


def refine_drafter(cfg: TrainConfig, target, drafter, train_ids: np.ndarray, log):
    """More distillation of the separate drafter alone; odd steps on the target's greedy continuations."""
    for p in target.parameters():
        p.requires_grad_(False)
    target.eval()
    drafter.train()
    opt = optimizer(drafter.parameters(), cfg.refine_lr)
    data = Batches(train_ids, cfg, seed=cfg.seed + 5)
    start = time.time()
    for step in range(cfg.refine_steps):
        set_lr(opt, lr_at(step, cfg.refine_steps, cfg.refine_lr))
        batch = target_continuations(target, data, cfg) if step % 2 else data.next()
        x = batch[:, :-1]
        with torch.no_grad():
            teacher_logp = F.log_softmax(target(x).logits.float(), dim=-1)
        loss = soft_ce(drafter(x).logits, teacher_logp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(drafter.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == cfg.refine_steps - 1:
            log(f"refine step {step}/{cfg.refine_steps} drafter={loss.item():.3f} "
                f"({'target continuations' if step % 2 else 'corpus'}) {(time.time() - start) / (step + 1):.2f} s/step")
    return drafter.eval()


@torch.no_grad()
def calibrate_vocab(cfg: TrainConfig, tok, target, heldout_texts: list[str], log) -> dict:
    """VocabTrim calibration: how often the target itself emits each id when it generates greedily."""
    from transformers import GenerationConfig

    counts = np.zeros(len(tok), dtype=np.int64)
    rng = random.Random(cfg.seed)
    prompts = []
    for text in heldout_texts:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        if len(lines) > 8:
            start = rng.randrange(0, len(lines) - 4)
            prompts.append("\n".join(lines[start : start + 4]) + "\n")
    rng.shuffle(prompts)
    prompts = prompts[: cfg.calibration_prompts]
    gen_cfg = GenerationConfig(max_new_tokens=cfg.calibration_tokens, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id)
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, return_tensors="pt").input_ids[:, -128:].to(model_device(target))
        out = target.generate(ids, generation_config=gen_cfg)
        np.add.at(counts, out[0, ids.shape[1] :].cpu().numpy(), 1)
        if i % 12 == 0:
            log(f"calibration prompt {i}/{len(prompts)}")
    order = sorted(range(len(tok)), key=lambda i: (-counts[i], i))
    return {
        "description": "Token ids ranked by how often the embedded target emitted them when generating greedily "
        f"{cfg.calibration_tokens} tokens after each of {len(prompts)} held-out stdlib snippets (VocabTrim calibration).",
        "total_tokens": int(counts.sum()),
        "ranked_ids": order,
        "counts": [int(counts[i]) for i in order],
    }


def model_card(cfg: TrainConfig, stats: dict, params: dict, minutes: dict, refined_separately: bool = False) -> str:
    refined_note = (f"\nThe refinement was run on the saved models by `python -m specviz.train --refine-only --out {cfg.out}`."
                    if refined_separately else "")
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(stats.items()))
    sizes = "\n".join(f"| {k} | {v / 1e6:.2f} M |" for k, v in params.items())
    times = ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items())
    return f"""# specviz embedded models

Trained on this project's CI machine kind (2 CPU cores, fp32, PyTorch {torch.__version__}) by

    python -m specviz.train --out {cfg.out}

Seeded ({cfg.seed}) and step-counted, so a re-run reproduces them up to float non-determinism of
the CPU kernels. Wall time: {times}.

Corpus: the Python {sysconfig.get_python_version()} standard library's `.py` sources (without tests and
site-packages) and the prose of `pydoc_data/topics.py`; {cfg.heldout_share:.0%} of files (by a hash
of the name) held out. Byte-level BPE, {len_or(cfg)} ids, `{EOS}` as EOS/BOS/PAD.

| model | directory | shape | role |
|---|---|---|---|
| target | `target/` | Llama {cfg.target_layers} x {cfg.target_hidden}, FFN {cfg.target_ffn} | exits after layers {', '.join(map(str, cfg.target_exits))} and {cfg.target_layers} share the final norm + LM head |
| drafter | `drafter/` | Llama {cfg.drafter_layers} x {cfg.student_hidden} | separate drafter (draft_model), distilled from the target |
| sorted drafter | `sorted-drafter/` | Llama {cfg.sorted_layers} x {cfg.student_hidden} | S2D: SoFT-trained exits after each layer |
| Kangaroo adapter | `kangaroo-adapter/` | attention-only block on layer {cfg.kangaroo_exit} | Kangaroo self-drafter with the target's own norm + head |
| VocabTrim ranking | `vocabtrim/target-token-ranking.json` | ids by target-generated frequency | VocabTrim's drafter head subset |

Parameters:

| model | parameters |
|---|---|
{sizes}

Held-out next-token loss (nats/token) and greedy agreement with the target's final argmax:

| metric | value |
|---|---|
{rows}

Training: target {cfg.target_steps} steps of {cfg.batch_size} x {cfg.seq_len} tokens, AdamW (0.9, 0.95),
peak lr {cfg.target_lr}, cosine to 10 %; exit losses weighted {dict(zip(cfg.target_exits, cfg.exit_weights))}
on {cfg.aux_position_share:.0%} of positions. Students: {cfg.distill_steps} steps, soft cross-entropy to the
target's final distribution, peak lr {cfg.student_lr}. Then the separate drafter alone: {cfg.refine_steps} more steps at
peak lr {cfg.refine_lr}, every second batch the target's own greedy continuation of {cfg.refine_prompt} corpus tokens
(on-policy distillation, as in DistillSpec: the drafter learns the text it will draft at decode time).{refined_note}
These are teaching models: they write Python-looking text, not correct programs.
"""


def refine_saved(cfg: TrainConfig, tok, train_ids: np.ndarray, heldout_ids: np.ndarray, out: Path, log) -> None:
    """The refinement phase alone, on models already saved in `out` (same tokenizer: it is retrained
    deterministically from the same corpus and checked against the saved one)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if AutoTokenizer.from_pretrained(out / "target").get_vocab() != tok.get_vocab():
        raise SystemExit("the retrained tokenizer differs from the saved one: run the full pipeline instead")
    target = AutoModelForCausalLM.from_pretrained(out / "target", dtype=torch.float32)
    drafter = AutoModelForCausalLM.from_pretrained(out / "drafter", dtype=torch.float32)
    t = time.time()
    drafter = refine_drafter(cfg, target, drafter, train_ids, log)
    minutes = (time.time() - t) / 60
    stats = evaluate({"drafter": lambda x, o: {"": drafter(x).logits}}, heldout_ids, cfg, target)
    log(f"held-out after refinement: agree/drafter={stats['agree/drafter']} loss/drafter={stats['loss/drafter']}")
    meta = json.loads((out / "drafter" / SPECVIZ_META).read_text())
    save_hf(drafter, tok, out / "drafter", {**meta, "refined_steps": cfg.refine_steps})
    record = json.loads((out / "training-stats.json").read_text())
    record["heldout"].update({k: v for k, v in stats.items() if k.endswith("/drafter")})
    record["minutes"]["drafter refinement"] = minutes
    record["config"].update({k: v for k, v in asdict(cfg).items() if k.startswith("refine")})
    (out / "training-stats.json").write_text(json.dumps(record, indent=2) + "\n")
    saved_cfg = TrainConfig(**{**record["config"], "target_exits": tuple(record["config"]["target_exits"]),
                               "exit_weights": tuple(record["config"]["exit_weights"])})
    (out / "README.md").write_text(model_card(saved_cfg, record["heldout"], record["params"], record["minutes"],
                                                refined_separately=True))
    log(f"refined drafter saved to {out / 'drafter'}")


# ----------------------------------------------------------------------------- continued training (issue 16)
@dataclass(frozen=True)
class ContinueConfig:
    """Warm-start the saved target (same shape, tokenizer and exits) on the bigger corpus of
    specviz.corpus, with a sequence-length curriculum up to the configs' 2,048 positions, resumable
    from checkpoints in run_dir (outside the work tree) and stopping cleanly at a wall-clock deadline."""

    run_dir: str = field(default_factory=lambda: str(specviz_cache("train")))  # outside the work tree
    init: str = "assets/models/target"  # warm start (first run only; later runs resume run_dir/ckpt.pt)
    corpus: str = ""  # a built corpus (manifest.json + .npy) or a tree of .py files; "" = build from PACKAGES
    cache_dir: str = ""  # pip download cache ("" = specviz.corpus.DEFAULT_CACHE)
    seed: int = 0
    tokens_per_step: int = 4096
    # (share of total_tokens from which it applies, sequence length): 256 -> 512 -> 1024 -> 2048
    curriculum: tuple[tuple[float, int], ...] = ((0.0, 256), (0.3, 512), (0.55, 1024), (0.75, 2048))
    total_tokens: int = 16_000_000  # the plan over all sessions (~4 x 2 h at 1 thread); lr and curriculum follow tokens / this
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
        return ContinueConfig(**{**asdict(self), "run_dir": str(specviz_cache("train-quick")), "tokens_per_step": 256,
                                  "curriculum": ((0.0, 32), (0.5, 64)), "total_tokens": 256 * 12, "warmup_steps": 2,
                                  "ckpt_minutes": 0.0, "eval_minutes": 0.0, "eval_windows": 4, "long_eval_windows": 1,
                                  "quick": True})


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
    the split (and specviz.quality's readings of the same windows) sees the same text."""
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
    import shutil

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
    from . import corpus as corpus_mod

    vocab_sha = hashlib.sha1(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest()
    given = Path(ccfg.corpus) if ccfg.corpus else None
    if given is not None and (given / "manifest.json").exists():
        where = given
    else:
        where = run_dir / ("corpus" if given is None else "corpus-from-dir")
        if not (where / "manifest.json").exists() or json.loads((where / "manifest.json").read_text())["tokenizer_sha1"] != vocab_sha:
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
    import signal

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

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
    tcfg = TrainConfig(target_exits=exits, exit_weights=TrainConfig().exit_weights[-len(exits):] if len(exits) <= 4
                       else (0.25,) * len(exits))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": ccfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}],
                            lr=ccfg.peak_lr, betas=(0.9, 0.95), fused=model_device(model).type == "cuda")
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
        card = evaluate({}, streams["heldout_stdlib"].astype(np.int32), TrainConfig(target_exits=tcfg.target_exits), model)["loss/target"] \
            if len(streams["heldout_stdlib"]) > 300 else float("nan")
        model.train()
        long_len = 2048 if not ccfg.quick else 128
        long_all, long_late = heldout_loss(model, streams["heldout"], ccfg.long_eval_windows, long_len, batch=1)
        rec = {"event": "eval", "step": step, "tokens": tokens, "heldout": round(new, 4), "heldout_stdlib": round(old, 4),
               "heldout_stdlib_card_metric": card, f"heldout_{long_len}": round(long_all, 4), f"heldout_{long_len}_second_half": round(long_late, 4),
               "seconds": round(time.time() - t, 1), "time": time.strftime("%H:%M:%S", time.gmtime())}
        log(f"eval step {step} tokens {tokens}: held-out {new:.4f} (new split), {old:.4f} (old stdlib split; model-card metric {card:.4f}), "
            f"{long_all:.4f} at {long_len} tokens ({long_late:.4f} on positions >= {long_len // 2}) [{rec['seconds']} s]")
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
        return rec

    def save(reason: str) -> None:
        t = time.time()
        state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "data": dict(data.state), "gen": gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(), "python_rng": random.getstate(),
                 "step": step, "tokens": tokens, "train_seconds": seconds_before + (time.time() - t_start),
                 "init": str(init), "config": asdict(plan), "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        torch.save(state, run_dir / "ckpt.pt.tmp")
        (run_dir / "ckpt.pt.tmp").replace(ckpt_path)
        record = {k: state[k] for k in RUN_RECORD_KEYS} | {"device_name": device_name(model_device(model))}
        (run_dir / RUN_RECORD).write_text(json.dumps(record, indent=2) + "\n")  # what the model card reads
        save_hf_fp32(model, tok, run_dir / "hf" / "target",
                     {**meta, "continued": {"step": step, "tokens": tokens, "corpus_tokens": manifest["tokens"],
                                            "init": portable(init)}})
        log(f"checkpoint ({reason}): step {step}, {tokens} tokens -> {ckpt_path} and {run_dir / 'hf' / 'target'} "
            f"[{time.time() - t:.1f} s]")

    stop = {"signal": None}

    def on_signal(signum, _frame):
        stop["signal"] = signum

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
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
            rec = {"event": "train", "step": step, "tokens": tokens, "seq_len": seq_len, "batch": batch_size, "lr": lr,
                   "grad_norm": round(grad_norm, 3), **{k: round(v, 4) for k, v in parts.items()},
                   "tok_s": round(window_tokens / max(wall, 1e-9)), "tok_cpu_s": round(window_tokens / max(cpu, 1e-9))}
            log(f"step {step} tokens {tokens} seq {seq_len}x{batch_size} lr {lr:.2e} "
                + " ".join(f"{k}={v:.3f}" for k, v in parts.items())
                + f" gnorm {grad_norm:.2f} {rec['tok_s']} tok/s ({rec['tok_cpu_s']} per CPU-s)")
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


def fitted_plan(plan: ContinueConfig, ccfg: ContinueConfig, steps_here: int, tokens: int, fit_from: tuple[int, float],
                deadline: float, log) -> tuple[ContinueConfig, tuple[int, float]]:
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


def len_or(cfg: TrainConfig) -> int:
    return cfg.vocab_size


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("kangaroo-adapter", "sorted-drafter"):  # parts for a user's own target
        from .parts import main as parts_main

        parts_main(argv[0], argv[1:])
        return
    parser = argparse.ArgumentParser(description="Train specviz's embedded models; `kangaroo-adapter` and "
                                     "`sorted-drafter` train those parts for any Llama-family target (specviz.parts).")
    parser.add_argument("--out", default="assets/models")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test of every phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--target-steps", type=int, default=None)
    parser.add_argument("--distill-steps", type=int, default=None)
    parser.add_argument("--refine-steps", type=int, default=None)
    parser.add_argument("--refine-only", action="store_true",
                        help="load the target and drafter saved in --out and run only the drafter refinement phase")
    cont = parser.add_argument_group("continued training of the saved target on the bigger corpus (issue 16)")
    cont.add_argument("--continue-target", action="store_true",
                      help="warm-start --init (or resume --run-dir/ckpt.pt) on specviz.corpus with a 256->2048 curriculum")
    cont.add_argument("--run-dir", default=None,
                      help="checkpoints, HF fp32 copy, corpus and logs (default ~/.cache/specviz/train)")
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
    cont.add_argument("--fit-to-budget", action="store_true",
                      help="re-plan --total-tokens from the measured speed so the lr decay ends at the deadline")
    cont.add_argument("--reserve-seconds", type=float, default=None, help="kept before the deadline for the last eval and save")
    cont.add_argument("--warmup-steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.continue_target or args.build_corpus_only:
        ccfg = ContinueConfig(seed=args.seed, threads=args.threads or 1)
        if args.quick:
            ccfg = ccfg.quickened()
        overrides = {"run_dir": args.run_dir, "init": args.init, "corpus": args.corpus, "cache_dir": args.cache_dir,
                     "budget_minutes": args.budget_minutes, "until": args.until, "total_tokens": args.total_tokens,
                     "tokens_per_step": args.tokens_per_step, "peak_lr": args.peak_lr, "ckpt_minutes": args.ckpt_minutes,
                     "eval_minutes": args.eval_minutes, "max_steps": args.max_steps, "device": args.device, "amp": args.amp,
                     "fit_to_budget": args.fit_to_budget or None, "reserve_seconds": args.reserve_seconds,
                     "warmup_steps": args.warmup_steps}
        ccfg = ContinueConfig(**{**asdict(ccfg), **{k: v for k, v in overrides.items() if v not in (None, "")}})
        t0 = time.time()

        def clog(msg: str) -> None:
            print(f"[{time.strftime('%H:%M:%S', time.gmtime())} {(time.time() - t0) / 60:6.1f} min] {msg}", flush=True)

        clog(f"config: {json.dumps(asdict(ccfg))}")
        if args.build_corpus_only:
            from transformers import AutoTokenizer

            if ccfg.threads:
                torch.set_num_threads(ccfg.threads)
            continue_corpus(ccfg, AutoTokenizer.from_pretrained(ccfg.init), Path(ccfg.run_dir), clog)
            return
        continue_target(ccfg, clog)
        return
    cfg = TrainConfig(out=args.out, seed=args.seed, threads=args.threads)
    if args.quick:
        cfg = cfg.quickened()
    overrides = {k: v for k, v in {"target_steps": args.target_steps, "distill_steps": args.distill_steps,
                                   "refine_steps": args.refine_steps}.items() if v}
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
    log(f"corpus: {len(train_texts)} train files ({len(train_ids)} tokens), {len(heldout_texts)} held out ({len(heldout_ids)} tokens)")

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
    save_hf(target, tok, out / "target", {"exits": exits, "nested_targets": [cfg.target_exits[-1], cfg.target_layers], "kangaroo_exit": cfg.kangaroo_exit})
    save_hf(drafter, tok, out / "drafter", {"exits": [cfg.drafter_layers], "distilled_from": "target"})
    save_hf(sorted_drafter, tok, out / "sorted-drafter", {"exits": list(range(1, cfg.sorted_layers + 1)), "distilled_from": "target", "sorted": True})
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
    (out / "training-stats.json").write_text(json.dumps({"config": asdict(cfg), "heldout": stats, "params": params, "minutes": minutes}, indent=2) + "\n")
    log(f"saved to {out}; total {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
