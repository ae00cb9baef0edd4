"""`bench --html`: one self-contained HTML report (plotly bundled once, no network) of a bench run."""

from __future__ import annotations

import html
import os
import platform
import time
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import torch

from specviz.analysis.categories import task_of
from specviz.views.plots import TEMPLATE, compare_figures, throughput_figure

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1150px; color: #222; }
h1 { margin-bottom: .2rem; } .meta { color: #555; } code, pre { background: #f4f5f7; padding: .2rem .4rem; }
pre { padding: .8rem; white-space: pre-wrap; }
table { border-collapse: collapse; font-size: .85rem; margin: .5rem 0 1.5rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; } th { background: #f4f5f7; }
.grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
"""


def machine_line(pair=None) -> str:
    parts = [
        platform.platform(),
        f"{os.cpu_count()} CPU cores",
        f"torch {torch.__version__}",
        f"{torch.get_num_threads()} threads",
    ]
    if pair is not None:
        parts.append(f"device {pair.device}, dtype {str(pair.dtype).replace('torch.', '')}")
        parts.append(f"target {pair.target_name}" + (f", drafter {pair.draft_name}" if pair.draft_name else ""))
    return " | ".join(parts)


def category_figure(df: pd.DataFrame) -> go.Figure | None:
    """Median speedup by task and method (Spec-Bench's breakdown: MT-bench's sub-categories as one task)."""
    rows = df[df.get("category", pd.Series(dtype=str)).astype(str) != "batch"] if "category" in df else df
    if "category" not in rows or rows["category"].nunique() < 2 or "speedup" not in rows:
        return None
    rows = rows.assign(task=rows["category"].map(task_of))
    if rows["task"].nunique() < 2:
        return None
    table = rows.groupby(["task", "method"], sort=False)["speedup"].median().reset_index()
    fig = go.Figure()
    for method, part in table.groupby("method", sort=False):
        fig.add_trace(go.Bar(x=part["task"], y=part["speedup"], name=str(method)))
    fig.add_hline(y=1.0, line_dash="dot")
    fig.update_layout(title="Median speedup by task (measured)", barmode="group", template=TEMPLATE, height=360)
    return fig


def write_report(
    df: pd.DataFrame,
    table: pd.DataFrame,
    path: str | Path,
    *,
    command: str,
    pair=None,
    sections: dict[str, pd.DataFrame] | None = None,
) -> Path:
    """Write the report; returns its path. Tables are escaped by pandas; figures embed plotly.js once.
    `sections`: more tables after the summary, by title (a cluster run's per-device table, its failed units)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    single = df[df["category"].astype(str) != "batch"] if "category" in df else df
    figures = list(compare_figures(single).values()) if not single.empty else []
    extra = category_figure(df)
    if extra is not None:
        figures.append(extra)
    if "batch_size" in df and df["batch_size"].notna().any():
        figures.append(throughput_figure(df[df["batch_size"].notna()]))
    divs = [
        pio.to_html(fig, include_plotlyjs=(i == 0), full_html=False, default_width="100%")
        for i, fig in enumerate(figures)
    ]
    when = time.strftime("%Y-%m-%d %H:%M %Z")
    extra = "".join(
        f"<h2>{html.escape(title)}</h2>\n{frame.to_html(float_format=lambda v: f'{v:.3f}', border=0, na_rep='—')}\n"
        for title, frame in (sections or {}).items()
    )
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>specviz bench report</title>
<style>{STYLE}</style></head><body>
<h1>specviz bench report</h1>
<p class="meta">{html.escape(when)} | {html.escape(machine_line(pair))}</p>
<p>Speed is measured as ratios inside one process: each prompt runs every method (order rotated per repeat);
speedup is tokens/s over the autoregressive run of the same prompt; values are medians over repeats.</p>
<h2>Reproduce</h2><pre>{html.escape(command)}</pre>
<h2>Summary (median per method)</h2>
{table.to_html(float_format=lambda v: f"{v:.3f}", border=0, na_rep="—")}
{extra}
<h2>Figures</h2><div class="grid">{"".join(f"<div>{d}</div>" for d in divs)}</div>
<h2>Every run</h2>
{df.to_html(index=False, float_format=lambda v: f"{v:.4g}", border=0, na_rep="")}
</body></html>
"""
    path.write_text(body, encoding="utf-8")
    return path
