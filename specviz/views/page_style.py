"""The page's look and its accessibility fixes: a theme whose text meets WCAG AA contrast, and page JS that
repairs two patterns in Gradio's own markup (axe-core's WCAG 2 A/AA rules check both, tests/app/test_a11y.py)."""

from __future__ import annotations

import gradio as gr
from gradio.themes.utils import colors


def theme() -> gr.themes.Base:
    """Gradio's default theme with text that meets 4.5:1 in both modes: white on orange-700 (5.2:1) instead of
    orange-500 (2.8:1) for primary buttons; zinc-600 (7.7:1 on white) instead of zinc-400 (2.6:1) for subdued
    text (slider bounds, info lines, the footer's links); links (a run's downloads) blue-700 once visited
    instead of blue-500 (3.7:1), and blue-400 in dark mode instead of blue-500/600 (4.0:1 and less)."""
    return gr.themes.Default().set(
        button_primary_background_fill="*primary_700",
        button_primary_background_fill_dark="*primary_700",
        button_primary_background_fill_hover="*primary_800",
        button_primary_background_fill_hover_dark="*primary_800",
        button_cancel_background_fill=colors.red.c700,
        button_cancel_background_fill_hover=colors.red.c800,
        body_text_color_subdued="*neutral_600",
        link_text_color_visited="*secondary_700",
        link_text_color_dark="*secondary_400",
        link_text_color_active_dark="*secondary_400",
        link_text_color_hover_dark="*secondary_300",
        link_text_color_visited_dark="*secondary_400",
    )


# Run once when the page loads, and again whenever Gradio re-renders:
# - Gradio's "empty" placeholder (a gr.Plot or gr.File with no value yet) is a <div aria-label="Empty value">
#   with no role, and aria-label is prohibited there (aria-prohibited-attr): it gets role="img", which names
#   the placeholder icon it holds.
# - A block whose content scrolls (Learn's wide table) cannot be scrolled from the keyboard unless it or its
#   content takes focus (scrollable-region-focusable): such a block without focusable content gets tabindex=0,
#   taken back when it no longer scrolls.
A11Y_JS = """() => {
  const FOCUSABLE = "a[href], button, input, select, textarea, [tabindex]:not([tabindex='-1'])";
  const scrolls = (e) => {
    const s = getComputedStyle(e);
    return (e.scrollWidth > e.clientWidth + 1 && /auto|scroll/.test(s.overflowX))
        || (e.scrollHeight > e.clientHeight + 1 && /auto|scroll/.test(s.overflowY));
  };
  const roles = () => {
    document.querySelectorAll(".empty[aria-label]:not([role])").forEach((e) => e.setAttribute("role", "img"));
  };
  const scrollers = () => {
    document.querySelectorAll(".block, [data-sv-scroll]").forEach((e) => {
      if (e.hasAttribute("data-sv-scroll")) {
        if (scrolls(e)) return;
        e.removeAttribute("data-sv-scroll");
        e.removeAttribute("tabindex");
      } else if (!e.hasAttribute("tabindex") && scrolls(e) && !e.querySelector(FOCUSABLE)) {
        e.setAttribute("data-sv-scroll", "");
        e.setAttribute("tabindex", "0");
      }
    });
  };
  let pending = null;
  const later = () => { if (pending === null) pending = setTimeout(() => { pending = null; scrollers(); }, 200); };
  new MutationObserver(() => { roles(); later(); }).observe(document.body, {childList: true, subtree: true});
  window.addEventListener("resize", later);
  document.addEventListener("click", later);
  document.addEventListener("keyup", later);
  roles();
  scrollers();
}"""


def page_js(*parts: str) -> str:
    """One `() => {...}` for gr.Blocks.launch(js=...) that runs each of `parts` (arrow functions) in turn."""
    return "() => {\n" + "".join(f"  ({p})();\n" for p in parts) + "}"
