"""Accessibility: axe-core's WCAG 2 A and AA rules find no violation on any tab of the real app, after a run.

The real `python app.py` in Debian's chromium (as tests/app/test_app.py); axe-core is the npm package pinned in
tests/a11y/package.json, which .ci/run installs (`npm ci --prefix tests/a11y`)."""

from __future__ import annotations

import pytest
from browser import axe_script, axe_violations, describe, launched

pytestmark = pytest.mark.slow  # a real server in a real browser or under load: minutes

# a vLLM V1 log interval whose acceptance drops to zero after position 2 (a flag, the curve, the histogram)
OBSERVE_LINE = (
    "INFO 06-10 12:00:00 [metrics.py:96] SpecDecoding metrics: Mean acceptance length: 1.90, Accepted: 90 tokens, "
    "Drafted: 400 tokens, Per-position acceptance rate: 0.600, 0.300, 0.000, 0.000"
)
TABS = ["Playground", "Compare", "Batch", "Step through", "Exactness", "Race", "Explorer", "Observe", "Learn"]


@pytest.fixture(scope="module")
def browser():
    axe_script()  # installed with npm if missing, else the run stops with the command
    with launched() as b:
        yield b


def open_page(browser, server, color_scheme: str):
    page = browser.new_context(viewport={"width": 1400, "height": 1000}, color_scheme=color_scheme).new_page()
    page.goto(server.url)
    page.wait_for_selector("#run", timeout=60_000)
    return page


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()
    page.wait_for_timeout(300)


def set_slider(page, label: str, value: int) -> None:
    """The number box of the visible slider labelled `label` (the one in the open tab)."""
    box = page.locator(f"input[type=number][aria-label='number input for {label}']:visible").first
    box.fill(str(value))
    box.press("Enter")


def visible_plots(page, n: int, timeout: int = 180_000) -> None:
    page.wait_for_function(
        f"[...document.querySelectorAll('.js-plotly-plot')].filter(e => e.offsetParent).length >= {n}", timeout=timeout
    )


def run_tab(page, tab: str) -> bool:
    """The tab's own run, with small settings, so that the check sees the markup its results add; False for a
    tab that has none (it shows the Playground run's results)."""
    if tab == "Playground":
        page.click("#run")
        page.wait_for_selector("#tokens .sv-tok", timeout=60_000)
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=120_000)
        page.wait_for_selector("text=speedup vs autoregressive (measured)", timeout=30_000)
    elif tab == "Compare":
        set_slider(page, "prompts: the first N bundled, or N per task of a file", 1)
        set_slider(page, "max new tokens", 8)
        page.click("#compare-run")
        visible_plots(page, 4)
    elif tab == "Batch":
        set_slider(page, "batch size", 2)
        set_slider(page, "prompts", 2)
        set_slider(page, "max new tokens", 4)
        page.click("#batch-run")
        page.wait_for_function("document.body.innerText.includes('NAIVE: broken on purpose')", timeout=180_000)
        visible_plots(page, 3, 60_000)
    elif tab == "Exactness":
        set_slider(page, "N samples per sampler", 100)
        set_slider(page, "tokens per sample", 1)
        page.click("#exactness-run")
        page.wait_for_selector("#exactness-plot .js-plotly-plot", timeout=180_000)
    elif tab == "Race":
        set_slider(page, "max new tokens", 8)
        page.click("#race-run")
        page.wait_for_selector("#race-verdict", timeout=180_000)
    elif tab == "Observe":
        page.fill("#observe-text textarea", OBSERVE_LINE)
        page.click("#observe-run")
        page.wait_for_selector("#observe-flags .sv-flag", timeout=60_000)
        visible_plots(page, 3, 60_000)
    else:
        return False
    page.wait_for_timeout(500)
    return True


def ready(page, tab: str) -> None:
    """What a tab shows from the Playground run before any run of its own."""
    if tab == "Step through":
        page.wait_for_selector("#step-explainer h4:has-text('Round')", timeout=30_000)
    elif tab == "Explorer":
        page.wait_for_selector("#explorer-plot .js-plotly-plot", timeout=60_000)
    elif tab == "Learn":
        page.wait_for_function("document.body.innerText.includes('Double Early Exiting')", timeout=10_000)
    page.wait_for_timeout(500)


def violations_by_tab(page, runs: list[str]) -> str:
    """Every tab after the Playground run (the Playground before it too), and each tab in `runs` once more
    after a run of its own; '' when axe-core finds nothing."""
    found = {}
    for tab in TABS:
        open_tab(page, tab)
        ready(page, tab)
        found[tab] = axe_violations(page)
        if tab in runs and run_tab(page, tab):
            found[f"{tab} after its run"] = axe_violations(page)
    return "\n".join(f"{tab}: {describe(v)}" for tab, v in found.items() if v)


def test_no_wcag_violation_on_any_tab_after_a_run(browser, server):
    page = open_page(browser, server, "light")
    report = violations_by_tab(page, TABS)
    page.context.close()
    assert not report, "axe-core WCAG 2 A/AA violations:\n" + report


def test_no_wcag_violation_in_dark_mode(browser, server):
    """A student whose system asks for dark mode gets Gradio's dark theme: the same check, with the runs
    that add the page's own HTML (Playground, and Race's lanes)."""
    page = open_page(browser, server, "dark")
    report = violations_by_tab(page, ["Playground", "Race"])
    page.context.close()
    assert not report, "axe-core WCAG 2 A/AA violations in dark mode:\n" + report
