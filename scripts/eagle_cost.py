"""What one drafter forward costs here, whatever its size: `python scripts/eagle_cost.py [--repeats 30]`.

Issue 40's floor. On a 2-core CPU a forward through transformers costs framework overhead before any arithmetic,
so an EAGLE head (one decoder layer over features the target already computed) cannot be cheaper than a one-layer
drafter by more than what its arithmetic saves. This measures, interleaved and as medians, one step at a context of
`--context` tokens of:
- the target (the decoder the methods use: specviz's lean loop for a Llama, else transformers'): one target step;
- the pair's drafter, on the same decoder kind: draft_model's draft step;
- an EAGLE-3 head (random weights: cost does not depend on them) with a draft vocabulary of 512, 2,048 and the
  full vocabulary, and an EAGLE-1 head (the target's LM head), each one `EagleDrafter.step` after `start` over the
  context's features;
each as c = its step / the target's step. Nothing is trained or decoded: acceptance is another question.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specviz.engine.decoder import TransformersDecoder  # noqa: E402
from specviz.engine.eagle import EagleDrafter, EagleHead  # noqa: E402
from specviz.engine.lean import LeanDecoder, supports  # noqa: E402
from specviz.models.pair import load_pair  # noqa: E402

DRAFT_VOCABS = (512, 2048)


def decoder_for(model, vocab: int):
    return LeanDecoder(model, vocab) if supports(model) else TransformersDecoder(model, vocab)


def stepper(decoder, context: torch.Tensor, vocab: int):
    """One decode step after `context`: feed a token, then roll back to the context (the same work every call)."""
    decoder.feed(context)
    length = decoder.length
    token = torch.randint(0, vocab, (1, 1))

    def call() -> None:
        decoder.feed(token)
        decoder.rollback(length)

    return call


def eagle_stepper(head: EagleHead, pair, features: torch.Tensor, context: torch.Tensor):
    """One `EagleDrafter.step` (one head forward over its own last feature and a drafted token) after `start` over
    the context's features, then a crop back: the drafter's second draft onwards, the same work every call."""
    embed = pair.target.get_input_embeddings()
    drafter = EagleDrafter(head, embed, pair.target.get_output_embeddings() if head.config.version == 1 else None)
    drafter.start(features[:, :-1], context[:, 1:])
    length, token = drafter.length, int(context[0, -1])
    fed_back = drafter.last.clone()

    def call() -> None:
        drafter.step(token)
        drafter.rollback(length)
        drafter.last = fed_back

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="embedded")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--context", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    pair = load_pair(args.target)
    vocab = pair.target.get_output_embeddings().weight.shape[0]
    context = torch.randint(0, vocab, (1, args.context))
    calls = {"target step": stepper(decoder_for(pair.target, vocab), context, vocab)}
    if pair.draft is not None:
        calls["drafter step (draft_model)"] = stepper(decoder_for(pair.draft, vocab), context, vocab)
    hidden = pair.target(context, output_hidden_states=True).hidden_states
    heads = {f"EAGLE-3 head, draft vocabulary {n}": (3, n) for n in DRAFT_VOCABS if n < vocab}
    heads[f"EAGLE-3 head, full vocabulary {vocab}"] = (3, vocab)
    heads["EAGLE-1 head (the target's LM head)"] = (1, vocab)
    for name, (version, draft_vocab) in heads.items():
        head = EagleHead.for_target(pair.target.config, version, draft_vocab_size=draft_vocab).eval()
        if version == 3 and draft_vocab < vocab:
            head.set_draft_vocab(torch.arange(draft_vocab))
        features = torch.cat([hidden[i] for i in head.config.layer_ids], dim=-1)
        calls[name] = eagle_stepper(head, pair, features, context)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(args.repeats):  # interleaved: a drift of the machine's speed falls on every row
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    base = statistics.median(times["target step"])
    print(f"one step at a context of {args.context} tokens, median of {args.repeats} (interleaved):")
    for name, values in times.items():
        ms = statistics.median(values) * 1000
        print(f"  {name:<45} {ms:7.3f} ms   c = {ms / 1000 / base:.3f}")


if __name__ == "__main__":
    main()
