"""One BM25 index for the shared knowledge base and every conversation's uploads, with title and section fields.

A :class:`Collection` holds segments: one for the shared knowledge base and one per conversation
(its uploads). Each segment keeps, per field, term-major postings (numpy arrays of chunk numbers and
term frequencies) and the chunks' field lengths. A search in a conversation's scope looks at the
shared segment and that conversation's segment only, and scores both with one set of collection
statistics (chunk count, document frequencies, average field lengths) summed over exactly those two
segments. So an uploaded chunk and a shared chunk with the same words get the same score, and one
conversation's uploads never change another conversation's scores.

Three fields, scored separately with BM25 and added with weights (:class:`Weights`):

- ``body``: the chunk's text;
- ``title``: the page's or document's title;
- ``section``: the section headings above the chunk (below the title),

so a question phrased like a page title or a section heading lifts that chunk more than the same words
in a body would.

BM25 per field is Lucene's: idf ``log(1 + (N - df + 0.5) / (df + 0.5))`` (always positive, so a
one-document conversation still finds its document) and ``tf / (tf + k1 * (1 - b + b * len / avglen))``.
"""

from __future__ import annotations

import asyncio
import math
import threading
from functools import lru_cache
from dataclasses import dataclass, replace
from typing import Protocol, Sequence

import numpy as np

from rag.bm25 import BACKENDS, DEFAULT_B, DEFAULT_K1, _best, analyze, analyze_query
from rag.types import SHARED_SCOPE, Chunk, ScoredChunk


def check_index_options(backend: str, chunk_tokens: int, chunk_overlap: int) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown BM25 backend {backend!r} (choose from {', '.join(BACKENDS)})")
    if not 0 <= chunk_overlap < chunk_tokens:
        raise ValueError("chunk_overlap must be at least 0 and smaller than chunk_tokens")


@dataclass(frozen=True)
class Weights:
    """Ranking parameters. Chosen on the Python 3.11 library-reference development set
    (``benchmarks/retrieval_docs.py``), never on SciFact's test split."""

    title: float = 0.5  # weight of the title field's BM25 score; the body's is 1
    section: float = 0.5  # weight of the section field's
    title_b: float = 0.3  # length normalisation of the title and section fields
    k1: float = DEFAULT_K1
    b: float = DEFAULT_B
    # Evidence from the rest of the page: a chunk gains this share of the scores of its document's other
    # chunks among the best candidates (at most ``PAGE_CHUNKS`` of them), so the page about a topic wins
    # over one stray chunk elsewhere. No effect when every document is one chunk.
    page: float = 0.3

    @property
    def without_structure(self) -> "Weights":
        return replace(self, title=0.0, section=0.0)


DEFAULT_WEIGHTS = Weights()


def body_terms(chunk: Chunk) -> list[str]:
    return analyze(chunk.text)


@lru_cache(maxsize=4096)
def _heading_terms(text: str) -> tuple[str, ...]:
    return tuple(analyze(text))  # every chunk of a page repeats its title: analysed once


def title_terms(chunk: Chunk) -> list[str]:
    return list(_heading_terms(chunk.doc_title or chunk.title))


def section_terms(chunk: Chunk) -> list[str]:
    if chunk.section:
        return list(_heading_terms(chunk.section))
    return list(_heading_terms(chunk.title)) if chunk.title and chunk.title != chunk.doc_title else []


FIELD_TERMS = {"body": body_terms, "title": title_terms, "section": section_terms}
FIELDS = tuple(FIELD_TERMS)


def index_terms(chunk: Chunk) -> list[str]:
    """The body field's terms (kept under this name for callers that index a chunk's text)."""
    return body_terms(chunk)


@dataclass(frozen=True)
class FieldPostings:
    """Term-major postings of one field: ``docs[indptr[t]:indptr[t + 1]]`` are the chunks holding term t."""

    vocabulary: dict[str, int]
    indptr: np.ndarray  # int64, len(vocabulary) + 1
    docs: np.ndarray  # int32 chunk numbers, ascending within a term
    freqs: np.ndarray  # float32 term frequencies
    lengths: np.ndarray  # float32 terms per chunk

    @property
    def size(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def total_length(self) -> float:
        return float(self.lengths.sum(dtype=np.float64))

    @classmethod
    def empty(cls) -> "FieldPostings":
        return cls({}, np.zeros(1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32))

    @classmethod
    def build(cls, term_lists: Sequence[Sequence[str]], vocabulary: dict[str, int] | None = None) -> "FieldPostings":
        vocabulary = {} if vocabulary is None else vocabulary
        lengths = np.fromiter((len(terms) for terms in term_lists), dtype=np.int64, count=len(term_lists))
        intern = vocabulary.setdefault
        ids = np.fromiter(
            (intern(term, len(vocabulary)) for terms in term_lists for term in terms), dtype=np.int64, count=int(lengths.sum())
        )
        docs = np.repeat(np.arange(len(term_lists), dtype=np.int64), lengths)
        return cls.from_entries(vocabulary, ids, docs, np.ones(len(ids), np.float32), lengths.astype(np.float32))

    @classmethod
    def from_entries(
        cls, vocabulary: dict[str, int], term_ids: np.ndarray, docs: np.ndarray, freqs: np.ndarray, lengths: np.ndarray
    ) -> "FieldPostings":
        """Postings from (term, chunk, frequency) entries in any order; repeated pairs are summed."""
        size = max(int(lengths.shape[0]), 1)
        keys = term_ids.astype(np.int64) * size + docs.astype(np.int64)
        unique, inverse = np.unique(keys, return_inverse=True)
        summed = np.bincount(inverse.ravel(), weights=freqs, minlength=len(unique)).astype(np.float32)
        terms = unique // size
        indptr = np.zeros(len(vocabulary) + 1, np.int64)
        np.cumsum(np.bincount(terms, minlength=len(vocabulary)), out=indptr[1:])
        return cls(vocabulary, indptr, (unique % size).astype(np.int32), summed, lengths.astype(np.float32))

    def document_frequency(self, term: str) -> int:
        term_id = self.vocabulary.get(term)
        return 0 if term_id is None else int(self.indptr[term_id + 1] - self.indptr[term_id])

    def postings(self, term: str) -> tuple[np.ndarray, np.ndarray] | None:
        term_id = self.vocabulary.get(term)
        if term_id is None:
            return None
        start, end = self.indptr[term_id], self.indptr[term_id + 1]
        if start == end:
            return None
        return self.docs[start:end], self.freqs[start:end]

    def entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(term ids, chunk numbers, frequencies) of every posting."""
        term_ids = np.repeat(np.arange(len(self.vocabulary), dtype=np.int64), np.diff(self.indptr))
        return term_ids, self.docs, self.freqs


@dataclass(frozen=True)
class Segment:
    """Chunks (a tuple, or a lazy store that builds a chunk when asked) and their two fields."""

    chunks: Sequence[Chunk]
    fields: dict[str, FieldPostings]  # one per name in FIELDS
    documents: np.ndarray  # per chunk, the number of its document (file) within the segment

    @classmethod
    def build(cls, chunks: Sequence[Chunk]) -> "Segment":
        numbers: dict[str, int] = {}
        documents = np.fromiter((numbers.setdefault(c.source, len(numbers)) for c in chunks), np.int64, len(chunks))
        fields = {name: FieldPostings.build([terms(c) for c in chunks]) for name, terms in FIELD_TERMS.items()}
        return cls(tuple(chunks), fields, documents)

    @classmethod
    def empty(cls) -> "Segment":
        return cls((), {name: FieldPostings.empty() for name in FIELDS}, np.zeros(0, np.int64))

    def __len__(self) -> int:
        return self.fields["body"].size


def _field_scores(
    segments: Sequence[Segment], name: str, query: list[str], k1: float, b: float, weight: float, totals: list[np.ndarray]
) -> None:
    fields: list[FieldPostings] = [segment.fields[name] for segment in segments]
    count = sum(f.size for f in fields)
    average = sum(f.total_length for f in fields) / count if count else 0.0
    if average <= 0:
        return
    norms = [k1 * (1 - b + b * f.lengths / average) for f in fields]
    for term in query:
        found = [f.postings(term) for f in fields]
        frequency = sum(len(hit[0]) for hit in found if hit is not None)
        if not frequency:
            continue
        idf = weight * math.log(1.0 + (count - frequency + 0.5) / (frequency + 0.5))
        for total, norm, hit in zip(totals, norms, found):
            if hit is not None:
                docs, freqs = hit
                total[docs] += idf * freqs / (freqs + norm[docs])


def search_segments(segments: Sequence[Segment], query: str, k: int, weights: Weights = DEFAULT_WEIGHTS) -> list[ScoredChunk]:
    """The ``k`` best chunks of ``segments``, scored with statistics summed over exactly these segments."""
    segments = [segment for segment in segments if len(segment)]
    terms = analyze_query(query)
    if k <= 0 or not segments or not terms:
        return []
    totals = [np.zeros(len(segment), np.float64) for segment in segments]
    _field_scores(segments, "body", terms, weights.k1, weights.b, 1.0, totals)
    for name, weight in (("title", weights.title), ("section", weights.section)):
        if weight:
            _field_scores(segments, name, terms, weights.k1, weights.title_b, weight, totals)
    scores = np.concatenate(totals)
    if weights.page:
        document_offsets = np.cumsum([0] + [int(s.documents.max()) + 1 if len(s.documents) else 0 for s in segments])
        documents = np.concatenate([s.documents + offset for s, offset in zip(segments, document_offsets)])
        scores = _with_page_evidence(scores, documents, weights.page)
    offsets = np.cumsum([0] + [len(segment) for segment in segments])
    best = _best(scores, k)
    results = []
    for position, score in best:
        number = int(np.searchsorted(offsets, position, side="right")) - 1
        results.append(ScoredChunk(segments[number].chunks[position - int(offsets[number])], score))
    return results


PAGE_CANDIDATES = 200
PAGE_CHUNKS = 3


def _with_page_evidence(scores: np.ndarray, documents: np.ndarray, share: float) -> np.ndarray:
    candidates = np.array([index for index, _ in _best(scores, PAGE_CANDIDATES)], dtype=np.int64)
    if candidates.size < 2:
        return scores
    boosted = scores.copy()
    by_document: dict[int, list[float]] = {}
    for index in candidates.tolist():  # best first
        by_document.setdefault(int(documents[index]), []).append(float(scores[index]))
    for index in candidates.tolist():
        own = float(scores[index])
        best = by_document[int(documents[index])][:PAGE_CHUNKS + 1]
        others = sum(best) - own if own in best else sum(best[:PAGE_CHUNKS])
        boosted[index] = own + share * others
    return boosted


class Collection:
    """The one index: the shared segment plus one segment per conversation scope.

    Segments are immutable; changing one swaps it in whole under a lock, so searches running in other
    threads see either the old or the new segment, never a half-built one.
    """

    def __init__(self, weights: Weights = DEFAULT_WEIGHTS):
        self.weights = weights
        self._shared = Segment.empty()
        self._scopes: dict[str, Segment] = {}
        self._lock = threading.Lock()

    @property
    def shared(self) -> Segment:
        return self._shared

    def set_shared(self, segment: Segment) -> None:
        self._shared = segment

    def set_scope(self, scope: str, chunks: Sequence[Chunk]) -> None:
        """Index ``chunks`` as the whole of ``scope``'s documents (an empty list drops the scope)."""
        if scope == SHARED_SCOPE:
            raise ValueError("the shared scope is the knowledge base's; give a conversation id")
        segment = Segment.build([chunk.in_scope(scope) for chunk in chunks]) if chunks else None
        with self._lock:
            if segment is None:
                self._scopes.pop(scope, None)
            else:
                self._scopes[scope] = segment

    def scope_segment(self, scope: str) -> Segment | None:
        return self._scopes.get(scope)

    def search(self, query: str, k: int = 5, scope: str = SHARED_SCOPE) -> list[ScoredChunk]:
        """Shared chunks and ``scope``'s own chunks, best first, all scored on the same statistics."""
        segments = [self._shared]
        own = self._scopes.get(scope) if scope != SHARED_SCOPE else None
        if own is not None:
            segments.append(own)
        return search_segments(segments, query, k, self.weights)

    async def asearch(self, query: str, k: int = 5, scope: str = SHARED_SCOPE) -> list[ScoredChunk]:
        return await asyncio.to_thread(self.search, query, k, scope)


@dataclass(frozen=True)
class ScopedSearch:
    """A collection as one conversation sees it: ``search(query, k)`` covers shared knowledge and its uploads."""

    collection: Collection
    scope: str

    def search(self, query: str, k: int = 5) -> list[ScoredChunk]:
        return self.collection.search(query, k, self.scope)


# --- merging result lists of separate retrievers (kept for callers that still hold several) -------------


class Retriever(Protocol):
    def search(self, query: str, k: int) -> list[ScoredChunk]: ...


RRF_K = 60


def search_many(retrievers: Sequence[Retriever], query: str, k: int) -> list[ScoredChunk]:
    """Reciprocal rank fusion over retrievers whose scores are not comparable (separate collections).

    Uploads and shared knowledge no longer need this: they are one :class:`Collection`.
    """
    return fuse_rankings([r.search(query, k) if r is not None else [] for r in retrievers], k)


def fuse_rankings(rankings: Sequence[Sequence[ScoredChunk]], k: int) -> list[ScoredChunk]:
    """Reciprocal rank fusion of result lists, ``sum 1 / (60 + rank)``; ties go to the earlier list."""
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
    return await asyncio.to_thread(search_many, list(retrievers), query, k)
