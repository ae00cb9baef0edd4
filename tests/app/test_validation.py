"""Every bad input of issue 8, table-driven, against the engine boundary: a ValueError with a message a
person can act on, and the next good run still correct. (tests/app/test_reliability.py sends the same kinds
of input through the running app.)"""

from __future__ import annotations

import json

import pytest

from specviz.api import run
from specviz.engine.trace import Trace
from specviz.models import hub
from specviz.models.cache import ModelCache
from specviz.models.pair import load_pair

LONG_PROMPT = "x = 1\n" * 3000


@pytest.fixture(scope="module")
def saved(saved_pairs):
    return saved_pairs


@pytest.fixture(scope="module")
def pair(saved):
    loaded = load_pair(str(saved / "ok" / "target"), str(saved / "ok" / "draft"), cache=ModelCache())
    loaded.extras["vocab_ranking"] = list(range(len(loaded.tokenizer)))
    return loaded


RUN_CASES = [
    ("empty prompt", "draft_model", "", {}, "prompt is empty"),
    ("prompt not a string", "draft_model", 42, {}, "prompt must be a string"),
    ("prompt over the token cap", "draft_model", LONG_PROMPT, {}, "the limit is"),
    ("max_new_tokens 0", "draft_model", "x", {"max_new_tokens": 0}, "max_new_tokens must be >= 1"),
    ("max_new_tokens huge", "draft_model", "x", {"max_new_tokens": 10**9}, "max_new_tokens must be <="),
    ("max_new_tokens not a number", "draft_model", "x", {"max_new_tokens": "lots"}, "must be int"),
    ("gamma 0", "draft_model", "x", {"gamma": 0}, "gamma must be >= 1"),
    ("gamma 17", "draft_model", "x", {"gamma": 17}, "gamma must be <= 16"),
    ("gamma fractional", "draft_model", "x", {"gamma": 2.5}, "gamma must be int"),
    ("eta over 1", "kangaroo", "x", {"eta": 1.2}, "eta must be <= 1"),
    ("theta negative", "sorted", "x", {"theta": -0.1}, "theta must be >="),
    ("K negative", "draft_model", "x", {"vocab_trim": -5}, "vocab_trim must be >= 0"),
    ("K over the vocabulary", "draft_model", "x", {"vocab_trim": 10**6}, "exceeds"),
    ("kangaroo exit past the target", "kangaroo", "x", {"exit_layer": 5}, "exit_layer must be below"),
    ("kappa 0", "mirror", "x", {"kappa": 0}, "kappa must be >= 1"),
    ("kappa 9", "mirror", "x", {"kappa": 9}, "kappa must be <= 8"),
    ("temperature negative", "draft_model", "x", {"temperature": -0.5}, "temperature must be >= 0"),
    ("temperature NaN", "draft_model", "x", {"temperature": float("nan")}, "temperature must be float"),
    ("top_p 0", "draft_model", "x", {"top_p": 0.0}, "top_p must be >="),
    ("top_p over 1", "draft_model", "x", {"top_p": 1.5}, "top_p must be <= 1"),
    ("top_k negative", "draft_model", "x", {"top_k": -1}, "top_k must be >= 0"),
    ("seed negative", "draft_model", "x", {"seed": -1}, "seed must be >= 0"),
    ("unknown parameter", "draft_model", "x", {"gama": 3}, "unknown parameter"),
    ("unknown method", "medusa", "x", {}, "unknown method"),
    ("method not a string", None, "x", {}, "unknown method"),
    ("batch method through run", "eqspec", "x", {}, "batch method"),
]


@pytest.mark.parametrize("what,method,prompt,params,message", RUN_CASES, ids=[c[0] for c in RUN_CASES])
def test_bad_run_inputs(pair, what, method, prompt, params, message):
    with pytest.raises(ValueError, match=message):
        run(method, pair, prompt, **params)
    reference = run("autoregressive", pair, "def f(x):", max_new_tokens=6)
    assert run("draft_model", pair, "def f(x):", max_new_tokens=6).output_ids == reference.output_ids


BATCH_CASES = [
    ("no prompts", "eqspec", [], {}, "prompt"),
    ("batch_size 0", "eqspec", ["a", "b"], {"batch_size": 0}, "batch_size must be >= 1"),
    ("batch_size 33", "exspec", ["a", "b"], {"batch_size": 33}, "batch_size must be <= 32"),
    ("empty prompt in a batch", "eqspec", ["a", ""], {}, "prompt is empty"),
    ("single-sequence method as batch", "draft_model", ["a"], {}, "not a batch method"),
]


@pytest.mark.parametrize("what,method,prompts,params,message", BATCH_CASES, ids=[c[0] for c in BATCH_CASES])
def test_bad_batch_inputs(pair, what, method, prompts, params, message):
    from specviz.api import run_batch

    with pytest.raises(ValueError, match=message):
        run_batch(method, pair, prompts, **params)


def test_bad_model_references(saved, monkeypatch):
    cache = ModelCache()
    cases = [
        (lambda: load_pair("nobody/missing-model", cache=cache), "could not load model"),
        (lambda: load_pair("not a model id!", cache=cache), "neither a local directory nor a Hugging Face id"),
        (lambda: load_pair(str(saved / "bert"), cache=cache), "not a causal language model"),
        (
            lambda: load_pair(str(saved / "ok" / "target"), str(saved / "other" / "draft"), cache=cache),
            "tokenizer does not match",
        ),
        (lambda: load_pair(str(saved / "ok" / "target"), "embedded", cache=cache), "embedded drafter only fits"),
        (
            lambda: load_pair(
                str(saved / "ok" / "target"), device="cuda:7" if not __import__("torch").cuda.is_available() else "tpu"
            ),
            "cuda|unknown device",
        ),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()
    monkeypatch.setenv(hub.ALLOWLIST_ENV, "org/only-this")
    with pytest.raises(ValueError, match="not allowed on this server"):
        load_pair(str(saved / "ok" / "target"), cache=cache)
    assert not [k for k in cache.keys() if "other" in k[0] or "bert" in k[0]]  # refused models hold no memory


def test_bad_trace_files(tmp_path, pair):
    good = run("draft_model", pair, "def f(x):", max_new_tokens=5)
    files = {
        "not json": (b"\x89PNG\r\n", "invalid JSON"),
        "json of something else": (json.dumps({"name": "x"}).encode(), "not a specviz trace"),
        "a list": (b"[1, 2, 3]", "not a specviz trace"),
        "unknown event kind": (
            good.to_json().replace('"kind": "draft"', '"kind": "evil"').encode(),
            "unknown event kind",
        ),
        "extra event field": (
            good.to_json().replace('"kind": "draft"', '"kind": "draft", "x": 1', 1).encode(),
            "not a specviz trace",
        ),
    }
    for what, (content, message) in files.items():
        path = tmp_path / f"{what}.json"
        path.write_bytes(content)
        with pytest.raises(ValueError, match=message):
            Trace.read(path)
    huge = tmp_path / "huge.json"
    huge.write_bytes(b" " * 1000)
    with pytest.raises(ValueError, match="the limit is"):
        Trace.read(huge, max_bytes=100)
    ok = tmp_path / "ok.json"
    ok.write_text(good.to_json())
    assert Trace.read(ok).output_ids == good.output_ids


def test_an_exception_inside_a_method_leaves_the_engine_usable(pair, monkeypatch):
    from specviz.methods.draft_model import DraftModel

    def boom(self, ctx):
        raise RuntimeError("injected fault")

    with monkeypatch.context() as m:
        m.setattr(DraftModel, "generate", boom)
        with pytest.raises(RuntimeError, match="injected fault"):
            run("draft_model", pair, "def f(x):", max_new_tokens=5)
    assert (
        run("draft_model", pair, "def f(x):", max_new_tokens=6).output_ids
        == run("autoregressive", pair, "def f(x):", max_new_tokens=6).output_ids
    )


def test_an_error_names_a_wrong_value_by_type_and_excerpt_never_a_full_repr(embedded_pair):
    """A ModelPair passed where the method name goes: the message says what was passed, in under 200 characters."""
    from specviz import run

    with pytest.raises(ValueError) as err:
        run(embedded_pair, embedded_pair, "def f(x):")
    message = str(err.value)
    assert message.startswith("unknown method ModelPair ModelPair(") and len(message) < 200, message
    with pytest.raises(ValueError, match=r"gamma must be int, got list \[0, 1, 2"):
        run("draft_model", embedded_pair, "def f(x):", gamma=list(range(5000)))
