"""Timestamps for Chainlit's messages and steps without blocking the event loop.

Chainlit starts every ``cl.Message(...)`` and ``cl.Step(...)`` with ``time.sleep(0.001)`` so that no two
share a ``createdAt`` (a thread's messages are ordered by it). The sleep blocks the event loop, and
with it every chat on the server, for a millisecond or more each time (several on a loaded machine);
a turn makes three before its question reaches the model. ``install()`` removes that sleep and makes
the timestamps strictly increasing instead, which keeps the order the sleep was there for.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
import types
from datetime import datetime, timedelta, timezone

log = logging.getLogger(__name__)

_lock = threading.Lock()
_last: datetime | None = None


def increasing_utc_now() -> str:
    """Chainlit's ``utc_now()`` format (naive UTC, ISO 8601, ``Z``), never equal to or before the last one
    returned, and always with microseconds so that the strings sort in time order."""
    global _last
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with _lock:
        if _last is not None and now <= _last:
            now = _last + timedelta(microseconds=1)
        _last = now
    return now.isoformat(timespec="microseconds") + "Z"


def _time_without_sleep() -> types.SimpleNamespace:
    names = {name: getattr(time, name) for name in dir(time) if not name.startswith("_")}
    return types.SimpleNamespace(**{**names, "sleep": lambda seconds: None})


def install() -> bool:
    """Patch the Chainlit modules that sleep; False (and a warning) if Chainlit no longer looks as expected."""
    modules = [importlib.import_module(name) for name in ("chainlit.message", "chainlit.step", "chainlit.emitter")]
    if not all(callable(getattr(module, "utc_now", None)) for module in modules) or not all(
        getattr(module, "time", None) is time for module in modules[:2]
    ):
        log.warning("Chainlit's message and step modules changed; their 1 ms sleeps are left in place")
        return False
    without_sleep = _time_without_sleep()
    for module in modules[:2]:
        module.time = without_sleep
    for module in modules:
        module.utc_now = increasing_utc_now
    return True
