"""The Observe tab: a deployment's acceptance records (pasted or uploaded logs, metrics, responses) beside this
session's traced run, read under one set of definitions (`specviz.engine.acceptance`), with flags in plain
words and the MODELED which-k table.

The page never fetches a URL a visitor typed (`python -m specviz.observe --watch URL` does that, on the operator's
own machine), and it caps what it reads: UPLOAD_CAP bytes per file, PASTE_CAP characters of pasted text. Nothing
here runs a model, so it needs no engine job.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass

import gradio as gr
import pandas as pd

from specviz.analysis.observed import Flag, flags, group_key, overall
from specviz.analysis.which_k import PRESETS, Costs, plan
from specviz.app.controls import friendly
from specviz.engine.acceptance import AcceptanceRecord
from specviz.observe.reader import ReadStats, iter_text, records_from_object
from specviz.views import observe_plots

UPLOAD_CAP = 20_000_000  # bytes per uploaded file; bigger logs stream through `python -m specviz.observe`
PASTE_CAP = 5_000_000  # characters of pasted text
MAX_RECORDS = 20_000  # records kept per source (a series longer than this keeps its first MAX_RECORDS)
OWN_COSTS = "my own numbers (type c and v below)"
CAP_NOTE = (
    f"Files up to {UPLOAD_CAP // 1_000_000} MB each and {PASTE_CAP // 1_000_000} million pasted characters; "
    "larger logs: `python -m specviz.observe FILE` (it streams)."
)


@dataclass
class Observed:
    """What one analysis found: the sources' records grouped into series, and how reading went."""

    groups: list[list[AcceptanceRecord]]  # records of one series each, in file order
    stats: list[ReadStats]


def read_sources(text: str, paths: list[str]) -> Observed:
    """Read pasted text and uploaded files (size-capped) into series of records; never raises on bad content."""
    stats: list[ReadStats] = []
    records: list[AcceptanceRecord] = []
    sources: list[tuple[str, str]] = []
    if text and text.strip():
        if len(text) > PASTE_CAP:
            raise ValueError(f"the pasted text is {len(text):,} characters; the page reads at most {PASTE_CAP:,}")
        sources.append(("pasted text", text))
    for path in paths:
        name = os.path.basename(path)
        size = os.path.getsize(path)
        if size > UPLOAD_CAP:
            raise ValueError(f"{name} is {size / 1e6:.1f} MB; the page reads files up to {UPLOAD_CAP / 1e6:.0f} MB")
        with open(path, "rb") as handle:
            raw = handle.read()
        if b"\x00" in raw[:65536]:
            stats.append(ReadStats(name=name, kind="binary", error=f"{name} looks binary: nothing read"))
            continue
        sources.append((name, raw.decode("utf-8", errors="replace")))
    for name, body in sources:
        read = ReadStats(name=name)
        kept = list(iter_text(body, read, name=name))
        records.extend(kept[:MAX_RECORDS])  # each source keeps its first MAX_RECORDS, as the constant says
        stats.append(read)
    groups: dict[tuple, list[AcceptanceRecord]] = {}
    for record in records:
        groups.setdefault(group_key(record), []).append(record)
    return Observed(list(groups.values()), stats)


def trace_records(trace_json: str) -> list[AcceptanceRecord]:
    """This session's last Playground run as a record (empty when there is none)."""
    if not trace_json:
        return []
    return records_from_object(json.loads(trace_json))


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def summary_frame(records: list[AcceptanceRecord]) -> pd.DataFrame:
    """One row per series (its overall record); a derived value carries a '*'."""
    rows = []
    for record in records:

        def cell(name: str, digits: int = 3) -> str:
            value = getattr(record, name)
            return fmt(value, digits) + ("*" if name in record.derived and value is not None else "")

        per_position = record.per_position
        rows.append(
            {
                "source": observe_plots.record_label(record),
                "scope": record.scope,
                "k": fmt(record.k),
                "steps": cell("steps"),
                "drafted": cell("drafted"),
                "accepted": cell("accepted"),
                "acceptance rate": cell("acceptance_rate"),
                "mean acceptance length": cell("mean_acceptance_length"),
                "per-position rates": (
                    ", ".join(f"{rate:.2f}" for rate in per_position)
                    + ("*" if "per_position" in record.derived else "")
                )
                if per_position
                else "—",
            }
        )
    return pd.DataFrame(rows)


def flags_html(labelled: list[tuple[str, list[Flag]]], stats: list[ReadStats]) -> str:
    """The flags of each series, then how reading went; every piece of text escaped."""
    parts = []
    for label, found in labelled:
        for flag in found:
            parts.append(
                f'<div class="sv-flag" role="note"><strong>{html.escape(flag.title)}</strong> '
                f"<span>({label})</span><br>{html.escape(flag.cause)}</div>"
            )
    if not parts and labelled:
        parts.append("<p>No flag: acceptance falls with position as a chain's should, and steps gain tokens.</p>")
    for read in stats:
        line = f"{read.name}: {read.records} record(s), {read.skipped} line(s) skipped, {read.rejected} refused"
        if read.error:
            line += f"; {read.error}"
        parts.append(f"<p class='sv-note'>{html.escape(line)}</p>")
        parts.extend(f"<p class='sv-note'>{html.escape(message)}</p>" for message in read.messages[:5])
    return "\n".join(parts)


def costs_from(preset: str, c, v2, slope) -> tuple[Costs | None, str]:
    """The costs the user picked or typed, with what they assume; (None, why) when nothing was given."""
    if preset in PRESETS:
        return PRESETS[preset].costs, "Costs: " + PRESETS[preset].assumes
    if not v2 and not c:  # the page's empty number boxes arrive as 0 (an API call may send None)
        return None, (
            "Which k? Type your costs (c: one draft step / one target step; v: a verification of 2 tokens / one "
            "step, and what each further token adds) or pick a preset that says what it assumes."
        )
    c, v2 = c or 0.0, v2 or 0.0
    if c < 0 or v2 <= 0 or (slope or 0) < 0:
        raise ValueError("costs must be positive: c >= 0, v > 0, the per-token addition >= 0")
    costs = Costs(draft_step=float(c), verify_widths=((2, float(v2)),), verify_slope=float(slope or 0))
    return costs, f"Costs typed here: c = {c}, v(2) = {v2}, +{slope or 0} per further token."


def which_k(record: AcceptanceRecord, costs: Costs | None, said: str) -> tuple[str, object]:
    """The which-k text and figure for one series."""
    if costs is None:
        return said, observe_plots.empty("MODELED speedup by k", "no costs given")
    drafting = "tree" if any("tree" in note for note in record.notes) else "chain"
    try:
        if record.per_position:
            result = plan(costs, list(record.per_position), drafting=drafting)
        else:
            k = record.k
            result = plan(costs, mean_acceptance_length=record.mean_acceptance_length, k_recorded=k, drafting=drafting)
    except ValueError as exc:
        return f"{said}\n\nWhich k: {exc}", observe_plots.empty("MODELED speedup by k", str(exc))
    best = result.best
    text = (
        f"**MODELED:** k = {best.k} is best, {best.tokens_per_step:.2f} tokens per step at {best.step_cost:.2f} "
        f"target steps, {best.speedup:.2f}x over plain decoding. {result.note}\n\n{said}"
    )
    return text, observe_plots.which_k_figure(result)


def analyse(text: str, files, with_trace: bool, trace_json: str, preset: str, c, v2, slope) -> tuple:
    """Paste/upload -> table, flags, curves, histogram, series, which k."""
    paths = [f if isinstance(f, str) else getattr(f, "name", None) or f.get("path") for f in (files or [])]
    observed = read_sources(text, paths)
    mine = trace_records(trace_json) if with_trace else []
    series = [overall(group) for group in observed.groups]
    if not observed.stats and not mine:
        raise ValueError("paste log lines, metrics or responses, or upload a file")
    if not series and not mine:
        read = "; ".join(
            f"{s.name}: {s.lines} line(s), none a record"
            + (f", {s.rejected} refused ({s.messages[0]})" if s.messages else "")
            + (f" ({s.error})" if s.error else "")
            for s in observed.stats
        )
        raise ValueError(f"no acceptance record found ({read}). " + CAP_NOTE)
    labelled = [(observe_plots.record_label(record), flags(record)) for record in series]
    head = series[0] if series else mine[0]
    costs, said = costs_from(preset, c, v2, slope)
    k_text, k_figure = which_k(head, costs, said)
    longest = max(observed.groups, key=len) if observed.groups else []
    return (
        summary_frame(series + mine),
        flags_html(labelled, observed.stats),
        observe_plots.per_position_figure(series + mine),
        observe_plots.length_histogram_figure(head),
        observe_plots.series_figure(longest),
        k_text,
        k_figure,
    )


def build(trace_state: gr.State) -> None:
    """The tab's components and events (called inside `gr.Tab`)."""
    with gr.Column(elem_id="observe"):
        gr.Markdown(
            "Bring a deployment's acceptance records: vLLM's `SpecDecoding metrics:` log lines or `/metrics`, "
            "SGLang's `meta_info`, llama.cpp's timings and log lines, TensorRT-LLM's stats, MLX-VLM's timings, "
            "AIPerf's `profile_export.jsonl`, or a specviz trace or bench CSV. Every engine is read under the same "
            "definitions (acceptance rate = accepted / drafted; mean acceptance length = 1 + accepted / steps; "
            "per-position rate i = steps whose i-th draft was accepted / steps); values marked * are derived from "
            "what the record implies. " + CAP_NOTE
        )
        with gr.Row():
            o_text = gr.Textbox(lines=6, label="paste log lines, metrics or responses", elem_id="observe-text", scale=3)
            o_files = gr.File(label="or upload files", file_count="multiple", elem_id="observe-files", scale=2)
        with gr.Row():
            o_trace = gr.Checkbox(value=True, label="add this session's last Playground run", elem_id="observe-trace")
            o_preset = gr.Dropdown(
                [OWN_COSTS] + list(PRESETS), value=OWN_COSTS, label="costs for which k", elem_id="observe-preset"
            )
            o_c = gr.Number(value=None, label="c: draft step / target step", elem_id="observe-c")
            o_v = gr.Number(value=None, label="v: verify 2 tokens / one step", elem_id="observe-v")
            o_slope = gr.Number(value=None, label="v: added per further token", elem_id="observe-slope")
        o_btn = gr.Button("Read", variant="primary", elem_id="observe-run")
        o_table = gr.Dataframe(label="records (* derived)", interactive=False, elem_id="observe-table")
        o_flags = gr.HTML(elem_id="observe-flags")
        with gr.Row():
            o_curve = gr.Plot(label="per-position acceptance", elem_id="observe-curve")
            o_hist = gr.Plot(label="acceptance length", elem_id="observe-hist")
        o_series = gr.Plot(label="mean acceptance length over time", elem_id="observe-series")
        o_k_text = gr.Markdown(elem_id="observe-k-text")
        o_k = gr.Plot(label="which k (MODELED)", elem_id="observe-k")
    o_btn.click(
        friendly(analyse),
        [o_text, o_files, o_trace, trace_state, o_preset, o_c, o_v, o_slope],
        [o_table, o_flags, o_curve, o_hist, o_series, o_k_text, o_k],
        api_name="observe",
    )
