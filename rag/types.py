"""The small value types retrieval passes around."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import PurePosixPath

SHARED_SCOPE = ""  # the scope of the shared knowledge base; a conversation's uploads carry its id


@dataclass(frozen=True)
class Chunk:
    id: str  # stable within a scope: "<source>#<position>"
    text: str
    source: str  # path relative to the knowledge folder, or the uploaded file's display name
    title: str  # nearest heading, else the document title, else the file name
    position: int  # 0-based order of the chunk within its document
    page: int | None = None  # 1-based PDF page
    tokens: int = 0
    doc_title: str = ""  # the page's or document's own title
    section: str = ""  # the headings above the chunk below the document title, joined by " › "
    anchor: str = ""  # HTML id of the chunk's section, for links to source#anchor
    scope: str = SHARED_SCOPE  # SHARED_SCOPE, or the id of the conversation that uploaded it

    def to_record(self) -> dict:
        """The chunk as JSON-able data, without its source and scope (stored once per document)."""
        record = {"text": self.text, "title": self.title, "position": self.position, "page": self.page,
                  "tokens": self.tokens}
        for name in ("doc_title", "section", "anchor"):
            if getattr(self, name):
                record[name] = getattr(self, name)
        return record

    @classmethod
    def from_record(cls, source: str, record: dict, scope: str = SHARED_SCOPE) -> "Chunk":
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
            doc_title=str(record.get("doc_title", "")),
            section=str(record.get("section", "")),
            anchor=str(record.get("anchor", "")),
            scope=scope,
        )

    def in_scope(self, scope: str) -> "Chunk":
        return self if self.scope == scope else replace(self, scope=scope)

    @property
    def link(self) -> str:
        """``source#anchor`` when the section has an HTML anchor, else the source."""
        return f"{self.source}#{self.anchor}" if self.anchor else self.source

    @property
    def location(self) -> str:
        """Where the chunk is, briefly (the prompt's source attribute): the file, and the PDF page."""
        where = self.source
        if self.page is not None:
            where += f", page {self.page}"
        return where

    @property
    def citation(self) -> str:
        """Where the chunk is, for people: the location, then the page title and the section."""
        title = "" if self.doc_title == PurePosixPath(self.source).stem else self.doc_title
        label = " › ".join(part for part in (title, self.section) if part)
        return f"{self.location} — {label}" if label and label != self.source else self.location


@dataclass(frozen=True)
class ScoredChunk:
    chunk: Chunk
    score: float
