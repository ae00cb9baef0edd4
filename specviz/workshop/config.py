"""The embedded family's training configuration (one dataclass; every phase reads it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

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


def exit_weights_for(exits: tuple[int, ...]) -> tuple[float, ...]:
    """Loss weights for a target's exits: the default weights' last ones (the deepest exit weighs most), or an
    even 0.25 each when it has more exits than the defaults name."""
    defaults = TrainConfig().exit_weights
    return defaults[len(defaults) - len(exits) :] if len(exits) <= len(defaults) else (0.25,) * len(exits)
