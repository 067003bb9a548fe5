"""What a conversation keeps beyond what Chainlit's own thread storage keeps.

Chainlit stores every message (a step) with its ``metadata`` as soon as it is sent: each answer's
history form (citations replaced by source names) and its metrics go there, and a resumed thread gets
them back from its steps (:func:`history_from_steps`, :func:`metrics_from_steps`). What Chainlit does not
keep is stored here, one small JSON file per conversation: its uploaded documents' chunks and its chat
settings (Chainlit writes those to the thread only when the browser disconnects, so a server stopped
first would lose them). Files are written atomically, off the event loop (``asave``/``aload``), and
deleted with their thread (:func:`assistant.storage.ThreadDataLayer` calls ``delete``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Iterable

from routing.metrics import SessionMetrics, TurnMetrics

log = logging.getLogger(__name__)

_THREAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
HISTORY_KEY = "history"  # an answer's text as the next turn's history
METRICS_KEY = "turn_metrics"  # an answer's TurnMetrics.to_dict()


class ConversationStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._lock = threading.Lock()  # read-modify-write of one file from several worker threads

    def _path(self, thread_id: str) -> Path:
        if not _THREAD_ID.match(thread_id or ""):
            raise ValueError(f"not a thread id: {thread_id!r}")
        return self.folder / f"{thread_id}.json"

    def load(self, thread_id: str) -> dict:
        path = self._path(thread_id)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("conversation state for %s unreadable (%s); starting empty", thread_id, exc)
            return {}

    def save(self, thread_id: str, state: dict) -> None:
        path = self._path(thread_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".conv-", suffix=".json")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, path)

    def update(self, thread_id: str, **fields) -> dict:
        with self._lock:
            state = self.load(thread_id)
            state.update(fields)
            self.save(thread_id, state)
            return state

    def delete(self, thread_id: str) -> None:
        with self._lock:
            try:
                self._path(thread_id).unlink()
            except (FileNotFoundError, ValueError):
                pass

    # Off the event loop: file I/O in a worker thread.
    async def aload(self, thread_id: str) -> dict:
        return await asyncio.to_thread(self.load, thread_id)

    async def aupdate(self, thread_id: str, **fields) -> dict:
        return await asyncio.to_thread(self.update, thread_id, **fields)

    async def adelete(self, thread_id: str) -> None:
        await asyncio.to_thread(self.delete, thread_id)


def _metadata(step: dict) -> dict:
    raw = step.get("metadata") or {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return {}
    return raw if isinstance(raw, dict) else {}


def _ordered(steps: Iterable[dict]) -> list[dict]:
    return sorted(steps or (), key=lambda step: str(step.get("createdAt") or ""))


def history_from_steps(steps: Iterable[dict]) -> list[dict]:
    """The conversation's history from a thread's stored steps: each question with the history form of its
    answer (from the answer's metadata). Messages that got no answer (``/docs``, uploads) are left out."""
    history: list[dict] = []
    question: str | None = None
    for step in _ordered(steps):
        if step.get("type") == "user_message":
            question = (step.get("output") or "").strip() or None
        elif step.get("type") == "assistant_message":
            answer = _metadata(step).get(HISTORY_KEY)
            if isinstance(answer, str) and question is not None:
                history += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                question = None
    return history


def metrics_from_steps(steps: Iterable[dict]) -> SessionMetrics:
    """The conversation's measured turns, in order, from its answers' metadata."""
    session = SessionMetrics()
    for step in _ordered(steps):
        data = _metadata(step).get(METRICS_KEY)
        if step.get("type") == "assistant_message" and isinstance(data, dict):
            session.add(TurnMetrics.from_dict(data))
    return session
