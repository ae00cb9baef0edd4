"""The acceptance rules on fixed distributions (fast): chi-square tests of exactness, and the tree's sibling rule
enumerated exactly."""

import pytest
import torch

import specviz.engine.verify as verify
from specviz.analysis.stats import chi_square
from specviz.engine.verify import Sampling, greedy_verdict, sampling_verdict, sibling_verdict


def test_greedy_accepts_matching_prefix_and_corrects():
    logits = torch.full((4, 6), -5.0)
    for i, best in enumerate([1, 2, 3, 4]):
        logits[i, best] = 5.0
    v = greedy_verdict(torch.tensor([1, 2, 0]), logits, [0.9, 0.9, 0.9])
    assert (v.accepted, v.token) == (2, 3)
    v = greedy_verdict(torch.tensor([1, 2, 3]), logits, [0.9] * 3)
    assert (v.accepted, v.token) == (3, 4)  # bonus
    v = greedy_verdict(torch.tensor([0, 2, 3]), logits, [0.9] * 3)
    assert (v.accepted, v.token) == (0, 1)


def test_top_k_and_top_p_filter_identically():
    s = Sampling(temperature=1.0, top_k=2)
    probs = s.probs(torch.tensor([[1.0, 3.0, 2.0, 0.0]]))
    assert (probs[0, [0, 3]] == 0).all() and probs[0, 1] > probs[0, 2] > 0
    s = Sampling(temperature=1.0, top_p=0.5)
    probs = s.probs(torch.log(torch.tensor([[0.6, 0.3, 0.1]])))
    assert torch.allclose(probs, torch.tensor([[1.0, 0.0, 0.0]]))
    s = Sampling(temperature=1.0, top_p=0.8)
    probs = s.probs(torch.log(torch.tensor([[0.6, 0.3, 0.1]])))
    assert torch.allclose(probs, torch.tensor([[2 / 3, 1 / 3, 0.0]]))


@pytest.mark.parametrize("sampling", [Sampling(1.0), Sampling(0.7, top_k=4), Sampling(1.3, top_p=0.9)])
def test_speculative_sampling_first_token_follows_target(sampling):
    """20k rounds: the first emitted token (accepted draft or resample) is distributed as p_1."""
    torch.manual_seed(0)
    vocab, gamma, draws = 6, 2, 20_000
    p = sampling.probs(torch.randn(gamma + 1, vocab) * 1.5)
    q = sampling.probs(torch.randn(gamma, vocab) * 1.5)
    gen = torch.Generator().manual_seed(1)
    counts = torch.zeros(vocab)
    for _ in range(draws):
        drafts = torch.multinomial(q, 1, generator=gen).squeeze(-1)
        v = sampling_verdict(drafts, q, p, gen)
        first = int(drafts[0]) if v.accepted > 0 else v.token
        counts[first] += 1
    support = p[0] > 0
    expected = p[0][support] * draws
    pvalue = chi_square(counts[support].tolist(), p[0][support].double().tolist()).p_value
    assert pvalue > 1e-3, f"chi-square p={pvalue:.2e}: counts {counts.tolist()} vs {expected.tolist()}"
    assert counts[~support].sum() == 0


def test_drafter_with_zero_mass_outside_support_stays_exact():
    """VocabTrim's q is 0 outside the kept ids: the residual still restores p's mass there."""
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 5), -1)
    q = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0]])
    gen = torch.Generator().manual_seed(2)
    counts = torch.zeros(5)
    for _ in range(20_000):
        drafts = torch.multinomial(q, 1, generator=gen).squeeze(-1)
        v = sampling_verdict(drafts, q, p, gen)
        counts[int(drafts[0]) if v.accepted else v.token] += 1
    pvalue = chi_square(counts.tolist(), p[0].double().tolist()).p_value
    assert pvalue > 1e-3


def test_chi_square_matches_scipy_and_ignores_float_rounding_of_the_sums():
    """Our float64 Pearson test gives scipy's p-value, and a law whose float32 sum is off by 1e-7 still works."""
    from scipy.stats import chi2

    law = torch.softmax(torch.randn(12, generator=torch.Generator().manual_seed(3)), -1)  # float32: sums to 1 +- 1e-7
    counts = (law.double() * 1000).round() + torch.tensor([3.0, -3.0] + [0.0] * 10, dtype=torch.float64)
    result = chi_square(counts.tolist(), law.tolist())
    e = law.double() / law.double().sum() * counts.sum()
    keep = e >= 5
    obs = counts[keep].tolist() + ([counts[~keep].sum().item()] if (~keep).any() else [])
    exp = e[keep].tolist() + ([e[~keep].sum().item()] if (~keep).any() else [])
    stat = sum((o - x) ** 2 / x for o, x in zip(obs, exp))
    assert abs(result.statistic - stat) < 1e-9
    assert abs(result.p_value - chi2.sf(stat, len(obs) - 1)) < 1e-9
    assert chi_square([0, 10], [0.0, 1.0]).p_value == 1.0
    assert chi_square([1, 10], [0.0, 1.0]).p_value == 0.0  # a draw where the law has none


def sibling_law(monkeypatch, p: torch.Tensor, children: list[int], rule: str = "exact") -> torch.Tensor:
    """P(emit y) for every y under `sibling_verdict`, by exact enumeration of its branches, run by the code itself:
    the uniforms are forced (u = 1 rejects a child whatever its chance, u = 0 accepts it), so branch i rejects the
    first i children and accepts child i, and the last branch rejects them all. A branch weighs the chances the rule
    reports it used (`tried`); the last one's token is drawn from what the rule hands to `sample`, normalised as
    torch.multinomial does."""
    script: list[float] = []  # the uniforms of the branch, in the order the rule draws them
    handed: list[torch.Tensor] = []  # what the rule passed to `sample`

    def forced_uniform(n, generator, device):
        values = [script.pop(0) if script else 1.0 for _ in range(n)]  # past the script: reject
        return torch.tensor(values, device=device)

    def captured_sample(probs, generator):
        handed.append(probs[0].double().clone())
        return torch.zeros(probs.shape[0], dtype=torch.long)

    monkeypatch.setattr(verify, "uniform", forced_uniform)
    monkeypatch.setattr(verify, "sample", captured_sample)
    law = torch.zeros(p.shape[0], dtype=torch.float64)
    for i in range(len(children) + 1):
        script[:] = [1.0] * i + ([0.0] if i < len(children) else [])
        handed.clear()
        v = sibling_verdict(Sampling(1.0), p.log(), p, children, None, rule=rule)
        reached = float(torch.tensor([1.0 - t for t in v.tried[:i]], dtype=torch.float64).prod())
        if i < len(children):
            weight = reached * v.tried[i]
            if weight == 0.0:
                continue  # a child with no chance: u = 0 cannot accept it, and the branch weighs nothing
            assert (v.accepted, v.token, len(v.tried)) == (i, children[i], i + 1) and not handed
            law[children[i]] += weight
        elif reached > 0.0:
            assert v.accepted is None and len(v.tried) == len(children) and len(handed) == 1
            law += reached * handed[0] / handed[0].sum()
    return law


def sibling_cases() -> list[tuple[torch.Tensor, list[int]]]:
    """(p, children) on V = 5: children the top-k of a drafter's q for k = 1..5 (as the tree takes them: distinct,
    in q's order), children in an order unrelated to q, and a p with zeros (top-k filtered) whose children include
    a token p never emits."""
    cases = []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        p = torch.softmax(torch.randn(5, generator=g) * 1.5, -1)
        q = torch.softmax(torch.randn(5, generator=g) * 1.5, -1)
        order = torch.argsort(q, descending=True).tolist()
        cases += [(p, order[:k]) for k in range(1, 6)]
        cases.append((p, torch.randperm(5, generator=g)[:3].tolist()))
    filtered = Sampling(0.8, top_k=3).probs(torch.tensor([[0.3, 2.0, -1.0, 1.2, 0.9]]))[0]
    cases += [(filtered, [2, 1]), (filtered, [0, 3, 4]), (filtered, [4, 2, 0, 1, 3])]
    return cases


@pytest.mark.parametrize("p,children", sibling_cases())
def test_the_sibling_rule_emits_exactly_the_targets_law(monkeypatch, p, children):
    """The tree's rule over siblings: summed over every branch (which child is accepted, or the residual draw), the
    probability of emitting each token is p's, to float precision."""
    law = sibling_law(monkeypatch, p, children)
    assert torch.allclose(law, p.double(), atol=1e-6, rtol=0), (law.tolist(), p.tolist())


def test_the_enumeration_catches_the_broken_sibling_rule(monkeypatch):
    """The enumeration can fail: the broken rule (the correction drawn from p, as if no sibling had been tried)
    over-weights the siblings."""
    p = torch.softmax(torch.tensor([1.0, 0.5, 0.0, -0.5, -1.0]), -1)
    law = sibling_law(monkeypatch, p, [0, 1], rule="broken")
    assert float((law - p.double()).abs().max()) > 0.05
