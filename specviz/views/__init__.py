"""The views floor: turn numbers and traces into figures and HTML.

`plots` (plotly), `render` (HTML of traces, escaped), `report` (`bench --html`), `page_style` (theme,
accessibility), `headlines` (the Learn tab's measured column).

Rule: imports analysis and below; no gradio handlers, no model runs.
"""
