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
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sysconfig
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .adapter import AdapterConfig, KangarooAdapter

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


def read_corpus(cfg: TrainConfig) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts), split by a hash of the file name so the split is stable."""
    train, heldout = [], []
    for path in corpus_files(cfg):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if path.name == "topics.py" and path.parent.name == "pydoc_data":
            text = pydoc_topics_text(path)
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
        batch = data.next()
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
    pos = torch.arange(t).unsqueeze(0).expand(b, t)
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
    prompts = data.next()[:, : cfg.refine_prompt]
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
        ids = tok(prompt, return_tensors="pt").input_ids[:, -128:]
        out = target.generate(ids, generation_config=gen_cfg)
        np.add.at(counts, out[0, ids.shape[1] :].numpy(), 1)
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


def len_or(cfg: TrainConfig) -> int:
    return cfg.vocab_size


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Train specviz's embedded models.")
    parser.add_argument("--out", default="assets/models")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few steps: a smoke test of every phase")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--target-steps", type=int, default=None)
    parser.add_argument("--distill-steps", type=int, default=None)
    parser.add_argument("--refine-steps", type=int, default=None)
    parser.add_argument("--refine-only", action="store_true",
                        help="load the target and drafter saved in --out and run only the drafter refinement phase")
    args = parser.parse_args(argv)
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
