import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.data import scifact_dir
from rag.bm25 import analyze, build_index

SCIFACT = scifact_dir() / "corpus.jsonl"


def sample_corpus(limit: int = 1500) -> list[str]:
    """The first SciFact abstracts: real text, so rankings have few ties. Skips, saying where it looked, without it."""
    if not SCIFACT.exists():
        pytest.skip(f"needs the SciFact corpus at {SCIFACT} (set ASSISTANT_SHARED_DIR to the shared folder)")
    with open(SCIFACT, encoding="utf-8") as handle:
        return [(lambda d: f"{d['title']} {d['text']}")(json.loads(line)) for _, line in zip(range(limit), handle)]


QUERIES = [
    "vitamin D deficiency increases cancer risk",
    "protein misfolding in neurodegenerative disease",
    "immune response of T cells to infection",
    "blood pressure and heart failure in patients",
    "gene expression during embryonic development",
]


def test_analysis_lowercases_drops_stopwords_and_stems():
    assert analyze("The Running of the Mice is NOT connected to cells") == ["run", "mice", "connect", "cell"]
    assert analyze("") == [] and analyze("the and of") == []


def ranking(index, query: str, k: int = 10):
    return index.top_k(analyze(query), k)


def test_rank_bm25_okapi_epsilon0_and_bm25s_robertson_rank_identically():
    from rank_bm25 import BM25Okapi
    import bm25s

    docs = [analyze(text) for text in sample_corpus()]
    okapi = BM25Okapi(docs, k1=0.9, b=0.4, epsilon=0.0)
    sparse = bm25s.BM25(method="robertson", k1=0.9, b=0.4)
    sparse.index(docs, show_progress=False)
    for query in QUERIES:
        terms = [t for t in analyze(query) if t in sparse.vocab_dict]
        okapi_scores = np.asarray(okapi.get_scores(terms)) / (0.9 + 1)  # rank-bm25 keeps the (k1 + 1) factor
        sparse_scores = sparse.get_scores(terms)
        assert np.allclose(okapi_scores, sparse_scores, atol=1e-4)
        assert list(np.argsort(-okapi_scores, kind="stable")[:10]) == list(np.argsort(-sparse_scores, kind="stable")[:10])


@pytest.mark.parametrize("idf", ["lucene", "robertson"])
def test_our_two_backends_give_the_same_ranking(idf):
    docs = [analyze(text) for text in sample_corpus()]
    slow = build_index(docs, "rank_bm25", idf=idf)
    fast = build_index(docs, "bm25s", idf=idf)
    for query in QUERIES:
        slow_ranking, fast_ranking = ranking(slow, query), ranking(fast, query)
        assert len(slow_ranking) == 10
        assert [i for i, _ in slow_ranking] == [i for i, _ in fast_ranking]
        assert [s for _, s in slow_ranking] == pytest.approx([s for _, s in fast_ranking], rel=1e-5)


def test_lucene_idf_finds_terms_in_a_tiny_collection():
    docs = [analyze("Bananas are yellow."), analyze("Apples are red or green.")]
    for backend in ("rank_bm25", "bm25s"):
        assert [i for i, _ in build_index(docs, backend).top_k(analyze("yellow bananas"), 5)] == [0]
        # Robertson idf is zero for a term in half the documents: nothing at all is found.
        assert build_index(docs, backend, idf="robertson").top_k(analyze("yellow bananas"), 5) == []


def test_empty_index_and_unknown_terms_find_nothing():
    for backend in ("rank_bm25", "bm25s"):
        assert build_index([], backend).top_k(["anything"], 5) == []
        assert build_index([["cell"], ["gene"]], backend).top_k(["zzz"], 5) == []
        assert build_index([["cell"], ["gene"]], backend).top_k([], 5) == []


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown BM25 backend"):
        build_index([["a"]], "tantivy")
