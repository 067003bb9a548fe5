"""What a conversation keeps beyond its messages: its chat settings, its uploaded documents' chunks and
its metrics. One JSON file per conversation, written atomically, so a resumed thread gets them back."""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_THREAD_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class ConversationStore:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

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
        state = self.load(thread_id)
        state.update(fields)
        self.save(thread_id, state)
        return state

    def delete(self, thread_id: str) -> None:
        try:
            self._path(thread_id).unlink()
        except (FileNotFoundError, ValueError):
            pass
