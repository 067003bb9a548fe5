"""The small value types retrieval passes around."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    id: str  # stable within an index: "<source>#<position>"
    text: str
    source: str  # path relative to the knowledge folder, or the uploaded file's display name
    title: str  # nearest heading, else the document title, else the file name
    position: int  # 0-based order of the chunk within its document
    page: int | None = None  # 1-based PDF page
    tokens: int = 0

    @property
    def location(self) -> str:
        where = self.source
        if self.page is not None:
            where += f", page {self.page}"
        return where


@dataclass(frozen=True)
class ScoredChunk:
    chunk: Chunk
    score: float
