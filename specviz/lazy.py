"""Names a package re-exports, imported on first use (PEP 562), so importing the package stays cheap.

The packages re-export what the flat modules they replaced used to offer (`from specviz.models import load_pair`
still works), without loading torch or transformers for a caller that only wanted a constant.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any, Callable


def exports(package: str, table: dict[str, str]) -> Callable[[str], Any]:
    """The package's `__getattr__`: `table` maps each name to the module that defines it."""

    def __getattr__(name: str) -> Any:
        if name in table:
            return getattr(import_module(table[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
