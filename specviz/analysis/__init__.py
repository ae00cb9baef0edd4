"""The analysis floor: turn traces into numbers.

`metrics` (tau, alpha, c, speedup; definitions beside the code), `divergence` (tie or bug), `exactness` + `stats`
(the sampling checks).

Rule: imports the floors below (api, methods, models, engine, speedup); no plotting, no gradio.
"""
