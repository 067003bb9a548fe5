"""A large knowledge folder is read by worker processes and the calling thread together: the index is the
same as one built in-process, skipped files are reported the same way, and a dying worker loses nothing."""

import multiprocessing
import os
from pathlib import Path

import numpy as np
import pytest

import rag.knowledge as knowledge
from rag.knowledge import KnowledgeBase
from tests.fixtures.documents import made_up_words, write

TOPICS = ["parrots", "espresso", "deployments", "tacos", "backups", "printers", "passwords", "holidays"]


@pytest.fixture
def folder(tmp_path):
    docs = tmp_path / "docs"
    for number, topic in enumerate(TOPICS * 3):
        sections = "\n\n".join(f"## {topic.title()} part {part}\n\n" + f"Notes on {topic} number {number}, part {part}. " * 40
                               for part in range(4))
        write(docs / f"{topic}-{number}.md", f"# {topic.title()} {number}\n\n{sections}\n")
    write(docs / "page.html", "<html><head><title>Office page</title></head><body><main><h1>Office page</h1>"
                              "<h2 id='printers'>Printers</h2><p>The printer on floor two jams on Mondays.</p></main>")
    write(docs / "broken.txt", b"\x00\x01\x02binary")
    return docs


def index_state(kb: KnowledgeBase) -> dict:
    segment = kb.collection.shared
    state = {name: (list(f.vocabulary), f.indptr.tolist(), f.docs.tolist(), f.freqs.tolist(), f.lengths.tolist())
             for name, f in segment.fields.items()}
    state["chunks"] = [(c.id, c.text, c.title, c.section, c.anchor, c.tokens, c.doc_title) for c in segment.chunks]
    return state


def test_worker_processes_build_the_same_index(folder, tmp_path):
    alone = KnowledgeBase(folder, tmp_path / "one", workers=0)
    together = KnowledgeBase(folder, tmp_path / "two", workers=2)
    seen = []
    report_alone = alone.refresh()
    report_together = together.refresh(progress=lambda done, total, source: seen.append((done, total)))
    assert index_state(together) == index_state(alone)
    assert report_together.chunks == report_alone.chunks > len(TOPICS) * 3
    assert [s.source for s in report_together.skipped] == [s.source for s in report_alone.skipped] == ["broken.txt"]
    # Progress: every processed file once, counted up to the total.
    total = len(TOPICS) * 3 + 2
    assert sorted(done for done, _ in seen) == list(range(1, total + 1)) and {t for _, t in seen} == {total}
    assert together.progress.done == total
    # Searches and a restart from the cache agree too.
    query = "printer jams on floor two"
    assert [(h.chunk.id, h.score) for h in together.search(query, 5)] == [(h.chunk.id, h.score) for h in alone.search(query, 5)]
    restarted = KnowledgeBase(folder, tmp_path / "two")
    assert restarted.refresh().cache == "reused"
    assert index_state(restarted) == index_state(alone)


def test_small_folders_stay_in_process(folder, tmp_path, monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("a small folder started worker processes")

    monkeypatch.setattr(knowledge, "ProcessPoolExecutor", no_pool)
    kb = KnowledgeBase(folder, tmp_path / "cache")  # 26 small files: far below PARALLEL_MIN_BYTES
    assert kb.refresh().chunks > 0


def test_a_large_folder_uses_the_other_cores(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(knowledge, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(knowledge, "usable_cpus", lambda: 2)
    kb = KnowledgeBase(folder, tmp_path / "cache")
    assert kb._worker_count([("a", b"", None)] * 20) == 1
    monkeypatch.setattr(knowledge, "usable_cpus", lambda: 1)
    assert kb._worker_count([("a", b"", None)] * 20) == 0


PARENT = os.getpid()
REAL_PROCESS_FILE = knowledge.process_file


def dies_in_a_worker(source, *args):
    if os.getpid() != PARENT:
        os._exit(3)  # as a crash in a parser would
    return REAL_PROCESS_FILE(source, *args)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_a_worker_that_dies_loses_no_file(folder, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(knowledge, "process_file", dies_in_a_worker)
    monkeypatch.setattr(knowledge, "_pool_context", lambda: multiprocessing.get_context("fork"))
    kb = KnowledgeBase(folder, tmp_path / "cache", workers=1)
    report = kb.refresh()
    assert "worker processes failed" in caplog.text
    expected = KnowledgeBase(folder, tmp_path / "alone", workers=0)
    expected.refresh()
    assert index_state(kb) == index_state(expected)
    assert report.chunks == expected.chunk_count


def test_the_pool_context_forks_only_a_single_threaded_process(monkeypatch):
    import threading

    monkeypatch.setattr(threading, "active_count", lambda: 1)
    single = knowledge._pool_context().get_start_method()
    monkeypatch.setattr(threading, "active_count", lambda: 5)
    several = knowledge._pool_context().get_start_method()
    methods = multiprocessing.get_all_start_methods()
    assert single == ("fork" if "fork" in methods else several)
    assert several in ("forkserver", "spawn") and several != "fork"


def test_file_terms_keep_first_use_order():
    terms = knowledge.FileTerms.of([["b", "a", "b"], [], ["c", "a"]])
    assert terms.vocabulary == ["b", "a", "c"]
    assert terms.ids.tolist() == [0, 1, 0, 2, 1] and terms.lengths.tolist() == [3, 0, 2]
    assert np.asarray(terms.vocabulary)[terms.ids].tolist() == ["b", "a", "b", "c", "a"]


def _children(pid: int) -> set[int]:
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        for child in _children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the process tree from /proc (Linux)")
def test_workers_exit_when_the_indexing_process_is_killed(tmp_path):
    """kill -9 of the app during a first indexing must not leave its worker processes (and the fork server
    that started them) waiting for work for ever."""
    import random
    import signal
    import subprocess
    import sys
    import time

    rng = random.Random(3)
    folder = tmp_path / "knowledge"
    folder.mkdir()
    for number in range(16):
        words = made_up_words(rng, 300_000)
        (folder / f"part {number}.md").write_text("\n\n".join(" ".join(words[i:i + 120]) for i in range(0, len(words), 120)))
    script = (
        "import sys, threading, time\n"
        "from pathlib import Path\n"
        "from rag.knowledge import KnowledgeBase\n"
        "threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()  # threads: the app's fork server\n"
        "KnowledgeBase(Path(sys.argv[1]), Path(sys.argv[2]), workers=2).refresh()\n"
    )
    indexer = subprocess.Popen([sys.executable, "-c", script, str(folder), str(tmp_path / "cache")],
                               cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while not {worker for server in _children(indexer.pid) for worker in _children(server)}:
            # the fork server (a child) has started a worker (its child)
            assert indexer.poll() is None, "the indexing ended before its workers were seen"
            assert time.monotonic() < deadline, "no worker processes appeared"
            time.sleep(0.05)
        time.sleep(0.5)  # the second worker
        left = _descendants(indexer.pid)
    finally:
        indexer.send_signal(signal.SIGKILL)
        indexer.wait()
    deadline = time.monotonic() + 15
    while True:
        alive = {pid for pid in left if (Path(f"/proc/{pid}/stat").exists()
                                         and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z")}
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for pid in alive:  # do not leave them behind if the check fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"{len(alive)} of {len(left)} processes of the killed indexing are still running"
