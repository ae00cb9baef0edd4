"""specviz.analysis.exactness: the chi-square verdict on sampled continuations against the target's exact law.
The exact rule passes, the rule broken on purpose is caught, and the memoized sampling loop draws
exactly what `run` draws for the same seeds."""

from __future__ import annotations

import pytest
import torch
from helpers import peaky_llama, word_tokenizer

import specviz
from specviz.analysis.exactness import iter_samples
from specviz.api import run
from specviz.engine.adapter import KangarooAdapter
from specviz.engine.memo import ForwardMemo
from specviz.methods import METHODS
from specviz.methods.base import validate_params
from specviz.models.pair import ModelPair

PROMPT = "w1 w2"


@pytest.fixture(scope="module")
def peaky_pair():
    tok = word_tokenizer(7)  # 8 ids, id 0 = EOS
    vocab = len(tok)
    target = peaky_llama(vocab, layers=2, seed=21)
    draft = peaky_llama(vocab, layers=1, seed=22)
    adapter = KangarooAdapter.for_target(target.config, 1).eval()
    return ModelPair(
        target=target,
        tokenizer=tok,
        draft=draft,
        target_name="t",
        draft_name="d",
        device=torch.device("cpu"),
        dtype=torch.float32,
        extras={
            "kangaroo_adapter": adapter,
            "sorted_drafter": peaky_llama(vocab, 2, seed=23),
            "vocab_ranking": list(range(vocab)),
        },
    )


def check_result(result: dict, n: int) -> None:
    assert abs(sum(result["law"].values()) - 1.0) < 1e-9
    assert all(p >= 0 for p in result["law"].values())
    assert sum(result["counts"].values()) == n and sum(result["reference_counts"].values()) == n
    assert set(result["counts"]) == set(result["law"]) == {c["key"] for c in result["cells"]}
    for key in (
        "tv_distance",
        "chi2_p",
        "reference_tv_distance",
        "reference_chi2_p",
        "seconds",
        "n",
        "method",
        "broken",
    ):
        assert key in result
    assert 0.0 <= result["tv_distance"] <= 1.0 and 0.0 <= result["chi2_p"] <= 1.0


def test_exact_rule_passes_and_the_broken_rule_is_caught(peaky_pair):
    n = 2000
    exact = specviz.analysis.exactness(
        "draft_model", peaky_pair, PROMPT, n=n, tokens=2, seed=0, temperature=1.0, gamma=3
    )
    check_result(exact, n)
    assert exact["chi2_p"] > 0.01, exact
    assert exact["reference_chi2_p"] > 0.001
    assert not exact["broken"] and "BROKEN" not in exact["label"]
    broken = specviz.analysis.exactness(
        "draft_model", peaky_pair, PROMPT, n=n, tokens=2, seed=0, broken=True, temperature=1.0, gamma=3, reference=False
    )
    assert broken["broken"] and broken["label"].startswith("BROKEN on purpose")
    assert broken["chi2_p"] < 0.001, broken
    assert broken["tv_distance"] > exact["tv_distance"]


def test_draft_model_with_a_confidence_stop_passes(peaky_pair):
    """eta changes how many tokens are drafted, never the law of what is emitted."""
    stops = [
        run("draft_model", peaky_pair, PROMPT, max_new_tokens=3, temperature=1.0, seed=s, gamma=3, eta=0.9)
        for s in range(5)
    ]  # 3 tokens: the first round drafts up to 2, so the stop can cut it
    assert any(e.kind == "early_exit" for trace in stops for e in trace.events)
    result = specviz.analysis.exactness(
        "draft_model", peaky_pair, PROMPT, n=1000, tokens=3, seed=2, temperature=1.0, gamma=3, eta=0.9, reference=False
    )
    assert result["chi2_p"] > 0.01, result


def test_kangaroo_passes(peaky_pair):
    result = specviz.analysis.exactness(
        "kangaroo",
        peaky_pair,
        PROMPT,
        n=1000,
        tokens=2,
        seed=1,
        temperature=0.8,
        eta=0.0,
        exit_layer=1,
        reference=False,
    )
    assert result["chi2_p"] > 0.01, result


def test_law_enumerates_the_top_tokens_and_bins_the_rest(peaky_pair):
    result = specviz.analysis.exactness("draft_model", peaky_pair, PROMPT, n=50, tokens=2, top=3, temperature=1.0)
    check_result(result, 50)
    keys = [c["key"] for c in result["cells"]]
    assert keys[-1] == "other" and result["law"]["other"] > 0
    firsts = {c["ids"][0] for c in result["cells"] if c["ids"]}
    assert len(firsts) <= 3 and all(len(c["ids"]) <= 2 for c in result["cells"])
    # the law is the target's own: the first-token marginal matches a direct softmax
    ids = peaky_pair.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        first = torch.softmax(peaky_pair.target(torch.tensor([ids])).logits[0, -1].double(), -1)
    for a in firsts:
        mass = sum(c["prob"] for c in result["cells"] if c["ids"] and c["ids"][0] == a)
        if a != 0:  # a non-EOS first token: its top-3 continuations only
            assert mass <= float(first[a]) + 1e-6
        else:
            assert mass == pytest.approx(float(first[a]), abs=1e-6)


@pytest.mark.parametrize(
    "name,params",
    [
        ("draft_model", {"gamma": 3}),
        ("draft_model", {"gamma": 2, "vocab_trim": 6}),
        ("draft_model", {"gamma": 2, "drafter_forward": "transformers"}),
        ("draft_model", {"gamma": 3, "eta": 0.9}),
        ("sorted", {"gamma": 2}),
        ("autoregressive", {}),
        ("kangaroo", {"gamma": 3, "eta": 0.0, "exit_layer": 1}),
        ("kangaroo", {"gamma": 3, "eta": 0.5, "exit_layer": 1, "vocab_trim": 5}),
        ("prompt_lookup", {"gamma": 3, "min_ngram": 1}),  # "w1 w2" repeats one token at most
        ("tree", {"nodes": 6, "depth": 3, "branch": 2}),
        ("tree", {"nodes": 5, "depth": 2, "branch": 3, "drafter_forward": "transformers"}),
    ],
)
def test_memoized_samples_equal_plain_runs(peaky_pair, name, params):
    """The shared, memoized forwards change no draw: the same seeds give the same tokens as `run`."""
    cls = METHODS[name]
    values = validate_params(cls, {**params, "temperature": 1.0, "max_new_tokens": 4})
    ids = peaky_pair.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    memo, shared = ForwardMemo(), {}
    seeds = range(40)
    fast = list(iter_samples(cls, peaky_pair, ids, values, seeds, 8, memo=memo, shared=shared))
    plain = [
        run(name, peaky_pair, PROMPT, max_new_tokens=4, temperature=1.0, seed=s, **params).output_ids for s in seeds
    ]
    assert fast == plain
    stats = memo.stats()  # Kangaroo's split target included (engine.memo.MemoSplit)
    assert stats["hits"] > stats["misses"] > 0
    if name == "kangaroo":
        assert memo.splits and not memo.shared, "every Kangaroo forward goes through the split decoder"
        split = next(iter(memo.splits.values()))
        assert split.memo.hits > split.memo.misses > 0


def test_a_memoized_tree_keeps_only_the_plain_tokens_and_one_path(peaky_pair):
    """keep_path after a memoized tree feed: the plain tokens, then ascending tree entries; anything else is refused
    (the memo's key would no longer say what the cache holds)."""
    from specviz.engine.tree import tree_mask

    view = ForwardMemo().decoder(peaky_pair.target, 8)
    view.feed(torch.tensor([[1, 2, 3]]))
    mask = tree_mask([[3], [3, 4], [3, 5]], 3, 3, torch.float32, torch.device("cpu"))  # a root and two children
    view.feed_tree(torch.tensor([[4, 5, 6]]), torch.tensor([[3, 4, 4]]), mask)
    assert view.length == 6
    with pytest.raises(ValueError, match="keep_path keeps every plain token"):
        view.keep_path([0, 2, 3, 4])
    with pytest.raises(ValueError, match="keep_path keeps every plain token"):
        view.keep_path([0, 1, 2, 4, 3])
    view.keep_path([0, 1, 2, 3, 5])
    assert view.tokens == [1, 2, 3, 4, 6] and view.length == 5 and view.shared.tokens == [1, 2, 3, 4, 6]


def test_the_broken_rule_is_unreachable_from_run(peaky_pair):
    with pytest.raises(ValueError, match="unknown parameter"):
        run("draft_model", peaky_pair, PROMPT, temperature=1.0, verify_rule="broken")
    with pytest.raises(ValueError, match="verify_rule is set by exactness"):
        specviz.analysis.exactness("draft_model", peaky_pair, PROMPT, n=10, verify_rule="broken")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"temperature": 0.0}, "temperature must be > 0"),
        ({"n": 0}, "n must be"),
        ({"tokens": 9}, "tokens must be"),
        ({"broken": True, "method": "autoregressive"}, "choose a speculative method"),
        ({"method": "eqspec"}, "batch method"),
    ],
)
def test_bad_requests_get_clear_messages(peaky_pair, kwargs, message):
    kwargs = {"method": "draft_model", "n": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        specviz.analysis.exactness(kwargs.pop("method"), peaky_pair, PROMPT, **kwargs)


@pytest.mark.parametrize(
    "name,params",
    [
        ("draft_model", {"gamma": 3}),
        ("kangaroo", {"gamma": 3, "eta": 0.0, "exit_layer": 1}),
        ("tree", {"nodes": 6, "depth": 3, "branch": 2}),
    ],
)
def test_a_memo_that_starts_over_changes_no_draw(peaky_pair, monkeypatch, name, params):
    """Memos cleared every few entries (their byte cap) still give `run`'s tokens."""
    import specviz.analysis.exactness as ex

    monkeypatch.setattr(ex, "MEMO_BYTES", 2000)  # the cap of every shared decoder's and split target's memo
    cls = METHODS[name]
    values = validate_params(cls, {**params, "temperature": 1.0, "max_new_tokens": 4})
    ids = peaky_pair.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    fast = list(iter_samples(cls, peaky_pair, ids, values, range(20), 8))
    plain = [
        run(name, peaky_pair, PROMPT, max_new_tokens=4, temperature=1.0, seed=s, **params).output_ids for s in range(20)
    ]
    assert fast == plain
