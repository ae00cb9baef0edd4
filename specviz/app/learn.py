"""The Learn tab: each paper's headline beside what this project measured, and the speedup explorer."""

from __future__ import annotations

from specviz.engine.trace import Trace
from specviz.models.hub import EMBEDDED_DIR
from specviz.views import needs, plots
from specviz.views.headlines import ROWS, cell, load_summary, provenance
from specviz.views.needs import Machine

# ----------------------------------------------------------------------------- layout
LEARN_TEMPLATE = (
    "\n"
    "### Speculative decoding in one paragraph\n"
    "A cheap **drafter** guesses the next γ tokens; the expensive **target** checks all of them in one forward\n"
    "pass. Greedy: drafts are kept while they equal the target's own choice, then the target's token is\n"
    "emitted (a *correction*, or a *bonus* when every draft passed). Sampling: each draft is kept with\n"
    "probability min(1, p/q), and a rejection resamples from norm(max(0, p − q)) — so the output follows the\n"
    "target's distribution **exactly** (Leviathan et al. 2023; Chen et al. 2023). With acceptance rate α and\n"
    "cost ratio c, the expected speedup is (1 − α^(γ+1)) / ((1 − α)(γc + 1)). That formula is a chain's: a token\n"
    "tree pays one drafter forward per level, however wide, and its siblings are not a prefix of γ drafts, so the\n"
    "Playground models a tree as τ / (levels × c + v) and leaves Leviathan's figures blank for it.\n"
    "\n"
    "| method | paper | idea | headline result (paper, their hardware) | what the headline needs, and this machine "
    "| measured here (embedded pair) |\n"
    "| --- | --- | --- | --- | --- | --- |\n"
    "| `draft_model` | Leviathan et al. 2023, *Fast Inference from Transformers via Speculative Decoding* | a "
    "separate small drafter | 2–3× on T5-XXL, identical outputs | {need_draft_model} | {draft_model} |\n"
    "| `kangaroo` | Liu et al. 2024, *Kangaroo: Lossless Self-Speculative Decoding via Double Early Exiting* | the "
    "target's first layers + a small adapter draft; drafting stops when confidence < η | up to 1.68× on Spec-Bench "
    "with 88.7 % fewer extra parameters than Medusa | {need_kangaroo} | {kangaroo} |\n"
    "| `sorted` | Kavehzadeh et al. 2024, *S2D: Sorted Speculative Decoding* | one SoFT-trained drafter whose "
    "layer prefixes are drafters; per-token choice by confidence; serves several targets | one drafter for many "
    "targets, beating per-target drafters on average | {need_sorted} | {sorted} |\n"
    "| VocabTrim | Goel et al. 2025, *VocabTrim* | drafter LM head cut to the K tokens the target emits most | up "
    "to 16 % memory-bound speedup on Llama-3.2-3B | {need_vocabtrim} | {vocabtrim} |\n"
    "| `mirror` | Mirror-SD 2025, *Mirror Speculative Decoding* | an early exit of the target launches drafter "
    "branches that run in parallel with the target's remaining layers | 2.8–5.8× wall-time speedup on "
    "heterogeneous accelerators | {need_mirror} | {mirror} |\n"
    "| `prompt_lookup` | Saxena 2023, *Prompt Lookup Decoding*; vLLM's `ngram`, transformers' "
    "`prompt_lookup_num_tokens` (`hf_prompt_lookup`) | no drafter: the draft is what followed the last n tokens "
    "where they occurred before in the prompt or the output | Spec-Bench leaderboard: 1.64× overall (Vicuna-7B, "
    "RTX 3090), most on summarization and RAG | {need_prompt_lookup} | {prompt_lookup} |\n"
    "| `tree` | Li et al. 2024, *EAGLE-2: Faster Inference of Language Models with Dynamic Draft Trees*; SpecInfer "
    "(Miao et al. 2024); Sequoia (Chen et al. 2024) | the drafter grows a tree of candidates along its most "
    "probable paths; the target verifies the whole tree in one forward with a tree attention mask and keeps the "
    "longest accepted path | Spec-Bench leaderboard: EAGLE-2 2.19× (τ 4.35) against 1.79× (τ 2.28) for a chain "
    "drafter (Vicuna-7B, RTX 3090) | {need_tree} | {tree} |\n"
    "| `eqspec` / `exspec` | *Batch Speculative Decoding Done Right* | realign padding, positions, masks and KV "
    "caches after every ragged round; or group same-length rows | up to 3× throughput at batch 8 on GPU, outputs "
    "equal to non-batched decoding | {need_batch} | {batch} |\n"
    "\n"
    "{provenance}\n"
    "\n"
    "**What is not included here**: Mirror-SD's *speculative streaming* (a drafter emitting several tokens\n"
    "per forward through extra heads) is not implemented; specviz's Mirror-SD drafter emits one token per\n"
    "forward. Timings labelled MODELED re-time a measured trace under cost parameters you set; everything\n"
    "else is MEASURED on the machine serving this page.\n"
)


def learn_markdown() -> str:
    """The Learn tab: each paper's headline beside what this project measured on the shipped models."""
    summary = load_summary(EMBEDDED_DIR)
    text = LEARN_TEMPLATE.replace("{provenance}", provenance(summary))
    machine = Machine.here()
    for key in ROWS:
        text = text.replace("{" + key + "}", cell(key, summary).replace("|", "\\|"))
        text = text.replace("{need_" + key + "}", needs.cell(key, machine).replace("|", "\\|"))
    return text


def explorer_figure(alpha, gamma, c, v, points):
    return plots.speedup_explorer(float(alpha), int(gamma), float(c), float(v), points)


def tau_figure(alpha, branch, depth, points):
    return plots.tau_explorer(float(alpha), int(branch), int(depth), points)


def add_explorer_point(trace_json, alpha, gamma, c, v, points):
    """After a Playground run: its measured speedup joins this session's points (the last 20 kept)."""
    point = plots.explorer_point(Trace.from_json(trace_json)) if trace_json else None
    points = (list(points or []) + [point])[-20:] if point else list(points or [])
    return points, explorer_figure(alpha, gamma, c, v, points)
