"""Knowledge base start-up at ~100k chunks: cache size, cached load time, and what a new chat costs.

    python -m benchmarks.knowledge_load [--chunks 100000] [--before main]

Builds a knowledge folder of real text (SciFact abstracts, one Markdown file per 100 abstracts, each
abstract a section, copies numbered until there are enough chunks) in a temporary folder, then, each
step in a fresh subprocess started small (so its peak memory is its own):

1. cold index of the folder (once);
2. restart from the cache: ``KnowledgeBase(...).refresh()`` with nothing changed, best of 3 (1 for the
   before code, whose every restart and chat start rebuilds the index);
3. a new chat's knowledge work: before, ``knowledge.refresh()`` on every chat start (what app.py did);
   now, a DocumentSet in the chat's scope of the already loaded index plus the welcome's file list.

``--before REF`` runs the same steps with the ``rag/`` of a git ref (``git archive``), for the figures
of the code as it was.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.data import PROJECT_ROOT, export_at_revision, scifact_dir

STEP = r"""
import json, resource, statistics, sys, time
from pathlib import Path
from rag.knowledge import KnowledgeBase
folder, cache, step = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
out = {}
if step == "cold":
    started, cpu = time.perf_counter(), time.process_time()
    report = KnowledgeBase(folder, cache).refresh()
    out = {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "chunks": report.chunks}
elif step == "load":
    started, cpu = time.perf_counter(), time.process_time()
    kb = KnowledgeBase(folder, cache)
    report = kb.refresh()
    out = {"seconds": time.perf_counter() - started, "cpu_s": time.process_time() - cpu, "chunks": report.chunks,
           "cache": report.cache}
    kb.search("protein expression in cancer cells", 5)
    times = []
    for number in range(20):
        started = time.perf_counter()
        if hasattr(kb, "collection"):  # now: a scope of the loaded index, and the welcome's file count
            from rag.documents import DocumentSet
            DocumentSet(collection=kb.collection, scope=f"chat-{number}")
            len(kb.sources()); kb.chunk_count
        else:  # before: app.py refreshed the knowledge base on every chat start
            kb.refresh(); len({c.source for c in kb.chunks})
        times.append((time.perf_counter() - started) * 1000)
        if number == 2 and not hasattr(kb, "collection"):
            break
    out["new_chat_ms"] = statistics.median(times)
    search = []
    for query in ("protein expression in cancer cells", "vitamin D deficiency", "antibiotic resistance genes"):
        started = time.perf_counter(); kb.search(query, 5); search.append((time.perf_counter() - started) * 1000)
    out["search_ms"] = statistics.median(search)
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def build_folder(target: Path, chunks: int) -> int:
    abstracts = []
    with open(scifact_dir() / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)
            if doc.get("text"):
                abstracts.append((doc.get("title") or "Abstract", doc["text"]))
    random.Random(7).shuffle(abstracts)
    files = 0
    made = 0
    copy = 0
    while made < chunks:
        for start in range(0, len(abstracts), 100):
            batch = abstracts[start : start + 100]
            body = "\n\n".join(f"## {title}\n\n{text}" for title, text in batch)
            (target / f"copy{copy:02d}").mkdir(exist_ok=True)
            (target / f"copy{copy:02d}" / f"abstracts-{start // 100:03d}.md").write_text(
                f"# Abstracts {start}-{start + len(batch)} (copy {copy})\n\n{body}\n", encoding="utf-8")
            files += 1
            made += len(batch)  # ~1 chunk per abstract (most are under 300 tokens)
            if made >= chunks:
                break
        copy += 1
    return files


def run_step(code_dir: Path, folder: Path, cache: Path, step: str) -> dict:
    result = subprocess.run([sys.executable, "-c", STEP, str(folder), str(cache), step], cwd=code_dir,
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(code_dir)})
    if result.returncode != 0:
        raise SystemExit(f"step {step} failed in {code_dir}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(label: str, code_dir: Path, folder: Path, cache: Path, loads: int) -> dict:
    print(f"[{label}] cold index ...", flush=True)
    cold = run_step(code_dir, folder, cache, "cold")
    print(f"[{label}] restarts ...", flush=True)
    loads = [run_step(code_dir, folder, cache, "load") for _ in range(loads)]
    best = min(loads, key=lambda r: r["seconds"])
    return {"label": label, "chunks": cold["chunks"], "cold_s": cold["seconds"], "cold_cpu_s": cold["cpu_s"],
            "cold_rss_mb": cold["peak_rss_mb"], "cache_mb": folder_size(cache) / 1e6, "load_s": best["seconds"],
            "load_cpu_s": best["cpu_s"], "load_rss_mb": best["peak_rss_mb"], "new_chat_ms": best["new_chat_ms"],
            "search_ms": best["search_ms"], "cache": best["cache"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--before", metavar="REF", help="also measure the rag/ of this git ref (e.g. main)")
    parser.add_argument("--before-only", action="store_true", help="measure only the --before code")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="knowledge-load-") as temp:
        temp = Path(temp)
        folder = temp / "knowledge"
        folder.mkdir()
        files = build_folder(folder, args.chunks)
        print(f"Knowledge folder: {files} Markdown files, {folder_size(folder) / 1e6:.0f} MB of SciFact abstracts")
        results = []
        if args.before:
            before_dir = export_at_revision(args.before, "rag", temp / "before")
            results.append(measure(f"before ({args.before})", before_dir, folder, temp / "cache-before", 1))
        if not args.before_only:
            results.append(measure("now", PROJECT_ROOT, folder, temp / "cache-now", 3))
    print()
    header = (f"{'code':<14} {'chunks':>7} {'cold s':>7} {'cold cpu':>8} {'cache MB':>8} {'load s':>7} {'load cpu':>8} "
              f"{'load RSS':>8} {'new chat ms':>11} {'search ms':>9}")
    print(header)
    print("-" * len(header))
    for r in results:
        print(f"{r['label']:<14} {r['chunks']:>7} {r['cold_s']:>7.1f} {r['cold_cpu_s']:>8.1f} {r['cache_mb']:>8.1f} "
              f"{r['load_s']:>7.2f} {r['load_cpu_s']:>8.2f} {r['load_rss_mb']:>7.0f}M {r['new_chat_ms']:>11.2f} "
              f"{r['search_ms']:>9.1f}")
    print("\nload: a fresh process's KnowledgeBase(...).refresh() from the cache (best of 3; 1 for before), wall and CPU s.")
    print("new chat: before, app.py refreshed the knowledge base at every chat start; now a chat takes a scope of the")
    print("index loaded once per process. Targets: load <= 1 s at 100k chunks, new chat <= 100 ms. Wall times are")
    print("noisy: the 2-core machine is shared.")


if __name__ == "__main__":
    main()
