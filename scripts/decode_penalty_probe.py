"""Can a decode-time repetition rule give issue 16 both goals at once? Greedy continuations of the bundled
prompts by the target alone under transformers' repetition processors (CTRL's multiplicative penalty,
`repetition_penalty`; `no_repeat_ngram_size`), scored as `specviz.workshop.quality` scores them (repeated 4-gram share,
parse rate; no token healing here, so compare with quality's "without healing" row), plus what decides a
speedup: the target's probability of its own greedy token, and the drafter's agreement with that token when
the same processor is applied to the drafter's logits over the same prefix (first-draft acceptance, as in
scripts/onpolicy_agreement.py). The modeled draft_model speedup uses γ 4, c 0.2 and a verify of 1.3 target
steps, the shipped pair's measured costs (README, Unlikelihood on the shipped target).

Why: unlikelihood fine-tunes met the repetition goal by flattening the target, and the drafter's agreement
fell with it. A processor leaves the weights alone, so if the target's confidence survived outside the
loops, a processor would keep the speedup. Every method stays lossless under a deterministic processor (the
verify applies it at each position over the same prefix); this probe asks only whether it is worth wiring in.

    python scripts/decode_penalty_probe.py [--family assets/models] [--max-new-tokens 96] [--threads 2] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GAMMA, DRAFT_COST, VERIFY_COST = 4, 0.2, 1.3


def processors() -> dict[str, list]:
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

    return {
        "none": [],
        "repetition_penalty=1.1": [RepetitionPenaltyLogitsProcessor(1.1)],
        "repetition_penalty=1.2": [RepetitionPenaltyLogitsProcessor(1.2)],
        "repetition_penalty=1.3": [RepetitionPenaltyLogitsProcessor(1.3)],
        "no_repeat_ngram_size=8": [NoRepeatNGramLogitsProcessor(8)],
        "no_repeat_ngram_size=6": [NoRepeatNGramLogitsProcessor(6)],
    }


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.generation.logits_process import LogitsProcessorList

    from specviz.speedup import leviathan_speedup
    from specviz.workshop.quality import parses, pooled_share

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default=str(ROOT / "assets/models"))
    parser.add_argument("--prompts", default=str(ROOT / "assets/prompts/code.jsonl"))
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--limit", type=int, default=None, help="the first N prompts")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    family = Path(args.family)
    tokenizer = AutoTokenizer.from_pretrained(family / "target")
    target = AutoModelForCausalLM.from_pretrained(family / "target", dtype=torch.float32).eval()
    drafter = AutoModelForCausalLM.from_pretrained(family / "drafter", dtype=torch.float32).eval()
    prompts = [json.loads(line) for line in Path(args.prompts).read_text().splitlines() if line.strip()]
    prompts = prompts[: args.limit]
    eos = tokenizer.eos_token_id

    print(
        "| processor | repeated 4-gram share | parse rate | target's p of its greedy token, median "
        "| drafter agreement | modeled draft_model speedup |\n|---|---|---|---|---|---|"
    )
    for name, chosen in processors().items():
        process = LogitsProcessorList(chosen)
        continuations, p_top, agreed, scored, parsed = [], [], 0, 0, 0
        for prompt in prompts:
            seq = tokenizer(prompt["prompt"], return_tensors="pt").input_ids
            start = seq.shape[1]
            with torch.no_grad():
                for _ in range(args.max_new_tokens):  # the whole prefix, prompt included, feeds the processor
                    logits = process(seq, target(seq).logits[:, -1, :])
                    p_top.append(torch.softmax(logits, -1).max().item())
                    seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
                    if seq[0, -1].item() == eos:
                        break
                drafter_logits = drafter(seq).logits[0]
                for i in range(start, seq.shape[1]):
                    guess = process(seq[:, :i], drafter_logits[i - 1 : i].clone()).argmax(-1).item()
                    agreed += guess == seq[0, i].item()
                    scored += 1
            ids = seq[0, start:].tolist()
            ids = ids[:-1] if ids and ids[-1] == eos else ids
            continuations.append(ids)
            parsed += parses(prompt["prompt"], tokenizer.decode(ids, skip_special_tokens=True), False)
        agreement = agreed / scored
        print(
            f"| {name} | {pooled_share(continuations, 4):.3f} | {parsed}/{len(prompts)} | "
            f"{statistics.median(p_top):.3f} | {agreement:.3f} | "
            f"{leviathan_speedup(agreement, GAMMA, DRAFT_COST, VERIFY_COST):.2f}x |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
