"""Choose an early-exit layer for a target that has no trained exit: a quick, measured calibration.

Self-drafting without trained parts reads the target's own layer-l state through its final norm and LM
head (the "logit lens"). Which l? Shallow exits are cheap but agree less with the target; deep ones
agree more but cost almost a full step. For every candidate l we measure, on a few fixed prompts in one
forward pass, the share of positions where the layer-l exit's greedy token is the target's (alpha_l), and
take the cost of a draft step as c_l = (l layers + the head) / (all layers + the head) of a target step;
the choice maximises the expected speedup of Leviathan et al. at gamma drafts per round. The table is
recorded in every trace that used it (meta["exit_calibration"]), and the UI shows it.
"""

from __future__ import annotations

import json
import threading
import weakref
from pathlib import Path

import torch

from specviz.engine.layers import split_parts
from specviz.speedup import leviathan_speedup

GAMMA = 4
PROMPT_FILE = Path(__file__).resolve().parents[2] / "assets" / "prompts" / "code.jsonl"
TEXTS = (
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    'def mean(values):\n    """Return the arithmetic mean."""\n    return sum(values) / len(values)\n',
)
_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # target module -> its calibration
_LOCK = threading.Lock()


def calibration_texts() -> list[str]:
    texts = list(TEXTS)
    if PROMPT_FILE.exists():
        texts += [json.loads(line)["prompt"] for line in PROMPT_FILE.read_text().splitlines()[:4] if line.strip()]
    return texts


@torch.inference_mode()
def exit_table(target, tokenizer, vocab: int) -> list[dict]:
    """alpha (logit-lens agreement), c (cost) and the modeled speedup of every exit 1..depth-1."""
    _, layers, norm, head, _ = split_parts(target)
    depth = len(layers)
    head_cost = head.weight.numel() / max(1, sum(p.numel() for p in layers[0].parameters()))  # in layer units
    agree = torch.zeros(depth - 1)
    total = 0
    for text in calibration_texts():
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[:, :256].to(target.device)
        if ids.shape[1] < 2:
            continue
        out = target(input_ids=ids, output_hidden_states=True, use_cache=False)
        final = out.logits[0, :, :vocab].argmax(-1)
        for l in range(1, depth):
            agree[l - 1] += (head(norm(out.hidden_states[l]))[0, :, :vocab].argmax(-1) == final).sum()
        total += ids.shape[1]
    rows = []
    for l in range(1, depth):
        alpha = float(agree[l - 1] / max(1, total))
        c = (l + head_cost) / (depth + head_cost)
        rows.append(
            {
                "exit_layer": l,
                "alpha": round(alpha, 4),
                "c": round(c, 4),
                "modeled_speedup": round(leviathan_speedup(min(alpha, 0.999), GAMMA, c), 4),
            }
        )
    return rows


def calibrated_exit(pair, vocab: int) -> dict:
    """{"exit_layer": l, "table": [...], "gamma": GAMMA}: the best modeled exit, measured once per target."""
    key = pair.target  # weakly held: a model loaded later at the same address is calibrated afresh
    with _LOCK:
        if key not in _CACHE:
            table = exit_table(pair.target, pair.tokenizer, vocab)
            best = max(table, key=lambda r: (r["modeled_speedup"], -r["exit_layer"]))
            _CACHE[key] = {
                "exit_layer": best["exit_layer"],
                "table": table,
                "gamma": GAMMA,
                "rule": "max (1 - alpha^(g+1)) / ((1 - alpha)(g c + 1)), alpha = logit-lens agreement",
            }
        return _CACHE[key]
