"""What hostile uploads cost: CPU seconds, peak memory and wall time of the parser process for the worst files of
the hostile corpus (benchmarks/hostile_files.py), and another user's search latency while six of them parse.

    python -m benchmarks.hostile_uploads [--all] [--uploads 6] [--searches 200]

Each file goes through the app's parser (assistant.ingest: a forked, resource-limited process per upload).
CPU and peak RSS come from wait4() on the parser process (a forked process: its RSS includes the ~75 MB it shares
with the fork server). Wall time depends on the machine's load, CPU time does not.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from assistant.ingest import IngestLimits, ParseRefused, UploadParser
from rag.documents import DocumentSet, clean_display_name
from benchmarks.hostile_files import hostile_files


def measure_files(parser: UploadParser, folder: Path, files) -> list[dict]:
    rows = []
    for index, hostile in enumerate(files):
        path = folder / f"upload-{index}"
        path.write_bytes(hostile.data)
        name = clean_display_name(hostile.name)
        try:
            parsed = parser.parse_blocking(path, name)
            stats, answer = parsed.stats, f"accepted: {len(parsed.chunks)} chunks"
        except ParseRefused as refusal:
            stats, answer = refusal.stats, str(refusal)
        rows.append({"kind": hostile.kind, "bytes": len(hostile.data), "outcome": stats.outcome, "cpu_s": stats.cpu_s,
                     "rss_mb": stats.peak_rss_mb, "wall_s": stats.wall_s, "answer": answer})
    return rows


def search_set() -> DocumentSet:
    documents = DocumentSet()
    text = " ".join(f"The router escalates weak answer {index} to the larger model with sources." for index in range(4000))
    documents.add_bytes(text.encode(), "notes.txt")
    return documents


async def search_latencies(documents: DocumentSet, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        await documents.asearch("which model answers weak questions", 5)
        latencies.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(0.01)
    return latencies


async def searches_during_uploads(parser: UploadParser, folder: Path, hostile, uploads: int, searches: int) -> dict:
    documents = search_set()
    idle = await search_latencies(documents, searches)
    paths = []
    for index in range(uploads):
        paths.append(folder / f"concurrent-{index}")
        paths[-1].write_bytes(hostile.data)

    async def upload(path):
        try:
            await parser.parse(path, hostile.name)
        except ParseRefused:
            pass

    started = time.perf_counter()
    parsing = asyncio.gather(*(upload(path) for path in paths))
    busy = await search_latencies(documents, searches)
    await parsing
    return {"idle": idle, "busy": busy, "uploads_s": time.perf_counter() - started}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser_args = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser_args.add_argument("--all", action="store_true", help="every corpus file, not only the worst")
    parser_args.add_argument("--uploads", type=int, default=6, help="costly uploads parsing while searches run")
    parser_args.add_argument("--searches", type=int, default=200)
    args = parser_args.parse_args(argv)
    limits = IngestLimits()
    corpus = hostile_files()
    files = corpus if args.all else [hostile for hostile in corpus if hostile.worst]
    parser = UploadParser(limits)
    try:
        parser.start()
        with tempfile.TemporaryDirectory() as folder:
            rows = measure_files(parser, Path(folder), files)
            print(f"Limits: {limits.cpu_seconds} s CPU, +{limits.memory_mb} MB address space, {limits.wall_seconds:.0f} s wall, "
                  f"{limits.max_parallel} parses at once, {limits.max_tokens:,} tokens / {limits.max_chunks:,} chunks per upload")
            print(f"{'file':52} {'size':>9} {'outcome':>12} {'CPU s':>6} {'peak RSS':>9} {'wall s':>7}")
            for row in rows:
                print(f"{row['kind'][:52]:52} {row['bytes'] / 1024:>7.0f}KB {row['outcome']:>12} {row['cpu_s']:>6.2f} "
                      f"{row['rss_mb']:>6.0f} MB {row['wall_s']:>7.2f}")
            worst_cpu = max(rows, key=lambda row: row["cpu_s"])
            worst_rss = max(rows, key=lambda row: row["rss_mb"])
            print(f"\nWorst CPU: {worst_cpu['kind']} ({worst_cpu['cpu_s']:.2f} s). "
                  f"Worst memory: {worst_rss['kind']} ({worst_rss['rss_mb']:.0f} MB peak RSS).")

            costly = next(hostile for hostile in corpus if hostile.kind.startswith("PDF with costly"))
            result = asyncio.run(searches_during_uploads(parser, Path(folder), costly, args.uploads, args.searches))
            print(f"\nAnother user's search (BM25, {args.searches} queries) while {args.uploads} uploads of "
                  f"'{costly.kind}' parse ({result['uploads_s']:.1f} s for all of them):")
            for label in ("idle", "busy"):
                values = result[label]
                print(f"  {label:5} p50 {statistics.median(values):6.1f} ms   p95 {percentile(values, 0.95):6.1f} ms   "
                      f"max {max(values):6.1f} ms")
    finally:
        parser.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
