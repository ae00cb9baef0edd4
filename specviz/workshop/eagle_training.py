"""Train an EAGLE head for a target: `python -m specviz.workshop.train eagle-head --target embedded|PATH`.

    python -m specviz.workshop.train eagle-head --target embedded --minutes 45     # the full run, resumable
    python -m specviz.workshop.train eagle-head --target embedded --quick          # a smoke run, seconds

Data: the workshop's training text (the standard library, `specviz.workshop.text.read_corpus`, encoded with
the target's own tokenizer by `text.encode`, split into train and held-out files by the same hash rule), cut
into windows by `continued.WindowStream` (its position is saved in every checkpoint). Each window goes through
the frozen target (fp32, no grad) once per step for its hidden states (the head's features) and its logits (the
distributions the head learns). Nothing else is run: no data set is precomputed.

Alignment, as in `specviz.engine.eagle`: entry t pairs the target's feature f_t with the embedding of the next
token x_{t+1}; the head's output g_t predicts x_{t+2}, so its target is the target's distribution at position
t+1. Unrolled step j (j = 0 reads the target's features) feeds the head's own step j-1 output g with the text's
token x_{t+1+j}, at rotary position t+j, and learns the target's distribution at position t+1+j.

Two losses, weights as in SafeAILab/EAGLE (commit cb7e0841, read, not copied):
- EAGLE-1 (`eagle/train/main.py`): feature regression, smooth L1 between g_t and the target's next feature
  f_{t+1} (weight `feature_weight` = 1.0, its v_w), plus the soft cross-entropy of the target's LM head on g_t
  against the target's distribution at t+1 (weight `token_weight` = 0.1, its p_w); uniform noise (+-noise/2,
  its `data_noise`) on the input features. One step, as EAGLE-1 trains.
- EAGLE-3's training-time test (`eagle/traineagle3/cnets.py` and `main.py`): the head is unrolled `ttt_steps`
  steps (its code: 7) on its own outputs, NOT detached (gradients flow back through every step, as its code
  keeps `hidden_states = hidden_states_out`); step j's loss is the soft cross-entropy against the target's
  distribution restricted to the draft vocabulary (softmax over the t2d columns of the target's logits), on the
  positions whose target argmax lies in the draft vocabulary, averaged over all positions; the sum over steps
  is weighted 0.8^j. No feature regression. Attention: step j's query at row t sees the step-0 entries of rows
  <= t (causal) and its own row's entries of steps 1..j (a diagonal per step), which is exactly what a chain
  drafted from real entry t sees at inference; the unroll runs through `EagleHead.forward` with the head's own
  KV cache, so training and drafting share one forward.

The draft vocabulary (EAGLE-3): the `draft_vocab` target ids the target itself predicts most often (argmax of
its logits over `vocab_windows` training windows), ties broken by the ids' frequency in the training text, as
EAGLE-3's `scandata` ranks by frequency; stored as d2t offsets and a t2d mask by `EagleHead.set_draft_vocab`.

Schedule: AdamW (betas 0.9, 0.95, no weight decay, gradient norm clipped at 0.5, as EAGLE's DeepSpeed config),
warmup-stable-decay. With --steps N the plan is N steps. With --minutes M the plan is re-fitted to the measured
speed until the decay begins (then frozen), so the decay ends at the deadline. Checkpoints (head, optimizer,
data position, noise generator, step, plan, draft vocabulary) go to --run-dir every `ckpt_minutes`, at a stop and
at the end; the same command resumes from there. The head is written in --layout (fp16) to --out (default
`<run-dir>/head`) whenever a run stops, with `eagle-training.json` beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from specviz.engine import kvcache
from specviz.engine.eagle import EagleHead, gather_features
from specviz.models.eagle_checkpoint import LAYOUTS, save_head
from specviz.models.hub import EMBEDDED, EMBEDDED_DIR, check_source, load_causal_lm, load_tokenizer
from specviz.paths import cache_dir, portable, scrub
from specviz.workshop.config import TrainConfig
from specviz.workshop.continued import WindowStream, window_starts
from specviz.workshop.kit import save_atomic, set_lr, stop_flag
from specviz.workshop.text import encode, read_corpus

CHECKPOINT = "ckpt.pt"
TOKENS = "tokens.npz"
RECORD = "eagle-training.json"  # beside the saved head: what was trained, how long, the held-out agreement


@dataclass(frozen=True)
class EagleTrainConfig:
    """One training run of one head. `steps` > 0 fixes the plan; else `minutes` bounds this invocation."""

    target: str = EMBEDDED
    layout: str = "eagle3"  # eagle3 | speculators (EAGLE-3 heads) | eagle1
    features: tuple[int, ...] = ()  # layer ids into hidden_states; () = EAGLE-3's default, EAGLE-1's L
    draft_vocab: int = 2048  # EAGLE-3: rows of the head's own LM head (0 or >= V: the full vocabulary)
    steps: int = 0  # the plan's total steps (0 = fitted to `minutes`)
    minutes: float = 45.0  # wall-clock budget of this invocation
    ttt_steps: int = 5  # EAGLE-3's unrolled steps (its code uses 7; 5 fits this CPU's budget)
    step_decay: float = 0.8  # weight of unrolled step j: step_decay ** j
    feature_weight: float = 1.0  # EAGLE-1's v_w
    token_weight: float = 0.1  # EAGLE-1's p_w
    noise: float = 0.2  # EAGLE-1: uniform noise of this width on the input features (0 = none)
    seq_len: int = 256
    batch_size: int = 4
    lr: float = 2e-3
    warmup_steps: int = 20
    decay_share: float = 0.3  # the last 30 % of the plan decays linearly to final_lr_share
    final_lr_share: float = 0.05
    grad_clip: float = 0.5
    init_from_target: bool = True  # EAGLE-3: lm_head rows and norm start as the target's (a short CPU budget)
    vocab_windows: int = 64  # training windows whose target argmaxes rank the draft vocabulary
    eval_windows: int = 8  # fixed held-out windows
    eval_every: int = 100  # steps between held-out evaluations (also at the start and at every stop)
    log_every: int = 10
    ckpt_minutes: float = 2.0
    reserve_seconds: float = 30.0  # kept before the deadline for the last evaluation and the saves
    max_steps: int = 0  # steps in this invocation (0 = no limit): tests interrupt a run with it
    run_dir: str = ""  # "" = cache_dir("eagle-head")/<target>-<layout>
    out: str = ""  # "" = <run_dir>/head
    seed: int = 0
    threads: int = 0  # 0 = torch's default
    quick: bool = False
    corpus: TrainConfig = field(default_factory=TrainConfig)  # which text (read_corpus's files and split)

    @property
    def version(self) -> int:
        return 1 if self.layout == "eagle1" else 3

    def quickened(self) -> "EagleTrainConfig":
        """A seconds-long smoke run: the small corpus, tiny batches, a few steps."""
        return replace(
            self,
            steps=self.steps or 4,
            ttt_steps=min(self.ttt_steps, 3),
            seq_len=32,
            batch_size=2,
            warmup_steps=1,
            vocab_windows=4,
            eval_windows=2,
            eval_every=2,
            log_every=1,
            ckpt_minutes=0.0,
            quick=True,
            corpus=TrainConfig().quickened(),
        )


def default_run_dir(cfg: EagleTrainConfig) -> Path:
    name = re.sub(r"[^A-Za-z0-9._-]+", "--", Path(cfg.target).name if Path(cfg.target).is_dir() else cfg.target)
    return cache_dir("eagle-head-quick" if cfg.quick else "eagle-head") / f"{name}-{cfg.layout}"


def wsd_lr(cfg: EagleTrainConfig, step: int, total: int) -> float:
    """Warmup over `warmup_steps`, flat, then a linear decay over the last `decay_share` of `total` steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_from = (1 - cfg.decay_share) * total
    if step < decay_from:
        return cfg.lr
    progress = min(1.0, (step - decay_from) / max(1.0, total - decay_from))
    return cfg.lr * (1 - (1 - cfg.final_lr_share) * progress)


def decaying(cfg: EagleTrainConfig, step: int, total: int) -> bool:
    return step >= (1 - cfg.decay_share) * total


# ----------------------------------------------------------------------------- the target and its text
def load_target(source: str):
    """The frozen target (fp32, eval, no grads) and its tokenizer: 'embedded' or a local/hub Llama-family model."""
    source = check_source(source, "target")
    path = str(EMBEDDED_DIR / "target") if source == EMBEDDED else source
    return load_causal_lm(path, torch.device("cpu"), torch.float32), load_tokenizer(path)


def token_streams(cfg: EagleTrainConfig, tok, run_dir: Path, log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """The training and held-out token streams of the workshop's text in this tokenizer, cached in the run dir
    (encoding the standard library takes a while; a resumed run reads them back)."""
    text_key = json.dumps({"vocab": tok.get_vocab(), "corpus": asdict(cfg.corpus)}, sort_keys=True)
    vocab_sha = hashlib.sha1(text_key.encode()).hexdigest()  # the tokenizer and the corpus's files and split
    path = run_dir / TOKENS
    if path.exists():
        saved = np.load(path)
        if str(saved["tokenizer_sha1"]) == vocab_sha:
            return {"train": saved["train"], "heldout": saved["heldout"]}
    train_texts, heldout_texts = read_corpus(cfg.corpus)
    streams = {"train": encode(tok, train_texts), "heldout": encode(tok, heldout_texts)}
    tmp = path.with_name("tokens.tmp.npz")
    np.savez(tmp, tokenizer_sha1=np.array(vocab_sha), **streams)
    tmp.replace(path)
    log(f"text: {len(train_texts)} training files ({len(streams['train'])} tokens), {len(heldout_texts)} held out")
    return streams


@torch.no_grad()
def target_pass(target, window: torch.Tensor, layer_ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frozen target forward over a window (B, T+1): the head's raw features at positions 0..T-1
    (B, T, k*H), the final normed state at 1..T (EAGLE-1's regression target), and the logits at 0..T."""
    out = target(window, output_hidden_states=True)
    layers = len(out.hidden_states) - 1
    features = gather_features(out.hidden_states, layer_ids)[:, :-1]
    return features, out.hidden_states[layers][:, 1:], out.logits.float()


@torch.no_grad()
def rank_draft_vocab(target, stream: np.ndarray, cfg: EagleTrainConfig, vocab: int) -> list[int]:
    """The `draft_vocab` ids the target predicts most often on training windows (argmax counts), ties broken by
    the ids' frequency in the training text, then by id."""
    data = WindowStream(stream, seed=cfg.seed + 7)
    predicted = torch.zeros(vocab, dtype=torch.long)
    for start in range(0, cfg.vocab_windows, cfg.batch_size):
        window = data.next(cfg.seq_len, min(cfg.batch_size, cfg.vocab_windows - start))
        predicted += torch.bincount(target(window).logits.argmax(-1).flatten(), minlength=vocab)[:vocab]
    text = np.bincount(stream.astype(np.int64), minlength=vocab)[:vocab]
    order = sorted(range(vocab), key=lambda i: (-int(predicted[i]), -int(text[i]), i))
    return order[: cfg.draft_vocab]


def new_head(cfg: EagleTrainConfig, target, draft_ids: list[int] | None) -> EagleHead:
    torch.manual_seed(cfg.seed)
    text = target.config.get_text_config()
    if cfg.version == 1 and cfg.features and tuple(cfg.features) != (text.num_hidden_layers,):
        raise ValueError(
            f"an EAGLE-1 head reads the target's final state, hidden_states[{text.num_hidden_layers}]; "
            f"--features {','.join(map(str, cfg.features))} needs --layout eagle3"
        )
    head = EagleHead.for_target(
        target.config,
        version=cfg.version,
        layer_ids=tuple(cfg.features) or None,
        draft_vocab_size=len(draft_ids) if draft_ids else None,
    )
    if draft_ids and len(draft_ids) < text.vocab_size:
        head.set_draft_vocab(draft_ids)
    if cfg.version == 3 and cfg.init_from_target:
        with torch.no_grad():
            rows = head.draft_ids()
            weight = target.get_output_embeddings().weight
            head.lm_head.weight.copy_(weight[rows] if rows is not None else weight)
            norm = getattr(getattr(target, "model", None), "norm", None)
            if norm is not None and tuple(norm.weight.shape) == tuple(head.norm.weight.shape):
                head.norm.weight.copy_(norm.weight)
    return head


# ----------------------------------------------------------------------------- the training-time test
def step_mask(rows: int, step: int, device=None) -> torch.Tensor:
    """(1, 1, T, (step+1) T) bool: unrolled step `step`'s queries over the head's cache (step 0's T entries, then
    T per later step). Row t sees step 0's rows <= t and its own row in steps 1..step: what a chain drafted from
    real entry t sees at inference (EAGLE-3's training attention)."""
    causal = torch.ones(rows, rows, dtype=torch.bool, device=device).tril()
    own = torch.eye(rows, dtype=torch.bool, device=device)
    return torch.cat([causal] + [own] * step, dim=-1)[None, None]


def shifted(window: torch.Tensor, by: int, rows: int) -> torch.Tensor:
    """window[:, by : by + rows], padded with zeros past its end (B, rows, ...): the tokens an unrolled step
    feeds, or the target's logits it learns."""
    part = window[:, by : by + rows]
    missing = rows - part.shape[1]
    if missing <= 0:
        return part
    return torch.cat([part, part.new_zeros((part.shape[0], missing, *part.shape[2:]))], dim=1)


def unroll(
    head: EagleHead,
    features: torch.Tensor,
    window: torch.Tensor,
    embed: torch.nn.Module,
    steps: int,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> list[torch.Tensor]:
    """The head's outputs g at each unrolled step, (B, T, h) each. Step 0 reads the target's features (B, T, k*H)
    paired with window[:, 1:T+1]; step j feeds step j-1's output, not detached, with window[:, 1+j : T+1+j]
    (zero past the window's end) at positions t+j, through the head's own cache. `on_step(j, fed)` sees the
    feature each step is fed (tests)."""
    batch, rows = features.shape[:2]
    cache = kvcache.new_cache(head.config.to_llama())
    positions = torch.arange(rows, device=window.device)[None].expand(batch, rows)
    outputs: list[torch.Tensor] = []
    fed = features
    for j in range(steps):
        if on_step is not None:
            on_step(j, fed)
        mask = None if j == 0 else step_mask(rows, j, window.device)
        g = head(fed, embed(shifted(window, 1 + j, rows)), positions + j, cache, attention_mask=mask, own=j > 0)
        outputs.append(g)
        fed = g
    return outputs


def valid_rows(rows: int, step: int, window_len: int, device=None) -> torch.Tensor:
    """(T,) bool: rows whose step-`step` prediction has a target (position t+1+step inside the window)."""
    return torch.arange(rows, device=device) + 1 + step < window_len


def eagle3_losses(
    head: EagleHead, outputs: list[torch.Tensor], logits: torch.Tensor
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per unrolled step: EAGLE-3's soft cross-entropy against the target's distribution over the draft
    vocabulary (positions whose target argmax is outside it are left out), averaged over all positions;
    and a (B, T) bool of the positions where the head's argmax equals the target's (the agreement)."""
    ids = head.draft_ids()
    rows, window_len = outputs[0].shape[1], logits.shape[1]
    best = logits.argmax(-1)  # (B, T+1): the target's greedy token at every position, computed once per window
    p = F.softmax(logits if ids is None else logits[..., ids], dim=-1)  # over the draft vocabulary
    keep = head.t2d[best]
    losses, agree = [], []
    for j, g in enumerate(outputs):
        valid = valid_rows(rows, j, window_len, g.device)[None]
        best_j = shifted(best, 1 + j, rows)  # the target at position t+1+j
        logq = F.log_softmax(head.logits(g).float(), dim=-1)
        losses.append(-((shifted(p, 1 + j, rows) * logq).sum(-1) * (shifted(keep, 1 + j, rows) & valid)).mean())
        drafted = logq.argmax(-1) if ids is None else ids[logq.argmax(-1)]
        agree.append((drafted == best_j) & valid)
    return losses, agree


def eagle1_losses(
    head: EagleHead, outputs: list[torch.Tensor], logits: torch.Tensor, next_feature: torch.Tensor, target_head
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """EAGLE-1's loss on step 0 (smooth L1 to the next feature, soft CE through the target's LM head), and
    the agreement of every unrolled step."""
    rows, window_len = outputs[0].shape[1], logits.shape[1]
    agree = []
    parts = {}
    for j, g in enumerate(outputs):
        teacher = shifted(logits, 1 + j, rows)
        valid = valid_rows(rows, j, window_len, g.device)[None]
        logq = F.log_softmax(head.logits(g, target_head).float(), dim=-1)
        if j == 0:
            parts["v"] = F.smooth_l1_loss(g, next_feature, reduction="none").mean(-1).mean()
            parts["p"] = -(F.softmax(teacher, dim=-1) * logq).sum(-1).mean()
        agree.append((logq.argmax(-1) == teacher.argmax(-1)) & valid)
    return parts, agree


@dataclass
class StepResult:
    loss: torch.Tensor
    parts: dict[str, float]
    agree: list[torch.Tensor]  # per unrolled step, (B, T) bool
    valid: list[torch.Tensor]  # per unrolled step, (T,) bool


def head_step(
    cfg: EagleTrainConfig,
    head: EagleHead,
    target,
    window: torch.Tensor,
    steps: int,
    noise: torch.Generator | None = None,
) -> StepResult:
    """The loss of one window (B, T+1) and the head's agreement with the target at each unrolled step."""
    features, final, logits = target_pass(target, window, head.config.layer_ids)
    if noise is not None and cfg.noise > 0:
        features = features + (torch.rand(features.shape, generator=noise) - 0.5) * cfg.noise
    outputs = unroll(head, features, window, target.get_input_embeddings(), steps)
    rows = features.shape[1]
    valid = [valid_rows(rows, j, logits.shape[1]) for j in range(steps)]
    if cfg.version == 1:
        parts, agree = eagle1_losses(head, outputs, logits, final, target.get_output_embeddings())
        loss = cfg.feature_weight * parts["v"] + cfg.token_weight * parts["p"]
    else:
        losses, agree = eagle3_losses(head, outputs, logits)
        parts = {f"p{j}": loss for j, loss in enumerate(losses)}
        loss = sum(cfg.step_decay**j * part for j, part in enumerate(losses))
    return StepResult(loss, {k: round(float(v.detach()), 4) for k, v in parts.items()}, agree, valid)


@torch.no_grad()
def heldout_agreement(cfg: EagleTrainConfig, head: EagleHead, target, heldout: np.ndarray) -> dict:
    """On fixed held-out windows, per unrolled step j: the share of positions where the head's greedy draft
    equals the target's greedy token (`agree`), and where steps 0..j all agree (`prefix`: a greedy chain from
    that position keeps j+1 drafts, fed the text's tokens)."""
    starts = window_starts(len(heldout), cfg.eval_windows, cfg.seq_len)
    window = torch.from_numpy(np.stack([heldout[s : s + cfg.seq_len + 1].astype(np.int64) for s in starts]))
    steps = max(cfg.ttt_steps, 3)
    was_training = head.training
    head.eval()
    result = head_step(cfg, head, target, window, steps)
    head.train(was_training)
    agree, prefix, run = [], [], None
    for a, v in zip(result.agree, result.valid):
        run = a if run is None else run & a
        n = float(v.sum()) * a.shape[0]
        agree.append(round(float(a.sum()) / n, 4))
        prefix.append(round(float(run.sum()) / n, 4))
    return {"agree": agree, "prefix": prefix, "loss": round(float(result.loss), 4)}


# ----------------------------------------------------------------------------- the run
def config_key(cfg: EagleTrainConfig) -> dict:
    """What a checkpoint must match to be resumed (the budget, the plan's length and the paths may change)."""
    keep = ("target", "layout", "features", "draft_vocab", "ttt_steps", "seq_len", "batch_size", "seed", "quick")
    return {k: v for k, v in asdict(cfg).items() if k in keep}


def save_checkpoint(path: Path, state: dict) -> None:
    save_atomic(state, path)


def write_head(cfg: EagleTrainConfig, head: EagleHead, out: Path, record: dict) -> Path:
    save_head(head, out, cfg.layout, dtype=torch.float16, verifier=cfg.target)
    (out / RECORD).write_text(json.dumps(scrub(record), indent=2) + "\n")
    return out


def train_eagle_head(cfg: EagleTrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) one head; writes it to `out` at every stop and returns the run's record."""
    if cfg.layout not in LAYOUTS:
        raise ValueError(f"--layout must be one of {', '.join(LAYOUTS)}; got {cfg.layout!r}")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    started = time.time()
    deadline = float("inf") if cfg.steps and not cfg.minutes else started + cfg.minutes * 60
    run_dir = Path(cfg.run_dir) if cfg.run_dir else default_run_dir(cfg)
    out = Path(cfg.out) if cfg.out else run_dir / "head"
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / CHECKPOINT
    target, tok = load_target(cfg.target)
    target.requires_grad_(False)
    vocab = target.config.get_text_config().vocab_size
    streams = token_streams(cfg, tok, run_dir, log)
    state = torch.load(ckpt_path, weights_only=False) if ckpt_path.exists() else None
    if state is not None and state["key"] != config_key(cfg):
        raise ValueError(
            f"{portable(ckpt_path)} was written by another configuration ({state['key']}); "
            f"this run is {config_key(cfg)}: use another --run-dir"
        )
    if state is None:
        draft_ids = None
        if cfg.version == 3 and 0 < cfg.draft_vocab < vocab:
            draft_ids = rank_draft_vocab(target, streams["train"], cfg, vocab)
        head = new_head(cfg, target, draft_ids)
    else:
        draft_ids = state["draft_ids"]
        head = new_head(replace(cfg, init_from_target=False), target, draft_ids)
        head.load_state_dict(state["head"], strict=False)
    head.train()
    opt = torch.optim.AdamW(
        [p for p in head.parameters() if p.requires_grad], lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0
    )
    data = WindowStream(streams["train"], seed=cfg.seed)
    noise = torch.Generator().manual_seed(cfg.seed + 1) if cfg.version == 1 else None
    step, train_seconds, history = 0, 0.0, []
    total = cfg.steps or 0
    frozen = bool(cfg.steps)
    if state is not None:
        opt.load_state_dict(state["opt"])
        data.state = dict(state["data"])
        if noise is not None:
            noise.set_state(state["noise"])
        step, train_seconds, history = state["step"], state["train_seconds"], state["history"]
        if not cfg.steps and state["frozen"]:
            total, frozen = state["total"], True
        log(f"resuming at step {step} from {portable(ckpt_path)}")
    steps = 1 if cfg.version == 1 else cfg.ttt_steps
    tokens_per_step = cfg.batch_size * cfg.seq_len
    log(
        f"EAGLE-{cfg.version} head ({cfg.layout}) for {cfg.target}: layer ids {list(head.config.layer_ids)}, "
        f"draft vocabulary {head.config.draft_vocab_size}, {head.num_parameters():,} parameters; "
        f"{steps} unrolled step(s), {cfg.batch_size} x {cfg.seq_len} tokens per step"
    )

    def evaluate() -> dict:
        stats = {"step": step, **heldout_agreement(cfg, head, target, streams["heldout"])}
        log(f"held-out at step {step}: agree {stats['agree']}, accepted prefix {stats['prefix']}")
        return stats

    def checkpoint() -> None:
        save_checkpoint(
            ckpt_path,
            {
                "key": config_key(cfg),
                "head": head.trainable_state(),
                "opt": opt.state_dict(),
                "data": dict(data.state),
                "noise": noise.get_state() if noise is not None else None,
                "step": step,
                "train_seconds": train_seconds,
                "total": total,
                "frozen": frozen,
                "draft_ids": draft_ids,
                "history": history,
            },
        )

    if not history or history[-1]["step"] != step:
        history.append(evaluate())
    loop_start, steps_here, last_ckpt, window = time.time(), 0, time.time(), (time.time(), 0)
    reason = "planned steps done"
    with stop_flag() as flag:
        while True:
            now = time.time()
            if not frozen:  # fit the plan to this invocation's budget from the measured speed
                per_step = (now - loop_start) / steps_here if steps_here >= 3 else None
                left = deadline - now - cfg.reserve_seconds
                total = step + max(1, int(left / per_step)) if per_step else max(total, step + 1000)
                frozen = decaying(cfg, step, total)
            if step >= total:
                break
            if flag["signal"] is not None or now >= deadline - cfg.reserve_seconds:
                reason = "stopped by a signal" if flag["signal"] is not None else "out of minutes"
                break
            if cfg.max_steps and steps_here >= cfg.max_steps:
                reason = "max_steps in this invocation"
                break
            t = time.time()
            set_lr(opt, wsd_lr(cfg, step, total))
            result = head_step(cfg, head, target, data.next(cfg.seq_len, cfg.batch_size), steps, noise)
            opt.zero_grad(set_to_none=True)
            result.loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), cfg.grad_clip)
            opt.step()
            step += 1
            steps_here += 1
            train_seconds += time.time() - t
            if step % cfg.log_every == 0 or step == total:
                seconds = time.time() - window[0]
                rate = (steps_here - window[1]) * tokens_per_step / max(seconds, 1e-9)
                agree = [round(float(a.float().mean()), 3) for a in result.agree]
                log(
                    f"step {step}/{total} lr {wsd_lr(cfg, step - 1, total):.2e} loss {float(result.loss.detach()):.4f} "
                    f"{result.parts} train agree {agree} | {rate:.0f} tok/s, "
                    f"{seconds / max(1, steps_here - window[1]):.2f} s/step"
                )
                window = (time.time(), steps_here)
            if step % cfg.eval_every == 0 and step < total:
                history.append(evaluate())
                window = (time.time(), steps_here)
            if time.time() - last_ckpt >= cfg.ckpt_minutes * 60 and step < total:
                checkpoint()
                last_ckpt = time.time()
                window = (time.time(), steps_here)
    if history[-1]["step"] != step:
        history.append(evaluate())
    checkpoint()
    record = {
        "target": cfg.target,
        "layout": cfg.layout,
        "version": cfg.version,
        "layer_ids": list(head.config.layer_ids),
        "draft_vocab_size": head.config.draft_vocab_size,
        "parameters": head.num_parameters(),
        "step": step,
        "planned_steps": total,
        "finished": step >= total,
        "stopped": reason,
        "tokens_seen": step * tokens_per_step,
        "train_minutes": round(train_seconds / 60, 2),
        "heldout": history,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("run_dir", "out", "corpus")},
    }
    head.eval()
    write_head(cfg, head, out, record)
    log(f"{reason}: step {step}/{total}; head ({cfg.layout}, fp16) written to {portable(out)}")
    return record


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m specviz.workshop.train eagle-head", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--target", required=True, help="'embedded', a local model directory or a hub id")
    parser.add_argument("--features", default="", help="layer ids l,m,h into hidden_states (0 = embeddings)")
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=0, help="train this many steps (the plan)")
    budget.add_argument("--minutes", type=float, default=0.0, help="stop cleanly after this many minutes (45)")
    parser.add_argument("--layout", default="eagle3", choices=LAYOUTS)
    parser.add_argument("--draft-vocab", type=int, default=EagleTrainConfig.draft_vocab)
    parser.add_argument("--ttt-steps", type=int, default=EagleTrainConfig.ttt_steps)
    parser.add_argument("--run-dir", default="", help="checkpoints and the token cache (default under the cache)")
    parser.add_argument("--out", default="", help="where the head is written (default <run-dir>/head)")
    parser.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        features = tuple(int(x) for x in args.features.split(",") if x.strip())
    except ValueError:
        raise SystemExit(f"error: --features takes comma-separated layer ids, got {args.features!r}") from None
    cfg = EagleTrainConfig(
        target=args.target,
        layout=args.layout,
        features=features,
        draft_vocab=args.draft_vocab,
        steps=args.steps,
        minutes=args.minutes or (0.0 if args.steps else EagleTrainConfig.minutes),
        ttt_steps=args.ttt_steps,
        run_dir=args.run_dir,
        out=args.out,
        threads=args.threads,
        seed=args.seed,
    )
    if args.quick:
        cfg = cfg.quickened()
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{(time.time() - t0) / 60:6.1f} min] {msg}", flush=True)

    try:
        train_eagle_head(cfg, log)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
