"""The real app in a real browser: Debian's chromium driven by playwright against `python app.py`.

Also the XSS check (gr.HTML does not sanitize: every token must be escaped) and the named API through
gradio_client. Screenshots of every tab go to docs/screenshots/ (README shows them)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from appserver import ROOT, playground_stream_args
from browser import axe_script, axe_violations, describe, launched

pytestmark = pytest.mark.slow  # a real server in a real browser or under load: minutes

SHOTS = ROOT / "docs" / "screenshots"
LOCAL = ("http://127.0.0.1", "http://localhost", "ws://127.0.0.1", "data:", "blob:", "about:")


@pytest.fixture(scope="module")
def browser():
    with launched() as b:
        yield b


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.errors, page.outside = [], []
    page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.on("request", lambda r: page.outside.append(r.url) if not r.url.startswith(LOCAL) else None)
    page.goto(server.url)
    page.wait_for_selector("#run", timeout=60_000)
    yield page
    context.close()


def open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(300)


def set_number(page, label_start: str, value: str) -> None:
    box = page.get_by_label(label_start, exact=False).first
    box.fill(value)
    box.press("Enter")


def test_every_tab_in_a_real_browser(page, server):
    timings = {"app_ready_s": round(server.ready_s, 2)}
    # Playground on the embedded models: coloured tokens stream in, then every plot
    t0 = time.time()
    page.click("#run")
    page.wait_for_selector("#tokens .sv-tok", timeout=60_000)
    timings["first_token_s"] = round(time.time() - t0, 2)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=120_000)
    timings["plots_s"] = round(time.time() - t0, 2)
    fates = page.eval_on_selector_all("#tokens .sv-tok", "els => els.map(e => e.dataset.fate)")
    assert fates and set(fates) <= {"accept", "correct", "bonus", "emit"} and "accept" in fates
    title = page.get_attribute("#tokens .sv-tok", "title")
    assert "p=" in title and "round" in title and "source" in title
    page.wait_for_selector("text=speedup vs autoregressive (measured)", timeout=30_000)
    page.screenshot(path=str(SHOTS / "playground.png"), full_page=True)

    # Step through the run just made
    open_tab(page, "Step through")
    slider = page.locator("#step-slider input[type=number]")
    slider.fill("2")
    slider.press("Enter")
    page.wait_for_selector("#step-explainer h4:has-text('Round')", timeout=30_000)
    assert "rule: greedy (argmax)" in page.inner_text("#step-explainer")
    page.screenshot(path=str(SHOTS / "step.png"), full_page=True)

    # Compare two methods
    open_tab(page, "Compare")
    t1 = time.time()
    page.click("#compare-run")
    page.wait_for_function(
        "[...document.querySelectorAll('.js-plotly-plot')].filter(e => e.offsetParent).length >= 4", timeout=180_000
    )
    timings["compare_s"] = round(time.time() - t1, 2)
    body = page.inner_text("body")
    assert "kangaroo" in body and "draft_model" in body
    page.screenshot(path=str(SHOTS / "compare.png"), full_page=True)

    # Batch: EQSPEC vs EXSPEC and the naive mode
    open_tab(page, "Batch")
    page.click("#batch-run")
    page.wait_for_function("document.body.innerText.includes('NAIVE: broken on purpose')", timeout=180_000)
    page.wait_for_function(
        "[...document.querySelectorAll('.js-plotly-plot')].filter(e => e.offsetParent).length >= 3", timeout=60_000
    )
    page.screenshot(path=str(SHOTS / "batch.png"), full_page=True)

    open_tab(page, "Learn")
    page.wait_for_function("document.body.innerText.includes('Double Early Exiting')", timeout=10_000)
    page.screenshot(path=str(SHOTS / "learn.png"), full_page=True)
    (SHOTS / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print("browser timings:", timings)
    assert not page.errors, f"console errors: {page.errors}"
    assert not page.outside, f"requests outside this machine: {page.outside}"


def test_a_run_is_replayed_at_its_measured_pace_and_an_identical_one_comes_from_the_cache(page):
    """The measured trace arrives once and the browser reveals each token at the time the run committed it; the
    same request again is served from the cache and says so; 'Measure again' runs it anew."""
    page.fill("#prompt textarea", "def replay_me(x):\n")
    page.click("#run")
    page.wait_for_selector("#tokens .sv-replay-label", timeout=120_000)
    page.wait_for_selector("text=speedup vs autoregressive (measured)", timeout=30_000)
    status = page.inner_text("#tokens .sv-note")
    assert "for this request" in status and "served from cache" not in status, status
    assert "replay of the measured run" in page.inner_text("#tokens .sv-replay-label")
    end = float(page.get_attribute("#tokens .sv-replay", "data-end"))
    times = [float(t) for t in page.eval_on_selector_all("#tokens .sv-tok[data-t]", "els => els.map(e => e.dataset.t)")]
    assert times and max(times) <= end + 1e-3
    hidden = page.evaluate("""async () => {
        document.querySelector('#tokens .sv-replay-again').click();
        await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
        return [document.querySelectorAll('#tokens .sv-tok.sv-future').length,
                document.querySelectorAll('#tokens .sv-tok').length];
    }""")
    assert 0 < hidden[0] <= hidden[1], hidden  # just after the replay starts, the later tokens are not shown yet
    page.wait_for_function(
        "document.querySelectorAll('#tokens .sv-tok.sv-future').length === 0", timeout=int(end * 1000) + 30_000
    )
    shown_at = status.split("measured at ")[1][:8]
    page.click("#run")  # the same request: from the cache, labelled with the first measurement's time
    page.wait_for_function(
        "document.querySelector('#tokens .sv-note') && "
        "document.querySelector('#tokens .sv-note').innerText.includes('served from cache')",
        timeout=60_000,
    )
    assert f"measured at {shown_at}, served from cache" in page.inner_text("#tokens .sv-note")
    page.click("#measure-again")
    page.wait_for_function(
        "document.querySelector('#tokens .sv-note') && "
        "document.querySelector('#tokens .sv-note').innerText.includes('for this request')",
        timeout=120_000,
    )
    assert not page.errors, f"console errors: {page.errors}"


def test_script_in_a_prompt_renders_as_text(page):
    payload = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2"> def f(x):'
    page.fill("#prompt textarea", payload)
    page.click("#run")
    page.wait_for_selector("#tokens .sv-tok", timeout=60_000)
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=120_000)
    shown = page.inner_text("#tokens .sv-prompt")
    assert "<script>window.__xss=1</script>" in shown and 'onerror="window.__xss=2"' in shown
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("#tokens img").count() == 0 and page.locator("#tokens script").count() == 0


def test_api_playground_matches_the_engine(server):
    from gradio_client import Client

    from specviz.api import run
    from specviz.engine.trace import Trace
    from specviz.models.pair import load_pair

    client = Client(server.url, verbose=False)
    params = {"max_new_tokens": 24, "gamma": 3}
    text, trace_json = client.predict(
        "def parse(line):\n", "draft_model", json.dumps(params), "embedded", "", api_name="/playground"
    )
    trace = Trace.from_json(trace_json)
    local = run("draft_model", load_pair("embedded"), "def parse(line):\n", **params)
    assert trace.output_ids == local.output_ids and text == local.text
    assert client.predict(trace_json, api_name="/load_trace").startswith("draft_model: 1 row(s)")


def test_every_method_runs_from_the_playground_controls(server):
    """Each method with the control values the page shows for it (catches a control the server cannot take)."""
    from gradio_client import Client

    from specviz.app.controls import SINGLE

    client = Client(server.url, verbose=False)
    for method in SINGLE:
        outputs = client.predict(*playground_stream_args(method, 12), api_name="/playground_stream")
        assert 'class="sv-tok' in outputs[0], method
        saved = json.loads(Path(outputs[-1][0]).read_text())  # the downloadable trace.json
        assert saved["method"] == method and len(saved["rows"][0]["output_ids"]) == 12


def test_explorer_draws_the_model_and_this_sessions_measured_runs(page):
    """Speedup explorer: the MODELED Leviathan curve follows the sliders; a Playground run appears as a MEASURED
    point."""
    page.click("#run")
    page.wait_for_function("document.querySelectorAll('.js-plotly-plot').length >= 4", timeout=120_000)
    page.wait_for_selector("text=speedup vs autoregressive (measured)", timeout=30_000)
    open_tab(page, "Explorer")
    plot = "#explorer-plot .js-plotly-plot"
    page.wait_for_function(
        "() => { const g = document.querySelector('" + plot + "'); return g && g.data && "
        "g.data.some(t => t.name.startsWith('MEASURED draft_model')); }",
        timeout=60_000,
    )
    names = page.evaluate(f"document.querySelector('{plot}').data.map(t => t.name)")
    assert any(n.startswith("MODELED: alpha 0.80") for n in names), names
    measured = page.evaluate(f"document.querySelector('{plot}').data.find(t => t.name.startsWith('MEASURED')).y[0]")
    assert 0.2 < measured < 10, measured
    box = page.locator("#x-alpha input[type=number]")
    box.fill("0.5")
    box.press("Enter")
    page.wait_for_function(
        f"document.querySelector('{plot}').data[0].name.startsWith('MODELED: alpha 0.50')", timeout=30_000
    )
    title = page.evaluate(f"document.querySelector('{plot}').layout.title.text")
    assert "best modeled gamma" in title
    page.screenshot(path=str(SHOTS / "explorer.png"), full_page=True)
    assert not page.errors, f"console errors: {page.errors}"


def test_race_plays_both_measured_runs_and_judges_the_outputs(page):
    open_tab(page, "Race")
    page.click("#race-run")
    page.wait_for_selector("#race-ar", timeout=60_000)
    page.wait_for_selector("#race-verdict", timeout=120_000)
    assert page.get_attribute("#race-ar", "data-done") == "true"
    assert page.get_attribute("#race-method", "data-done") == "true"
    assert int(page.get_attribute("#race-method", "data-tokens")) > 0
    verdict = page.inner_text("#race-verdict")
    assert "EQUAL" in verdict and "the speed of autoregressive" in verdict, verdict
    assert "running speedup" in page.inner_text("#race-speed")
    assert "MEASURED alone" in page.inner_text("#race-html")
    page.screenshot(path=str(SHOTS / "race.png"), full_page=True)
    assert not page.errors, f"console errors: {page.errors}"


def test_step_explainer_shows_both_distributions_the_rule_and_moves_by_keyboard(page):
    """Greedy: q and p top-k bars with the draft highlighted, the argmax rule. Sampling: u against
    min(1, p/q) on a 0..1 bar, and the residual a correction was drawn from. Arrow keys move rounds."""
    page.click("#run")
    page.wait_for_selector("text=speedup vs autoregressive (measured)", timeout=120_000)
    open_tab(page, "Step through")
    page.wait_for_selector("#step-explainer .sv-card", timeout=30_000)
    assert page.locator("#step-explainer .sv-dist[data-dist=q] .sv-bar").count() > 0
    assert page.locator("#step-explainer .sv-dist[data-dist=p] .sv-bar-row.sv-hl").count() > 0
    assert page.locator("#step-explainer [data-rule=argmax]").count() > 0
    first = page.inner_text("#step-explainer h4")
    page.click("#step-explainer .sv-note")  # focus the page, not an input
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"document.querySelector('#step-explainer h4').innerText !== {first!r}", timeout=30_000)
    assert "Round" in page.inner_text("#step-explainer h4")
    page.screenshot(path=str(SHOTS / "step.png"), full_page=True)
    # sampling: the ratio test and the residual
    open_tab(page, "Playground")
    page.get_by_text("sampling and length").click()
    page.get_by_label("temperature", exact=False).first.fill("1")
    page.get_by_label("temperature", exact=False).first.press("Enter")
    page.click("#run")
    # the greedy run's "speedup" line stays on screen while this run goes on, so it cannot say this run
    # finished: the ratio rule can only come from the sampling run's trace, so wait for that, a run's time
    open_tab(page, "Step through")
    page.wait_for_selector("#step-explainer [data-rule=ratio]", timeout=120_000)
    for _ in range(40):  # find a round with a rejection: the residual is shown there
        if page.locator("#step-explainer .sv-dist[data-dist=residual]").count():
            break
        text = page.inner_text("#step-explainer h4")
        page.click("#step-next")
        page.wait_for_function(f"document.querySelector('#step-explainer h4').innerText !== {text!r}", timeout=30_000)
    assert page.locator("#step-explainer .sv-unit .sv-u").count() > 0
    assert "u = " in page.inner_text("#step-explainer") and "min(1, p/q)" in page.inner_text("#step-explainer")
    assert page.locator("#step-explainer .sv-dist[data-dist=residual] .sv-bar-row.sv-hl").count() == 1
    page.screenshot(path=str(SHOTS / "step-sampling.png"), full_page=True)
    assert not page.errors, f"console errors: {page.errors}"


def test_exactness_lab_passes_the_real_rule_and_exposes_the_broken_one(page):
    """N = 5,000 (the default) with a fixed seed on the embedded pair: draft_model's samples are consistent with the
    target's exact law (p > 0.01) and so are plain autoregressive ones; the BROKEN-on-purpose rule is rejected
    (p < 0.001)."""
    open_tab(page, "Exactness")
    page.click("#exactness-run")
    page.wait_for_function(
        "document.querySelector('#exactness-table') && "
        "document.querySelector('#exactness-table').innerText.includes('BROKEN on purpose')",
        timeout=240_000,
    )
    page.wait_for_function(
        "(() => { const g = document.querySelector('#exactness-plot .js-plotly-plot'); "
        "return g && g.data && g.data.length >= 3; })()",
        timeout=60_000,
    )
    print(repr(page.inner_text("#exactness-table")))
    names = page.evaluate("document.querySelector('#exactness-plot .js-plotly-plot').data.map(t => t.name)")
    assert any(n.startswith("target's exact p") for n in names) and any("BROKEN" in n for n in names)
    page.screenshot(path=str(SHOTS / "exactness.png"), full_page=True)
    assert not page.errors, f"console errors: {page.errors}"


REPEATING = "def area(width, height):\n    return width * height\n\n\ndef perimeter(width, height):\n    return"


def choose(page, selector: str, value: str) -> None:
    """Pick `value` in a Gradio dropdown."""
    box = page.locator(f"{selector} input").first
    box.click()
    box.fill(value)
    page.locator(f"[role=option]:has-text('{value}')").first.click()


def test_a_copied_token_points_at_its_source_in_the_prompt(page):
    """prompt_lookup in the Playground: a token whose draft was copied is marked, and hovering it marks the
    prompt token it was copied from."""
    page.fill("#prompt textarea", REPEATING)
    choose(page, "#method", "prompt_lookup")
    page.click("#run")
    page.wait_for_selector("#tokens .sv-copied", timeout=60_000)
    prompt_tokens = page.locator("#tokens .sv-ptok").count()
    assert prompt_tokens > 10
    copied = page.locator("#tokens .sv-copied")
    sources = [int(copied.nth(i).get_attribute("data-copied-from")) for i in range(copied.count())]
    first = next(i for i, at in enumerate(sources) if at < prompt_tokens)  # one copied from the prompt itself
    copied.nth(first).hover()
    source = page.locator(f'#tokens .sv-ptok[data-pos="{sources[first]}"]')
    page.wait_for_function("el => el.classList.contains('sv-source')", arg=source.element_handle(), timeout=5_000)
    assert "copied from token" in copied.nth(first).get_attribute("title")
    page.mouse.move(0, 0)
    assert "sv-source" not in (source.get_attribute("class") or "")
    assert not page.errors, f"console errors: {page.errors}"


def test_a_tree_round_is_drawn_in_step_through(page):
    """tree in the Playground, then Step through: the round's candidates drawn as a tree from the root, the accepted
    path highlighted, each node's q, p and verdict on hover; the Explorer models the tree's tau beside the chain's."""
    choose(page, "#method", "tree")
    page.click("#run")
    page.wait_for_selector("text=speedup vs autoregressive (measured)", timeout=120_000)
    open_tab(page, "Step through")
    page.wait_for_selector("#step-explainer [data-tree='1']", timeout=30_000)
    assert page.locator("#step-explainer .sv-tree li[data-node]").count() > 2
    accepted = page.locator("#step-explainer .sv-node.sv-n-accept")
    if not accepted.count():  # a round where the drafter's first level missed: find one with an accepted path
        page.click("#step-next")
        page.wait_for_selector("#step-explainer .sv-node.sv-n-accept", timeout=30_000)
    title = accepted.first.get_attribute("title")
    assert "q=" in title and "p=" in title and "accepted" in title, title
    assert "a tree of" in page.inner_text("#step-explainer [data-tree-summary]")
    axe_script()
    report = describe(axe_violations(page))  # the drawn tree keeps the page's WCAG 2 A/AA pass (test_a11y: every tab)
    assert not report, f"axe-core WCAG 2 A/AA violations on a drawn tree:\n{report}"
    page.screenshot(path=str(SHOTS / "step-tree.png"), full_page=True)
    open_tab(page, "Explorer")
    plot = "#explorer-tau .js-plotly-plot"
    page.wait_for_function(
        "() => { const g = document.querySelector('" + plot + "'); return g && g.data && "
        "g.data.some(t => t.name.startsWith('MEASURED tree')); }",
        timeout=60_000,
    )
    names = page.evaluate(f"document.querySelector('{plot}').data.map(t => t.name)")
    assert any(n.startswith("MODELED tree") for n in names) and any(n.startswith("MODELED chain") for n in names)
    assert not page.errors, f"console errors: {page.errors}"


def test_compare_runs_an_uploaded_question_file_by_task(page):
    """A Spec-Bench-format file as the Compare tab's prompts: its tasks are offered, and the table by task comes
    back with MT-bench's sub-categories as one task."""
    open_tab(page, "Compare")
    page.set_input_files("#compare-file input[type=file]", str(ROOT / "tests" / "data" / "spec_bench_fixture.jsonl"))
    page.wait_for_function(
        "document.querySelector('#compare-found').innerText.includes('8 questions in 4 tasks')", timeout=30_000
    )
    assert page.locator("#compare-source input[value='uploaded file']").is_checked()
    set_number(page, "prompts: the first N", "1")
    page.get_by_label("kangaroo", exact=True).uncheck()
    page.get_by_label("prompt_lookup", exact=True).check()
    page.click("#compare-run")
    page.wait_for_function("document.querySelector('#compare-by-task').innerText.includes('mt_bench')", timeout=180_000)
    table = page.inner_text("#compare-by-task")
    for task in ("mt_bench", "summarization", "rag", "translation"):
        assert task in table
    assert "prompt_lookup" in table
    assert not page.errors, f"console errors: {page.errors}"


# a vLLM V1 interval (SpecDecodingLogging's line) whose acceptance drops to zero after position 2
VLLM_LINE = (
    "INFO 06-10 12:00:00 [metrics.py:96] SpecDecoding metrics: Mean acceptance length: 1.90, "
    "Accepted throughput: 9.00 tokens/s, Drafted throughput: 40.00 tokens/s, Accepted: 90 tokens, "
    "Drafted: 400 tokens, Per-position acceptance rate: 0.600, 0.300, 0.000, 0.000, Avg Draft acceptance rate: 22.5%"
)


def test_observe_reads_a_pasted_vllm_line(page):
    """Paste one log line: the per-position curve, the acceptance-length histogram and a flag appear; with a
    preset's costs the MODELED which-k table names the best k."""
    open_tab(page, "Observe")
    page.fill("#observe-text textarea", VLLM_LINE)
    page.locator("#observe-preset input").click()
    page.get_by_role("option", name="GPU, batch 1, one-layer head (assumed)").click()
    page.click("#observe-run")
    page.wait_for_selector("#observe-flags .sv-flag", timeout=60_000)
    assert "drops to about zero after position 2" in page.inner_text("#observe-flags")
    page.wait_for_selector("#observe-curve .js-plotly-plot", timeout=30_000)
    page.wait_for_selector("#observe-hist .js-plotly-plot", timeout=30_000)
    curve = page.evaluate("document.querySelector('#observe-curve .js-plotly-plot').data[0].y")
    assert curve == [0.6, 0.3, 0.0, 0.0]
    bars = page.evaluate("document.querySelector('#observe-hist .js-plotly-plot').data[0].y")
    assert bars == [40, 30, 30, 0, 0]
    assert "MODELED" in page.inner_text("#observe-k-text") and "is best" in page.inner_text("#observe-k-text")
    page.screenshot(path=str(SHOTS / "observe.png"), full_page=True)
    assert not page.errors, f"console errors: {page.errors}"
