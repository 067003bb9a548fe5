"""One BM25 index for the shared knowledge base and every conversation's uploads, with title and section fields.

A :class:`Collection` holds segments: one for the shared knowledge base and one per conversation
(its uploads). Each segment keeps, per field, term-major postings (numpy arrays of chunk numbers and
term frequencies) and the chunks' field lengths. A search in a conversation's scope looks at the
shared segment and that conversation's segment only, and scores both with one set of collection
statistics (chunk count, document frequencies, average field lengths) summed over exactly those two
segments. So an uploaded chunk and a shared chunk with the same words get the same score, and one
conversation's uploads never change another conversation's scores.

Three fields per chunk, combined with BM25F (:class:`Weights`):

- ``body``: the chunk's text;
- ``title``: the page's or document's title;
- ``section``: the section headings above the chunk (below the title).

BM25F (Robertson and Zaragoza's "simple BM25 extension to multiple weighted fields"): a term's frequency
in each field is divided by that field's length normalisation ``1 - b + b * len / avglen`` (each field
with its own average length and ``b``), multiplied by the field's weight and added up; the sum is
saturated once, ``tf / (k1 + tf)``, and multiplied by Lucene's idf ``log(1 + (N - df + 0.5) / (df + 0.5))``
(``df``: chunks holding the term in any field; always positive, so a one-document conversation still
finds its document). A title word counts twice a body word and a heading word 1.25 times, so a question
phrased like a page title or a section heading lifts that chunk more than the same words in a body,
while a word repeated in several fields still saturates like one (summing three separate BM25 scores
would count its idf three times). With the title and section weights at 0 this is plain BM25 on the body.

Last, a chunk gains a share of the scores of its page's other strong chunks (:func:`with_page_evidence`):
a page with several passages on the question wins over one stray passage elsewhere. A result list takes
at most ``Weights.per_document`` chunks of one document while other documents match, so one long page
does not fill it.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections import Counter
from functools import cached_property, lru_cache
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

    title: float = 2.0  # a title word counts as much as this many body words (BM25F field weight)
    section: float = 1.25  # a section heading word, likewise
    title_b: float = 0.3  # length normalisation of the title and section fields
    k1: float = DEFAULT_K1
    b: float = DEFAULT_B
    # Evidence from the rest of the page (:func:`with_page_evidence`): a strong chunk gains this share of its
    # document's other strong chunks' scores, decayed by rank. No effect when every document is one chunk.
    page: float = 0.5
    page_decay: float = 0.8
    page_floor: float = 0.5  # strong: at least this share of the best chunk's score
    # At most this many chunks of one document in a result list while other documents have matching chunks
    # (0: no limit), so the chunks of one long page do not push every other page out of the top k.
    per_document: int = 3

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

    @cached_property
    def total_length(self) -> float:
        return float(self.lengths.sum(dtype=np.float64))

    @cached_property
    def filled(self) -> int:
        """Chunks with at least one term in this field."""
        return int(np.count_nonzero(self.lengths))

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


def _average_length(segments: Sequence[Segment], name: str) -> float | None:
    """Field ``name``'s average length over these segments' chunks that have the field (None when none has).

    Over the chunks that have the field, as Lucene takes it: a few headings among many chunks without one
    are not long headings."""
    fields = [segment.fields[name] for segment in segments]
    count = sum(f.filled for f in fields)
    average = sum(f.total_length for f in fields) / count if count else 0.0
    return average if average > 0 else None


def _bm25f_scores(segments: Sequence[Segment], terms: list[str], weights: Weights) -> list[np.ndarray]:
    """BM25F per chunk: each term's field frequencies, length-normalised per field and weighted, are added
    before one saturation, ``idf * tf / (k1 + tf)``; idf counts the chunks holding the term in any field.

    Only the chunks in a term's postings are touched, so a search costs what its terms' postings hold."""
    fields = [("body", 1.0, weights.b), ("title", weights.title, weights.title_b),
              ("section", weights.section, weights.title_b)]
    averages = {name: _average_length(segments, name) for name, weight, _ in fields if weight > 0}
    count = sum(len(segment) for segment in segments)
    totals = [np.zeros(len(segment), np.float64) for segment in segments]
    for term, repeats in Counter(terms).items():
        found: list[tuple[int, np.ndarray, np.ndarray]] = []  # (segment, chunks, weighted frequencies)
        for number, segment in enumerate(segments):
            hits: list[tuple[np.ndarray, np.ndarray]] = []
            for name, weight, b in fields:
                average = averages.get(name)
                hit = segment.fields[name].postings(term) if average is not None else None
                if hit is None:
                    continue
                docs, freqs = hit
                norm = 1.0 - b + b * segment.fields[name].lengths[docs] / average
                hits.append((docs, weight * freqs / norm))
            if len(hits) == 1:
                docs, frequency = hits[0][0], hits[0][1].astype(np.float64)
            elif hits:
                docs = np.unique(np.concatenate([docs for docs, _ in hits]))
                frequency = np.zeros(len(docs), np.float64)
                for field_docs, field_frequency in hits:
                    frequency[np.searchsorted(docs, field_docs)] += field_frequency
            else:
                continue
            found.append((number, docs, frequency))
        holding = sum(len(docs) for _, docs, _ in found)
        if not holding:
            continue
        idf = repeats * math.log(1.0 + (count - holding + 0.5) / (holding + 0.5))
        for number, docs, frequency in found:
            totals[number][docs] += idf * frequency / (weights.k1 + frequency)
    return totals


def search_segments(segments: Sequence[Segment], query: str, k: int, weights: Weights = DEFAULT_WEIGHTS) -> list[ScoredChunk]:
    """The ``k`` best chunks of ``segments``, scored with statistics summed over exactly these segments."""
    segments = [segment for segment in segments if len(segment)]
    terms = analyze_query(query)
    if k <= 0 or not segments or not terms:
        return []
    scores = np.concatenate(_bm25f_scores(segments, terms, weights))
    if weights.page or weights.per_document:
        document_offsets = np.cumsum([0] + [int(s.documents.max()) + 1 if len(s.documents) else 0 for s in segments])
        documents = np.concatenate([s.documents + offset for s, offset in zip(segments, document_offsets)])
        if weights.page:
            scores = with_page_evidence(scores, documents, weights)
    else:
        documents = None
    offsets = np.cumsum([0] + [len(segment) for segment in segments])
    best = _best_per_document(scores, documents, k, weights.per_document) if documents is not None else _best(scores, k)
    results = []
    for position, score in best:
        number = int(np.searchsorted(offsets, position, side="right")) - 1
        results.append(ScoredChunk(segments[number].chunks[position - int(offsets[number])], score))
    return results


def _best_per_document(scores: np.ndarray, documents: np.ndarray, k: int, limit: int) -> list[tuple[int, float]]:
    """The ``k`` best positive scores, taking at most ``limit`` chunks of one document while chunks of other
    documents remain; best first. Without enough other documents, the limit is lifted."""
    best = _best(scores, k)
    if limit <= 0 or max(Counter(int(documents[index]) for index, _ in best).values(), default=0) <= limit:
        return best
    matching = documents[scores > 0]
    if (matching == matching[0]).all():
        return best
    pool_size = k
    while True:
        pool = _best(scores, pool_size)
        taken: list[tuple[int, float]] = []
        left: list[tuple[int, float]] = []
        per_document: dict[int, int] = {}
        for index, score in pool:
            document = int(documents[index])
            if per_document.get(document, 0) < limit:
                per_document[document] = per_document.get(document, 0) + 1
                taken.append((index, score))
                if len(taken) == k:
                    return taken
            else:
                left.append((index, score))
        if len(pool) < pool_size or pool_size >= scores.size:  # every positive score has been seen
            return sorted(taken + left[: k - len(taken)], key=lambda item: (-item[1], item[0]))
        pool_size *= 4


def with_page_evidence(scores: np.ndarray, documents: np.ndarray, weights: Weights) -> np.ndarray:
    """Each strong chunk gains ``weights.page`` times the decayed sum of its document's other strong chunks.

    Strong: scoring at least ``weights.page_floor`` times the best chunk. A document's strong chunks, best
    first, count ``decay``, ``decay**2``, ... (the chunk itself left out), so a page with several good
    passages on the question beats a page with one stray match, and a long page gains little from its
    tenth weak passage. Other chunks keep their score.
    """
    best = float(scores.max()) if scores.size else 0.0
    if best <= 0:
        return scores
    strong = np.flatnonzero(scores >= weights.page_floor * best)
    if strong.size < 2:
        return scores
    # By document, then best first (ties: lower chunk number first).
    strong = strong[np.lexsort((strong, -scores[strong], documents[strong]))]
    own = scores[strong]
    group = documents[strong]
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    sizes = np.diff(np.r_[starts, strong.size])
    first = np.repeat(starts, sizes)
    rank = np.arange(strong.size) - first
    decay = weights.page_decay
    # Others of the chunk at rank r: those above it count decay**(j + 1), those below it decay**j.
    above = decay ** (rank + 1) * own
    below = decay ** rank * own
    above_sum = np.cumsum(above)
    above_before = above_sum - above - np.repeat(np.r_[0.0, above_sum][starts], sizes)
    below_sum = np.cumsum(below)
    below_after = np.repeat(below_sum[starts + sizes - 1], sizes) - below_sum
    boosted = scores.copy()
    boosted[strong] = own + weights.page * (above_before + below_after)
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
