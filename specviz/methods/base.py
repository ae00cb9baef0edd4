"""What every decoding method shares: its parameter specs, the per-run context, its contract.

A method is a class with a `name`, typed `PARAMS` (validated at one boundary, and read by the UI
and the bench to build their controls) and `generate(ctx)`, which reports everything through
`ctx.rec` and pushes tokens into `ctx.out`. A new instance is made for every run, so a method
may keep per-run state on `self`; nothing is shared between runs.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from specviz.engine.decoder import Output, TransformersDecoder
from specviz.engine.lean import LeanDecoder
from specviz.engine.memo import ForwardMemo
from specviz.engine.protocols import Decoder, SplitDecoder
from specviz.engine.split import SplitTarget
from specviz.engine.trace import Recorder
from specviz.engine.verify import Sampling
from specviz.shown import shown


class Cancelled(Exception):
    """Raised inside a run when its cancel flag is set (the user pressed Stop, a time limit hit)."""


@dataclass(frozen=True)
class Param:
    name: str
    kind: type  # int, float, str or bool
    default: Any
    low: float | None = None  # inclusive bounds for numbers
    high: float | None = None
    choices: tuple[Any, ...] | None = None  # allowed values (str params)
    help: str = ""
    optional: bool = False  # None allowed (means "method decides")

    def coerce(self, value: Any) -> Any:
        """Convert and range-check one value; ValueError with a message a person can act on."""
        if value is None or (isinstance(value, str) and value.strip() == "" and self.kind is not str):
            if self.optional:
                return None
            value = self.default
        try:
            if self.kind is bool:
                if isinstance(value, str):
                    if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError
                    value = value.lower() in ("true", "1", "yes")
                else:
                    value = bool(value)
            elif self.kind is int:
                if isinstance(value, bool):
                    raise ValueError
                as_float = float(value)
                if not as_float.is_integer():
                    raise ValueError
                value = int(as_float)
            elif self.kind is float:
                if isinstance(value, bool):
                    raise ValueError
                value = float(value)
                if not math.isfinite(value):
                    raise ValueError
            else:
                value = str(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.name} must be {self.kind.__name__}, got {shown(value)}") from None
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"{self.name} must be one of {', '.join(map(str, self.choices))}; got {shown(value)}")
        if self.low is not None and value < self.low:
            raise ValueError(f"{self.name} must be >= {self.low}; got {value}")
        if self.high is not None and value > self.high:
            raise ValueError(f"{self.name} must be <= {self.high}; got {value}")
        return value


MAX_NEW_TOKENS = 1024
COMMON_PARAMS: tuple[Param, ...] = (
    Param("max_new_tokens", int, 64, 1, MAX_NEW_TOKENS, help="tokens to generate at most"),
    Param("temperature", float, 0.0, 0.0, 5.0, help="0 = greedy; > 0 samples (speculative sampling stays exact)"),
    Param("top_k", int, 0, 0, 1_000_000, help="keep the k most likely tokens (0 = off); same for drafter and target"),
    Param("top_p", float, 1.0, 0.01, 1.0, help="nucleus sampling mass (1 = off); same for drafter and target"),
    Param("seed", int, 0, 0, 2**31 - 1, help="seed of this run's own random generator"),
    Param(
        "heal_prompt",
        bool,
        False,
        help="token healing: back off the prompt's last token and make the first new token extend its text "
        "(a prompt ending in a bare newline gets its indentation); every method decodes the same healed prompt",
    ),
)


def common_values(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters of `params` every method shares (how tokens are chosen): what the autoregressive
    baseline of a run takes."""
    names = {p.name for p in COMMON_PARAMS}
    return {k: v for k, v in params.items() if k in names}


# What the trace records (not how tokens are chosen): kept apart from COMMON_PARAMS, whose controls the UI lays out.
TRACE_PARAMS: tuple[Param, ...] = (
    Param(
        "dist_top_k",
        int,
        8,
        0,
        32,
        help="record the top-k of the drafter's q and the target's p at every verified position (0 = off)",
    ),
)
GAMMA = Param("gamma", int, 4, 1, 16, help="draft tokens per verification round (the paper's gamma / k)")


def eta_param(default: float) -> Param:
    """The confidence stop of drafting (Kangaroo's second early exit; draft_model's option)."""
    return Param(
        "eta",
        float,
        default,
        0.0,
        1.0,
        help="stop drafting after a draft whose top-1 probability is under eta; that draft is kept (0 = never)",
    )


def confidence_exit(rec, step: int, depth: int, source: str, t: float, confidence: float, eta: float) -> bool:
    """Whether drafting stops after the draft at `depth` (its top-1 probability under eta); records the
    early_exit event when it does."""
    if confidence >= eta:
        return False
    rec.add(
        "early_exit",
        step=step,
        depth=depth,
        source=source,
        t0=t,
        t1=t,
        info={"reason": "confidence", "confidence": confidence, "eta": eta},
    )
    return True


@dataclass
class RunContext:
    """Everything one run may touch. Built fresh per run by `specviz.api.run`."""

    pair: Any  # ModelPair
    prompt_ids: torch.Tensor  # (1, T) prompt tokens on the device
    params: dict[str, Any]  # validated parameters, common and method-specific
    sampling: Sampling
    generator: torch.Generator  # this run's own RNG
    rec: Recorder
    out: Output
    vocab: int  # common vocabulary width of target and drafter logits
    cancel: threading.Event | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # method notes that go into Trace.meta
    batch_prompts: list[list[int]] = field(default_factory=list)  # batch methods: every row's prompt ids
    first_tokens: dict[int, int] = field(default_factory=dict)  # batch methods: row -> its healed first token
    outputs: list[Output] = field(default_factory=list)  # batch methods: every row's output
    # -- private to specviz.analysis.exactness (no parameter of `run` reaches them) ------------------------------
    verify_rule: str = "exact"  # "broken": the deliberately wrong rule of the exactness demo (verify.py)
    memo: ForwardMemo | None = None  # forwards reused across samples of one prompt (None: a plain run)
    shared: dict[str, Any] | None = None  # per-model setup reused across samples (see `once`)

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("run cancelled")

    def decoder(self, model: torch.nn.Module, lean: bool = False) -> Decoder:
        """A KV-cached decoder over `model` (specviz's lean Llama loop when `lean`); under exactness
        sampling a lazy view of one shared decoder whose forwards are memoized by token prefix."""
        if self.memo is not None:
            return self.memo.decoder(model, self.vocab, lean)
        return LeanDecoder(model, self.vocab) if lean else TransformersDecoder(model, self.vocab)

    def split_decoder(self, model: torch.nn.Module, exit_layer: int, lean: bool = False) -> SplitDecoder:
        """`model` split at `exit_layer` (layers [0, l) over ids, layers [l, N) + head over stored states), its
        shallow pass lean where asked; under exactness sampling one shared split whose layer-range forwards are
        memoized by token prefix (always on transformers' layer modules: its `lean` says which ran)."""
        if self.memo is not None:
            return self.memo.split_decoder(model, self.vocab, exit_layer)
        return SplitTarget(model, self.vocab, exit_layer, lean)

    def once(self, key: Any, make):
        """`make()`, computed once per exactness session (every call in a plain run)."""
        if self.shared is None:
            return make()
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]

    @property
    def dist_top(self) -> int:
        """k of the top-k distributions the trace records (0 when the recorder is off)."""
        return self.params.get("dist_top_k", 0) if self.rec.enabled else 0


class Method:
    name: ClassVar[str] = ""
    title: ClassVar[str] = ""  # human name for the UI
    PARAMS: ClassVar[tuple[Param, ...]] = ()
    needs_draft: ClassVar[bool] = False  # requires pair.draft
    batch: ClassVar[bool] = False  # takes a list of prompts
    # transformers' own loop, run as the row a user would pick instead: opaque (no rounds seen), greedy only
    peer: ClassVar[bool] = False
    # every model forward goes through ctx.decoder(...) or ctx.split_decoder(...): exactness may memoize forwards by
    # token prefix
    memo_safe: ClassVar[bool] = False

    def check_pair(self, pair: Any) -> None:
        """Raise ValueError when the pair lacks what this method needs."""
        if self.needs_draft and pair.draft is None:
            raise ValueError(f"method {self.name!r} needs a draft model: choose a drafter for this target")

    def generate(self, ctx: RunContext) -> None:
        raise NotImplementedError


def all_params(method: type[Method]) -> tuple[Param, ...]:
    return COMMON_PARAMS + TRACE_PARAMS + method.PARAMS


def validate_params(method: type[Method], params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter coerced and range-checked; unknown names are an error, not ignored."""
    specs = {p.name: p for p in all_params(method)}
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) for {method.name}: {', '.join(unknown)}; known: {', '.join(sorted(specs))}"
        )
    return {name: spec.coerce(params.get(name, spec.default)) for name, spec in specs.items()}
