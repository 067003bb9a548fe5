"""Retrieval quality on a BEIR dataset: nDCG@10 and Recall@100, next to published BM25 figures.

    python -m benchmarks.retrieval_quality [BEIR_DIR] [--backend rank_bm25|bm25s|both] [--split train]

BEIR_DIR holds corpus.jsonl, queries*.jsonl and qrels*.tsv (default: ../shared/datasets/scifact beside the project, or $ASSISTANT_SHARED_DIR,
train split). Documents are indexed as ``title + " " + text``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from benchmarks.data import scifact_dir
from rag.bm25 import BACKENDS, DEFAULT_B, DEFAULT_IDF, DEFAULT_K1, IDF_KINDS, analyze, build_index, naive_analyze

DEFAULT_DIR = scifact_dir()
PUBLISHED = [
    ("Pyserini BM25 flat (k1=0.9, b=0.4)", 0.679),
    ("Pyserini BM25 multifield", 0.665),
    ("BEIR paper, Elasticsearch BM25", 0.665),
    ("naive lower().split() (approx.)", 0.56),
]


def _pick(folder: Path, pattern: str, split: str) -> Path:
    candidates = sorted(folder.glob(pattern))
    for path in candidates:
        if split in path.stem:
            return path
    if candidates:
        return candidates[0]
    raise SystemExit(f"No {pattern} in {folder}")


def load_beir(folder: Path, split: str = "train", with_titles: list | None = None):
    corpus_ids, corpus_texts = [], []
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                doc = json.loads(line)
                corpus_ids.append(str(doc["_id"]))
                corpus_texts.append(f"{doc.get('title', '')} {doc.get('text', '')}".strip())
                if with_titles is not None:
                    with_titles.append((str(doc.get("title", "")), str(doc.get("text", ""))))
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.exists():
        qrels_path = _pick(folder, "qrels*.tsv", split) if list(folder.glob("qrels*.tsv")) else _pick(
            folder / "qrels", "*.tsv", split
        )
    qrels: dict[str, dict[str, int]] = {}
    with open(qrels_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 3 or (number == 0 and not parts[2].strip().lstrip("-").isdigit()):
                continue
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    queries = {}
    with open(_pick(folder, "queries*.jsonl", split), encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                query = json.loads(line)
                if str(query["_id"]) in qrels:
                    queries[str(query["_id"])] = query["text"]
    return corpus_ids, corpus_texts, queries, qrels, qrels_path.name


def ndcg_at(ranked: list[str], relevant: dict[str, int], k: int = 10) -> float:
    dcg = sum((2 ** relevant.get(doc, 0) - 1) / math.log2(rank + 2) for rank, doc in enumerate(ranked[:k]))
    ideal = sorted((grade for grade in relevant.values() if grade > 0), reverse=True)[:k]
    idcg = sum((2**grade - 1) / math.log2(rank + 2) for rank, grade in enumerate(ideal))
    return dcg / idcg if idcg else 0.0


def recall_at(ranked: list[str], relevant: dict[str, int], k: int = 100) -> float:
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    return len(wanted & set(ranked[:k])) / len(wanted) if wanted else 0.0


def evaluate(corpus_ids, corpus_texts, queries, qrels, *, backend: str, analyzer, k1: float, b: float, idf: str) -> dict:
    started = time.perf_counter()
    index = build_index([analyzer(text) for text in corpus_texts], backend, k1=k1, b=b, idf=idf)
    build_s = time.perf_counter() - started
    ndcgs, recalls = [], []
    started = time.perf_counter()
    for query_id, text in queries.items():
        ranked = [corpus_ids[i] for i, _ in index.top_k(analyzer(text), 100)]
        ndcgs.append(ndcg_at(ranked, qrels[query_id]))
        recalls.append(recall_at(ranked, qrels[query_id]))
    search_s = time.perf_counter() - started
    return {
        "ndcg10": sum(ndcgs) / len(ndcgs),
        "recall100": sum(recalls) / len(recalls),
        "build_s": build_s,
        "qps": len(queries) / search_s if search_s else float("inf"),
    }


def evaluate_fields(corpus_ids, titled, queries, qrels, weights) -> dict:
    """The app's ranking (rag.index): each document a chunk whose title field is its title, body its text."""
    from rag.index import search_segments, Segment
    from rag.types import Chunk

    started = time.perf_counter()
    chunks = [Chunk(id=doc_id, text=text, source=doc_id, title=title, position=0, doc_title=title)
              for doc_id, (title, text) in zip(corpus_ids, titled)]
    segment = Segment.build(chunks)
    build_s = time.perf_counter() - started
    ndcgs, recalls = [], []
    started = time.perf_counter()
    for query_id, text in queries.items():
        ranked = [scored.chunk.source for scored in search_segments([segment], text, 100, weights)]
        ndcgs.append(ndcg_at(ranked, qrels[query_id]))
        recalls.append(recall_at(ranked, qrels[query_id]))
    search_s = time.perf_counter() - started
    return {"ndcg10": sum(ndcgs) / len(ndcgs), "recall100": sum(recalls) / len(recalls), "build_s": build_s,
            "qps": len(queries) / search_s if search_s else float("inf")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beir_dir", nargs="?", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--backend", choices=[*BACKENDS, "both"], default="both")
    parser.add_argument("--split", default="train")
    parser.add_argument("--k1", type=float, default=DEFAULT_K1)
    parser.add_argument("--b", type=float, default=DEFAULT_B)
    parser.add_argument("--idf", choices=IDF_KINDS, default=DEFAULT_IDF)
    parser.add_argument("--fields-only", action="store_true", help="only the app's field ranking (rag.index)")
    args = parser.parse_args(argv)

    titled: list = []
    corpus_ids, corpus_texts, queries, qrels, qrels_name = load_beir(args.beir_dir, args.split, titled)
    print(f"Dataset: {args.beir_dir} ({len(corpus_ids)} documents, {len(queries)} queries with judgments, {qrels_name})")
    print(f"BM25 k1={args.k1} b={args.b} idf={args.idf}; documents indexed as title + ' ' + text\n")
    from rag.index import DEFAULT_WEIGHTS

    rows = []
    rows.append(("before: title + text in one field (bm25s)", evaluate(
        corpus_ids, corpus_texts, queries, qrels, backend="bm25s", analyzer=analyze, k1=args.k1, b=args.b, idf=args.idf)))
    rows.append(("rag.index: body + title fields (app ranking)",
                 evaluate_fields(corpus_ids, titled, queries, qrels, DEFAULT_WEIGHTS)))
    backends = [] if args.fields_only else (list(BACKENDS) if args.backend == "both" else [args.backend])
    for backend in backends:
        for label, analyzer in (("stopwords + Snowball (ours)", analyze), ("naive lower().split()", naive_analyze)):
            result = evaluate(corpus_ids, corpus_texts, queries, qrels, backend=backend, analyzer=analyzer, k1=args.k1, b=args.b, idf=args.idf)
            rows.append((f"{backend}: {label}", result))

    header = f"{'run':<44} {'nDCG@10':>8} {'R@100':>7} {'build s':>8} {'queries/s':>10}"
    print(header)
    print("-" * len(header))
    for label, result in rows:
        print(
            f"{label:<44} {result['ndcg10']:>8.3f} {result['recall100']:>7.3f} {result['build_s']:>8.2f} {result['qps']:>10.0f}"
        )
    print("\nPublished BM25 on SciFact (test split, nDCG@10):")
    for label, value in PUBLISHED:
        print(f"  {label:<42} {value:>8.3f}")


if __name__ == "__main__":
    main()
