"""Ranking quality on real documentation: the right page first, in the top 5, MRR; and follow-up questions.

    python -m benchmarks.retrieval_docs [--questions FILE] [--before REF] [--grid]

The development set (``benchmarks/questions/python311_library.json``) holds developer questions on
Python 3.11's library reference (Debian package ``python3.11-doc``, HTML under /usr/share/doc), each
with the page(s) that answer it, and follow-up pairs (a question, then one that refers back to it).
When the folder is missing the benchmark installs the package with apt-get when it can (root), else
says how to install it and stops.

A question counts for a page when one of its accepted pages is the page of a returned chunk; pages are
ranked by their best chunk. Printed: hit@1, hit@5 and MRR (over the first 10 pages) for the ranking as
built now, for the same index without the heading field, and, with ``--before REF``, for the code of a
git ref (e.g. ``main``: its ``rag/`` is exported with ``git archive`` into a temporary folder and run in a
subprocess). Follow-ups are searched on their own words and with :func:`rag.followup.retrieval_query`.
``--grid`` prints the weight grid the defaults were chosen from.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from benchmarks.data import PROJECT_ROOT, export_at_revision

DEFAULT_QUESTIONS = PROJECT_ROOT / "benchmarks" / "questions" / "python311_library.json"


def locate_folder(spec: dict) -> Path:
    folder = Path(spec["folder"])
    if folder.is_dir():
        return folder
    package = spec["package"]
    print(f"{folder} is missing: it comes from the Debian package {package} (version {spec['version']}).")
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"Installing {package} with apt-get ...", flush=True)
        result = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", package],
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode == 0 and folder.is_dir():
            return folder
    raise SystemExit(f"Install it first: sudo apt-get install {package}   (then run this benchmark again)")


def page_of(source: str) -> str:
    return source.rsplit("/", 1)[-1]


def page_ranking(results, limit: int = 10) -> list[str]:
    pages: list[str] = []
    for scored in results:
        page = page_of(scored.chunk.source)
        if page not in pages:
            pages.append(page)
    return pages[:limit]


def score_rankings(rankings: list[list[str]], accepted: list[list[str]]) -> dict:
    first = top5 = reciprocal = 0.0
    misses = []
    for number, (pages, wanted) in enumerate(zip(rankings, accepted)):
        rank = next((i for i, page in enumerate(pages, start=1) if page in wanted), None)
        first += rank == 1
        top5 += rank is not None and rank <= 5
        reciprocal += 1 / rank if rank else 0.0
        if rank != 1:
            misses.append((number, rank, pages[:3]))
    count = len(rankings) or 1
    return {"hit1": first / count, "hit5": top5 / count, "mrr": reciprocal / count, "misses": misses}


def evaluate_current(folder: Path, spec: dict, cache_dir: Path, weights=None) -> dict:
    """Every measurement of this checkout's code (imported here, so --before can run another checkout's)."""
    from rag.followup import retrieval_query
    from rag.index import DEFAULT_WEIGHTS, search_segments
    from rag.knowledge import KnowledgeBase

    started = time.perf_counter()
    kb = KnowledgeBase(folder, cache_dir)
    report = kb.refresh()
    build_s = time.perf_counter() - started
    weights = weights or DEFAULT_WEIGHTS
    questions = [item["question"] for item in spec["questions"]]
    accepted = [item["pages"] for item in spec["questions"]]

    def run(weights_used, texts):
        return [page_ranking(search_segments([kb.collection.shared], text, 30, weights_used)) for text in texts]

    out = {
        "chunks": report.chunks, "build_s": build_s,
        "fields": score_rankings(run(weights, questions), accepted),
        "body_only": score_rankings(run(weights.without_structure, questions), accepted),
    }
    followups = spec.get("followups", [])
    if followups:
        pages = [item["pages"] for item in followups]
        alone = [item["followup"] for item in followups]
        rewritten = [retrieval_query(item["followup"], [{"role": "user", "content": item["first"]},
                                                        {"role": "assistant", "content": "(answer)"}])
                     for item in followups]
        out["followup_alone"] = score_rankings(run(weights, alone), pages)
        out["followup_query"] = score_rankings(run(weights, rewritten), pages)
        out["followup_examples"] = list(zip(alone, rewritten))[:3]
    return out


def evaluate_plain(folder: Path, spec: dict, cache_dir: Path) -> dict:
    """Questions through the public KnowledgeBase API only (refresh + search): works on older checkouts."""
    from rag.knowledge import KnowledgeBase

    started = time.perf_counter()
    kb = KnowledgeBase(folder, cache_dir)
    report = kb.refresh()
    build_s = time.perf_counter() - started
    rankings = [page_ranking(kb.search(item["question"], 30)) for item in spec["questions"]]
    out = {"chunks": report.chunks, "build_s": build_s,
           "ranking": score_rankings(rankings, [item["pages"] for item in spec["questions"]])}
    followups = spec.get("followups", [])
    if followups:
        rankings = [page_ranking(kb.search(item["followup"], 30)) for item in followups]
        out["followup_alone"] = score_rankings(rankings, [item["pages"] for item in followups])
    return out


def run_before(ref: str, folder: Path, questions: Path) -> dict:
    """evaluate_plain with the rag/ package of git ref ``ref``, in a subprocess."""
    with tempfile.TemporaryDirectory(prefix="retrieval-before-") as temp:
        export_at_revision(ref, "rag", Path(temp))
        shutil.copytree(PROJECT_ROOT / "benchmarks", Path(temp) / "benchmarks")
        code = (
            "import json, sys; from pathlib import Path; from benchmarks.retrieval_docs import evaluate_plain; "
            f"spec = json.loads(Path({str(questions)!r}).read_text()); "
            f"print(json.dumps(evaluate_plain(Path({str(folder)!r}), spec, Path({temp!r}) / 'cache')))"
        )
        result = subprocess.run([sys.executable, "-c", code], cwd=temp, capture_output=True, text=True,
                                env={**os.environ, "PYTHONPATH": temp})
        if result.returncode != 0:
            raise SystemExit(f"the {ref} checkout failed:\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


GRID = {"title": (0.5, 1.0, 2.0, 3.0), "section": (0.5, 1.0, 1.25, 2.0), "page": (0.0, 0.3, 0.5, 1.0)}


def grid_main(folder: Path, spec: dict, cache_dir: Path) -> None:
    """hit@1 / hit@5 / MRR for each title weight x section weight x page share (the other parameters: defaults)."""
    from rag.index import DEFAULT_WEIGHTS, search_segments
    from rag.knowledge import KnowledgeBase

    kb = KnowledgeBase(folder, cache_dir)
    kb.refresh()
    accepted = [item["pages"] for item in spec["questions"]]
    print("\nWeight grid: title weight x section weight x page share -> hit@1/hit@5/MRR")
    for title in GRID["title"]:
        for section in GRID["section"]:
            cells = []
            for page in GRID["page"]:
                weights = replace(DEFAULT_WEIGHTS, title=title, section=section, page=page)
                rankings = [page_ranking(search_segments([kb.collection.shared], item["question"], 30, weights))
                            for item in spec["questions"]]
                result = score_rankings(rankings, accepted)
                cells.append(f"p={page}: {result['hit1']:.2f}/{result['hit5']:.2f}/{result['mrr']:.3f}")
            print(f"  title {title:<4} section {section:<4} " + "   ".join(cells))


def row(label: str, result: dict) -> str:
    return f"{label:<52} {result['hit1']:>6.2f} {result['hit5']:>6.2f} {result['mrr']:>6.3f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=Path, default=DEFAULT_QUESTIONS)
    parser.add_argument("--before", metavar="REF", help="also measure the code of this git ref (e.g. main)")
    parser.add_argument("--grid", action="store_true", help="print the weight grid the defaults come from")
    parser.add_argument("--misses", action="store_true", help="list the questions whose page is not first")
    args = parser.parse_args(argv)

    spec = json.loads(args.questions.read_text(encoding="utf-8"))
    folder = locate_folder(spec)
    print(f"Development set: {len(spec['questions'])} questions, {len(spec.get('followups', []))} follow-up pairs; "
          f"{spec['package']} {spec['version']}, {folder}")
    header = f"{'ranking':<52} {'hit@1':>6} {'hit@5':>6} {'MRR':>6}"
    with tempfile.TemporaryDirectory(prefix="retrieval-docs-") as temp:
        current = evaluate_current(folder, spec, Path(temp) / "cache")
        print(f"Index: {current['chunks']} chunks, built cold in {current['build_s']:.1f} s (wall; machine shared)\n")
        print(header)
        print("-" * len(header))
        if args.before:
            before = run_before(args.before, folder, args.questions)
            print(row(f"before ({args.before}: {before['chunks']} chunks)", before["ranking"]))
        print(row("body field only (title/section weights 0)", current["body_only"]))
        print(row("body + title + section fields (default weights)", current["fields"]))
        print("targets: hit@1 >= 0.85, hit@5 >= 0.97, MRR >= 0.90")
        if "followup_alone" in current:
            print(f"\nFollow-up questions ({len(spec['followups'])} pairs), right page of the follow-up:")
            print(header)
            print("-" * len(header))
            if args.before and "followup_alone" in before:
                print(row(f"before ({args.before}): the follow-up's own words", before["followup_alone"]))
            print(row("the follow-up's own words", current["followup_alone"]))
            print(row("retrieval_query (earlier question's key terms)", current["followup_query"]))
            for alone, rewritten in current["followup_examples"]:
                print(f"  {alone!r} -> {rewritten!r}")
        if args.misses:
            print("\nNot first (question, rank, top pages):")
            for number, rank, pages in current["fields"]["misses"]:
                print(f"  {spec['questions'][number]['question']} -> {rank} {pages}")
        if args.grid:
            from rag.index import DEFAULT_WEIGHTS

            grid_main(folder, spec, Path(temp) / "cache")


if __name__ == "__main__":
    main()
