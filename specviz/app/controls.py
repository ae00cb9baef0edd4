"""The page's controls, built from the methods' parameter specs, and how their values become a run's parameters;
`friendly` turns any handler's exception into a clear message instead of a crash.
"""

from __future__ import annotations

import functools
import inspect
import json
import traceback
from typing import Any, Callable

import gradio as gr

from specviz.app.bridge import log
from specviz.bench.prompts import DEFAULT_PROMPTS, load_prompts
from specviz.methods import METHODS
from specviz.methods.base import COMMON_PARAMS, Param
from specviz.shown import shown

SINGLE = [name for name, cls in METHODS.items() if not cls.batch and not cls.peer] + [
    name for name, cls in METHODS.items() if cls.peer
]  # transformers' own rows last
BATCH = [name for name, cls in METHODS.items() if cls.batch]
COMMON = {p.name for p in COMMON_PARAMS}
EXAMPLES = [p["prompt"] for p in load_prompts(DEFAULT_PROMPTS)]


def method_params() -> dict[str, Param]:
    """Every method-specific parameter by name (the first spec seen gives the control's range)."""
    found: dict[str, Param] = {}
    for cls in METHODS.values():
        for p in cls.PARAMS:
            found.setdefault(p.name, p)
    return found


PARAMS = method_params()


# The app's own defaults where they differ from the API's: a visitor's prompt usually ends in a newline,
# and healing it is what makes the embedded target continue the line's block (specviz.engine.healing).
UI_DEFAULTS = {"heal_prompt": True}


def control(p: Param, visible: bool = False) -> gr.components.Component:
    label = f"{p.name}: {p.help}" if p.help else p.name
    if p.kind is bool:
        return gr.Checkbox(value=bool(UI_DEFAULTS.get(p.name, p.default)), label=label, visible=visible)
    if p.choices:
        return gr.Dropdown(choices=list(p.choices), value=p.default, label=label, visible=visible)
    if p.kind is int and not p.optional and p.low is not None and p.high is not None and p.high - p.low <= 64:
        return gr.Slider(p.low, p.high, value=p.default, step=1, label=label, visible=visible)
    return gr.Number(
        value=p.default,
        label=label + (" (empty = default)" if p.optional else ""),
        visible=visible,
        precision=0 if p.kind is int else None,
    )


def friendly(fn: Callable) -> Callable:
    """ValueError -> gr.Error with its message; anything else -> a short gr.Error, logged; never a crash."""

    def convert(exc: Exception) -> gr.Error:
        if isinstance(exc, gr.Error):
            return exc
        if isinstance(exc, ValueError):
            return gr.Error(str(exc))
        if "out of memory" in str(exc).lower():
            return gr.Error("the device ran out of memory: try a smaller model, fewer tokens or a smaller batch")
        log.error("handler %s failed:\n%s", fn.__name__, traceback.format_exc())
        return gr.Error(f"internal error ({type(exc).__name__}): {str(exc)[:200]}")

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - the boundary of the server
                raise convert(exc) from None

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001
            raise convert(exc) from None

    return wrapper


def collect_params(method: str, common: dict[str, Any], specific: dict[str, Any]) -> dict[str, Any]:
    """Only the parameters this method has (the engine validates their values)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {shown(method)}; choose one of: {', '.join(METHODS)}")
    names = {p.name for p in METHODS[method].PARAMS}
    params = {k: v for k, v in common.items() if k in COMMON}
    params.update({k: v for k, v in specific.items() if k in names and v is not None and v != ""})
    return params


def parse_params(params_json: str | dict | None) -> dict[str, Any]:
    if isinstance(params_json, dict):
        return params_json
    if not params_json or not str(params_json).strip():
        return {}
    try:
        value = json.loads(params_json)
    except json.JSONDecodeError as exc:
        raise ValueError(f'params must be a JSON object, e.g. {{"gamma": 4}}: {exc}') from None
    if not isinstance(value, dict):
        raise ValueError('params must be a JSON object, e.g. {"gamma": 4}')
    return value


def method_changed(method: str) -> list:
    names = {p.name: p for p in METHODS[method].PARAMS} if method in METHODS else {}
    doc = (METHODS[method].__doc__ or "").strip().split("\n")[0] if method in METHODS else ""
    updates = [
        gr.update(visible=True, value=names[name].default) if name in names else gr.update(visible=False)
        for name in PARAMS
    ]
    return (
        [gr.update(value=f"**{METHODS[method].title}**. {doc}" if method in METHODS else "")]
        + updates
        + [gr.update(visible=method == "mirror")]
    )
