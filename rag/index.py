"""An immutable searchable set of chunks, and merging results from several of them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol, Sequence

from rag.bm25 import BACKENDS, DEFAULT_BACKEND, BM25Index, analyze, build_index
from rag.types import Chunk, ScoredChunk


def check_index_options(backend: str, chunk_tokens: int, chunk_overlap: int) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown BM25 backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if not 0 <= chunk_overlap < chunk_tokens:
        raise ValueError("chunk_overlap must be at least 0 and smaller than chunk_tokens")


def index_terms(chunk: Chunk) -> list[str]:
    """Terms a chunk is indexed under: its text, plus its heading when the text does not contain it."""
    text = chunk.text if not chunk.title or chunk.title in chunk.text else f"{chunk.title}\n{chunk.text}"
    return analyze(text)


@dataclass(frozen=True)
class ChunkIndex:
    """Chunks and their BM25 index. Never modified: a refresh builds a new one and swaps it in."""

    chunks: tuple[Chunk, ...]
    bm25: BM25Index

    @classmethod
    def build(cls, chunks: Sequence[Chunk], terms: Sequence[list[str]] | None = None, backend: str = DEFAULT_BACKEND):
        if terms is None:
            terms = [index_terms(chunk) for chunk in chunks]
        return cls(tuple(chunks), build_index(list(terms), backend))

    @classmethod
    def empty(cls, backend: str = DEFAULT_BACKEND) -> "ChunkIndex":
        return cls((), build_index([], backend))

    def search(self, query: str, k: int) -> list[ScoredChunk]:
        if not self.chunks or k <= 0:
            return []
        return [ScoredChunk(self.chunks[i], score) for i, score in self.bm25.top_k(analyze(query), k)]


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[ScoredChunk]: ...


RRF_K = 60


def search_many(retrievers: Sequence[Retriever], query: str, k: int) -> list[ScoredChunk]:
    """The best ``k`` chunks over several retrievers (e.g. a conversation's uploads and the shared knowledge base).

    BM25 scores from two indexes are not comparable: idf and length normalisation come from each
    index's own collection (a ten-chunk upload has idf values of at most log(20), a large knowledge base
    several times that), so sorting raw scores would always favour the larger index. Results are
    therefore merged by reciprocal rank fusion, ``sum 1 / (60 + rank)``, which only uses each
    index's own ranking; ties go to the retriever listed first (pass the conversation's documents
    first). Each returned chunk keeps its raw BM25 score from its own index, so a minimum-score check
    still means "matched the query's terms this well"; the list is in fused order, not score order.
    """
    return fuse_rankings([r.search(query, k) if r is not None else [] for r in retrievers], k)


def fuse_rankings(rankings: Sequence[Sequence[ScoredChunk]], k: int) -> list[ScoredChunk]:
    """Reciprocal rank fusion of result lists (see :func:`search_many`); ties go to the earlier list."""
    fused: dict[tuple[int, str], float] = {}
    found: dict[tuple[int, str], ScoredChunk] = {}
    for order, results in enumerate(rankings):
        for rank, scored in enumerate(results, start=1):
            key = (order, scored.chunk.id)
            fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank)
            found.setdefault(key, scored)
    ranked = sorted(fused, key=lambda key: (-fused[key], key[0]))
    return [found[key] for key in ranked[:k]]


async def asearch_many(retrievers: Sequence[Retriever], query: str, k: int) -> list[ScoredChunk]:
    """:func:`search_many` in a worker thread, so the event loop keeps serving while BM25 scores."""
    return await asyncio.to_thread(search_many, list(retrievers), query, k)
