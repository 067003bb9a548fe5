"""BM25 text analysis and two interchangeable index backends.

Analysis: lower-case, split into letter/digit runs, drop English stopwords, Snowball-stem (PyStemmer).
Tokenization decides most of the quality: on SciFact this analysis reaches Lucene's nDCG@10 where a
plain ``lower().split()`` loses about 0.12.

Backends share one interface (:class:`BM25Index`): ``rank_bm25`` (BM25Okapi, pure Python, the
default) and ``bm25s`` (sparse matrices, much faster on large indexes). k1=0.9, b=0.4 are
Anserini/Pyserini's BM25 defaults.

idf: Lucene's ``log(1 + (N - n + 0.5) / (n + 0.5))`` by default. The Robertson idf
``log((N - n + 0.5) / (n + 0.5))`` (BM25Okapi with epsilon=0, bm25s ``method="robertson"``) is 0
for any term in half or more of the chunks, so a conversation with one or two uploaded documents
would find nothing at all; Lucene's idf is always positive and scores the same on SciFact. Either
idf is available in both backends, and both backends give the same scores (rank-bm25's are divided
by k1 + 1, a constant factor Lucene and bm25s leave out), hence the same rankings.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

BACKENDS = ("rank_bm25", "bm25s")
DEFAULT_BACKEND = "rank_bm25"
DEFAULT_K1 = 0.9
DEFAULT_B = 0.4
IDF_KINDS = ("lucene", "robertson")
DEFAULT_IDF = "lucene"

# Lucene's classic English stopword set: short enough to keep negations and content words.
ENGLISH_STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there "
    "these they this to was will with".split()
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# How a developer's question is asked, not what it is about. Left out of queries only (documents keep them:
# "How do I...?" is a common heading, and matching it says nothing about the subject).
QUESTION_WORDS = frozenset(
    "how what why when where which who whom whose do does did can could should would i me my we us our you your "
    "am".split()
)


@lru_cache(maxsize=1)
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def analyze(text: str) -> list[str]:
    """Index/query terms of ``text``: lower-cased words without stopwords, Snowball-stemmed."""
    words = [word for word in _WORD.findall(text.lower()) if word not in ENGLISH_STOPWORDS]
    return _stemmer().stemWords(words) if words else []


def analyze_query(text: str) -> list[str]:
    """Query terms: :func:`analyze` without the words that only shape a question."""
    words = [word for word in _WORD.findall(text.lower()) if word not in ENGLISH_STOPWORDS and word not in QUESTION_WORDS]
    return _stemmer().stemWords(words) if words else []


def analyze_many(texts: Sequence[str]) -> list[list[str]]:
    return [analyze(text) for text in texts]


def naive_analyze(text: str) -> list[str]:
    """The baseline the benchmarks compare against: ``lower().split()``."""
    return text.lower().split()


class BM25Index(Protocol):
    backend: str

    def scores(self, query_tokens: list[str]) -> np.ndarray: ...

    def top_k(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]: ...


def _best(scores: np.ndarray, k: int) -> list[tuple[int, float]]:
    """Indexes and scores of the k highest positive scores, best first (ties: lower index first)."""
    if k <= 0 or scores.size == 0:
        return []
    k = min(k, scores.size)
    candidates = np.argpartition(-scores, k - 1)[:k] if k < scores.size else np.arange(scores.size)
    order = sorted(candidates.tolist(), key=lambda index: (-float(scores[index]), index))
    return [(index, float(scores[index])) for index in order if scores[index] > 0]


def _rank_bm25_class(idf: str):
    """BM25Okapi with an inverted index for scoring, and Lucene's idf unless Robertson's is asked for.

    BM25Okapi.get_scores loops over every document in Python for each query term (~20 ms a query
    at 10k chunks); scoring only the documents in each term's postings gives the same numbers.
    """
    from rank_bm25 import BM25Okapi

    class PostingsBM25Okapi(BM25Okapi):
        def __init__(self, corpus, **kwargs):
            super().__init__(corpus, **kwargs)
            postings: dict[str, tuple[list[int], list[int]]] = {}
            for doc_id, frequencies in enumerate(self.doc_freqs):
                for term, count in frequencies.items():
                    entry = postings.get(term)
                    if entry is None:
                        postings[term] = entry = ([], [])
                    entry[0].append(doc_id)
                    entry[1].append(count)
            self._postings = {
                term: (np.asarray(ids, dtype=np.int64), np.asarray(counts, dtype=np.float64))
                for term, (ids, counts) in postings.items()
            }
            doc_len = np.asarray(self.doc_len, dtype=np.float64)
            self._length_norm = self.k1 * (1 - self.b + self.b * doc_len / self.avgdl)

        def get_scores(self, query):
            score = np.zeros(self.corpus_size)
            for term in query:
                entry = self._postings.get(term)
                if entry is None:
                    continue
                ids, counts = entry
                score[ids] += self.idf[term] * (counts * (self.k1 + 1) / (counts + self._length_norm[ids]))
            return score

    if idf == "robertson":
        return PostingsBM25Okapi

    class LuceneIdfBM25Okapi(PostingsBM25Okapi):
        def _calc_idf(self, nd):
            for word, freq in nd.items():
                self.idf[word] = math.log(1.0 + (self.corpus_size - freq + 0.5) / (freq + 0.5))
            self.average_idf = sum(self.idf.values()) / len(self.idf) if self.idf else 0.0

    return LuceneIdfBM25Okapi


class RankBM25Index:
    backend = "rank_bm25"

    def __init__(
        self, tokenized_docs: list[list[str]], k1: float = DEFAULT_K1, b: float = DEFAULT_B, idf: str = DEFAULT_IDF
    ):
        self.size = len(tokenized_docs)
        self._scale = 1.0 / (k1 + 1.0)
        # rank-bm25 divides by zero on an empty corpus; an empty index simply finds nothing.
        self._bm25 = _rank_bm25_class(idf)(tokenized_docs, k1=k1, b=b, epsilon=0.0) if tokenized_docs else None

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        if self._bm25 is None or not query_tokens:
            return np.zeros(self.size)
        return np.asarray(self._bm25.get_scores(query_tokens), dtype=np.float64) * self._scale

    def top_k(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]:
        return _best(self.scores(query_tokens), k)


class BM25SIndex:
    backend = "bm25s"

    def __init__(
        self,
        tokenized_docs: list[list[str]] | None,
        k1: float = DEFAULT_K1,
        b: float = DEFAULT_B,
        idf: str = DEFAULT_IDF,
    ):
        import bm25s

        self._retriever = None
        self.size = 0
        if tokenized_docs:
            self._retriever = bm25s.BM25(method=idf, k1=k1, b=b)
            self._retriever.index(tokenized_docs, show_progress=False)
            self.size = len(tokenized_docs)

    def scores(self, query_tokens: list[str]) -> np.ndarray:
        if self._retriever is None:
            return np.zeros(self.size)
        known = [token for token in query_tokens if token in self._retriever.vocab_dict]
        if not known:
            return np.zeros(self.size)
        return np.asarray(self._retriever.get_scores(known), dtype=np.float64)

    def top_k(self, query_tokens: list[str], k: int) -> list[tuple[int, float]]:
        return _best(self.scores(query_tokens), k)

    def save(self, folder: Path) -> None:
        if self._retriever is not None:
            self._retriever.save(str(folder))

    @classmethod
    def load(cls, folder: Path, size: int) -> "BM25SIndex":
        import bm25s

        index = cls(None)
        if size:
            index._retriever = bm25s.BM25.load(str(folder))
            index.size = size
        return index


def build_index(
    tokenized_docs: list[list[str]],
    backend: str = DEFAULT_BACKEND,
    *,
    k1: float = DEFAULT_K1,
    b: float = DEFAULT_B,
    idf: str = DEFAULT_IDF,
) -> BM25Index:
    if idf not in IDF_KINDS:
        raise ValueError(f"unknown idf {idf!r} (choose from {', '.join(IDF_KINDS)})")
    if backend == "rank_bm25":
        return RankBM25Index(tokenized_docs, k1=k1, b=b, idf=idf)
    if backend == "bm25s":
        return BM25SIndex(tokenized_docs, k1=k1, b=b, idf=idf)
    raise ValueError(f"unknown BM25 backend {backend!r} (choose from {', '.join(BACKENDS)})")
