"""The app floor: the Gradio page and the way from a visitor's click to an engine worker and back.

`ui` (the Blocks and handlers), `requests` (one engine job per tab), `jobs` (what runs in the engine process),
`worker` + `pool` (engine processes), `serving`, `admission`, `trace_cache` (docs/serving.md).

Rule: the top floor; it imports everything below and nothing imports it except `app.py`.
"""
