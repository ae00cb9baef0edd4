"""What each method's headline effect needs, and whether the machine serving the page has it.

A paper's speedup is measured where its idea pays: Mirror-SD with target and drafter on separate accelerators,
batch speculation on a GPU where a batched verification costs little more than one step. On a 2-core CPU the
same method may run slower than none; the Learn tab says so beside the figure ("0.7x here") with its reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Machine:
    """The accelerators of the machine serving the page."""

    gpus: int
    name: str

    @classmethod
    def here(cls) -> "Machine":
        if torch.cuda.is_available():
            return cls(torch.cuda.device_count(), torch.cuda.get_device_name(0))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return cls(1, "Apple MPS")
        return cls(0, "CPU only")


Verdict = tuple[bool | None, str]  # has it (None: depends on something else), and why


def a_gpu(machine: Machine) -> Verdict:
    return (
        (True, machine.name)
        if machine.gpus
        else (False, "this page runs on a CPU: a verification of k tokens costs about k steps, not one")
    )


def two_accelerators(machine: Machine) -> Verdict:
    if machine.gpus >= 2:
        return True, f"{machine.gpus} accelerators"
    return False, f"{machine.gpus or 'no'} accelerator{'s' if machine.gpus != 1 else ''}: branches share the target's"


@dataclass(frozen=True)
class Need:
    text: str
    check: Callable[[Machine], Verdict]


NEEDS: dict[str, Need] = {
    "draft_model": Need(
        "a drafter far cheaper than the target, and memory-bound decoding (a GPU), where verifying "
        "γ tokens costs about one step",
        a_gpu,
    ),
    "kangaroo": Need("a GPU, where the shallow exit and the adapter cost a small share of a target step", a_gpu),
    "sorted": Need(
        "several targets served by one drafter (one drafter's memory instead of many)",
        lambda m: (False, "one target per run on this page"),
    ),
    "vocabtrim": Need(
        "a memory-bound drafter whose LM head is a large share of its weights (vocabularies of 100k+ ids)",
        lambda m: (
            (False, "the embedded drafter's vocabulary is 8,192 ids")
            if not m.gpus
            else (None, "depends on the drafter's vocabulary")
        ),
    ),
    "mirror": Need("target and drafter on separate accelerators, running at the same time", two_accelerators),
    "batch": Need("a GPU, where verifying a batch costs little more than one step", a_gpu),
    "tree": Need(
        "a GPU, where verifying a tree of many nodes costs about one step (on a CPU the target's cost "
        "grows with every node verified)",
        a_gpu,
    ),
    "prompt_lookup": Need(
        "outputs that copy from the input (summaries, RAG, code edits); no drafter at all",
        lambda m: (None, "depends on the prompt, not the machine: try one that quotes its input"),
    ),
}


def cell(key: str, machine: Machine) -> str:
    """'needs ...; here: yes/no/depends (why)' for one Learn row."""
    need = NEEDS[key]
    has, why = need.check(machine)
    word = {True: "yes", False: "no", None: "depends"}[has]
    return f"{need.text}. **Here: {word}** ({why})"
