"""The METHODS registry: name -> Method class. A new method is one file plus one line here."""
from __future__ import annotations

from .autoregressive import Autoregressive
from .base import Method
from .batch import BatchAutoregressive, EQSpec, EXSpec
from .draft_model import DraftModel
from .hf_assisted import HFAssisted
from .kangaroo import Kangaroo
from .mirror import MirrorSD
from .sorted import Sorted

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        Autoregressive,
        DraftModel,
        HFAssisted,
        Kangaroo,
        Sorted,
        MirrorSD,
        BatchAutoregressive,
        EQSpec,
        EXSpec,
    )
}
