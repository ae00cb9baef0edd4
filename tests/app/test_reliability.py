"""Issue 8 through the running app (`python app.py`, driven with gradio_client): every bad input gets a
clear error and the server goes on answering; 16 concurrent mixed runs each equal the same run done
alone; a cancelled run stops; the allowlist keeps strangers from loading arbitrary models."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from appserver import playground_stream_args, running_app
from gradio_client import Client

from specviz.engine.trace import MAX_TRACE_BYTES, Trace

pytestmark = pytest.mark.slow  # a real server in a real browser or under load: minutes

LONG_PROMPT = "x = 1\n" * 3000


@pytest.fixture(scope="module")
def app():
    with running_app({"SPECVIZ_CONCURRENCY": "4"}) as server:
        yield server


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


@pytest.fixture(scope="module")
def saved(saved_pairs):
    return saved_pairs


def playground(prompt="def f(x):\n", method="draft_model", params=None, target="embedded", draft=""):
    return "/playground", (prompt, method, json.dumps(params or {}), target, draft)


def batch(prompts=("a = 1\n", "def g():\n"), method="eqspec", params=None):
    return "/batch_run", (json.dumps(list(prompts)), method, json.dumps(params or {}), "embedded", "")


def trace_file(text: str):
    return "/load_trace", (text,)


# (what, request, the message the user must see); {saved} is the directory of locally saved tiny pairs
BAD_INPUTS = [
    ("empty prompt", playground(prompt=""), "prompt is empty"),
    ("prompt over the token cap", playground(prompt=LONG_PROMPT), "the limit is 2048"),
    ("max_new_tokens 0", playground(params={"max_new_tokens": 0}), "max_new_tokens must be >= 1"),
    ("max_new_tokens huge", playground(params={"max_new_tokens": 10**7}), "max_new_tokens must be <= 1024"),
    ("gamma 0", playground(params={"gamma": 0}), "gamma must be >= 1"),
    ("gamma 17", playground(params={"gamma": 17}), "gamma must be <= 16"),
    ("Kangaroo eta over 1", playground(method="kangaroo", params={"eta": 1.5}), "eta must be <= 1"),
    ("S2D theta negative", playground(method="sorted", params={"theta": -0.2}), "theta must be >= 0"),
    (
        "S2D sub_model 9",
        playground(method="sorted", params={"sub_model": 9}),
        "sub_model must be 0 \\(adaptive\\) or 1..3",
    ),
    ("Kangaroo exit layer past the target", playground(method="kangaroo", params={"exit_layer": 40}), "exit_layer"),
    ("VocabTrim K negative", playground(params={"vocab_trim": -5}), "vocab_trim must be >= 0"),
    ("VocabTrim K over the vocabulary", playground(params={"vocab_trim": 10**6}), "exceeds"),
    ("Mirror kappa 0", playground(method="mirror", params={"kappa": 0}), "kappa must be >= 1"),
    ("temperature negative", playground(params={"temperature": -1}), "temperature must be >= 0"),
    ("top_p over 1", playground(params={"top_p": 1.5}), "top_p must be <= 1"),
    ("top_p 0", playground(params={"top_p": 0}), "top_p must be >"),
    ("unknown parameter", playground(params={"gama": 3}), "unknown parameter"),
    ("params not JSON", ("/playground", ("x", "draft_model", "{gamma: 4", "embedded", "")), "must be a JSON object"),
    ("unknown method", playground(method="medusa"), "unknown method 'medusa'"),
    ("batch method on the single endpoint", playground(method="eqspec"), "batch method"),
    ("batch_size 0", batch(params={"batch_size": 0}), "batch_size must be >= 1"),
    ("batch_size 33", batch(method="exspec", params={"batch_size": 33}), "batch_size must be <= 32"),
    ("batch prompts not a list", ("/batch_run", ("[1, 2", "eqspec", "{}", "embedded", "")), "JSON list"),
    ("batch with an empty prompt", batch(prompts=("a", "")), "prompt is empty"),
    ("unknown model id", playground(target="nobody/no-such-model"), "could not load model"),
    ("malformed model id", playground(target="../../etc/passwd"), "neither a local directory nor a Hugging Face id"),
    (
        "drafter tokenizer mismatch",
        playground(target="{saved}/ok/target", draft="{saved}/other/draft"),
        "tokenizer does not match",
    ),
    ("non-causal-LM model", playground(target="{saved}/bert"), "not a causal language model"),
    ("trace file that is not JSON", trace_file("\x89PNG\r\n"), "invalid JSON"),
    ("trace file of something else", trace_file(json.dumps({"name": "x"})), "not a specviz trace"),
    ("trace file over the size cap", trace_file(" " * (MAX_TRACE_BYTES + 1)), "over 20 MB"),
]


def fill(value, saved):
    return value.replace("{saved}", str(saved)) if isinstance(value, str) and "{saved}" in value else value


def healthy(client: Client) -> dict:
    state = json.loads(client.predict(api_name="/health"))
    assert state["ok"]
    return state


@pytest.mark.parametrize("what,request_,message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_a_clear_error_and_the_server_goes_on(client, saved, what, request_, message):
    endpoint, args = request_
    with pytest.raises(Exception, match=message):
        client.predict(*[fill(a, saved) for a in args], api_name=endpoint)
    healthy(client)


def test_after_bad_inputs_a_good_run_is_still_right(client):
    from specviz.api import run
    from specviz.models.pair import load_pair

    text, trace_json = client.predict(*playground(params={"max_new_tokens": 24})[1], api_name="/playground")
    local = run("draft_model", load_pair("embedded"), "def f(x):\n", max_new_tokens=24)
    assert Trace.from_json(trace_json).output_ids == local.output_ids and text == local.text


# methods x seeds for the load test: greedy and sampled, every single-sequence method and a batch run
MIX = [
    ("autoregressive", {}),
    ("draft_model", {"gamma": 4}),
    ("draft_model", {"temperature": 0.8, "seed": 1}),
    ("draft_model", {"temperature": 0.8, "seed": 2}),
    ("kangaroo", {}),
    ("kangaroo", {"temperature": 1.0, "seed": 3}),
    ("sorted", {}),
    ("sorted", {"sub_model": 2}),
    ("mirror", {}),
    ("mirror", {"temperature": 0.7, "seed": 4}),
    ("draft_model", {"vocab_trim": 1024}),
    ("hf_assisted", {}),
    ("autoregressive", {"temperature": 0.9, "seed": 5}),
    ("kangaroo", {"eta": 0.0}),
    ("draft_model", {"temperature": 1.0, "top_p": 0.9, "seed": 6}),
]
PROMPTS = ["def parse(line):\n", "class Queue:\n    def __init__(self):\n", "import os\n\ndef walk(root):\n"]


def measure_again(args: tuple) -> tuple:
    """/playground's arguments with "measure_again" in its params (the trace cache is bypassed); others as they are."""
    if len(args) == 5 and args[1] in {m for m, _ in MIX}:
        return (args[0], args[1], json.dumps({**json.loads(args[2]), "measure_again": True}), *args[3:])
    return args


def requests_for_load() -> list[tuple[str, tuple]]:
    out = []
    for i, (method, params) in enumerate(MIX):
        out.append(playground(PROMPTS[i % len(PROMPTS)], method, {"max_new_tokens": 32, **params}))
    out.append(batch(PROMPTS, "exspec", {"max_new_tokens": 24, "batch_size": 2}))
    return out


def test_sixteen_concurrent_mixed_runs_each_equal_the_run_alone(app, client):
    requests = requests_for_load()
    assert len(requests) >= 16
    alone = [client.predict(*args, api_name=endpoint) for endpoint, args in requests]
    start = time.time()
    with ThreadPoolExecutor(len(requests)) as pool:  # one client per user, all at once, each measured again
        futures = [
            pool.submit(lambda r: Client(app.url, verbose=False).predict(*measure_again(r[1]), api_name=r[0]), r)
            for r in requests
        ]
        together = [f.result(timeout=600) for f in futures]
    seconds = time.time() - start
    for (endpoint, args), solo, crowd in zip(requests, alone, together):
        assert crowd[0] == solo[0], f"{endpoint} {args[1]} {args[2]}: text differs under load"
        a, b = Trace.from_json(solo[1]), Trace.from_json(crowd[1])
        assert [r.output_ids for r in a.rows] == [r.output_ids for r in b.rows]
        assert a.params == b.params
        if endpoint == "/playground":  # a new run under load, not the stored one
            assert (
                b.meta["served"]["from"] == "engine"
                and b.meta["served"]["measured_at"] > a.meta["served"]["measured_at"]
            )
    state = healthy(client)
    assert state["runs_in_flight"] == 0
    figures = {
        "concurrent_runs": len(requests),
        "seconds": round(seconds, 1),
        "failures": 0,
        "server_peak_rss_mb": round(app.peak_rss_mb(), 1),
    }
    print("load test:", figures)


def test_a_cancelled_run_stops_and_the_next_run_is_right(client):
    job = client.submit(*playground_stream_args("draft_model", 1024), api_name="/playground_stream")
    deadline = time.time() + 60
    while not job.outputs() and time.time() < deadline:  # wait until tokens stream
        time.sleep(0.05)
    assert job.outputs(), "no streamed output within 60 s"
    assert healthy(client)["runs_in_flight"] >= 1
    job.cancel()
    deadline = time.time() + 20
    while healthy(client)["runs_in_flight"] and time.time() < deadline:
        time.sleep(0.1)
    assert healthy(client)["runs_in_flight"] == 0, "the cancelled run is still generating"
    test_after_bad_inputs_a_good_run_is_still_right(client)


def test_an_identical_request_is_served_from_the_cache_and_labelled(client):
    args = playground(params={"max_new_tokens": 20, "seed": 7})[1]
    first = Trace.from_json(client.predict(*args, api_name="/playground")[1])
    second = Trace.from_json(client.predict(*args, api_name="/playground")[1])
    again = Trace.from_json(client.predict(*measure_again(args), api_name="/playground")[1])
    assert first.meta["served"]["from"] == "engine" and second.meta["served"] == {
        **first.meta["served"],
        "from": "cache",
    }
    assert (
        again.meta["served"]["from"] == "engine"
        and again.meta["served"]["measured_at"] > first.meta["served"]["measured_at"]
    )
    assert first.output_ids == second.output_ids == again.output_ids


def test_a_session_is_refused_its_fourth_run_at_submission(app):
    """One browser session (one gradio_client) with four long runs at once: three take their places, the fourth
    is refused at once with the reason; the other sessions' runs are untouched."""
    session = Client(app.url, verbose=False)
    jobs = [
        session.submit(
            *playground_stream_args("draft_model", 256, prompt=f"def f{i}(x):\n"), api_name="/playground_stream"
        )
        for i in range(4)
    ]
    try:
        deadline = time.time() + 60
        refused = []
        while not refused and time.time() < deadline:
            for job in jobs:
                if job.done():
                    try:
                        job.result()
                    except Exception as exc:  # noqa: BLE001 - the refusal
                        refused.append(str(exc))
            time.sleep(0.1)
        assert len(refused) == 1 and "already has 3 runs queued or running (at most 3)" in refused[0], refused
        other = Client(app.url, verbose=False)
        assert other.predict(*playground(params={"max_new_tokens": 8})[1], api_name="/playground")[0]
    finally:
        for job in jobs:
            job.cancel()
        deadline = time.time() + 30
        while healthy(Client(app.url, verbose=False))["runs_in_flight"] and time.time() < deadline:
            time.sleep(0.2)


def test_allowlist_mode_refuses_other_models(saved):
    with running_app({"SPECVIZ_ALLOWED_MODELS": "Qwen/Qwen2.5-0.5B-Instruct"}) as server:
        client = Client(server.url, verbose=False)
        for target in (str(saved / "ok" / "target"), "nobody/anything"):
            with pytest.raises(Exception, match="not allowed on this server"):
                client.predict(*playground(target=target)[1], api_name="/playground")
        with pytest.raises(Exception, match="not allowed on this server"):
            client.predict(*playground(draft=str(saved / "ok" / "draft"))[1], api_name="/playground")
        text, _ = client.predict(*playground(params={"max_new_tokens": 8})[1], api_name="/playground")
        assert text and json.loads(client.predict(api_name="/health"))["models_cached"] == ["embedded"]


def test_a_server_bound_beyond_loopback_refuses_paths_and_unknown_ids_alike(saved):
    """Default settings on 0.0.0.0: no local path (existing or not, model or not) and no hub id outside the
    curated pairs can be probed or loaded; every refusal is the same message, naming nothing on disk."""
    env = {"SPECVIZ_ALLOWED_MODELS": "", "SPACE_ID": ""}
    with running_app(env, command=["python", "app.py", "--host", "0.0.0.0"]) as server:
        client = Client(server.url, verbose=False)
        probes = [
            "/etc",
            "/proc/self",
            "/nonexistent/dir",
            str(saved / "ok" / "target"),
            "nobody/anything",
            "../../etc/passwd",
            "x" * 5000,
        ]
        for target in probes:
            with pytest.raises(Exception) as err:
                client.predict(*playground(target=target)[1], api_name="/playground")
            message = str(err.value)
            assert "not allowed on this server" in message, message
            assert not any(leak in message for leak in ("Unrecognized", "File name too long", "No such", "config.json"))
        with pytest.raises(Exception, match="not allowed on this server"):
            client.predict(*playground(draft=str(saved / "ok" / "draft"))[1], api_name="/playground")
        text, _ = client.predict(*playground(params={"max_new_tokens": 8})[1], api_name="/playground")
        assert text and json.loads(client.predict(api_name="/health"))["models_cached"] == ["embedded"]


def test_a_fault_inside_a_method_is_reported_and_the_next_run_is_right(monkeypatch):
    """An exception and an out-of-memory inside a method, in a real server (in this process, so the fault
    can be injected): each becomes a clear error, and the next run is right."""
    import torch
    from appserver import free_port

    from specviz.app import ui
    from specviz.methods.draft_model import DraftModel

    monkeypatch.setenv("SPECVIZ_ENGINE", "thread")  # the patched method lives in this process (the engine process
    # has its own faults test: tests/app/test_worker.py)

    original = DraftModel.generate

    def faulty(self, ctx):
        prompt = ctx.pair.tokenizer.decode(ctx.prompt_ids[0])
        if "FAULT" in prompt:
            raise RuntimeError("injected fault")
        if "OOM" in prompt:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(self, ctx)

    monkeypatch.setattr(DraftModel, "generate", faulty)
    demo = ui.build_demo().queue(default_concurrency_limit=2)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, ssr_mode=False, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match=r"internal error \(RuntimeError\): injected fault"):
            client.predict(*playground(prompt="# FAULT\n")[1], api_name="/playground")
        with pytest.raises(Exception, match="ran out of memory"):
            client.predict(*playground(prompt="# OOM\n")[1], api_name="/playground")
        assert json.loads(client.predict(api_name="/health"))["runs_in_flight"] == 0
        test_after_bad_inputs_a_good_run_is_still_right(client)
    finally:
        demo.close()
