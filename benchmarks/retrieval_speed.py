"""BM25 speed on real text chunks: build time, memory, query latency, and cached restart of a knowledge base.

    python -m benchmarks.retrieval_speed [--sizes 1000 10000 100000] [--backends rank_bm25 bm25s]

Chunks come from the SciFact abstracts (BEIR corpus.jsonl): each abstract is split into sentences and
cut into windows of consecutive sentences (2 sentences, then 3, then 4, ... sliding by one sentence),
until there are enough chunks. Every chunk is real text; larger sizes contain overlapping windows of
the same abstracts, as a knowledge base with overlapping chunks does. Queries are the SciFact claims.
"""

from __future__ import annotations

import argparse
import gc
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.data import scifact_dir
from rag.bm25 import BACKENDS, analyze, build_index
from rag.tokens import count_tokens
from routing.metrics import percentile

DEFAULT_DIR = scifact_dir()
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(])")


def load_abstract_sentences(folder: Path) -> list[list[str]]:
    abstracts = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            sentences = [s.strip() for s in _SENTENCE.split(doc.get("text", "")) if s.strip()]
            if doc.get("title"):
                sentences.insert(0, doc["title"].strip())
            if len(sentences) >= 2:
                abstracts.append(sentences)
    return abstracts


def make_chunks(abstracts: list[list[str]], count: int, first_window: int = 2) -> list[str]:
    chunks: list[str] = []
    window = first_window
    while len(chunks) < count:
        for sentences in abstracts:
            for start in range(0, max(1, len(sentences) - window + 1)):
                chunks.append(" ".join(sentences[start : start + window]))
                if len(chunks) == count:
                    return chunks
        window += 1
    return chunks


def load_queries(folder: Path) -> list[str]:
    path = next(iter(sorted(folder.glob("queries*.jsonl"))))
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * 4096


def measure(terms: list[list[str]], queries: list[list[str]], backend: str, max_query_seconds: float) -> dict:
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    index = build_index(terms, backend)
    build_s = time.perf_counter() - started
    memory = rss_bytes() - before
    latencies = []
    started = time.perf_counter()
    for query in queries:
        t0 = time.perf_counter()
        index.top_k(query, 10)
        latencies.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - started > max_query_seconds and len(latencies) >= 20:
            break
    del index
    return {
        "build_s": build_s,
        "memory_mb": memory / 1e6,
        "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "qps": 1000 / statistics.mean(latencies),
        "queries": len(latencies),
    }


def measure_fields(texts: list[str], queries: list[str], max_query_seconds: float) -> dict:
    """The app's index (rag.index: body/title/section fields, page evidence), built from chunks and queried with text."""
    from rag.index import Segment, search_segments
    from rag.types import Chunk

    chunks = [Chunk(id=f"c{i}", text=text, source=f"doc{i // 20}.md", title="", position=i % 20)
              for i, text in enumerate(texts)]
    gc.collect()
    before = rss_bytes()
    started = time.perf_counter()
    segment = Segment.build(chunks)
    build_s = time.perf_counter() - started
    memory = rss_bytes() - before
    latencies = []
    started = time.perf_counter()
    for query in queries:
        t0 = time.perf_counter()
        search_segments([segment], query, 10)
        latencies.append((time.perf_counter() - t0) * 1000)
        if time.perf_counter() - started > max_query_seconds and len(latencies) >= 20:
            break
    return {"build_s": build_s, "memory_mb": memory / 1e6, "p50": percentile(latencies, 50),
            "p95": percentile(latencies, 95), "qps": 1000 / statistics.mean(latencies), "queries": len(latencies)}


_RESTART_SNIPPET = """
import sys, time
from pathlib import Path
started = time.perf_counter()
from rag.knowledge import KnowledgeBase
kb = KnowledgeBase(Path(sys.argv[1]), Path(sys.argv[2]), backend=sys.argv[3])
imported = time.perf_counter()
report = kb.refresh()
done = time.perf_counter()
kb.search("vitamin D and cancer risk", 5)
print(report.cache, report.chunks, len(report.processed), round(done - imported, 3), round(done - started, 3))
"""


def knowledge_restart(chunks: list[str], backends: list[str]) -> list[tuple[str, str, int, float, float, float]]:
    """Write the chunks as Markdown files (one heading per chunk), index them, then restart from the cache."""
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / "knowledge"
        folder.mkdir()
        per_file = 50
        for number in range(0, len(chunks), per_file):
            body = "\n\n".join(f"## Passage {number + i}\n\n{text}" for i, text in enumerate(chunks[number : number + per_file]))
            (folder / f"part{number // per_file:04d}.md").write_text(body, encoding="utf-8")
        for backend in backends:
            cache = Path(temp) / f"cache-{backend}"
            runs = []
            for _ in range(2):  # first: cold build; second: restart with the cache
                output = subprocess.run(
                    [sys.executable, "-c", _RESTART_SNIPPET, str(folder), str(cache), backend],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                runs.append(output)
            cold, warm = runs
            rows.append((backend, warm[0], int(warm[1]), float(cold[3]), float(warm[3]), float(warm[4])))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    parser.add_argument("--data", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--max-query-seconds", type=float, default=15.0, help="time cap for the query loop of one run")
    parser.add_argument("--restart-chunks", type=int, default=10000)
    args = parser.parse_args(argv)

    abstracts = load_abstract_sentences(args.data)
    query_texts = load_queries(args.data)
    queries = [analyze(text) for text in query_texts]
    largest = max(args.sizes + [args.restart_chunks])
    all_chunks = make_chunks(abstracts, largest)
    print(
        f"Chunks: SciFact abstracts ({len(abstracts)}) split into sentences, cut into sliding windows of 2, 3, 4... "
        f"sentences until {largest} chunks;\n{len(queries)} SciFact claims as queries; top-10 per query; k1=0.9 b=0.4.\n"
    )
    header = (
        f"{'chunks':>8} {'backend':<10} {'avg tok':>7} {'analyze s':>9} {'build s':>8} {'RSS +MB':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'q/s':>8} {'queries':>7}"
    )
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        chunks = all_chunks[:size]
        started = time.perf_counter()
        terms = [analyze(text) for text in chunks]
        analyze_s = time.perf_counter() - started
        average = sum(map(len, terms)) / len(terms)
        for backend in args.backends:
            result = measure(terms, queries, backend, args.max_query_seconds)
            print(
                f"{size:>8} {backend:<10} {average:>7.0f} {analyze_s:>9.2f} {result['build_s']:>8.2f} "
                f"{result['memory_mb']:>8.1f} {result['p50']:>8.2f} {result['p95']:>8.2f} {result['qps']:>8.0f} "
                f"{result['queries']:>7}"
            )
        result = measure_fields(chunks, query_texts, args.max_query_seconds)
        print(
            f"{size:>8} {'rag.index':<10} {average:>7.0f} {'(incl.)':>9} {result['build_s']:>8.2f} "
            f"{result['memory_mb']:>8.1f} {result['p50']:>8.2f} {result['p95']:>8.2f} {result['qps']:>8.0f} "
            f"{result['queries']:>7}"
        )
    print("('avg tok' = analysed terms per chunk; RSS +MB = resident memory growth while building the index;")
    print(" rag.index = the app's index: three fields analysed and built from text, queries analysed per search)")

    # Passages that fit in one default 300-token chunk, so the knowledge base holds restart_chunks chunks.
    restart_chunks = [
        text for text in make_chunks(abstracts, 4 * args.restart_chunks, first_window=8) if count_tokens(text) <= 280
    ][: args.restart_chunks]
    average_tokens = sum(count_tokens(text) for text in restart_chunks) / len(restart_chunks)
    print(
        f"\nKnowledgeBase restart with a cached index: {args.restart_chunks} chunks of ~{average_tokens:.0f} tokens "
        "(windows of 8+ sentences,\none Markdown section each, 50 per file); a fresh Python process per run:"
    )
    header = f"{'backend':<10} {'cache':<8} {'chunks':>7} {'cold build s':>12} {'restart s':>10} {'incl. import s':>14}"
    print(header)
    print("-" * len(header))
    for backend, cache, chunks, cold, warm, warm_total in knowledge_restart(restart_chunks, args.backends):
        print(f"{backend:<10} {cache:<8} {chunks:>7} {cold:>12.2f} {warm:>10.2f} {warm_total:>14.2f}")
    print("\nTargets: p95 <= 15 ms at 10k chunks (rank_bm25), <= 5 ms at 100k (bm25s); cached restart of 10k chunks <= 2 s.")


if __name__ == "__main__":
    main()
