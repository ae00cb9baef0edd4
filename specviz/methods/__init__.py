"""The METHODS registry: name -> Method class. A new method is one file plus one line here."""

from __future__ import annotations

from specviz.methods.autoregressive import Autoregressive
from specviz.methods.base import Method
from specviz.methods.batch import BatchAutoregressive, EQSpec, EXSpec
from specviz.methods.draft_model import DraftModel
from specviz.methods.hf_assisted import HFAssisted
from specviz.methods.hf_prompt_lookup import HFPromptLookup
from specviz.methods.kangaroo import Kangaroo
from specviz.methods.mirror import MirrorSD
from specviz.methods.prompt_lookup import PromptLookup
from specviz.methods.sorted import Sorted
from specviz.methods.tree import Tree

METHODS: dict[str, type[Method]] = {
    m.name: m
    for m in (
        Autoregressive,
        DraftModel,
        HFAssisted,
        PromptLookup,
        HFPromptLookup,
        Tree,
        Kangaroo,
        Sorted,
        MirrorSD,
        BatchAutoregressive,
        EQSpec,
        EXSpec,
    )
}
