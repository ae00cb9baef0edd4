"""Loaded models kept for the next request, bounded by count and parameter memory."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from typing import Any, Callable

CACHE_MODELS_ENV = "SPECVIZ_CACHE_MODELS"  # most models held at once (default 4)
CACHE_BYTES_ENV = "SPECVIZ_CACHE_GB"  # most parameter memory held, GiB (default 8)


# ----------------------------------------------------------------------------- cache
class ModelCache:
    """LRU of loaded objects, bounded by count and bytes, with one load per key.

    Concurrent requests for the same key wait for the single load in progress. Eviction only drops
    the cache's reference: a run that already holds a model keeps it alive until it finishes, so a
    model is never torn down under a running request.
    """

    def __init__(self, max_items: int = 4, max_bytes: int = 8 << 30):
        self.max_items, self.max_bytes = max_items, max_bytes
        self._items: OrderedDict[tuple, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple, threading.Lock] = {}
        self.loads = 0  # how many loads really ran (tests check there are no duplicates)

    def get(self, key: tuple, load: Callable[[], tuple[Any, int]]) -> Any:
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key][0]
                key_lock = self._loading.setdefault(key, threading.Lock())
            with key_lock:
                with self._lock:
                    if key in self._items:  # another thread loaded it while we waited
                        continue
                value, size = load()  # errors propagate; nothing is cached
                with self._lock:
                    self.loads += 1
                    self._items[key] = (value, size)
                    self._evict(keep=key)
                    self._loading.pop(key, None)
                return value

    def _evict(self, keep: tuple) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_items or self.nbytes > self.max_bytes):
            oldest = next(iter(self._items))
            if oldest == keep:
                break
            del self._items[oldest]

    @property
    def nbytes(self) -> int:
        return sum(size for _, size in self._items.values())

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


CACHE = ModelCache(
    max_items=int(os.environ.get(CACHE_MODELS_ENV, "4")),
    max_bytes=int(float(os.environ.get(CACHE_BYTES_ENV, "8")) * (1 << 30)),
)
