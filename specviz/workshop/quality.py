"""`python -m specviz.workshop.quality`: the embedded model family's quality goals (issue 16), measured.

Issue 16 asks that the goals be "measured by a script in the repo, reported in the model card";
this is that script. Four sections, each a number with its definition written here:

1. Repeated 4-gram share (goal <= 0.15). Each bundled code prompt (`assets/prompts/code.jsonl`) is
   continued greedily for 96 new tokens by the target alone (`autoregressive`). In one continuation
   g_0 .. g_{m-1} (token ids, a final EOS dropped) the 4-grams start at i = 0 .. m-4; the one at i is
   *repeated* when the same 4 ids already started at some j < i of the SAME continuation
   (overlaps count; the prompt's ids do not). The share is pooled over prompts:
   sum(repeated) / sum(4-grams). Text that loops ("the file of the file of the file") scores high.
   Beside it, the target's probability of each greedy token it wrote (pooled median, no goal): the share
   can also fall by flattening the target until a repeat loses by a hair (an unlikelihood fine-tune took
   it from 0.59 to 0.14 while this median went from 0.83 to 0.16), so the two are read together.
2. Parse rate (goal >= 0.5): the share of prompts whose prompt + continuation passes `ast.parse`
   (the grammar only; compile-time rules such as a repeated keyword argument are not checked)
   after the parse rule (`parse_source`): (a) cut to whole lines - the partial last line the token
   limit cut is dropped (kept when the model ended the file with EOS); a continuation of which
   nothing survives the cut counts as not parsing; (b) a prompt that starts indented (a fragment
   of a block) goes under `if True:` headers; (c) unless the model ended the file, only what the cut
   left open is closed (`repair`): a dangling triple-quoted string gets its closing quote, open
   brackets their closers, and a trailing block header (`...:`) an indented `pass`. Nothing else
   the model wrote is changed, so a wrong token in any whole line fails the parse.
3. Held-out loss in nats/token and bits/byte on the built corpus' new held-out split and the old
   standard-library one (`specviz.workshop.corpus`), with the trainer's own metric (`train.heldout_loss`:
   evenly spaced windows, fixed positions, comparable with metrics.jsonl). Bits/byte = total nats /
   ln 2 / bytes, the bytes being the UTF-8 length of the predicted tokens of every window decoded
   with the tokenizer (EOS counts 0 bytes): a figure that does not depend on the tokenizer.
4. Spec-Bench: `draft_model` against `autoregressive`, N prompts per category, timed by
   `specviz.bench.matrix.run_matrix` (same process, order rotated per repeat); speedup, tau and alpha are
   per-category medians over prompts, as bench reports them.

    python -m specviz.workshop.quality --target embedded --json quality.json
    python -m specviz.workshop.quality --target /path/hf/target --draft assets/models/drafter \\
        --corpus ~/.cache/specviz/train/corpus --spec-bench spec_bench_question.jsonl --per-category 5
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import io
import json
import math
import platform
import sys
import time
import tokenize
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
import transformers

from specviz.analysis.categories import first_per_task
from specviz.api import fits_context, run
from specviz.bench import matrix
from specviz.bench import prompts as prompt_files
from specviz.bench.cli import _quote
from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts
from specviz.engine.decoder import eos_ids
from specviz.models.pair import load_pair
from specviz.paths import cache_dir, portable, portable_text, scrub
from specviz.workshop.continued import heldout_loss, window_starts

DEFAULT_CORPUS = str(cache_dir("train") / "corpus")  # where `train --continue-target` builds it by default
NGRAM = 4  # the n of the repeated n-gram share (issue 16's goal is about 4-grams)
GOALS = {"repeated_4gram_share": ("<=", 0.15), "parse_rate": (">=", 0.5)}  # issue 16
OPENERS, CLOSERS = "([{", {"(": ")", "[": "]", "{": "}"}
SKIP_TOKENS = {tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


@dataclass(frozen=True)
class QualityConfig:
    """What one measurement runs; every field lands in the JSON so a figure can be reproduced."""

    target: str = "embedded"  # embedded, a local HF directory or a hub id
    draft: str | None = None  # drafter for Spec-Bench (embedded target: its own drafter)
    prompts: str = str(DEFAULT_PROMPTS)  # the code prompts of sections 1-2
    limit: int | None = None  # first N code prompts (tests)
    max_new_tokens: int = 96  # greedy continuation length, sections 1-2
    corpus: str | None = DEFAULT_CORPUS  # built corpus dir (manifest.json + heldout*.npy); absent: section 3 skipped
    windows: int = 32  # held-out windows per split (the trainer's eval_windows)
    seq_len: int = 256  # tokens per window (the trainer's eval length)
    spec_bench: str | None = None  # Spec-Bench question.jsonl; None: section 4 skipped
    per_category: int = 5  # Spec-Bench prompts per category (the first that fit the context)
    bench_tokens: int = 64  # new tokens per Spec-Bench prompt
    method: str = "draft_model"  # the speculative method of section 4, bench syntax (draft_model:gamma=3)
    repeats: int = 1  # Spec-Bench timing repeats per prompt and method (medians)
    device: str | None = "cpu"
    dtype: str | None = None
    quiet: bool = False  # no progress bars


# ----------------------------------------------------------------------------- 1. repetition
def repeated_ngrams(ids: list[int], n: int = 4) -> tuple[int, int]:
    """(repeated, total): n-grams of `ids` that an earlier start position already produced, and all n-grams."""
    seen: set[tuple[int, ...]] = set()
    repeated = 0
    total = max(0, len(ids) - n + 1)
    for i in range(total):
        gram = tuple(ids[i : i + n])
        repeated += gram in seen
        seen.add(gram)
    return repeated, total


def repeated_ngram_share(ids: list[int], n: int = 4) -> float:
    """Share of the n-grams of one continuation that repeat an earlier one (0.0 when it has none)."""
    repeated, total = repeated_ngrams(ids, n)
    return repeated / total if total else 0.0


def pooled_share(continuations: list[list[int]], n: int = 4) -> float:
    """sum(repeated) / sum(n-grams) over continuations: each n-gram weighs the same."""
    counts = [repeated_ngrams(ids, n) for ids in continuations]
    total = sum(t for _, t in counts)
    return sum(r for r, _ in counts) / total if total else 0.0


# ----------------------------------------------------------------------------- 2. parsing
def cut_to_lines(text: str, complete: bool = False) -> str:
    """Whole lines only: drop what follows the last newline (the line the token limit cut), unless
    the text is `complete` (the model ended the file with EOS, so its last line is whole)."""
    if complete:
        return text if text.endswith("\n") or not text else text + "\n"
    return text[: text.rfind("\n") + 1]


def wrap_indented(source: str) -> str:
    """A prompt taken from inside a block (first line indented by k columns) goes under `if True:`
    headers at columns 0, 4, .. < k (one at column 0 when k is not a multiple of 4), so the
    fragment and any dedent back to those columns are legal."""
    first = next((ln for ln in source.splitlines() if ln.strip()), "")
    k = len(first) - len(first.lstrip())
    if k == 0:
        return source
    columns = range(0, k, 4) if k % 4 == 0 and first[:k] == " " * k else [0]
    return "".join(" " * c + "if True:\n" for c in columns) + source


def _tokens(source: str) -> tuple[list[tokenize.TokenInfo], str | None]:
    """The tokens read before the end or the first error, and the error ('string' for an
    unterminated triple-quoted string, 'statement' for open brackets, 'other')."""
    out: list[tokenize.TokenInfo] = []
    try:
        out.extend(tokenize.generate_tokens(io.StringIO(source).readline))  # keeps the tokens read before an error
    except tokenize.TokenError as exc:
        msg = str(exc.args[0]) if exc.args else ""
        return out, "string" if "string" in msg else "statement" if "statement" in msg else "other"
    except (SyntaxError, ValueError):  # IndentationError: the model's, left for ast.parse to report
        return out, "other"
    return out, None


def _close_string(source: str) -> str:
    """Close a dangling triple-quoted string with the quote that lets the rest tokenize."""
    for quote in ('"""', "'''"):
        if _tokens(source + quote)[1] != "string":
            return source + quote
    return source


def repair(source: str, applied: list[str] | None = None) -> str:
    """The parse rule's repairs, each of what the cut left open, in this order: a dangling
    triple-quoted string gets its closing quote; open brackets get their closers (innermost first);
    a trailing block header (last token ':') gets `pass` indented 4 deeper than its line.
    `applied` collects the names of the repairs made ("string", "brackets", "pass")."""
    applied = [] if applied is None else applied
    toks, err = _tokens(source)
    if err == "string":
        source = _close_string(source)
        applied.append("string")
        toks, err = _tokens(source)
    if err == "statement":
        stack: list[str] = []
        for tok in toks:
            if tok.type == tokenize.OP and tok.string in OPENERS:
                stack.append(CLOSERS[tok.string])
            elif tok.type == tokenize.OP and tok.string in ")]}" and stack:
                stack.pop()
        closers = "".join(reversed(stack))  # on a line of their own: the last line may end in a comment
        source = source + ("" if source.endswith("\n") else "\n") + closers + "\n"
        applied.append("brackets")
        toks, err = _tokens(source)
    significant = [t for t in toks if t.type not in SKIP_TOKENS]
    if err is None and significant and significant[-1].type == tokenize.OP and significant[-1].string == ":":
        line = source.splitlines()[_statement_start(toks, significant[-1]) - 1]
        indent = line[: len(line) - len(line.lstrip())]
        source = source.rstrip("\n") + "\n" + indent + "    pass\n"
        applied.append("pass")
    return source


def _statement_start(toks: list[tokenize.TokenInfo], last: tokenize.TokenInfo) -> int:
    """Line number where the logical line ending in `last` begins (a block header may span lines)."""
    start, fresh = last.start[0], True
    for tok in toks:
        if tok.type == tokenize.NEWLINE:
            fresh = True
        elif tok.type not in SKIP_TOKENS:
            if fresh:
                start, fresh = tok.start[0], False
            if tok is last:
                break
    return start


def parse_source(prompt: str, continuation: str, complete: bool = False, applied: list[str] | None = None) -> str:
    """The exact text `parses` hands to ast.parse. A `complete` text (the model ended the file with
    EOS) is not repaired: what is left open there was left open by the model, not by the cut.
    `applied` collects what the rule did ("wrapped" and the names `repair` gives)."""
    cut = cut_to_lines(prompt + continuation, complete)
    source = wrap_indented(cut)
    if applied is not None and source != cut:
        applied.append("wrapped")
    return source if complete else repair(source, applied)


def parses(prompt: str, continuation: str, complete: bool = False, applied: list[str] | None = None) -> bool:
    """Does prompt + continuation parse as Python under the parse rule (module docstring, section 2)?
    A continuation of which nothing survives the cut (no newline in 96 tokens) does not count: the
    prompt alone would be judged."""
    if len(cut_to_lines(prompt + continuation, complete)) <= len(prompt):
        return False
    try:
        ast.parse(parse_source(prompt, continuation, complete, applied))
    except (SyntaxError, ValueError):  # ValueError: NUL bytes
        return False
    return True


# ----------------------------------------------------------------------------- 1-2. continuations
@dataclass
class Continuation:
    """One code prompt's greedy continuation and what sections 1-2 make of it."""

    id: str
    category: str
    finish_reason: str  # length (hit max_new_tokens), eos (the model ended the file), context
    new_tokens: int  # generated ids, a final EOS not counted
    repeated: int  # n-grams repeating an earlier one of this continuation
    ngrams: int  # all n-grams of this continuation
    parses: bool  # prompt + continuation parse under the parse rule
    repairs: list[str]  # what the rule did: wrapped (indented prompt), string, brackets, pass
    text: str  # the continuation, decoded (special tokens dropped)
    ids: list[int]  # the continuation's token ids
    p: list[float | None]  # the target's probability of each of those ids when it picked it (greedy: its top-1);
    # None for a healed first token, whose probability is renormalized over the tokens healing allowed


def continue_prompts(pair, prompts: list[dict], max_new_tokens: int, n: int, heal: bool = True) -> list[Continuation]:
    """Greedy continuations by the target alone (the engine's `autoregressive`), scored; `heal`: with token
    healing at the prompt boundary, as the app runs them (specviz.engine.healing)."""
    stop = eos_ids(pair.target, pair.tokenizer)
    out = []
    for p in prompts:
        trace = run("autoregressive", pair, p["prompt"], max_new_tokens=max_new_tokens, heal_prompt=heal)
        ids = list(trace.output_ids)
        while ids and ids[-1] in stop:
            ids.pop()
        probs = {e.position: e.p for e in trace.token_events()}
        if (trace.meta.get("token_healing") or [None])[0] is not None:
            probs[0] = None
        text = pair.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        finish = trace.rows[0].finish_reason
        repeated, total = repeated_ngrams(ids, n)
        applied: list[str] = []
        ok = parses(trace.rows[0].prompt, text, finish == "eos", applied)  # the healed prompt when healed
        out.append(
            Continuation(
                id=p["id"],
                category=p["category"],
                finish_reason=finish,
                new_tokens=len(ids),
                repeated=repeated,
                ngrams=total,
                parses=ok,
                repairs=applied,
                text=text,
                ids=ids,
                p=[None if probs[i] is None else round(float(probs[i]), 6) for i in range(len(ids))],
            )
        )
    return out


def continuation_section(pair, cfg: QualityConfig) -> dict[str, Any]:
    """Sections 1-2: the pooled repeated 4-gram share and the parse rate over the code prompts, with token
    healing (what the app shows: the headline) and without it."""
    prompts = load_prompts(cfg.prompts, cfg.limit)

    def scored(rows: list[Continuation]) -> dict[str, Any]:
        return {
            "repeated_4gram_share": pooled_share([r.ids for r in rows], NGRAM),
            "greedy_token_p_median": median(ps) if (ps := [x for r in rows for x in r.p if x is not None]) else None,
            "parsed": sum(r.parses for r in rows),
            "parse_rate": sum(r.parses for r in rows) / len(rows),
            "per_prompt": [asdict(r) for r in rows],
        }

    healed = scored(continue_prompts(pair, prompts, cfg.max_new_tokens, NGRAM, heal=True))
    raw = scored(continue_prompts(pair, prompts, cfg.max_new_tokens, NGRAM, heal=False))
    return {
        "prompts": len(prompts),
        "prompt_file": portable(cfg.prompts),
        "max_new_tokens": cfg.max_new_tokens,
        "token_healing": True,
        **healed,
        "without_healing": raw,
    }


# ----------------------------------------------------------------------------- 3. held-out loss
def bits_per_byte(nats_per_token: float, tokens: int, n_bytes: int) -> float:
    """Total nats over the evaluated tokens, in bits, per UTF-8 byte of their text."""
    return nats_per_token * tokens / (math.log(2) * n_bytes) if n_bytes else float("nan")


def window_targets(ids, windows: int, seq_len: int) -> list:
    """The predicted tokens of each window `train.heldout_loss` evaluates (each predicts
    ids[s + 1 : s + seq_len + 1])."""
    return [ids[s + 1 : s + seq_len + 1] for s in window_starts(len(ids), windows, seq_len)]


def vocab_sha1(tokenizer) -> str:
    """The corpus manifest's tokenizer fingerprint (specviz.workshop.corpus.build_corpus)."""
    return hashlib.sha1(json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()).hexdigest()


def corpus_repeated_share(ids, length: int, stretches: int = 2000) -> dict[str, Any]:
    """The repeated 4-gram share of the corpus's own text, in stretches as long as the scored continuations
    (evenly spaced, pooled as pooled_share): what real code scores on the repetition goal's measure."""
    if len(ids) < length + 1:
        return {"skipped": f"split has {len(ids)} tokens, fewer than {length}"}
    starts = np.linspace(0, len(ids) - length, min(stretches, len(ids) - length + 1)).astype(int)
    share = pooled_share([[int(t) for t in ids[s : s + length]] for s in starts], NGRAM)
    return {"repeated_4gram_share": share, "stretches": len(starts), "length": length}


def real_text_agreement(pair, ids, windows: int, seq_len: int) -> dict[str, Any]:
    """On the corpus's own text (teacher-forced, the windows split_loss reads, their second half): the median
    probability of the target's top-1 token and how often the drafter's top-1 is the target's. Why: a target
    whose greedy text read like its corpus would be this sure and drafted about this well; on its own greedy
    loops it is far surer (continuations' greedy_token_p_median), which is what the speedups lean on."""

    if len(ids) < seq_len + 2:
        return {"skipped": f"split has {len(ids)} tokens, fewer than one window of {seq_len}"}
    top_p, agree = [], []
    with torch.no_grad():
        for s in window_starts(len(ids), windows, seq_len):
            x = torch.from_numpy(ids[s : s + seq_len].astype(np.int64))[None].to(pair.device)
            probs = pair.target(x).logits[0, seq_len // 2 :].float().softmax(-1)
            best = probs.max(-1)
            top_p += best.values.tolist()
            if pair.draft is not None:
                agree += (pair.draft(x).logits[0, seq_len // 2 :].argmax(-1) == best.indices).tolist()
    return {
        "target_top1_p_median": float(np.median(top_p)),
        "positions": len(top_p),
        "drafter_agrees": float(np.mean(agree)) if agree else None,
    }


def split_loss(model, tokenizer, ids, windows: int, seq_len: int) -> dict[str, Any]:
    """nats/token (train.heldout_loss, all positions and the second half) and bits/byte of one split."""
    if len(ids) < seq_len + 2:
        return {"skipped": f"split has {len(ids)} tokens, fewer than one window of {seq_len}"}
    nats, late = heldout_loss(model, ids, windows, seq_len)
    n_bytes = sum(
        len(tokenizer.decode(w.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False).encode("utf-8"))
        for w in window_targets(ids, windows, seq_len)
    )
    tokens = windows * seq_len
    return {
        "nats_per_token": nats,
        "bits_per_byte": bits_per_byte(nats, tokens, n_bytes),
        "nats_per_token_second_half": late,
        "windows": windows,
        "seq_len": seq_len,
        "tokens": tokens,
        "bytes": n_bytes,
        "split_tokens": len(ids),
    }


def heldout_section(pair, cfg: QualityConfig) -> dict[str, Any]:
    """Both held-out splits of a built corpus, or the reason they were skipped."""
    root = Path(cfg.corpus) if cfg.corpus else None
    if root is None or not (root / "manifest.json").is_file():
        return {
            "skipped": f"no built corpus at {cfg.corpus} "
            "(build one with `python -m specviz.workshop.train --continue-target`)"
        }
    manifest = json.loads((root / "manifest.json").read_text())
    if manifest.get("tokenizer_sha1") != vocab_sha1(pair.tokenizer):
        return {"skipped": f"{root} was tokenized with another tokenizer than {pair.target_name}'s"}
    if pair.device.type != "cpu":
        return {"skipped": "train.heldout_loss feeds CPU tensors: run this section with --device cpu"}
    out: dict[str, Any] = {"corpus": str(root), "corpus_built": manifest.get("built")}
    for split in ("heldout", "heldout_stdlib"):
        path = root / f"{split}.npy"
        if not path.is_file():
            out[split] = {"skipped": f"{path} missing"}
            continue
        ids = np.load(path)
        out[split] = {
            **split_loss(pair.target, pair.tokenizer, ids, cfg.windows, cfg.seq_len),
            "corpus_text": {
                **corpus_repeated_share(ids, cfg.max_new_tokens),
                **real_text_agreement(pair, ids, cfg.windows, cfg.seq_len),
            },
        }
    return out


# ----------------------------------------------------------------------------- 4. Spec-Bench
def first_per_category(prompts: list[dict], n: int, fits) -> list[dict]:
    """The first n prompts of each category (file order) for which `fits(prompt)` holds."""
    return first_per_task(prompts, n, fits, group=str)[0]


def json_safe(obj: Any) -> Any:
    """Plain JSON: numpy scalars to Python numbers, NaN to null, tuples to lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def spec_bench_section(pair, cfg: QualityConfig) -> dict[str, Any]:
    """The speculative method against autoregressive on Spec-Bench's first turns, per category."""
    if not cfg.spec_bench:
        return {"skipped": "no --spec-bench question file given"}
    if not Path(cfg.spec_bench).is_file():
        return {"skipped": f"{cfg.spec_bench} not found"}
    label, _, _ = method = matrix.parse_method(cfg.method, {"max_new_tokens": cfg.bench_tokens})

    def fits(p: dict) -> bool:
        return fits_context(pair, p["prompt"], cfg.bench_tokens)

    every = prompt_files.load_prompts(cfg.spec_bench)
    prompts = first_per_category(every, cfg.per_category, fits)
    df = matrix.run_matrix(pair, [method], prompts, cfg.repeats, progress=not cfg.quiet)
    per_category = []
    for category in dict.fromkeys(p["category"] for p in prompts):
        rows = df[(df.category == category) & (df.method == label)]
        base = df[(df.category == category) & (df.method == matrix.BASELINE)]
        per_category.append(
            {
                "category": category,
                "prompts": len(rows),
                "speedup": median(rows.speedup),
                "tau": median(rows.tau),
                "alpha": median(rows.alpha),
                "tokens_per_s": median(rows.tokens_per_s),
                "autoregressive_tokens_per_s": median(base.tokens_per_s),
                "share_equal": float(rows.equal_to_autoregressive.mean()),
            }
        )
    overall = matrix.summary(df).reset_index().to_dict("records")
    return {
        "file": cfg.spec_bench,
        "method": label,
        "max_new_tokens": cfg.bench_tokens,
        "repeats": cfg.repeats,
        "per_category_asked": cfg.per_category,
        "prompts": len(prompts),
        "left_out_too_long": sum(not fits(p) for p in every),
        "per_category": per_category,
        "overall": overall,
    }


# ----------------------------------------------------------------------------- report
def goal_met(name: str, value: float) -> bool:
    op, bound = GOALS[name]
    return value <= bound if op == "<=" else value >= bound


def markdown_report(result: dict[str, Any]) -> str:
    """The figures as markdown tables, ready for the model card."""
    cont = result["continuations"]
    drafter = f", drafter {result['draft']}" if result.get("draft") else ""
    lines = [
        f"### Quality: target {result['target']}{drafter} ({result['device']}, {result['dtype']})",
        "",
        "| metric | value | goal | met |",
        "|---|---|---|---|",
    ]
    share = f"repeated 4-gram share ({cont['prompts']} prompts x {cont['max_new_tokens']} greedy tokens)"
    labels = {
        "repeated_4gram_share": (share, f"{cont['repeated_4gram_share']:.3f}"),
        "parse_rate": (
            "parse rate (prompt + continuation, parse rule)",
            f"{cont['parsed']}/{cont['prompts']} = {cont['parse_rate']:.3f}",
        ),
    }
    for name, goal in result["goals"].items():
        label, value = labels[name]
        lines.append(f"| {label}, token healing | {value} | {goal['goal']} | {'yes' if goal['met'] else 'no'} |")
    if cont.get("greedy_token_p_median") is not None:
        lines.append(
            f"| the target's probability of its greedy token, median (read with the share: a flat target "
            f"avoids repeats by a hair) | {cont['greedy_token_p_median']:.3f} | | |"
        )
    raw = cont.get("without_healing")
    if raw:
        lines.append(
            f"| the same without token healing | {raw['repeated_4gram_share']:.3f}; parse "
            f"{raw['parsed']}/{cont['prompts']} | | |"
        )
    held = result["heldout"]
    for split, label in (("heldout", "new held-out split"), ("heldout_stdlib", "old stdlib held-out split")):
        s = held.get(split, {})
        if "nats_per_token" in s:
            lines.append(
                f"| held-out loss, {label} ({s['windows']} x {s['seq_len']} tokens) | "
                f"{s['nats_per_token']:.4f} nats/token, {s['bits_per_byte']:.4f} bits/byte | | |"
            )
        elif "skipped" in s:
            lines.append(f"| held-out loss, {label} | skipped: {s['skipped']} | | |")
        ref = s.get("corpus_text", {})
        if "repeated_4gram_share" in ref:
            lines.append(
                f"| reference: repeated 4-gram share of the {label}'s own text ({ref['stretches']} stretches of "
                f"{ref['length']} tokens) | {ref['repeated_4gram_share']:.3f} | | |"
            )
        if ref.get("target_top1_p_median") is not None:
            drafted = (
                ""
                if ref.get("drafter_agrees") is None
                else f"; the drafter's top-1 is the target's {ref['drafter_agrees']:.3f}"
            )
            lines.append(
                f"| on the {label}'s own text (teacher-forced, second half of each window): the target's "
                f"top-1 probability, median | {ref['target_top1_p_median']:.3f}{drafted} | | |"
            )
    if "skipped" in held:
        lines.append(f"| held-out loss | skipped: {held['skipped']} | | |")
    sb = result["spec_bench"]
    lines.append("")
    if "skipped" in sb:
        lines.append(f"Spec-Bench: skipped ({sb['skipped']}).")
    else:
        lines += [
            (
                f"Spec-Bench, {sb['method']} vs autoregressive, {sb['max_new_tokens']} new tokens, first "
                f"{sb['per_category_asked']} prompts per category that fit the context, {sb['repeats']} repeat(s); "
                "medians over prompts (tau counts the bonus token):"
            ),
            "",
            "| category | prompts | speedup | tau | alpha | tokens/s | AR tokens/s | equal to AR |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in sb["per_category"]:
            lines.append(
                f"| {r['category']} | {r['prompts']} | {_fmt(r['speedup'])} | {_fmt(r['tau'])} | "
                f"{_fmt(r['alpha'])} | {_fmt(r['tokens_per_s'], 1)} | {_fmt(r['autoregressive_tokens_per_s'], 1)} | "
                f"{_fmt(r['share_equal'], 2)} |"
            )
        for r in sb["overall"]:
            if r["method"] == sb["method"]:
                lines.append(
                    f"| all | {sb['prompts']} | {_fmt(r.get('speedup'))} | {_fmt(r.get('tau'))} | "
                    f"{_fmt(r.get('alpha'))} | {_fmt(r.get('tokens_per_s'), 1)} | | {_fmt(r.get('share_equal'), 2)} |"
                )
    lines += ["", f"reproduce: {result['reproduce']}", ""]
    return "\n".join(lines)


def _fmt(v: Any, digits: int = 3) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    d = QualityConfig()
    p = argparse.ArgumentParser(prog="python -m specviz.workshop.quality", description=__doc__.split("\n")[0])
    p.add_argument("--target", default=d.target, help="embedded, a local HF directory or a hub id")
    p.add_argument("--draft", default=d.draft, help="drafter for Spec-Bench (default: the embedded drafter)")
    p.add_argument("--prompts", default=d.prompts, help="code prompts (jsonl) of the repetition and parse metrics")
    p.add_argument("--limit", type=int, default=d.limit, help="use the first N code prompts")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens)
    p.add_argument("--corpus", default=d.corpus, help="built corpus directory; absent: held-out section skipped")
    p.add_argument("--windows", type=int, default=d.windows, help="held-out windows per split")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="tokens per held-out window")
    p.add_argument("--spec-bench", default=d.spec_bench, help="Spec-Bench question.jsonl (section skipped without it)")
    p.add_argument("--per-category", type=int, default=d.per_category)
    p.add_argument("--bench-tokens", type=int, default=d.bench_tokens, help="new tokens per Spec-Bench prompt")
    p.add_argument("--method", default=d.method, help="speculative method for Spec-Bench, e.g. draft_model:gamma=3")
    p.add_argument("--repeats", type=int, default=d.repeats, help="Spec-Bench timing repeats")
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", default=d.dtype)
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's, which follows OMP_NUM_THREADS)"
    )
    p.add_argument("--json", default=None, help="write every figure to this JSON file")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.max_new_tokens, args.windows, args.seq_len, args.per_category, args.repeats, args.bench_tokens) < 1:
        print("error: counts and lengths must be positive", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = QualityConfig(**{k: v for k, v in vars(args).items() if k in QualityConfig.__dataclass_fields__})

    try:
        pair = load_pair(cfg.target, cfg.draft, device=cfg.device, dtype=cfg.dtype)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    command = "python -m specviz.workshop.quality " + " ".join(
        _quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    seconds: dict[str, float] = {}
    t = time.time()
    continuations = continuation_section(pair, cfg)
    seconds["continuations"] = round(time.time() - t, 1)
    t = time.time()
    heldout = heldout_section(pair, cfg)
    seconds["heldout"] = round(time.time() - t, 1)
    t = time.time()
    try:
        spec_bench = spec_bench_section(pair, cfg)
    except ValueError as exc:  # a bad --method, or a method the pair cannot run
        spec_bench = {"skipped": f"error: {exc}"}
    seconds["spec_bench"] = round(time.time() - t, 1)
    result = {
        "reproduce": portable_text(command),  # committed beside the models: paths without the machine's layout
        "target": pair.target_name,
        "draft": pair.draft_name,
        "device": str(pair.device),
        "dtype": str(pair.dtype).replace("torch.", ""),
        "threads": torch.get_num_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": scrub(asdict(cfg)),
        "goals": {
            name: {"goal": f"{op} {bound}", "value": continuations[name], "met": goal_met(name, continuations[name])}
            for name, (op, bound) in GOALS.items()
        },
        "continuations": continuations,
        "heldout": scrub(heldout),  # figures, folders and messages: no generated text to leave alone
        "spec_bench": scrub(spec_bench),
        "seconds": seconds,
    }
    print(markdown_report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(json_safe(result), indent=2, allow_nan=False) + "\n")
        print(f"figures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
