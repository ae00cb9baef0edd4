"""Greedy agreement with the target on the target's OWN greedy text: what a drafter's acceptance in greedy
speculative decoding follows (first-draft acceptance), unlike agreement on corpus text (students' report).
Also each trained exit of the target (its final norm and head on layer k's state), a ceiling for
self-drafting at that depth.

    python scripts/onpolicy_agreement.py --target DIR --drafter DIR [--corpus RUN_DIR/corpus]
        [--students-ckpt OUT/ckpt.pt] [--prompts 16] [--prefix 64] [--new 96] [--threads 1]
    python scripts/onpolicy_agreement.py --family DIR [--code-prompts]   # every student of a family

--family reads DIR/target and DIR/drafter and adds the sorted drafter's sub-models and the Kangaroo adapter
(a drop-in for assets/models, e.g. a specviz.workshop.students OUT). --code-prompts continues the bundled prompts
(assets/prompts/code.jsonl, what the bench runs) instead of held-out corpus prefixes.

--students-ckpt reads the drafter's weights from a `specviz.workshop.students` checkpoint (a run still in progress)
into the shape of --drafter.

Why: on 2026-11-26 a drafter with 0.43 agreement on held-out corpus text made draft_model 1.06x; with gamma 4
and c = 0.1, 1.8x needs about 0.6 on the target's own text.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)


def main(argv: list[str] | None = None) -> int:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from specviz.models.anatomy import anatomy
    from specviz.paths import cache_dir
    from specviz.workshop.unlikelihood import greedy_continuations

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="")
    parser.add_argument("--drafter", default="")
    parser.add_argument("--family", default="", help="a models dir: its target, drafter, sorted drafter and adapter")
    parser.add_argument("--code-prompts", action="store_true", help="continue the bundled prompts instead")
    parser.add_argument(
        "--students-ckpt", default="", help="a specviz.workshop.students ckpt.pt: its drafter's weights"
    )
    parser.add_argument(
        "--corpus",
        default=str(cache_dir("train") / "corpus"),
        help="prefixes come from its heldout.npy (default: the training run folder's corpus)",
    )
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prefix", type=int, default=64)
    parser.add_argument("--new", type=int, default=96)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.family:
        args.target, args.drafter = str(Path(args.family) / "target"), str(Path(args.family) / "drafter")
    if not (args.target and args.drafter):
        parser.error("--family, or --target and --drafter")
    target = AutoModelForCausalLM.from_pretrained(args.target, dtype=torch.float32).eval()
    drafter = AutoModelForCausalLM.from_pretrained(args.drafter, dtype=torch.float32).eval()
    parts = anatomy(target)

    def all_logits(seq, out) -> dict:
        """Each drafter's and each target exit's logits over seq (the sorted drafter run once for all its exits)."""
        named = {"drafter " + args.drafter: drafter(seq).logits}
        if args.family:
            named.update(
                {
                    f"sorted drafter, {k.removeprefix('_k')} layer(s)": logits
                    for k, logits in sorted_logits(sorted_lm, seq, sorted_lm.config.num_hidden_layers).items()
                }
            )
            named["Kangaroo adapter"] = adapter_logits(adapter, target, out.hidden_states[adapter.config.exit_layer])
        for k in range(1, len(parts.layers)):
            named[f"target layers [0, {k}) + final norm and head"] = target.get_output_embeddings()(
                parts.final_norm(out.hidden_states[k])
            )
        return named

    if args.family:
        from specviz.engine.adapter import KangarooAdapter
        from specviz.workshop.kit import adapter_logits, sorted_logits

        sorted_lm = AutoModelForCausalLM.from_pretrained(
            str(Path(args.family) / "sorted-drafter"), dtype=torch.float32
        ).eval()
        adapter = KangarooAdapter.load(Path(args.family) / "kangaroo-adapter", device="cpu", dtype=torch.float32).eval()
    if args.students_ckpt:
        ckpt = torch.load(args.students_ckpt, map_location="cpu", weights_only=False)
        drafter.load_state_dict(ckpt["models"]["drafter"])
        print(
            f"drafter weights from {args.students_ckpt}: phase {ckpt['progress']['phase']} "
            f"step {ckpt['progress']['step']}"
        )
    if args.code_prompts:
        import json

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(args.target)
        lines = Path("assets/prompts/code.jsonl").read_text().splitlines()[: args.prompts]
        batches = [torch.tensor([tok(json.loads(line)["prompt"])["input_ids"]]) for line in lines]  # lengths differ
    else:
        heldout = np.load(Path(args.corpus) / "heldout.npy", mmap_mode="r")
        starts = np.random.default_rng(args.seed).integers(0, len(heldout) - args.prefix - 1, args.prompts)
        batches = [torch.from_numpy(np.stack([heldout[s : s + args.prefix].astype(np.int64) for s in starts]))]
    hits: dict[str, float] = {}
    total = 0
    for prefixes in batches:
        seq = greedy_continuations(target, prefixes, args.new)
        span = slice(prefixes.shape[1], -1)  # predictions of the generated tokens 2.. (the first follows the prompt)
        with torch.no_grad():
            out = target(seq, output_hidden_states=True)
            want = out.logits.argmax(-1)[:, span]
            total += want.numel()
            for name, logits in all_logits(seq, out).items():
                hits[name] = hits.get(name, 0.0) + (logits.argmax(-1)[:, span] == want).sum().item()
    print(
        f"greedy agreement on the target's own text ({'bundled prompts' if args.code_prompts else 'corpus prefixes'}, "
        f"{total} tokens):"
    )
    for name, hit in hits.items():
        print(f"  {name}: {hit / total:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
