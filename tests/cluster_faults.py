"""Faults for tests/bench/test_cluster.py, run inside Ray workers (not collected as tests): shipped by value, since
the workers cannot import the tests' folder."""

from __future__ import annotations

from specviz.bench.cluster import BenchWorker
from specviz.models.selfcheck import SelfCheckFailed

BOOM = "boom"  # the prompt id whose unit raises on every worker


class FaultyWorker(BenchWorker):
    """Worker w1 fails its load-time self-check; the unit of prompt BOOM raises wherever it runs."""

    def load(self, load, slot):
        if self.name == "w1":
            raise SelfCheckFailed("injected: this worker's engine disagrees with the model")
        return super().load(load, slot)

    def run(self, unit):
        if unit.kind == "prompt" and unit.prompts[0]["id"] == BOOM:
            raise RuntimeError("injected unit fault")
        return super().run(unit)
