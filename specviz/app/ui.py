"""The Gradio app's layout: the tabs (Playground, Race, Compare, Batch, Exactness lab, Step through, Explorer,
Observe, Learn),
their events wired to `specviz.app.handlers`, the start-up warm-up and `launch`.

Handlers validate nothing themselves: the engine boundary (`specviz.api`, `specviz.models.pair`) raises
ValueError with a clear message, which becomes a `gr.Error` in the page and in the API. Engine work runs
as jobs of `specviz.app.jobs` on the engine process's main thread (`specviz.app.worker`); this process
holds no models and draws everything from the traces it gets back. Per-user data lives in `gr.State`,
never in globals. Every run has a cancel flag: the Stop button, a closed page and the time limit all set it.
"""

from __future__ import annotations

import os
import threading
import time
import traceback
from dataclasses import replace

import gradio as gr

from specviz.app import observe_tab
from specviz.app import requests as app_requests
from specviz.app.bridge import log, service
from specviz.app.controls import EXAMPLES, PARAMS, SINGLE, UI_DEFAULTS, control, friendly, method_changed
from specviz.app.handlers import (
    MIRROR_COSTS,
    RACE_DEFAULT_TOKENS,
    batch_api,
    batch_compare,
    compare_methods,
    exactness_lab,
    health,
    load_trace,
    load_trace_api,
    playground_api,
    playground_measure_again,
    playground_run,
    question_tasks,
    race,
    race_measure_again,
    rendered,
    step_move,
    step_view,
)
from specviz.app.learn import add_explorer_point, explorer_figure, learn_markdown, tau_figure
from specviz.app.serving import Job
from specviz.engine.trace import MAX_TRACE_BYTES
from specviz.methods import METHODS
from specviz.methods.base import COMMON_PARAMS
from specviz.models.hub import CURATED_PAIRS, EMBEDDED
from specviz.views import page_style, render

CONCURRENCY = int(os.environ.get("SPECVIZ_CONCURRENCY", "4"))  # handlers at once of events that need no engine
ENGINE_EVENTS = 80  # handlers of engine events admitted at once: they wait in specviz.app.admission's queue (64 places)
GRADIO_QUEUE = 256  # Gradio's own queue (requests beyond these wait for a handler thread)
PREWARM_ENV = "SPECVIZ_PREWARM"  # 0: no background measurement of the bundled examples after start-up


STEP_KEYS_JS = """
  document.addEventListener("keydown", (e) => {
    const view = document.querySelector("#step-explainer");
    if (!view || !view.offsetParent || ["INPUT", "TEXTAREA", "SELECT"].includes(e.target.tagName)) return;
    if (e.key === "ArrowRight") document.querySelector("#step-next")?.click();
    if (e.key === "ArrowLeft") document.querySelector("#step-prev")?.click();
  });
"""
# run once when the page loads: arrow keys in Step through, the replay of measured runs, accessibility fixes
PAGE_JS = page_style.page_js(
    "() => {" + STEP_KEYS_JS + "}",
    "() => {" + render.REPLAY_JS + "}",
    "() => {" + render.COPY_JS + "}",
    page_style.A11Y_JS,
)


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="specviz: see speculative decoding", analytics_enabled=False) as demo:
        gr.Markdown(
            "# specviz\nSee speculative decoding token by token: what was drafted, what the target kept, "
            "and what it cost. Every method here is lossless: greedy output equals the target's own."
        )
        trace_state = gr.State("")
        with gr.Row():
            target = gr.Textbox(
                value=EMBEDDED, label="target model (embedded, a local path or a Hugging Face id)", scale=2
            )
            draft = gr.Textbox(
                value="", label="drafter (empty: the pair's own; must share the target's tokenizer)", scale=2
            )
        gr.Markdown(
            "Curated public pairs (need the network): "
            + "; ".join(f"`{t}` + `{d}` ({w})" for t, d, w in CURATED_PAIRS),
            elem_classes="sv-note",
        )
        with gr.Tabs():
            with gr.Tab("Playground", id="playground"):
                with gr.Row():
                    with gr.Column(scale=2):
                        prompt = gr.Textbox(value=EXAMPLES[0], lines=5, label="prompt", elem_id="prompt")
                        gr.Examples(EXAMPLES[:8], inputs=prompt, label="example prompts")
                        with gr.Row():
                            run_btn = gr.Button("Run", variant="primary", elem_id="run")
                            again_btn = gr.Button("Measure again", elem_id="measure-again")
                            stop_btn = gr.Button("Stop", elem_id="stop")
                    with gr.Column(scale=1):
                        method = gr.Dropdown(SINGLE, value="draft_model", label="method", elem_id="method")
                        method_doc = gr.Markdown()
                        specific = [
                            control(p, visible=p.name in {q.name for q in METHODS["draft_model"].PARAMS})
                            for p in PARAMS.values()
                        ]
                        with gr.Accordion("sampling and length", open=False):
                            common = [control(p, visible=True) for p in COMMON_PARAMS]
                        with gr.Accordion("Mirror-SD modeled costs (ms)", open=False, visible=False) as mirror_box:
                            costs = [
                                gr.Number(value, label=label)
                                for value, label in zip(
                                    MIRROR_COSTS,
                                    ("target layer (ms)", "drafter step (ms)", "transfer of candidates (ms)"),
                                )
                            ]
                gr.HTML(render.legend_html())
                tokens = gr.HTML(elem_id="tokens")
                timeline = gr.Plot(label="token timeline (measured)")
                with gr.Row():
                    hist = gr.Plot(label="tokens per round")
                    pos = gr.Plot(label="acceptance by position")
                stats = gr.Dataframe(
                    label="against the autoregressive run of the same prompt", interactive=False, elem_id="stats"
                )
                mirror_plot = gr.Plot(label="Mirror-SD: measured vs MODELED")
                files = gr.File(
                    label="download this run's trace (JSON, CSV, Chrome trace for Perfetto)", file_count="multiple"
                )
            with gr.Tab("Compare", id="compare"):
                with gr.Row():
                    methods = gr.CheckboxGroup(
                        SINGLE, value=["draft_model", "kangaroo"], label="methods (autoregressive is always run)"
                    )
                    with gr.Column():
                        source = gr.Radio(
                            ["bundled", "pasted", "uploaded file"],
                            value="bundled",
                            label="prompts",
                            elem_id="compare-source",
                        )
                        n_prompts = gr.Slider(
                            1, 16, value=3, step=1, label="prompts: the first N bundled, or N per task of a file"
                        )
                        c_tokens = gr.Slider(8, 256, value=48, step=8, label="max new tokens")
                        c_repeats = gr.Slider(1, 5, value=1, step=1, label="repeats (median)")
                pasted = gr.Textbox(lines=3, label="pasted prompts, one per line (\\n for a newline)")
                with gr.Row():
                    c_file = gr.File(
                        label="a question file (Spec-Bench's JSONL, at most 2 MB)",
                        file_types=[".jsonl"],
                        elem_id="compare-file",
                    )
                    with gr.Column():
                        c_tasks = gr.Dropdown([], multiselect=True, label="its tasks to run", elem_id="compare-tasks")
                        c_found = gr.Markdown(elem_id="compare-found")
                compare_btn = gr.Button("Compare", variant="primary", elem_id="compare-run")
                c_status = gr.HTML(elem_id="compare-status")
                c_table = gr.Dataframe(label="median per method (measured)", interactive=False, elem_id="compare-table")
                with gr.Row():
                    c_speed, c_tau = gr.Plot(), gr.Plot()
                with gr.Row():
                    c_tps, c_equal = gr.Plot(), gr.Plot()
                c_by_task = gr.Dataframe(
                    label="by task: median speedup, tau, alpha (MT-bench's sub-categories as one task)",
                    interactive=False,
                    elem_id="compare-by-task",
                )
            with gr.Tab("Batch", id="batch"):
                with gr.Row():
                    b_size = gr.Slider(1, 32, value=4, step=1, label="batch size")
                    b_prompts = gr.Slider(1, 16, value=4, step=1, label="prompts")
                    b_tokens = gr.Slider(4, 128, value=24, step=4, label="max new tokens")
                    b_gamma = gr.Slider(1, 8, value=3, step=1, label="gamma")
                    b_naive = gr.Checkbox(
                        value=True, label="also run the NAIVE mode (broken on purpose: positions not realigned)"
                    )
                batch_btn = gr.Button("Run batch", variant="primary", elem_id="batch-run")
                b_status = gr.HTML(elem_id="batch-status")
                b_table = gr.Dataframe(
                    label="throughput, time realigning, equivalence (measured)",
                    interactive=False,
                    elem_id="batch-table",
                )
                b_eq_timeline = gr.Plot(label="EQSPEC rows")
                b_ex_timeline = gr.Plot(label="EXSPEC rows")
                b_tput = gr.Plot(label="throughput vs batch size")
                b_rows = gr.Dataframe(
                    label="per-row equivalence with single-sequence autoregressive", interactive=False
                )
            with gr.Tab("Step through", id="step"):
                gr.Markdown("Replay the last Playground run (or a loaded trace) one verification round at a time.")
                with gr.Row():
                    step_prev = gr.Button("< previous round", elem_id="step-prev", scale=0)
                    step_slider = gr.Slider(0, 200, value=0, step=1, label="round", elem_id="step-slider")
                    step_next = gr.Button("next round >", elem_id="step-next", scale=0)
                step_html = gr.HTML(elem_id="step-explainer")
                with gr.Accordion("load a saved trace", open=False):
                    upload = gr.File(
                        label=f"trace JSON (at most {MAX_TRACE_BYTES // 1_000_000} MB)", file_types=[".json"]
                    )
                    load_btn = gr.Button("Load trace")
                    loaded_html = gr.HTML()
                    loaded_plot = gr.Plot()
            with gr.Tab("Exactness", id="exactness-tab"):
                with gr.Column(elem_id="exactness"):
                    gr.Markdown(
                        "Speculative sampling claims to leave the output distribution exactly the target's. "
                        "Test it: draw N continuations of the first tokens with a method and N with plain "
                        "autoregressive sampling, and compare both with the target's EXACT probabilities (its top "
                        "tokens at each step enumerated, the rest binned as 'other'): total-variation distance and "
                        "a chi-square test. The BROKEN variant draws a rejected token from p instead of the residual "
                        "max(0, p - q): the same test exposes its bias."
                    )
                    with gr.Row():
                        e_prompt = gr.Textbox(value="def f(x):", lines=2, label="prompt", scale=2)
                        e_method = gr.Dropdown(
                            [m for m in SINGLE if m != "autoregressive" and not METHODS[m].peer],
                            value="draft_model",
                            label="method",
                        )
                    with gr.Row():
                        e_temp = gr.Number(1.0, label="temperature (> 0)")
                        e_topk = gr.Number(0, label="top_k (0 = off)", precision=0)
                        e_topp = gr.Number(1.0, label="top_p")
                        e_n = gr.Slider(100, 5000, value=5000, step=100, label="N samples per sampler", elem_id="e-n")
                        e_tokens = gr.Slider(1, 3, value=2, step=1, label="tokens per sample")
                        e_seed = gr.Number(0, label="seed", precision=0)
                        e_broken = gr.Checkbox(True, label="also run the BROKEN-on-purpose rule")
                        e_params = gr.Textbox(
                            "{}",
                            label='method parameters (JSON), e.g. {"lookup": 2} for the lookup-or-drafter hybrid',
                            elem_id="e-params",
                        )
                    exact_btn = gr.Button("Test exactness", variant="primary", elem_id="exactness-run")
                    e_status = gr.HTML(elem_id="exactness-status")
                    e_table = gr.Dataframe(
                        label="against the target's exact law", interactive=False, elem_id="exactness-table"
                    )
                    e_plot = gr.Plot(label="empirical shares vs the exact law", elem_id="exactness-plot")
            with gr.Tab("Race", id="race-tab"):
                with gr.Column(elem_id="race"):
                    gr.Markdown(
                        "The same prompt by autoregressive decoding and by a speculative method, side by side: "
                        "tokens appear at the pace each run really had, with both clocks and the running speedup."
                    )
                    with gr.Row():
                        r_prompt = gr.Textbox(value=EXAMPLES[1], lines=3, label="prompt", scale=3)
                        with gr.Column(scale=1):
                            r_method = gr.Dropdown(
                                [m for m in SINGLE if m != "autoregressive"], value="draft_model", label="method"
                            )
                            r_tokens = gr.Slider(8, 256, value=RACE_DEFAULT_TOKENS, step=8, label="max new tokens")
                    with gr.Row():
                        race_btn = gr.Button("Race", variant="primary", elem_id="race-run")
                        race_again = gr.Button("Measure again", elem_id="race-again")
                    race_out = gr.HTML(elem_id="race-html")
            with gr.Tab("Explorer", id="explorer-tab"):
                with gr.Column(elem_id="explorer"):
                    gr.Markdown(
                        "The expected speedup of speculative decoding (Leviathan et al. 2023) for an i.i.d. "
                        "acceptance rate alpha, gamma drafts per round, a draft step costing c target steps and a "
                        "verification costing v target steps: (1 - alpha^(gamma+1)) / ((1 - alpha)(gamma c + v)). "
                        "The curve is MODELED; every Playground run of this session appears as a MEASURED point "
                        "(at its mean drafts per round), so the gap between model and measurement shows. A token "
                        "tree's runs are left off this chain curve (its nodes are not gamma): they appear on the tau "
                        "figure below."
                    )
                    with gr.Row():
                        x_alpha = gr.Slider(
                            0.0, 1.0, value=0.8, step=0.01, label="alpha (acceptance rate)", elem_id="x-alpha"
                        )
                        x_gamma = gr.Slider(1, 16, value=4, step=1, label="gamma (drafts per round)", elem_id="x-gamma")
                        x_c = gr.Slider(
                            0.0, 1.0, value=0.15, step=0.01, label="c (draft step / target step)", elem_id="x-c"
                        )
                        x_v = gr.Slider(1.0, 3.0, value=1.2, step=0.05, label="v (verify / target step)", elem_id="x-v")
                    x_plot = gr.Plot(label="expected speedup vs gamma", elem_id="explorer-plot")
                    gr.Markdown(
                        "A token tree drafts several candidates per position and verifies them all in one forward. "
                        "Below: the expected tokens per round (tau) of a chain of gamma drafts against the best tree "
                        "of as many nodes, if the target takes the drafter's r-th choice with probability "
                        "alpha (1 - alpha)^(r-1). What the tree costs is the wider verification (cheap on a GPU, "
                        "about linear in the nodes on a CPU) and one drafter forward per level, however wide."
                    )
                    with gr.Row():
                        x_branch = gr.Slider(1, 8, value=4, step=1, label="tree: children per node", elem_id="x-branch")
                        x_depth = gr.Slider(1, 12, value=6, step=1, label="tree: depth limit", elem_id="x-depth")
                    x_tau = gr.Plot(label="expected tokens per round: chain vs tree", elem_id="explorer-tau")
                    x_points = gr.State([])
            with gr.Tab("Observe", id="observe-tab"):
                observe_tab.build(trace_state)
            with gr.Tab("Learn", id="learn"):
                gr.Markdown(learn_markdown())

        method.change(method_changed, method, [method_doc] + specific + [mirror_box], api_visibility="private")
        demo.load(method_changed, method, [method_doc] + specific + [mirror_box], api_visibility="private")
        # Every event that needs the engine is admitted by Gradio at once (ENGINE_EVENTS) and waits in
        # specviz.app.admission's queue, which answers with its place and estimated wait.
        engine_events = dict(concurrency_limit=ENGINE_EVENTS, concurrency_id="engine")
        # every engine event shows its own answer (its place, "running", then when it was measured): no spinner,
        # progress bar or timer animates in the browser beside a timed run
        replayed = dict(engine_events, show_progress="hidden")
        playground_io = (
            [prompt, target, draft, method] + common + specific + costs,
            [tokens, timeline, hist, pos, stats, mirror_plot, trace_state, files],
        )
        run_event = run_btn.click(
            friendly(playground_run),
            *playground_io,
            api_visibility="undocumented",
            api_name="playground_stream",
            **replayed,
        )
        again_event = again_btn.click(
            friendly(playground_measure_again),
            *playground_io,
            api_visibility="undocumented",
            api_name="playground_measure_again",
            **replayed,
        )
        stop_btn.click(None, None, None, cancels=[run_event, again_event])
        exact_btn.click(
            friendly(exactness_lab),
            [e_prompt, e_method, e_temp, e_topk, e_topp, e_n, e_tokens, e_seed, e_broken, target, draft, e_params],
            [e_plot, e_table, e_status],
            api_name="exactness",
            **replayed,
        )
        race_io = ([r_prompt, r_method, r_tokens, target, draft], race_out)
        race_btn.click(friendly(race), *race_io, api_visibility="undocumented", api_name="race", **replayed)
        race_again.click(
            friendly(race_measure_again),
            *race_io,
            api_visibility="undocumented",
            api_name="race_measure_again",
            **replayed,
        )
        explorer_inputs = [x_alpha, x_gamma, x_c, x_v, x_points]
        for event in (run_event, again_event):
            event.then(
                add_explorer_point, [trace_state] + explorer_inputs, [x_points, x_plot], api_visibility="private"
            )
        for slider in (x_alpha, x_gamma, x_c, x_v):
            slider.change(explorer_figure, explorer_inputs, x_plot, api_visibility="private")
        demo.load(explorer_figure, explorer_inputs, x_plot, api_visibility="private")
        tau_inputs = [x_alpha, x_branch, x_depth, x_points]
        for tau_input in (x_alpha, x_branch, x_depth, x_points):
            tau_input.change(tau_figure, tau_inputs, x_tau, api_visibility="private")
        demo.load(tau_figure, tau_inputs, x_tau, api_visibility="private")
        trace_state.change(step_view, [trace_state, step_slider], [step_html, step_slider], api_visibility="private")
        step_slider.change(
            friendly(step_view), [trace_state, step_slider], [step_html, step_slider], api_visibility="private"
        )
        step_prev.click(
            lambda t, s: step_move(t, s, -1), [trace_state, step_slider], step_slider, api_visibility="private"
        )
        step_next.click(
            lambda t, s: step_move(t, s, 1), [trace_state, step_slider], step_slider, api_visibility="private"
        )
        compare_btn.click(
            friendly(compare_methods),
            [methods, source, pasted, n_prompts, c_tokens, c_repeats, target, draft, c_file, c_tasks],
            [c_table, c_speed, c_tau, c_tps, c_equal, c_by_task, c_status],
            api_name="compare",
            **replayed,
        )
        c_file.change(friendly(question_tasks), c_file, [c_tasks, c_found], api_visibility="private")
        c_file.upload(lambda: gr.update(value="uploaded file"), None, source, api_visibility="private")
        batch_btn.click(
            friendly(batch_compare),
            [b_size, b_prompts, b_tokens, b_gamma, b_naive, target, draft],
            [b_table, b_eq_timeline, b_ex_timeline, b_tput, b_rows, b_status],
            api_name="batch",
            **replayed,
        )
        load_btn.click(
            friendly(load_trace),
            upload,
            [loaded_html, loaded_plot, trace_state],
            api_visibility="private",
            api_name="upload_trace",
        )
        # plain API endpoints (gradio_client): strings in, strings out
        api_in = [gr.Textbox(visible=False) for _ in range(5)]
        api_out = [gr.Textbox(visible=False) for _ in range(2)]
        gr.Button(visible=False).click(
            friendly(playground_api), api_in, api_out, api_name="playground", **engine_events
        )
        gr.Button(visible=False).click(friendly(batch_api), api_in, api_out, api_name="batch_run", **engine_events)
        gr.Button(visible=False).click(friendly(load_trace_api), api_in[:1], api_out[:1], api_name="load_trace")
        gr.Button(visible=False).click(health, None, api_out[:1], api_name="health", queue=False)
    return demo


def warm_engines(target: str = EMBEDDED) -> str:
    """Every engine worker loads the pair before the server answers (the first request is fast, missing assets
    fail at start-up) and makes its cold starts in short untimed runs (`specviz.app.jobs.warm`)."""
    svc = service()
    return "; ".join(svc.pool.call(w, "warm", {"target": target}) for w in range(svc.pool.size))


def prewarm_jobs() -> list[Job]:
    """The bundled examples as the page sends them with its default settings (Playground, and Race's default)."""
    page = {"heal_prompt": UI_DEFAULTS["heal_prompt"]}
    jobs = [
        app_requests.traced_job("playground", "draft_model", EMBEDDED, "", p, page, app_requests.WARMUP_PRIORITY)
        for p in EXAMPLES[:8]
    ]
    jobs.append(
        app_requests.traced_job(
            "playground",
            "draft_model",
            EMBEDDED,
            "",
            EXAMPLES[1],
            {**page, "max_new_tokens": RACE_DEFAULT_TOKENS},
            app_requests.WARMUP_PRIORITY,
        )
    )
    return jobs


WARM_TRIES = 3  # measurements of one bundled example the start-up makes before it leaves it to the visitors


def prewarm() -> None:
    """Measure the bundled examples once, one at a time, behind every visitor's run (their cache entries), each
    only once the server has been idle for a while (`Service.wait_idle`: no request, no run, quiet CPUs). A run
    the cache did not keep (disturbed after all, or a cold start) is measured again when the server is idle
    again, WARM_TRIES times at most; after `serving.IDLE_PATIENCE_SECONDS` without a quiet stretch the start-up
    measurement stops: every run would be disturbed, and the visitors' own runs say so."""
    svc = service()
    for job in prewarm_jobs():
        for _ in range(WARM_TRIES):
            if not svc.wait_idle():
                log.warning("start-up measurement stopped: the server was never idle with quiet CPUs")
                return
            if "submitted_at" in job.kwargs:  # queued from now, not from start-up
                job = replace(job, kwargs={**job.kwargs, "submitted_at": time.time()})
            try:
                result, update = svc.call(job)
            except Exception:  # noqa: BLE001 - a warm-up failure only costs a cache entry
                log.warning("warm-up run failed:\n%s", traceback.format_exc())
                break
            if update.served == "cache" or job.cache_key is None or svc.cache is None:
                break
            if job.cache_key in svc.cache:
                rendered(result, job.cache_key, update.measured_at, MIRROR_COSTS)  # drawn too, as the page asks
                break
            log.info("start-up measurement not kept (disturbed or a cold start): measuring it again when idle")


def launch(host: str = "127.0.0.1", port: int = 7860) -> None:
    demo = build_demo()
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=GRADIO_QUEUE)
    if os.environ.get(PREWARM_ENV, "1") != "0":
        threading.Thread(target=prewarm, name="specviz-prewarm", daemon=True).start()
    demo.launch(
        server_name=host,
        server_port=port,
        theme=page_style.theme(),
        css=render.CSS + render.REPLAY_CSS,
        js=PAGE_JS,
        show_error=True,
        ssr_mode=False,
        footer_links=["api"],
        max_file_size=f"{MAX_TRACE_BYTES // 1_000_000}mb",
        max_threads=ENGINE_EVENTS + 2 * CONCURRENCY,
    )
