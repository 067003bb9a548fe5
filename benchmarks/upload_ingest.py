"""Time from upload to searchable: a 1 MB text file and a 100-page PDF, through the app's own upload path.

    python -m benchmarks.upload_ingest [--corpus ../shared/datasets/scifact/corpus.jsonl] [--repeat 3]

Each run copies the file out of the (simulated) session folder (``save_upload``), parses, chunks and indexes
it (``DocumentSet.add_file``), and runs one search: the same calls the chat makes. Text comes from a real
corpus (SciFact abstracts) so tokenization and BM25 see natural language.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from assistant.uploads import save_upload
from benchmarks.data import scifact_dir
from rag.documents import DocumentSet
from benchmarks.sample_documents import pdf_bytes

DEFAULT_CORPUS = scifact_dir() / "corpus.jsonl"


def corpus_text(path: Path, chars: int) -> str:
    parts, total = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            block = f"## {doc['title']}\n\n{doc['text']}\n\n"
            parts.append(block)
            total += len(block)
            if total >= chars:
                break
    return "".join(parts)[:chars]


def pdf_pages(text: str, pages: int, lines_per_page: int = 40, line_chars: int = 90) -> list[str]:
    words = text.split()
    result, cursor = [], 0
    for _ in range(pages):
        lines = []
        for _ in range(lines_per_page):
            line = []
            while cursor < len(words) and sum(len(w) + 1 for w in line) < line_chars:
                line.append(words[cursor].encode("latin-1", "replace").decode("latin-1"))
                cursor += 1
            lines.append(" ".join(line))
        result.append("\n".join(lines))
    return result


def measure(path: Path, name: str, repeat: int) -> dict:
    timings, added = [], None
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as kept:
            started = time.perf_counter()
            stored = save_upload(path, Path(kept), limit_bytes=50 * 1048576, display_name=name)
            documents = DocumentSet()
            added = documents.add_file(stored, name)
            hits = documents.search("clinical trial results", 5)
            timings.append(time.perf_counter() - started)
            assert hits, "the upload is not searchable"
    return {"name": name, "bytes": path.stat().st_size, "pages": added.pages, "chunks": added.chunks,
            "tokens": added.tokens, "median_s": statistics.median(timings), "max_s": max(timings)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    text = corpus_text(args.corpus, 1_048_576)
    with tempfile.TemporaryDirectory() as folder:
        txt = Path(folder) / "one-megabyte.txt"
        txt.write_text(text, encoding="utf-8")
        pdf = Path(folder) / "hundred-pages.pdf"
        pdf.write_bytes(pdf_bytes(pdf_pages(text, 100)))
        rows = [measure(txt, "one-megabyte.txt", args.repeat), measure(pdf, "hundred-pages.pdf", args.repeat)]
    print(f"{'file':20} {'size':>9} {'pages':>6} {'chunks':>7} {'tokens':>8} {'upload->searchable median':>26} {'max':>8}")
    for row in rows:
        print(f"{row['name']:20} {row['bytes'] / 1048576:>7.2f}MB {row['pages'] or '-':>6} {row['chunks']:>7} "
              f"{row['tokens']:>8} {row['median_s']:>24.2f} s {row['max_s']:>6.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
