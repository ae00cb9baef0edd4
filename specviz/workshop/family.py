"""The first embedded family's phases: the target, the distilled drafters and exits, the refinement."""

from __future__ import annotations

import json
import random
import sysconfig
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from specviz.engine.adapter import KangarooAdapter
from specviz.workshop.config import EOS, SPECVIZ_META, TrainConfig
from specviz.workshop.kit import (
    Batches,
    adapter_logits,
    evaluate,
    llama,
    lr_at,
    model_device,
    multi_exit_loss,
    optimizer,
    save_hf,
    set_lr,
    soft_ce,
    sorted_logits,
)


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
            log(
                f"target step {step}/{cfg.target_steps} "
                + " ".join(f"{k}={v:.3f}" for k, v in parts.items())
                + f" {tps:.0f} tok/s"
            )
    return model.eval()


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
            "sorted": sum(
                soft_ce(logits, teacher_logp) for logits in sorted_logits(sorted_drafter, x, cfg.sorted_layers).values()
            )
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
            log(
                f"distill step {step}/{cfg.distill_steps} "
                + " ".join(f"{k}={v.item():.3f}" for k, v in losses.items())
                + f" {tps:.0f} tok/s"
            )
    return drafter.eval(), sorted_drafter.eval(), adapter.eval()


@torch.no_grad()
def target_continuations(target, data: "Batches", cfg: TrainConfig) -> torch.Tensor:
    """A batch of corpus windows whose tail is replaced by the target's own greedy continuation."""
    prompts = data.next()[:, : cfg.refine_prompt].to(model_device(target))
    new = cfg.seq_len + 1 - cfg.refine_prompt
    out = target.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        pad_token_id=target.config.pad_token_id,
    )
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
            log(
                f"refine step {step}/{cfg.refine_steps} drafter={loss.item():.3f} "
                f"({'target continuations' if step % 2 else 'corpus'}) {(time.time() - start) / (step + 1):.2f} s/step"
            )
    return drafter.eval()


@torch.no_grad()
def calibrate_vocab(cfg: TrainConfig, tok, target, heldout_texts: list[str], log) -> dict:
    """VocabTrim calibration: how often the target itself emits each id when it generates greedily."""
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
    gen_cfg = GenerationConfig(
        max_new_tokens=cfg.calibration_tokens, do_sample=False, eos_token_id=None, pad_token_id=tok.eos_token_id
    )
    for i, prompt in enumerate(prompts):
        ids = tok(prompt, return_tensors="pt").input_ids[:, -128:].to(model_device(target))
        out = target.generate(ids, generation_config=gen_cfg)
        np.add.at(counts, out[0, ids.shape[1] :].cpu().numpy(), 1)
        if i % 12 == 0:
            log(f"calibration prompt {i}/{len(prompts)}")
    order = sorted(range(len(tok)), key=lambda i: (-counts[i], i))
    return {
        "description": "Token ids ranked by how often the embedded target emitted them when generating greedily "
        f"{cfg.calibration_tokens} tokens after each of {len(prompts)} held-out stdlib snippets "
        "(VocabTrim calibration).",
        "total_tokens": int(counts.sum()),
        "ranked_ids": order,
        "counts": [int(counts[i]) for i in order],
    }


def model_card(cfg: TrainConfig, stats: dict, params: dict, minutes: dict, refined_separately: bool = False) -> str:
    refined_note = (
        "\nThe refinement was run on the saved models by "
        f"`python -m specviz.workshop.train --refine-only --out {cfg.out}`."
        if refined_separately
        else ""
    )
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(stats.items()))
    sizes = "\n".join(f"| {k} | {v / 1e6:.2f} M |" for k, v in params.items())
    times = ", ".join(f"{k} {v:.1f} min" for k, v in minutes.items())
    return f"""# specviz embedded models

Trained on this project's CI machine kind (2 CPU cores, fp32, PyTorch {torch.__version__}) by

    python -m specviz.workshop.train --out {cfg.out}

Seeded ({cfg.seed}) and step-counted, so a re-run reproduces them up to float non-determinism of
the CPU kernels. Wall time: {times}.

Corpus: the Python {sysconfig.get_python_version()} standard library's `.py` sources (without tests and
site-packages) and the prose of `pydoc_data/topics.py`; {cfg.heldout_share:.0%} of files (by a hash
of the name) held out. Byte-level BPE, {cfg.vocab_size} ids, `{EOS}` as EOS/BOS/PAD.

| model | directory | shape | role |
|---|---|---|---|
| target | `target/` | Llama {cfg.target_layers} x {cfg.target_hidden}, FFN {cfg.target_ffn} | \
exits after layers {", ".join(map(str, cfg.target_exits))} and {cfg.target_layers} share the final norm + LM head |
| drafter | `drafter/` | Llama {cfg.drafter_layers} x {cfg.student_hidden} | \
separate drafter (draft_model), distilled from the target |
| sorted drafter | `sorted-drafter/` | Llama {cfg.sorted_layers} x {cfg.student_hidden} | \
S2D: SoFT-trained exits after each layer |
| Kangaroo adapter | `kangaroo-adapter/` | attention-only block on layer {cfg.kangaroo_exit} | \
Kangaroo self-drafter with the target's own norm + head |
| VocabTrim ranking | `vocabtrim/target-token-ranking.json` | ids by target-generated frequency | \
VocabTrim's drafter head subset |

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
    saved_cfg = TrainConfig(
        **{
            **record["config"],
            "target_exits": tuple(record["config"]["target_exits"]),
            "exit_weights": tuple(record["config"]["exit_weights"]),
        }
    )
    (out / "README.md").write_text(
        model_card(saved_cfg, record["heldout"], record["params"], record["minutes"], refined_separately=True)
    )
    log(f"refined drafter saved to {out / 'drafter'}")
