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

    def to_record(self) -> dict:
        """The chunk as JSON-able data, without its source (stored once per document)."""
        return {"text": self.text, "title": self.title, "position": self.position, "page": self.page,
                "tokens": self.tokens}

    @classmethod
    def from_record(cls, source: str, record: dict) -> "Chunk":
        position = int(record["position"])
        page = record.get("page")
        return cls(
            id=f"{source}#{position}",
            text=str(record["text"]),
            source=source,
            title=str(record["title"]),
            position=position,
            page=None if page is None else int(page),
            tokens=int(record.get("tokens", 0)),
        )

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
