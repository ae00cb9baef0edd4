"""Assertions shared by the method tests: greedy equality (or a proven numerical tie) and trace invariants."""

from __future__ import annotations

import torch

from specviz.analysis.divergence import first_difference as first_divergence
from specviz.engine.trace import TOKEN_KINDS, Trace

TIE_GAP = 1e-4  # top-2 logit gap under which float noise of a different shape may flip an argmax


@torch.inference_mode()
def top2_gap(model, ids: list[int]) -> float:
    logits = model(torch.tensor([ids], device=model.device)).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def assert_greedy_equal(pair, trace: Trace, reference: Trace) -> None:
    """Token-for-token equality; a divergence is tolerated only at a proven tie of the target's logits."""
    a, b = reference.output_ids, trace.output_ids
    i = first_divergence(a, b)
    if i is None:
        return
    assert i < min(len(a), len(b)), f"{trace.method}: lengths differ ({len(b)} vs {len(a)}) with equal prefix"
    gap = top2_gap(pair.target, reference.rows[0].prompt_ids + a[:i])
    assert gap < TIE_GAP, (
        f"{trace.method} diverged from autoregressive at token {i} ({b[i]} vs {a[i]}), top-2 gap {gap:.2e}"
    )


def assert_trace_invariants(trace: Trace) -> None:
    """Each output token comes from exactly one accept/correct/bonus/emit event, in order; times are sane."""
    for row_index, row in enumerate(trace.rows):
        token_events = [e for e in trace.events if e.kind in TOKEN_KINDS and e.row == row_index]
        assert [e.position for e in token_events] == list(range(len(row.output_ids))), "token events out of order"
        assert [e.token_id for e in token_events] == row.output_ids, "token events disagree with the output"
        row_events = [e for e in trace.events if e.row == row_index]
        starts = [e.t0 for e in row_events]
        assert all(x <= y + 1e-9 for x, y in zip(starts, starts[1:])), "event start times go backwards"
    for e in trace.events:
        assert e.t1 >= e.t0 - 1e-9, f"{e.kind} ends before it starts"
        if e.kind in ("accept", "reject"):
            assert e.q is None or 0.0 <= e.q <= 1.0 + 1e-6

    # every accept follows a draft of the same token at the same step and depth (in a token tree: the same node)
    def slot(e):
        return (e.row, e.step, "node", e.info["node"]) if "node" in e.info else (e.row, e.step, e.depth)

    drafts = {slot(e): e.token_id for e in trace.events if e.kind == "draft"}
    for e in trace.events:
        if e.kind in ("accept", "reject") and drafts:
            assert drafts.get(slot(e)) == e.token_id, "accepted/rejected token was not drafted"
    assert_tree_rounds(trace)


def assert_tree_rounds(trace: Trace) -> None:
    """A token tree's round: every node has one verdict, its parent is the root or an earlier node one level up,
    and the accepted nodes form one path from the root."""
    by_step: dict = {}
    for e in trace.events:
        if "node" in e.info and e.kind in ("draft", "accept", "reject"):
            by_step.setdefault((e.row, e.step), []).append(e)
    for events in by_step.values():
        drafts = {e.info["node"]: e for e in events if e.kind == "draft"}
        verdicts = [e.info["node"] for e in events if e.kind in ("accept", "reject")]
        assert sorted(verdicts) == sorted(drafts), "a tree node without exactly one verdict"
        for node, d in drafts.items():
            parent = d.info["parent"]
            assert parent == 0 or (parent in drafts and parent < node and drafts[parent].depth == d.depth - 1)
        path = [e.info["node"] for e in events if e.kind == "accept"]
        for child, parent in zip(path, [0] + path):
            assert drafts[child].info["parent"] == parent, "accepted nodes are not one path from the root"


def word_tokenizer(words: int = 11):
    """A word-level tokenizer with `words` + 1 ids (id 0 = EOS): small vocabularies for statistics."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<eos>": 0, **{f"w{i}": i + 1 for i in range(words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<eos>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<eos>", pad_token="<eos>")


def peaky_llama(vocab: int, layers: int, seed: int, hidden: int = 16, init: float = 0.5):
    """A random Llama whose distributions are far from uniform (so p and q really differ)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=init,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def near_copy(model, noise: float, seed: int):
    """A copy of `model` with Gaussian noise on every weight: a drafter that agrees often, not always."""
    import copy

    torch.manual_seed(seed)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.add_(torch.randn_like(p) * noise * (p.std() if p.numel() > 1 else 1.0))
    return twin


def damp_layers_after(model, layer: int, scale: float) -> None:
    """Shrink what layers >= `layer` add to the residual stream, so the state after `layer` is close to
    the final one: shallow self-drafts (Kangaroo, Mirror's early exit) then agree with the target often."""
    with torch.no_grad():
        for block in model.model.layers[layer:]:
            block.self_attn.o_proj.weight.mul_(scale)
            block.mlp.down_proj.weight.mul_(scale)


BATCH_TIE_GAP = 1e-3  # a different batch shape changes float summation order: argmax flips only at near-ties


def row_divergences(pair, trace: Trace, references: list[list[int]]) -> list[tuple[int, int, float]]:
    """(row, first divergent position, target's top-2 gap there) for every row that differs from its reference."""
    found = []
    for r, (row, ref) in enumerate(zip(trace.rows, references)):
        i = first_divergence(ref, row.output_ids)
        if i is None:
            continue
        if i >= min(len(ref), len(row.output_ids)):
            found.append((r, i, float("inf")))  # one stopped early with an equal prefix: never a tie
            continue
        found.append((r, i, top2_gap(pair.target, row.prompt_ids + ref[:i])))
    return found


def assert_rows_equal(pair, trace: Trace, references: list[list[int]]) -> None:
    """Every row equals its single-sequence reference, or diverges only at a proven numerical tie."""
    assert len(trace.rows) == len(references)
    for r, i, gap in row_divergences(pair, trace, references):
        assert gap < BATCH_TIE_GAP, f"{trace.method} row {r} diverged at token {i} with top-2 gap {gap:.2e} (not a tie)"


def make_agreeing_pair(tokenizer, draft_noise: float = 0.1):
    """A Llama target whose deep layers add little, a drafter that is a noisy copy of it, an identity Kangaroo
    adapter and a near-copy sorted drafter: drafts are accepted often but not always, so every accept /
    reject / bonus / rollback path runs."""
    from specviz.engine.adapter import KangarooAdapter
    from specviz.models.pair import ModelPair

    vocab = len(tokenizer)
    target = peaky_llama(vocab, layers=4, seed=3, hidden=32, init=0.2)
    damp_layers_after(target, 2, 0.1)
    adapter = KangarooAdapter.for_target(target.config, 2, identity=True).eval()
    extras = {
        "kangaroo_adapter": adapter,
        "sorted_drafter": near_copy(target, 0.1, seed=4),
        "vocab_ranking": list(range(vocab)),
    }
    return ModelPair(
        target=target,
        tokenizer=tokenizer,
        draft=near_copy(target, draft_noise, seed=5),
        target_name="agree",
        draft_name="agree-draft",
        device=torch.device("cpu"),
        dtype=torch.float32,
        extras=extras,
    )


def two_token_law(target, ids: list[int], temperature: float) -> dict[tuple, float]:
    """The target's exact joint law of its first two sampled tokens after `ids` (id 0 = EOS ends a sample after
    one token): what every chi-square exactness test compares counts against."""
    vocab = target.get_output_embeddings().weight.shape[0]
    with torch.no_grad():
        first = torch.softmax(target(torch.tensor([ids])).logits[0, -1].double() / temperature, -1)
        law = {(0,): float(first[0])}
        for a in range(1, vocab):
            second = torch.softmax(target(torch.tensor([ids + [a]])).logits[0, -1].double() / temperature, -1)
            for b in range(vocab):
                law[(a, b)] = float(first[a] * second[b])
    return law
