"""A progress bar for the terminal while the knowledge folder is indexed (a :data:`rag.knowledge.Progress`)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 30


class TerminalProgress:
    """Draws ``Indexing knowledge [#####.....] 120/317 files  name`` on one line of a terminal.

    Not a terminal (a log file, a pipe): one line every 10 % instead of redrawing.
    """

    def __init__(self, label: str = "Indexing knowledge", stream: TextIO | None = None, min_interval_s: float = 0.1):
        self.label = label
        self.stream = stream or sys.stderr
        self.min_interval_s = min_interval_s
        self._last_draw = 0.0
        self._last_tenth = -1
        self._started = time.perf_counter()
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int, source: str) -> None:
        if total <= 0:
            return
        finished = done >= total
        if self.interactive:
            now = time.perf_counter()
            if not finished and now - self._last_draw < self.min_interval_s:
                return
            self._last_draw = now
            filled = BAR_WIDTH * done // total
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            name = source if len(source) <= 40 else "…" + source[-39:]
            self.stream.write(f"\r{self.label} [{bar}] {done}/{total} files  {name:<40}")
            if finished:
                self.stream.write(f"\r{self.label}: {total} files in {time.perf_counter() - self._started:.1f} s"
                                  + " " * (BAR_WIDTH + 40) + "\n")
            self.stream.flush()
            return
        tenth = 10 * done // total
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(f"{self.label}: {done}/{total} files ({100 * done // total} %)\n")
            self.stream.flush()


def progress_message(done: int, total: int, current: str) -> str:
    """The chat's line while the knowledge folder is first indexed."""
    if total <= 0:
        return "Indexing the knowledge folder…"
    percent = 100 * done // total
    return f"Indexing the knowledge folder: {done} of {total} files ({percent} %). Answers will use them once done."
