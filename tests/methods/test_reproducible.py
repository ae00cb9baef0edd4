"""A seeded sampling run is reproducible, the chooser's plans included: `choose=yield` plans each round from the
run's own verdicts (counts, never timings), so the same seed gives the same output ids and the same events (kinds,
tokens, sources, plans and the uniforms drawn), and another seed gives another output."""

from __future__ import annotations

import pytest

from specviz.api import run
from specviz.engine.trace import Trace

PROMPTS = [  # code that repeats itself: lookup copies in some rounds, the drafter drafts in others
    "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n    return",
    "import os\nimport sys\nimport os.path\nimport",
]
CHOOSER = {"lookup": 2, "choose": "yield", "max_new_tokens": 24, "temperature": 0.8}


def signature(trace: Trace) -> list[tuple]:
    """What a reader of the trace sees of each event (everything but its times)."""
    return [
        (e.kind, e.step, e.position, e.token_id, e.depth, e.source, e.info.get("plan"), e.info.get("u"))
        for e in trace.events
    ]


@pytest.mark.parametrize("name", ["draft_model", "kangaroo"])
def test_a_seeded_chooser_run_is_reproducible(embedded_pair, name):
    plans: set[str] = set()
    differs = False
    for prompt in PROMPTS:
        a = run(name, embedded_pair, prompt, seed=1, **CHOOSER)
        b = run(name, embedded_pair, prompt, seed=1, **CHOOSER)
        assert a.output_ids == b.output_ids
        assert signature(a) == signature(b)
        plans |= {e.info["plan"]["source"] for e in a.events if e.kind == "verify" and "plan" in e.info}
        differs |= run(name, embedded_pair, prompt, seed=2, **CHOOSER).output_ids != a.output_ids
    assert {"lookup", "draft"} <= plans, f"the runs did not exercise both of the chooser's sources: {plans}"
    assert differs, "another seed gave the same output on every prompt"
