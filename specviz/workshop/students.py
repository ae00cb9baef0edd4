"""Re-make the target's students from a (continued) target, keeping the drafters in step with it.

    python -m specviz.workshop.students --target RUN_DIR/hf/target --corpus RUN_DIR/corpus \\
        --out FAMILY [--budget-minutes M] [--until HH:MM] [--threads 1] [--quick]

(RUN_DIR: `python -m specviz.workshop.train --continue-target`'s run folder, ~/.cache/specviz/train by default.)

Why: a drafter is only as good as its agreement with *this* target. After the target is continued on
the bigger corpus (train.continue_target), the shipped drafter, sorted drafter and Kangaroo adapter
were distilled from a different teacher, and only on 256-token windows although the configs admit
2,048 positions (long prompts collapse acceptance). So, from the given target:

1. students: the separate drafter (1 layer; one layer past the Kangaroo exit, it starts as the adapter's
   draft path: graft_adapter), the sorted drafter (3 layers, SoFT exits) and the
   Kangaroo adapter on the target's layer-`kangaroo_exit` state, each warm-started from the shipped
   student when shapes and tokenizer match (else fresh: the target's first layers / the logit lens);
2. distill: one teacher forward per batch feeds all three (train.soft_ce to the target's final
   distribution), windows of the corpus's train.npy with a 256 -> 2,048 sequence-length curriculum;
3. refine: all three students, every second window's tail replaced by the target's own greedy continuation
   (on-policy, from onpolicy.OnPolicyPool: many rows per generate call, each served `pool_reuse` times), same
   curriculum, so long prompts are on-policy too;
4. finish: held-out loss/agreement (train.evaluate, at 256 and at the longest length), VocabTrim
   calibration (train.calibrate_vocab), everything saved in fp16 HF format like assets/models, plus
   `students-report.json` with the target's fingerprint (sha1 of its safetensors).

OUT is a drop-in for assets/models (`SPECVIZ_EMBEDDED_DIR=OUT`), and `load_pair(OUT/target, OUT/drafter)`
finds the Kangaroo adapter, sorted drafter and ranking through OUT/target/specviz-parts and
OUT/target/vocab_ranking.json (relative links to the top-level folders). Nothing is written into
assets/models. OUT/ckpt.pt (phase, step, models, optimizers, data positions, RNG) is written every
`ckpt_minutes`, at the deadline and on SIGTERM/SIGINT; the same command resumes it. Do not copy ckpt.pt,
students.log or the report into assets/models.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from specviz.engine.adapter import ADAPTER_CONFIG, AdapterConfig, KangarooAdapter
from specviz.engine.layers import cut_config
from specviz.models.hub import EMBEDDED_DIR, PARTS_DIR, RANKING_FILE
from specviz.models.parts import ADAPTER_DIR, SORTED_DIR
from specviz.models.parts import REPORT as PART_REPORT
from specviz.models.parts import fingerprint as parts_fingerprint
from specviz.paths import scrub
from specviz.workshop.config import SPECVIZ_META, TrainConfig
from specviz.workshop.continued import ContinueConfig, WindowStream, curriculum_seq_len, until_epoch
from specviz.workshop.corpus import load_corpus
from specviz.workshop.family import calibrate_vocab
from specviz.workshop.kit import (
    adapter_logits,
    autocast,
    evaluate,
    lr_at,
    model_device,
    optimizer,
    save_atomic,
    save_hf,
    set_lr,
    soft_ce,
    sorted_logits,
    stop_flag,
)
from specviz.workshop.onpolicy import OnPolicyPool, PoolConfig

CKPT = "ckpt.pt"
REPORT = "students-report.json"
LOG = "students.log"
PHASES = ("distill", "refine", "done")
FRESH = "fresh: "  # prefix of a student's start that is not a shipped student
RUN_CONTROL = (
    "budget_minutes",
    "until",
    "max_steps",
    "restart",
    "threads",
    "finish_minutes",
    "device",
    "amp",
    "finish_at_deadline",
)  # may change between runs
Log = Callable[[str], None]


@dataclass(frozen=True)
class StudentsConfig:
    """One student set from one target. Step counts are per phase; a step is `tokens_per_step` tokens
    (batch = tokens_per_step // seq_len), so curriculum shares of steps are shares of tokens."""

    target: str  # HF dir of the teacher (fp32 preferred); snapshot it first if something rewrites it
    corpus: str  # a built specviz.workshop.corpus dir: manifest.json + train/heldout/heldout_stdlib .npy
    out: str  # staging dir (a drop-in for assets/models) and the home of ckpt.pt
    warm_from: str = ""  # a models dir with drafter/, sorted-drafter/, kangaroo-adapter/ ("" = all fresh)
    seed: int = 0
    threads: int = 1
    drafter_layers: int = 1
    sorted_layers: int = 3  # capped at the target's depth - 1
    tokens_per_step: int = 2048  # as train.distill's 8 x 256
    # (share of the phase's steps from which it applies, sequence length), capped at max_position_embeddings
    curriculum: tuple[tuple[float, int], ...] = ((0.0, 256), (0.4, 512), (0.65, 1024), (0.85, 2048))
    warmup_steps: int = 50
    distill_steps: int = 450
    student_lr: float = 2e-3  # peak lr of a freshly initialised student (train.TrainConfig.student_lr)
    warm_lr: float = 1e-3  # peak lr of a warm-started student: it starts close, a full lr would shake it
    refine_steps: int = 500
    refine_lr: float = 4e-4
    refine_new: int = 192  # tokens of the target's greedy continuation at the end of an on-policy window
    refine_min_prompt: int = 64  # corpus tokens before it, at least
    refine_sorted: bool = True  # refine the sorted drafter on-policy too (S2D drafts chains from it as well)
    pool_steps: int = 4  # on-policy steps' worth of rows per generate call
    pool_reuse: int = 2  # times each generated row is served
    eval_seq_len: int = 256  # train.evaluate's windows: the model card's metric
    eval_windows: int = 24
    eval_long_windows: int = 4  # held-out windows at the curriculum's longest length, batch 1
    calibration_prompts: int = 48
    calibration_tokens: int = 96
    ckpt_minutes: float = 5.0
    log_every: int = 10  # steps
    budget_minutes: float = 110.0  # wall clock of this invocation
    until: str = ""  # "HH:MM" UTC: also stop (and save) before this
    finish_minutes: float = 3.0  # what the final phase needs (eval, calibration, saving); started only if it fits
    max_steps: int = 0  # training steps in this invocation (0 = no limit): tests and timings
    restart: bool = False  # discard out/ckpt.pt
    device: str = "cpu"  # "cuda" on a lent GPU
    amp: str = ""  # "bf16" there: mixed-precision forwards (fp32 weights and optimizer state)
    # Seconds of training per phase (0 = the step counts above): the step count is re-planned from the
    # measured step time, so a fixed GPU lease ends each phase's lr schedule on time.
    distill_seconds: float = 0.0
    refine_seconds: float = 0.0
    # A lease ends whatever runs at its limit: at the deadline, end training where it stands (the phase's
    # steps are the steps run) and finish, keeping finish_minutes for it, rather than stop to be resumed.
    finish_at_deadline: bool = False
    quick: bool = False

    def quickened(self) -> StudentsConfig:
        """Tiny steps and lengths: every phase, checkpoint and output in seconds on a tiny target."""
        return replace(
            self,
            tokens_per_step=64,
            curriculum=((0.0, 16), (0.5, 32)),
            warmup_steps=2,
            distill_steps=6,
            refine_steps=4,
            refine_new=8,
            refine_min_prompt=8,
            eval_seq_len=16,
            eval_windows=8,
            eval_long_windows=1,
            calibration_prompts=2,
            calibration_tokens=8,
            ckpt_minutes=0.0,
            log_every=1,
            finish_minutes=0.0,
            quick=True,
        )


@dataclass
class Students:
    """The three students and the optimizers of the current phase."""

    drafter: torch.nn.Module  # Llama, drafter_layers deep, the target's width and vocabulary
    sorted_drafter: torch.nn.Module  # Llama, sorted_layers deep, an exit after every layer
    adapter: KangarooAdapter  # reads the target's state after kangaroo_exit layers
    warm: dict[str, str] = field(default_factory=dict)  # student -> where its start came from
    opts: dict[str, torch.optim.Optimizer] = field(default_factory=dict)


@dataclass
class Teacher:
    """The target as every phase needs it."""

    model: torch.nn.Module  # fp32, eval, no grads
    tok: object  # its tokenizer (the students share it)
    meta: dict  # its specviz.json (exits, nested targets, Kangaroo exit), copied to OUT/target
    fingerprint: dict  # source dir, sha1 of its safetensors
    exits: tuple[int, ...]  # auxiliary exits below the last layer (evaluated like train.evaluate)
    kangaroo_exit: int  # the adapter reads the state after this many layers
    max_len: int  # longest window: max_position_embeddings (or a quarter of a tiny corpus)


@dataclass
class Progress:
    """Where a run stands; saved in ckpt.pt beside the weights, optimizers and RNG."""

    phase: str  # one of PHASES
    step: int  # steps done in this phase
    target: dict  # Teacher.fingerprint: a checkpoint resumes only with the same target
    warm: dict[str, str]  # Students.warm
    initial: dict  # held-out metrics of the starting students against this target
    seconds: dict[str, float] = field(
        default_factory=lambda: {"distill": 0.0, "refine": 0.0}
    )  # training time per phase
    data: dict[str, dict] = field(default_factory=dict)  # WindowStream.state per phase
    final: dict | None = None  # {"metrics", "ranking", "finish_seconds"} once measured and calibrated
    planned: dict[str, int] = field(default_factory=dict)  # phase -> steps fitted to its seconds (fit by time)
    pool: dict[str, int] = field(default_factory=dict)  # on-policy pool: generate calls, greedy tokens (all runs)


# ----------------------------------------------------------------------------- target and corpus
def target_fingerprint(directory: str | Path) -> dict:
    """sha1 over the target's safetensors files (sorted by name): a student set records it, so one
    distilled from an older target is detectable (see `stale`)."""
    h = hashlib.sha1()
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise SystemExit(f"no *.safetensors in {directory}")
    for path in files:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return {"sha1": h.hexdigest(), "files": [p.name for p in files]}


def stale(out: str | Path, target: str | Path) -> bool:
    """True when out's students were not distilled from this target (or were never finished)."""
    report = Path(out) / REPORT
    if not report.exists():
        return True
    return json.loads(report.read_text())["target"]["sha1"] != target_fingerprint(target)["sha1"]


def load_teacher(path: str, log: Log, device: str = "cpu") -> Teacher:
    """The target in fp32, re-read if its files change meanwhile (train.continue_target swaps its HF
    copy every few minutes; snapshotting it first is still the better habit)."""
    for _ in range(3):
        before = target_fingerprint(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        if target_fingerprint(path) == before:
            break
        log(f"{path} changed while loading; reading it again")
    else:
        raise SystemExit(f"{path} keeps changing: copy it somewhere still and pass that as --target")
    model.to(device).eval().requires_grad_(False)
    meta_path = Path(path) / SPECVIZ_META
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    depth = model.config.num_hidden_layers
    kangaroo_exit = int(meta.get("kangaroo_exit") or max(1, round(depth / 6)))
    if not 1 <= kangaroo_exit < depth:
        raise SystemExit(f"kangaroo_exit {kangaroo_exit} does not fit a {depth}-layer target")
    return Teacher(
        model=model,
        tok=AutoTokenizer.from_pretrained(path),
        meta=meta,
        fingerprint={"source": str(path), **before},
        exits=tuple(e for e in meta.get("exits", []) if 0 < e < depth),
        kangaroo_exit=kangaroo_exit,
        max_len=int(getattr(model.config, "max_position_embeddings", 2048) or 2048),
    )


def load_streams(corpus: str, tok) -> tuple[dict[str, np.ndarray], dict]:
    """specviz.workshop.corpus's token streams, checked to be this tokenizer's ids."""
    streams, manifest = load_corpus(Path(corpus))
    vocab_sha = hashlib.sha1(json.dumps(tok.get_vocab(), sort_keys=True).encode()).hexdigest()
    if manifest.get("tokenizer_sha1", vocab_sha) != vocab_sha:
        raise SystemExit(f"{corpus} was tokenized with another tokenizer than the target's")
    for name, ids in streams.items():
        if len(ids) and int(ids.max()) >= len(tok):
            raise SystemExit(f"{corpus}/{name}.npy holds ids beyond the tokenizer's {len(tok)}")
    return streams, manifest


# ----------------------------------------------------------------------------- students
def student_llama(target, layers: int):
    """The target's architecture cut to `layers` layers, randomly initialised (the shipped students' shape)."""
    return AutoModelForCausalLM.from_config(cut_config(target.config, layers), dtype=torch.float32)


def same_shape(a, b) -> bool:
    keys = (
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
    )
    return all(getattr(a, k, None) == getattr(b, k, None) for k in keys)


def graft_adapter(model, adapter: KangarooAdapter) -> bool:
    """Make layer l (= the adapter's exit) of a student cut from the target the Kangaroo adapter: its input
    norm and attention, and an MLP that adds nothing (down_proj zero; training may grow it). Layers [0, l)
    being the target's, the student then computes exactly Kangaroo's draft (target layers, adapter, final
    norm, head) as a plain causal LM. Why: a 1-layer drafter cannot copy and agrees 0.64-0.68 with the
    target's greedy text, the adapter path 0.82-0.86 (scripts/onpolicy_agreement.py --family). False when
    the layout is not Llama's."""
    exit_layer = adapter.config.exit_layer
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) != exit_layer + 1:
        return False
    layer = layers[exit_layer]
    if not all(hasattr(layer, name) for name in ("input_layernorm", "self_attn", "mlp")):
        return False
    config = model.config
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    mine = {k: v.shape for k, v in layer.self_attn.state_dict().items()}
    if (
        {k: v.shape for k, v in adapter.attn.state_dict().items()} != mine
        or rope != adapter.config.rope_theta
        or config.rms_norm_eps != adapter.config.rms_norm_eps
    ):
        return False  # another attention shape (e.g. grouped KV heads), RoPE base or norm: not the same function
    with torch.no_grad():
        layer.input_layernorm.load_state_dict(adapter.input_norm.state_dict())
        layer.self_attn.load_state_dict(adapter.attn.state_dict())
        layer.mlp.down_proj.weight.zero_()
    return True


def warm_llama(
    target, tok, layers: int, warm_dir: Path | None, log: Log, adapter: KangarooAdapter | None = None
) -> tuple[torch.nn.Module, str]:
    """A shipped student when it has this shape and tokenizer (it saves steps); else the target's first
    `layers` layers, embeddings, norm and head (as specviz.workshop.parts_training starts a sorted drafter), with the
    Kangaroo adapter grafted on as the last layer when `adapter` is given and reads the state after `layers - 1`."""
    model = student_llama(target, layers)
    if warm_dir is not None and (warm_dir / "config.json").exists():
        same_tok = AutoTokenizer.from_pretrained(warm_dir).get_vocab() == tok.get_vocab()
        if same_tok and same_shape(AutoConfig.from_pretrained(warm_dir), model.config):
            warm = AutoModelForCausalLM.from_pretrained(warm_dir, dtype=torch.float32)
            model.load_state_dict(warm.state_dict())
            return model, str(warm_dir)
        log(f"{warm_dir}: other shape or tokenizer, not a warm start")
    model.load_state_dict(target.state_dict(), strict=False)  # layers 0..k-1, embeddings, norm, head
    if adapter is not None and adapter.config.exit_layer == layers - 1 and graft_adapter(model, adapter):
        first = "layer" if layers == 2 else f"{layers - 1} layers"
        return model, FRESH + f"the target's first {first} and the Kangaroo adapter"
    return model, FRESH + "the target's first layers"


def warm_adapter(target, exit_layer: int, warm_dir: Path | None, log: Log) -> tuple[KangarooAdapter, str]:
    """The shipped adapter when its config matches; else a fresh one that starts as the logit lens."""
    fresh = KangarooAdapter.for_target(target.config, exit_layer, identity=True)
    if warm_dir is not None and (warm_dir / ADAPTER_CONFIG).exists():
        if AdapterConfig(**json.loads((warm_dir / ADAPTER_CONFIG).read_text())) == fresh.config:
            return KangarooAdapter.load(warm_dir, dtype=torch.float32).train(), str(warm_dir)
        log(f"{warm_dir}: another adapter shape or exit, not a warm start")
    return fresh, FRESH + "the logit lens"


def make_students(cfg: StudentsConfig, teacher: Teacher, log: Log) -> Students:
    root = Path(cfg.warm_from) if cfg.warm_from else None
    target, tok = teacher.model, teacher.tok
    sorted_layers = min(cfg.sorted_layers, target.config.num_hidden_layers - 1)
    adapter, a_from = warm_adapter(target, teacher.kangaroo_exit, root / "kangaroo-adapter" if root else None, log)
    drafter, d_from = warm_llama(
        target,
        tok,
        cfg.drafter_layers,
        root / "drafter" if root else None,
        log,
        adapter=adapter if not a_from.startswith(FRESH) else None,
    )
    sorted_drafter, s_from = warm_llama(target, tok, sorted_layers, root / "sorted-drafter" if root else None, log)
    device = model_device(target)
    drafter, sorted_drafter, adapter = drafter.to(device), sorted_drafter.to(device), adapter.to(device)
    return Students(drafter, sorted_drafter, adapter, warm={"drafter": d_from, "sorted": s_from, "adapter": a_from})


def phase_opts(cfg: StudentsConfig, s: Students, phase: str) -> dict[str, torch.optim.Optimizer]:
    """distill: one AdamW per student; refine: new ones for the students that draft whole chains from their
    own previous guesses (the sorted drafter too unless `refine_sorted` is off: left as distilled, S2D's
    acceptance stayed at 0.17-0.23 with the GPU-trained target)."""
    if phase == "refine":
        refined = [("drafter", s.drafter), ("adapter", s.adapter)] + (
            [("sorted", s.sorted_drafter)] if cfg.refine_sorted else []
        )
        return {name: optimizer(model.parameters(), cfg.refine_lr) for name, model in refined}
    if phase == "done":
        return {}
    return {
        name: optimizer(model.parameters(), peak_lr(cfg, s, name, phase))
        for name, model in (("drafter", s.drafter), ("sorted", s.sorted_drafter), ("adapter", s.adapter))
    }


def peak_lr(cfg: StudentsConfig, s: Students, name: str, phase: str) -> float:
    if phase == "refine":
        return cfg.refine_lr
    return cfg.student_lr if s.warm.get(name, FRESH).startswith(FRESH) else cfg.warm_lr


# ----------------------------------------------------------------------------- one step of each phase
def seq_len_at(cfg: StudentsConfig, steps: int, step: int, max_len: int) -> int:
    """The curriculum's length at this step of a phase (train.curriculum_seq_len over the phase's tokens)."""
    plan = ContinueConfig(curriculum=cfg.curriculum, total_tokens=max(1, steps * cfg.tokens_per_step))
    return min(curriculum_seq_len(plan, step * cfg.tokens_per_step), max_len)


def student_step(s: Students, teacher: Teacher, batch: torch.Tensor) -> dict[str, float]:
    """One teacher forward feeds every student that has an optimizer in this phase (as train.distill): all
    three when distilling; when refining, on corpus or on-policy windows alike, the drafter and the adapter
    and, unless `refine_sorted` is off, the sorted drafter. The adapter was left out of refinement once and
    drafted worse for it: first-draft acceptance 0.76 against the refined drafter's 0.86 on the bundled prompts
    (the 2026-11-25 family); the sorted drafter, left out until the GPU-trained family, stayed under 1x."""
    target, x = teacher.model, batch[:, :-1]  # x: (B, T)
    with torch.no_grad():
        out = target(x, output_hidden_states=True)
        teacher_logp = F.log_softmax(out.logits.float(), dim=-1)  # (B, T, V)
        hidden_l = out.hidden_states[teacher.kangaroo_exit]  # (B, T, d)
    layers = s.sorted_drafter.config.num_hidden_layers
    losses = {
        "drafter": lambda: soft_ce(s.drafter(x).logits, teacher_logp),
        "sorted": lambda: (
            sum(soft_ce(lg, teacher_logp) for lg in sorted_logits(s.sorted_drafter, x, layers).values()) / layers
        ),
        "adapter": lambda: soft_ce(adapter_logits(s.adapter, target, hidden_l), teacher_logp),
    }
    return {
        name: backward_step(s.opts[name], loss())
        for name, loss in losses.items()  # one graph alive at a time
        if name in s.opts
    }


def backward_step(opt: torch.optim.Optimizer, loss: torch.Tensor) -> float:
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
    opt.step()
    return loss.item()


# ----------------------------------------------------------------------------- stopping and checkpoints
def deadline_of(cfg: StudentsConfig, start: float) -> float:
    """The earlier of start + budget and the next `until` (HH:MM UTC)."""
    deadline = start + cfg.budget_minutes * 60
    if cfg.until:
        deadline = min(deadline, until_epoch(cfg.until, start))
    return deadline


def save_ckpt(path: Path, cfg: StudentsConfig, progress: Progress, s: Students) -> None:
    """Everything a resume needs, written beside and then swapped in."""
    state = {
        "progress": asdict(progress),
        "config": asdict(cfg),
        "models": {
            "drafter": s.drafter.state_dict(),
            "sorted": s.sorted_drafter.state_dict(),
            "adapter": s.adapter.state_dict(),
        },
        "optimizers": {k: o.state_dict() for k, o in s.opts.items()},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    save_atomic(state, path)


def resume(ckpt: dict, cfg: StudentsConfig, s: Students, datas: dict[str, WindowStream], log: Log) -> Progress:
    """Weights, optimizers, data positions and RNG back from a checkpoint."""
    progress = Progress(**ckpt["progress"])
    s.warm = progress.warm
    s.drafter.load_state_dict(ckpt["models"]["drafter"])
    s.sorted_drafter.load_state_dict(ckpt["models"]["sorted"])
    s.adapter.load_state_dict(ckpt["models"]["adapter"])
    s.opts = phase_opts(cfg, s, progress.phase)
    for name, opt in s.opts.items():
        if name in ckpt["optimizers"]:  # a student refined now but not when the checkpoint was saved starts afresh
            opt.load_state_dict(ckpt["optimizers"][name])
        else:
            log(f"note: no {name} optimizer in the checkpoint: a fresh one")
    for name, state in progress.data.items():
        datas[name].state = dict(state)
    torch.set_rng_state(ckpt["rng"]["torch"])
    np.random.set_state(ckpt["rng"]["numpy"])
    random.setstate(ckpt["rng"]["python"])
    diff = {k: v for k, v in asdict(cfg).items() if k not in RUN_CONTROL and ckpt["config"].get(k) != v}
    if diff:
        log(f"note: options differ from the checkpoint's (the new ones apply): {diff}")
    return progress


# ----------------------------------------------------------------------------- evaluation and outputs
@torch.no_grad()
def measure(cfg: StudentsConfig, s: Students, teacher: Teacher, heldout: np.ndarray) -> dict[str, dict]:
    """train.evaluate at the model card's 256 tokens and at the longest curriculum length (batch 1):
    loss (nats/token) of target, its exits and each student; agree = share of positions whose argmax is
    the target's final argmax (greedy acceptance's per-token chance)."""
    target, layers = teacher.model, s.sorted_drafter.config.num_hidden_layers
    models = {
        "drafter": lambda x, out: {"": s.drafter(x).logits},
        "sorted": lambda x, out: sorted_logits(s.sorted_drafter, x, layers),
        "kangaroo": lambda x, out: {"": adapter_logits(s.adapter, target, out.hidden_states[teacher.kangaroo_exit])},
    }
    for m in (s.drafter, s.sorted_drafter, s.adapter):
        m.eval()
    result = {}
    long_len = min(max(length for _, length in cfg.curriculum), teacher.max_len, len(heldout) - 2)
    for seq_len, batch, windows in (
        (min(cfg.eval_seq_len, long_len), 8, cfg.eval_windows),
        (long_len, 1, cfg.eval_long_windows),
    ):
        if windows > 0:
            ecfg = TrainConfig(seq_len=seq_len, batch_size=min(batch, windows), target_exits=teacher.exits)
            result[f"seq_{seq_len}"] = evaluate(models, heldout, ecfg, target, windows=windows)
    for m in (s.drafter, s.sorted_drafter, s.adapter):
        m.train()
    return result


def heldout_texts(tok, ids: np.ndarray, limit: int = 400) -> list[str]:
    """The held-out stream split at EOS back into documents (calibrate_vocab takes texts)."""
    cuts = np.flatnonzero(ids == tok.eos_token_id)
    docs = [d[d != tok.eos_token_id] for d in np.split(ids, cuts + 1)]
    docs = [d for d in docs if len(d) > 16]
    return [tok.decode(d.tolist()) for d in docs[:: max(1, len(docs) // limit)]]  # spread over all sources


def calibrate(cfg: StudentsConfig, teacher: Teacher, heldout: np.ndarray, log: Log) -> dict:
    """VocabTrim's ranking: train.calibrate_vocab on prompts from held-out documents of the new corpus."""
    qcfg = TrainConfig(
        seed=cfg.seed, calibration_prompts=cfg.calibration_prompts, calibration_tokens=cfg.calibration_tokens
    )
    ranking = calibrate_vocab(qcfg, teacher.tok, teacher.model, heldout_texts(teacher.tok, heldout), log)
    ranking["description"] = ranking["description"].replace("held-out stdlib snippets", "held-out corpus snippets")
    return ranking


def link(dest: Path, source: Path) -> None:
    """dest -> source as a relative link (a copy where links fail): load_pair finds extras beside a local target."""
    if dest.is_symlink() or dest.is_file():
        dest.unlink()
    elif dest.is_dir():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.symlink_to(os.path.relpath(source, dest.parent), target_is_directory=source.is_dir())
    except OSError:
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, dest)


def save_outputs(out: Path, s: Students, teacher: Teacher, ranking: dict, log: Log) -> None:
    """fp16 HF folders shaped like assets/models (train.main's metadata), plus what load_pair needs to
    find the extras beside a local target. save_hf rounds a model to fp16 in place: call it last."""
    made_from = {"target_sha1": teacher.fingerprint["sha1"], "distilled_by": "specviz.workshop.students"}
    layers = s.sorted_drafter.config.num_hidden_layers
    save_hf(teacher.model, teacher.tok, out / "target", teacher.meta)
    save_hf(
        s.drafter.eval(),
        teacher.tok,
        out / "drafter",
        {"exits": [s.drafter.config.num_hidden_layers], "distilled_from": "target", **made_from},
    )
    save_hf(
        s.sorted_drafter.eval(),
        teacher.tok,
        out / SORTED_DIR,
        {"exits": list(range(1, layers + 1)), "distilled_from": "target", "sorted": True, **made_from},
    )
    s.adapter.eval().save(out / ADAPTER_DIR)
    (out / "vocabtrim").mkdir(parents=True, exist_ok=True)
    (out / "vocabtrim" / "target-token-ranking.json").write_text(json.dumps(ranking) + "\n")
    for part in (ADAPTER_DIR, SORTED_DIR):  # what specviz.models.parts.load_parts checks against the target
        (out / part / PART_REPORT).write_text(
            json.dumps({"part": part, "fingerprint": parts_fingerprint(teacher.model.config), **made_from}, indent=2)
            + "\n"
        )
        link(out / "target" / PARTS_DIR / part, out / part)
    link(out / "target" / RANKING_FILE, out / "vocabtrim" / "target-token-ranking.json")
    log(f"saved target (fp16), drafter, sorted drafter, Kangaroo adapter and VocabTrim ranking to {out}")


def outputs_present(out: Path, fingerprint: dict) -> bool:
    need = [
        "target/config.json",
        "drafter/config.json",
        "sorted-drafter/config.json",
        "kangaroo-adapter/adapter.safetensors",
        "vocabtrim/target-token-ranking.json",
        "target/specviz-parts/kangaroo-adapter/report.json",
        "target/vocab_ranking.json",
        REPORT,
    ]
    if not all((out / p).exists() for p in need):
        return False
    return json.loads((out / REPORT).read_text())["target"]["sha1"] == fingerprint["sha1"]


# ----------------------------------------------------------------------------- the run
def make(cfg: StudentsConfig, log: Log) -> dict | None:
    """Train (or resume) until done or stopped; returns the report when the student set is complete,
    None when it stopped first (the same call resumes)."""
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    deadline = deadline_of(cfg, time.time())
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    if (out / "target").resolve() == Path(cfg.target).resolve():
        raise SystemExit(f"--out {out} would overwrite the target itself: stage into another folder")
    out.mkdir(parents=True, exist_ok=True)
    teacher = load_teacher(cfg.target, log, cfg.device)
    streams, manifest = load_streams(cfg.corpus, teacher.tok)
    teacher.max_len = min(teacher.max_len, len(streams["train"]) // 4)
    log(
        f"target {cfg.target} ({sum(p.numel() for p in teacher.model.parameters()) / 1e6:.2f} M params, "
        f"{teacher.model.config.num_hidden_layers} layers, exits {teacher.exits}, "
        f"Kangaroo exit {teacher.kangaroo_exit}, "
        f"sha1 {teacher.fingerprint['sha1'][:12]}); corpus { {k: len(v) for k, v in streams.items()} } tokens"
    )

    # 1. students: from the checkpoint, else warm-started from the shipped ones (or fresh)
    ckpt_path = out / CKPT
    if cfg.restart and ckpt_path.exists():
        ckpt_path.unlink()
        log(f"--restart: removed {ckpt_path}")
    ckpt = torch.load(ckpt_path, weights_only=False, map_location=cfg.device) if ckpt_path.exists() else None
    if ckpt and ckpt["progress"]["target"]["sha1"] != teacher.fingerprint["sha1"]:
        raise SystemExit(
            f"{ckpt_path} was made from another target (sha1 {ckpt['progress']['target']['sha1'][:12]}, "
            f"now {teacher.fingerprint['sha1'][:12]}): pass the same --target, or --restart"
        )
    s = make_students(cfg, teacher, log if not ckpt else (lambda _m: None))
    datas = {
        "distill": WindowStream(streams["train"], cfg.seed + 3),
        "refine": WindowStream(streams["train"], cfg.seed + 5),
    }
    if ckpt:
        progress = resume(ckpt, cfg, s, datas, log)
        log(
            f"resumed {ckpt_path}: phase {progress.phase} step {progress.step} "
            f"({sum(progress.seconds.values()) / 60:.1f} min trained before)"
        )
    else:
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        log("students: " + ", ".join(f"{k} from {v}" for k, v in s.warm.items()))
        initial = measure(cfg, s, teacher, streams["heldout"])
        log(f"held-out before training: {summary(initial)}")
        progress = Progress(phase="distill", step=0, target=teacher.fingerprint, warm=s.warm, initial=initial)
        s.opts = phase_opts(cfg, s, progress.phase)

    def checkpoint(reason: str) -> None:
        t = time.time()
        progress.data = {k: dict(d.state) for k, d in datas.items()}
        save_ckpt(ckpt_path, cfg, progress, s)
        log(
            f"checkpoint ({reason}): phase {progress.phase} step {progress.step} -> {ckpt_path} "
            f"[{time.time() - t:.1f} s]"
        )

    # 2.-3. distill, refine
    train_deadline = deadline - cfg.finish_minutes * 60 if cfg.finish_at_deadline else deadline
    with stop_flag() as flag:
        stopped = train_phases(cfg, s, teacher, datas, progress, train_deadline, flag, checkpoint, log)
    if stopped == "deadline" and cfg.finish_at_deadline:
        end_training_early(progress, log)
        stopped = ""
    if stopped:
        checkpoint(stopped)
        log(f"stopped ({stopped}); resume with the same command")
        return None
    # 4. measure, calibrate, save
    if progress.final is None:
        if not cfg.finish_at_deadline and time.time() + cfg.finish_minutes * 60 > deadline:  # else its time was kept
            checkpoint("no time left to finish")
            return None
        t = time.time()
        metrics = measure(cfg, s, teacher, streams["heldout"])
        log(f"held-out after training: {summary(metrics)}")
        ranking = calibrate(cfg, teacher, streams["heldout"], log)
        progress.final = {"metrics": metrics, "ranking": ranking, "finish_seconds": time.time() - t}
        checkpoint("done")
    elif outputs_present(out, teacher.fingerprint):
        log(f"already done: {out} holds this target's students")
        return json.loads((out / REPORT).read_text())
    report = make_report(cfg, s, teacher, progress, manifest)
    save_outputs(out, s, teacher, progress.final["ranking"], log)
    report["target"]["staged_sha1"] = target_fingerprint(out / "target")["sha1"]
    report = scrub(report)  # committed with the family: its folders relative, or without the machine's layout
    (out / REPORT).write_text(json.dumps(report, indent=2) + "\n")
    log(f"report -> {out / REPORT}")
    return report


def train_phases(
    cfg: StudentsConfig,
    s: Students,
    teacher: Teacher,
    datas: dict[str, WindowStream],
    progress: Progress,
    deadline: float,
    flag: dict,
    checkpoint: Callable[[str], None],
    log: Log,
) -> str:
    """distill, then refine, from progress's (phase, step); returns why it stopped early ("" = finished)."""
    steps_here, step_seconds, last_ckpt = 0, 0.0, time.time()
    for m in (s.drafter, s.sorted_drafter, s.adapter):
        m.train()
    pool = OnPolicyPool(
        teacher.model,
        datas["refine"],
        PoolConfig(
            rows_tokens=cfg.pool_steps * cfg.tokens_per_step,
            reuse=cfg.pool_reuse,
            new_tokens=cfg.refine_new,
            min_prompt=cfg.refine_min_prompt,
            seed=cfg.seed,
        ),  # its counts go on across resumes
        fills=progress.pool.get("fills", 0),
        generated_tokens=progress.pool.get("generated_tokens", 0),
    )
    while progress.phase != "done":
        phase = progress.phase
        total = progress.planned.get(phase, cfg.distill_steps if phase == "distill" else cfg.refine_steps)
        window_t, window_tokens = time.time(), 0
        fit_from = (progress.step, progress.seconds[phase])
        while progress.step < total:
            if flag["signal"] is not None:
                return f"signal {flag['signal']}"
            if cfg.max_steps and steps_here >= cfg.max_steps:
                return f"--max-steps {cfg.max_steps}"
            if time.time() + 1.5 * step_seconds + (0 if cfg.quick else 15) > deadline:
                return "deadline"
            t = time.time()
            seq = seq_len_at(cfg, total, progress.step, teacher.max_len)
            batch_size = max(1, cfg.tokens_per_step // seq)
            for name, opt in s.opts.items():
                set_lr(opt, lr_at(progress.step, total, peak_lr(cfg, s, name, phase), cfg.warmup_steps))
            on_policy = phase == "refine" and progress.step % 2 == 1
            with autocast(cfg.device, cfg.amp):
                # (B, T+1); an on-policy batch comes from the pool, its tails generated there
                batch = pool.next(seq, batch_size) if on_policy else datas[phase].next(seq, batch_size)
                batch = batch.to(cfg.device, non_blocking=True)
                losses = student_step(s, teacher, batch)
            if on_policy:
                progress.pool = {"fills": pool.fills, "generated_tokens": pool.generated_tokens}
            progress.step += 1
            steps_here += 1
            step_seconds = time.time() - t
            progress.seconds[phase] += step_seconds
            phase_seconds = cfg.distill_seconds if phase == "distill" else cfg.refine_seconds
            if phase_seconds > 0:
                total, fit_from = fitted_steps(progress, phase, phase_seconds, total, fit_from, log)
            window_tokens += batch_size * seq
            if progress.step % cfg.log_every == 0 or progress.step == total or steps_here == 1:
                tps = window_tokens / max(time.time() - window_t, 1e-9)
                log(
                    f"{phase} step {progress.step}/{total} seq {seq}x{batch_size} "
                    + " ".join(f"{k}={v:.3f}" for k, v in losses.items())
                    + f" {tps:.0f} tok/s"
                    + (
                        f" (pool: {pool.fills} generate calls, {pool.generated_tokens} greedy tokens)"
                        if phase == "refine"
                        else ""
                    )
                )
                window_t, window_tokens = time.time(), 0
            if time.time() - last_ckpt >= cfg.ckpt_minutes * 60:
                checkpoint("periodic")
                last_ckpt = time.time()
        progress.phase, progress.step = PHASES[PHASES.index(phase) + 1], 0
        s.opts = phase_opts(cfg, s, progress.phase)
        log(f"phase {phase} finished ({progress.seconds[phase] / 60:.1f} min)")
    return ""


def end_training_early(progress: Progress, log: Log) -> None:
    """--finish-at-deadline: the current phase ends at the step it reached, later phases run no steps."""
    log(f"deadline: training ends at {progress.phase} step {progress.step}; finishing with the students as they are")
    for phase in PHASES[PHASES.index(progress.phase) : -1]:
        progress.planned[phase] = progress.step if phase == progress.phase else 0
    progress.phase, progress.step = "done", 0


def fitted_steps(
    progress: Progress, phase: str, phase_seconds: float, total: int, fit_from: tuple[int, float], log: Log
) -> tuple[int, tuple[int, float]]:
    """The phase's step count from its measured step time (after 4 warm-up steps; every 10 steps, an even
    number, since refinement alternates corpus and on-policy steps of unequal cost), so that it ends on time."""
    done, spent = progress.step, progress.seconds[phase]
    if done - fit_from[0] == 4 and fit_from[0] == 0:
        return total, (done, spent)
    if (done - fit_from[0]) % 10 or done - fit_from[0] < 10:
        return total, fit_from
    per_step = (spent - fit_from[1]) / max(1, done - fit_from[0])
    planned = max(done + 1, done + int(max(0.0, phase_seconds - spent) / max(per_step, 1e-6)))
    if planned != total:
        log(f"fit to {phase_seconds:.0f} s: {per_step:.3f} s/step -> {phase} steps {total} -> {planned}")
    progress.planned[phase] = planned
    return planned, fit_from


def summary(metrics: dict[str, dict]) -> str:
    keys = ("agree/drafter", "agree/sorted_k3", "agree/kangaroo", "loss/drafter", "loss/target")
    return "; ".join(f"{length}: " + " ".join(f"{k}={v[k]}" for k in keys if k in v) for length, v in metrics.items())


def make_report(cfg: StudentsConfig, s: Students, teacher: Teacher, progress: Progress, manifest: dict) -> dict:
    params = {
        "target": sum(p.numel() for p in teacher.model.parameters()),
        "drafter": sum(p.numel() for p in s.drafter.parameters()),
        "sorted drafter": sum(p.numel() for p in s.sorted_drafter.parameters()),
        "Kangaroo adapter": s.adapter.num_parameters(),
    }
    return {
        "target": dict(progress.target),  # source dir and sha1 of its safetensors (+ staged_sha1: OUT/target's fp16)
        "target_meta": teacher.meta,
        "params": params,
        "warm_start": progress.warm,
        "steps": {
            "distill": progress.planned.get("distill", cfg.distill_steps),  # fitted to time: the steps run
            "refine": progress.planned.get("refine", cfg.refine_steps),
        },
        "pool": progress.pool,  # on-policy windows: generate calls and greedy tokens they made
        "minutes": {
            **{k: round(v / 60, 2) for k, v in progress.seconds.items()},
            "finish": round(progress.final["finish_seconds"] / 60, 2),
        },
        "metrics_before": progress.initial,  # the starting students against this target
        "metrics": progress.final["metrics"],
        "corpus": {"dir": cfg.corpus, "tokens": manifest.get("tokens"), "built": manifest.get("built")},
        "config": asdict(cfg),
        "made": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "earlier": earlier_report(cfg.warm_from),  # the run these students started from, if it left a report
    }


def earlier_report(warm_from: str) -> dict | None:
    path = Path(warm_from) / REPORT if warm_from else None
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def main(argv: list[str] | None = None, log: Log | None = None) -> dict | None:

    parser = argparse.ArgumentParser(prog="python -m specviz.workshop.students", description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="HF dir of the (continued) target")
    parser.add_argument("--corpus", required=True, help="a built specviz.workshop.corpus dir (manifest.json + .npy)")
    parser.add_argument("--out", required=True, help="staging dir: a drop-in for assets/models, plus ckpt.pt")
    parser.add_argument("--warm-from", default=str(EMBEDDED_DIR), help="shipped students to start from ('' = fresh)")
    parser.add_argument("--budget-minutes", type=float, default=StudentsConfig.budget_minutes)
    parser.add_argument("--until", default="", help="HH:MM UTC: also stop (and save) before this")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--distill-steps", type=int, default=None)
    parser.add_argument("--refine-steps", type=int, default=None)
    parser.add_argument("--max-steps", type=int, default=0, help="training steps in this invocation (0 = no limit)")
    parser.add_argument("--restart", action="store_true", help="discard OUT/ckpt.pt and start over")
    parser.add_argument("--quick", action="store_true", help="tiny steps and lengths: a smoke test of every phase")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, mps")
    parser.add_argument("--amp", default="", choices=("", "bf16", "fp16"), help="mixed precision (on a GPU: bf16)")
    parser.add_argument("--tokens-per-step", type=int, default=None, help="a GPU takes far bigger batches (e.g. 65536)")
    parser.add_argument("--distill-seconds", type=float, default=None, help="fit the distillation's steps to this time")
    parser.add_argument("--refine-seconds", type=float, default=None, help="fit the refinement's steps to this time")
    parser.add_argument("--calibration-prompts", type=int, default=None)
    parser.add_argument("--warmup-steps", type=int, default=None, help="per phase (default 50)")
    parser.add_argument(
        "--drafter-layers",
        type=int,
        default=None,
        help="the separate drafter's depth (default 1); another depth than the warm start's begins "
        "from the target's first layers",
    )
    parser.add_argument(
        "--pool-steps", type=int, default=None, help="on-policy steps' worth of rows per generate call (default 4)"
    )
    parser.add_argument("--pool-reuse", type=int, default=None, help="times each generated row is served (default 2)")
    parser.add_argument("--no-refine-sorted", action="store_true", help="leave the sorted drafter as distilled")
    parser.add_argument("--finish-minutes", type=float, default=None, help="time kept for the final phase (default 3)")
    parser.add_argument(
        "--finish-at-deadline",
        action="store_true",
        help="at the deadline (--budget-minutes/--until less the finish time) end training and finish",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    cfg = StudentsConfig(
        target=args.target,
        corpus=args.corpus,
        out=args.out,
        warm_from=args.warm_from,
        budget_minutes=args.budget_minutes,
        until=args.until,
        threads=args.threads,
        seed=args.seed,
        max_steps=args.max_steps,
        restart=args.restart,
        device=args.device,
        amp=args.amp,
    )
    if args.quick:
        cfg = cfg.quickened()
    steps = {
        k: v
        for k, v in {
            "distill_steps": args.distill_steps,
            "refine_steps": args.refine_steps,
            "tokens_per_step": args.tokens_per_step,
            "distill_seconds": args.distill_seconds,
            "refine_seconds": args.refine_seconds,
            "calibration_prompts": args.calibration_prompts,
            "warmup_steps": args.warmup_steps,
            "drafter_layers": args.drafter_layers,
            "pool_steps": args.pool_steps,
            "pool_reuse": args.pool_reuse,
            "finish_minutes": args.finish_minutes,
        }.items()
        if v is not None
    }
    if args.no_refine_sorted:
        steps["refine_sorted"] = False
    if args.finish_at_deadline:
        steps["finish_at_deadline"] = True
    cfg = replace(cfg, **steps)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    def file_log(msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S', time.gmtime())} {(time.time() - t0) / 60:6.1f} min] {msg}"
        print(line, flush=True)
        with (Path(cfg.out) / LOG).open("a") as f:
            f.write(line + "\n")
        if log is not None:
            log(msg)

    file_log(f"config: {json.dumps(asdict(cfg))}")
    return make(cfg, file_log)


if __name__ == "__main__":
    raise SystemExit(0 if main() is not None else 75)  # 75 (EX_TEMPFAIL): stopped early, run again to resume
