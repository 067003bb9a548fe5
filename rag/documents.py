"""One conversation's uploaded documents: a scope of the one index, restorable from a JSON-able state.

A DocumentSet indexes its documents in a :class:`rag.index.Collection` under its conversation's scope;
``search`` then covers the shared knowledge base and these uploads together, on one set of collection
statistics, so an upload that holds the answer scores as high as the same text would in the shared
folder. Another conversation's DocumentSet on the same collection never sees these documents.
"""

from __future__ import annotations

import asyncio
import re
import threading
import unicodedata
import uuid
from dataclasses import dataclass
from pathlib import Path

from rag.bm25 import DEFAULT_BACKEND
from rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from rag.index import Collection, check_index_options
from rag.knowledge import sha256_bytes
from rag.loaders import LoadError, document_chunks, load_bytes
from rag.types import SHARED_SCOPE, Chunk, ScoredChunk

STATE_VERSION = 1


class DuplicateDocument(LoadError):
    """The same content (by sha256) is already in this conversation."""


@dataclass(frozen=True)
class AddedDocument:
    name: str  # display name, unique within the set; used as the chunks' source
    sha256: str
    pages: int | None
    chunks: int
    tokens: int


def clean_display_name(name: str) -> str:
    """A display name only: the last path component, without control characters, never empty."""
    name = re.split(r"[\\/]", str(name or ""))[-1]
    name = "".join(char for char in name if unicodedata.category(char)[0] != "C").strip()
    return name[:200] or "document"


class DocumentSet:
    """Uploaded documents of one conversation. Safe to search from several threads while adding.

    ``collection``: the index shared with the knowledge base (``KnowledgeBase.collection``); without
    one, the set gets a private empty collection (its search then sees only its own documents).
    ``scope``: the conversation id; a fresh unique id when not given.
    """

    def __init__(
        self,
        *,
        backend: str = DEFAULT_BACKEND,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_overlap: int = DEFAULT_OVERLAP,
        collection: Collection | None = None,
        scope: str | None = None,
    ):
        check_index_options(backend, chunk_tokens, chunk_overlap)
        if scope == SHARED_SCOPE:
            raise ValueError("a conversation's documents need a scope of their own (the conversation id)")
        self.backend = backend
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.collection = collection if collection is not None else Collection()
        self.scope = scope or f"conversation-{uuid.uuid4().hex}"
        self._documents: dict[str, tuple[AddedDocument, list[Chunk]]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._documents)

    def documents(self) -> list[AddedDocument]:
        return [added for added, _ in self._documents.values()]

    def _unique_name(self, name: str) -> str:
        if name not in self._documents:
            return name
        path = Path(name)
        number = 2
        while f"{path.stem} ({number}){path.suffix}" in self._documents:
            number += 1
        return f"{path.stem} ({number}){path.suffix}"

    def add_file(self, path: str | Path, display_name: str | None = None) -> AddedDocument:
        """Read the file at ``path`` (a server-side path); ``display_name`` only names it and gives its type."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise LoadError(f"{clean_display_name(display_name or path.name)} could not be read ({exc.strerror or exc}).") from None
        return self.add_bytes(data, display_name or path.name)

    def add_bytes(self, data: bytes, display_name: str) -> AddedDocument:
        name = clean_display_name(display_name)
        digest = sha256_bytes(data)
        self._refuse_duplicate(name, digest)
        document = load_bytes(data, name)
        with self._lock:
            self._refuse_duplicate(name, digest)
            name = self._unique_name(name)
            chunks = document_chunks(document, name, chunk_tokens=self.chunk_tokens, overlap=self.chunk_overlap)
            added = AddedDocument(
                name=name,
                sha256=digest,
                pages=document.pages,
                chunks=len(chunks),
                tokens=sum(chunk.tokens for chunk in chunks),
            )
            self._documents[name] = (added, chunks)
            self._rebuild()
        return added

    def _refuse_duplicate(self, name: str, digest: str) -> None:
        for added, _ in list(self._documents.values()):
            if added.sha256 == digest:
                raise DuplicateDocument(f"{name} is already in this conversation (as {added.name}).")

    def remove(self, name: str) -> bool:
        with self._lock:
            if self._documents.pop(name, None) is None:
                return False
            self._rebuild()
            return True

    def _rebuild(self) -> None:
        chunks = [chunk for _, document_chunks in self._documents.values() for chunk in document_chunks]
        self.collection.set_scope(self.scope, chunks)

    def search(self, query: str, k: int = 5) -> list[ScoredChunk]:
        """The best chunks of the shared knowledge and of this conversation's uploads, on the same scale."""
        return self.collection.search(query, k, self.scope)

    def close(self) -> None:
        """Take this conversation's documents out of the collection (they stay in :meth:`to_state`)."""
        self.collection.set_scope(self.scope, [])

    async def asearch(self, query: str, k: int = 5) -> list[ScoredChunk]:
        return await asyncio.to_thread(self.search, query, k)

    # --- persistence -------------------------------------------------------------------------

    def to_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "chunk_tokens": self.chunk_tokens,
            "chunk_overlap": self.chunk_overlap,
            "documents": [
                {
                    "name": added.name,
                    "sha256": added.sha256,
                    "pages": added.pages,
                    "chunks": [chunk.to_record() for chunk in chunks],
                }
                for added, chunks in self._documents.values()
            ],
        }

    @classmethod
    def from_state(
        cls,
        state: dict,
        *,
        backend: str = DEFAULT_BACKEND,
        collection: Collection | None = None,
        scope: str | None = None,
    ) -> "DocumentSet":
        """Rebuild a set from :meth:`to_state` output. Raises ValueError for a state it cannot read."""
        try:
            if state.get("version") != STATE_VERSION:
                raise ValueError(f"unsupported document state version {state.get('version')!r}")
            documents = cls(
                backend=backend, chunk_tokens=int(state["chunk_tokens"]), chunk_overlap=int(state["chunk_overlap"]),
                collection=collection, scope=scope,
            )
            for entry in state["documents"]:
                name = clean_display_name(entry["name"])
                chunks = [Chunk.from_record(name, item, documents.scope) for item in entry["chunks"]]
                pages = entry.get("pages")
                added = AddedDocument(
                    name=name,
                    sha256=str(entry["sha256"]),
                    pages=None if pages is None else int(pages),
                    chunks=len(chunks),
                    tokens=sum(chunk.tokens for chunk in chunks),
                )
                documents._documents[name] = (added, chunks)
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"document state is incomplete ({type(exc).__name__}: {exc})") from None
        documents._rebuild()
        return documents
