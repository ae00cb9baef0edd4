"""--watch against a local exporter made with prometheus_client that serves vLLM's names, with a counter reset
(a restarted server) between polls."""

from __future__ import annotations

import io
import json

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily

from specviz.observe.__main__ import main
from specviz.observe.prometheus import Watcher, fetch


class Exporter:
    """Serves whatever counts the test sets, as vLLM's counters."""

    def __init__(self) -> None:
        self.counts = {"steps": 0, "drafted": 0, "accepted": 0, "positions": [0, 0]}

    def collect(self):
        names = {"steps": "num_drafts", "drafted": "num_draft_tokens", "accepted": "num_accepted_tokens"}
        for key, name in names.items():
            family = CounterMetricFamily(f"vllm:spec_decode_{name}", name, labels=["model_name", "engine"])
            family.add_metric(["m", "0"], self.counts[key])
            yield family
        per_pos = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos", "p", labels=["model_name", "engine", "position"]
        )
        for i, n in enumerate(self.counts["positions"]):
            per_pos.add_metric(["m", "0", str(i)], n)
        yield per_pos


def test_watch_uses_deltas_and_survives_a_reset():
    exporter = Exporter()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(exporter)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        watcher = Watcher()
        exporter.counts = {"steps": 10, "drafted": 20, "accepted": 12, "positions": [8, 4]}
        assert watcher.update(fetch(url)) == []  # the baseline
        exporter.counts = {"steps": 30, "drafted": 60, "accepted": 32, "positions": [20, 12]}
        (first,) = watcher.update(fetch(url))
        assert (first.scope, first.steps, first.drafted, first.accepted) == ("interval", 20, 40, 20)
        assert first.accepted_per_position == [12, 8] and first.mean_acceptance_length == 2.0
        exporter.counts = {"steps": 5, "drafted": 10, "accepted": 2, "positions": [2, 0]}  # restarted
        (after,) = watcher.update(fetch(url))
        assert (after.steps, after.drafted, after.accepted, watcher.resets) == (5, 10, 2, 1)
        assert "counter reset" in after.notes[-1]
        out = io.StringIO()
        assert main(["--watch", url, "--polls", "2", "--interval", "0", "--json"], out=out) == 0
        assert out.getvalue() == ""  # unchanged counters: no interval to report
        exporter.counts = {"steps": 9, "drafted": 18, "accepted": 6, "positions": [4, 2]}
        out = io.StringIO()
        assert main(["--watch", url, "--polls", "1", "--interval", "0", "--json"], out=out) == 0
    finally:
        server.shutdown()
        thread.join(timeout=5)


def test_watch_refuses_other_schemes():
    watcher_out = io.StringIO()
    assert main(["--watch", "file:///etc/passwd", "--polls", "1", "--interval", "0"], out=watcher_out) == 0
    assert watcher_out.getvalue() == ""
    assert json.dumps(Watcher().update("")) == "[]"
