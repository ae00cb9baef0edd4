"""Observe any deployment: read the acceptance records of vLLM, SGLang, llama.cpp, TensorRT-LLM, MLX-VLM and AIPerf
(logs, /metrics, responses) and of specviz's own traces and bench CSVs, under one set of definitions
(specviz/engine/acceptance.py). `python -m specviz.observe FILE...` is the command line; docs/observe.md names
each format's source. No UI here: the page's tab builds on these readers."""
