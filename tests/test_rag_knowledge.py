import asyncio
import json
import logging
import os
import threading
import time

import pytest

from rag import knowledge
from rag.index import search_many
from rag.knowledge import STALE_AFTER_S, KnowledgeBase
from tests.fixtures.documents import pdf_bytes, write


@pytest.fixture
def folder(tmp_path):
    docs = tmp_path / "docs"
    write(docs / "pets.md", "# Pets\n\nThe office parrot is called Captain Beaky.\n")
    write(docs / "guides" / "deploy.txt", "Deployments happen every Thursday after the standup.")
    write(docs / "manual.pdf", pdf_bytes(["Page one covers the espresso machine.", "Page two covers descaling."]))
    write(docs / "broken.txt", b"\x00\x01\x02binary")
    return docs


@pytest.mark.parametrize("backend", ["rank_bm25", "bm25s"])
def test_refresh_indexes_the_folder_and_searches(folder, tmp_path, backend):
    kb = KnowledgeBase(folder, tmp_path / "cache", backend=backend)
    report = kb.refresh()
    assert sorted(report.added) == ["broken.txt", "guides/deploy.txt", "manual.pdf", "pets.md"]
    assert [s.source for s in report.skipped] == ["broken.txt"]
    assert "binary" in report.skipped[0].reason
    assert report.chunks == kb.chunk_count == 4
    top = kb.search("what is the parrot called?", 3)[0]
    assert top.chunk.source == "pets.md" and top.score > 0
    descaling = kb.search("descaling", 3)[0].chunk
    assert (descaling.source, descaling.page) == ("manual.pdf", 2)


def test_a_file_of_too_many_tokens_is_skipped_before_it_is_chunked(folder, tmp_path, monkeypatch):
    monkeypatch.setattr(knowledge, "MAX_FILE_TOKENS", 1_000)
    write(folder / "tiny-sentences.txt", "a. " * 1_000)  # 3,000 characters, 2,000 tokens
    write(folder / "long-but-fine.txt", "Deployment " * 900)  # more characters than the limit, fewer tokens
    report = KnowledgeBase(folder, tmp_path / "cache").refresh()
    skipped = {s.source: s.reason for s in report.skipped}
    assert skipped["tiny-sentences.txt"] == (
        "tiny-sentences.txt holds 2,000 tokens of text; a file may have at most 1,000. Split it into smaller files."
    )
    assert "long-but-fine.txt" not in skipped and "pets.md" not in skipped


@pytest.mark.parametrize("backend", ["rank_bm25", "bm25s"])
def test_second_refresh_and_restart_reuse_the_cache(folder, tmp_path, backend):
    KnowledgeBase(folder, tmp_path / "cache", backend=backend).refresh()
    restarted = KnowledgeBase(folder, tmp_path / "cache", backend=backend)
    report = restarted.refresh()
    assert report.processed == [] and report.cache == "reused"
    assert sorted(report.unchanged) == ["broken.txt", "guides/deploy.txt", "manual.pdf", "pets.md"]
    assert [s.source for s in report.skipped] == ["broken.txt"]  # remembered, not re-read
    assert restarted.search("Thursday deployments", 1)[0].chunk.source == "guides/deploy.txt"
    assert restarted.refresh().processed == []


def test_changed_added_and_deleted_files_are_the_only_ones_processed(folder, tmp_path):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    write(folder / "pets.md", "# Pets\n\nThe office parrot retired; a goldfish named Bubbles replaced it.\n")
    write(folder / "new.md", "# Lunch\n\nTacos on Fridays.")
    (folder / "guides" / "deploy.txt").unlink()
    report = kb.refresh()
    assert (report.changed, report.added, report.removed) == (["pets.md"], ["new.md"], ["guides/deploy.txt"])
    assert sorted(report.unchanged) == ["broken.txt", "manual.pdf"]
    assert kb.search("goldfish", 1)[0].chunk.source == "pets.md"
    assert kb.search("Thursday", 3) == []
    assert KnowledgeBase(folder, tmp_path / "cache").refresh().processed == []


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "wrong shape"])
def test_damaged_cache_is_rebuilt_with_a_log_line(folder, tmp_path, caplog, damage):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    good = kb.cache_file.read_bytes()
    damaged = {"truncated": good[: len(good) // 2], "garbage": b"\x00\xff{not json", "empty": b"", "wrong shape": b"[1, 2]"}
    kb.cache_file.write_bytes(damaged[damage])
    with caplog.at_level(logging.WARNING, logger="rag.knowledge"):
        report = KnowledgeBase(folder, tmp_path / "cache").refresh()
    assert report.cache.startswith("rebuilt (damaged")
    assert "is damaged" in caplog.text
    assert len(report.processed) == 4
    assert json.loads(kb.cache_file.read_bytes())["files"]  # written again, whole
    assert KnowledgeBase(folder, tmp_path / "cache").refresh().cache == "reused"


@pytest.mark.parametrize("part", ["arrays", "texts"])
def test_damaged_arrays_or_texts_are_rebuilt(folder, tmp_path, caplog, part):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    path = kb.cache_path / json.loads(kb.cache_file.read_bytes())[part]
    path.write_bytes(path.read_bytes()[:10])
    with caplog.at_level(logging.WARNING, logger="rag.knowledge"):
        restarted = KnowledgeBase(folder, tmp_path / "cache")
        report = restarted.refresh()
    assert "damaged" in caplog.text and report.cache.startswith("rebuilt (damaged")
    assert restarted.search("parrot", 1)[0].chunk.source == "pets.md"
    assert KnowledgeBase(folder, tmp_path / "cache").refresh().cache == "reused"


def test_changed_chunk_settings_rebuild(folder, tmp_path):
    KnowledgeBase(folder, tmp_path / "cache").refresh()
    report = KnowledgeBase(folder, tmp_path / "cache", chunk_tokens=100, chunk_overlap=10).refresh()
    assert report.cache == "rebuilt (settings changed)" and len(report.processed) == 4


def test_cache_writes_leave_no_temporary_files(folder, tmp_path):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    write(folder / "extra.md", "More text.")
    kb.refresh()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [kb.cache_path.name]
    manifest = json.loads(kb.cache_file.read_bytes())
    assert sorted(p.name for p in kb.cache_path.iterdir()) == sorted([manifest["arrays"], "manifest.json", manifest["texts"]])
    assert manifest["texts"].startswith("texts-") and manifest["arrays"].startswith("arrays-")


def test_what_killed_writes_leave_is_removed_once_stale(folder, tmp_path):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    # A write killed before its manifest: data files no manifest names. Older cache writes (a temporary
    # folder beside the cache) and the manifest's own temporary file, killed the same way.
    stale = [kb.cache_path / "texts-1-1.bin", kb.cache_path / "arrays-1-1.npz",
             kb.cache_path / ".manifest.json.x.tmp", tmp_path / "cache" / f".{kb.cache_path.name}.abc123"]
    fresh = [kb.cache_path / "texts-2-2.bin", tmp_path / "cache" / f".{kb.cache_path.name}.old-2-2"]
    for path in stale[:3] + fresh[:1]:
        path.write_bytes(b"partial")
    for path in (stale[3], fresh[1]):
        path.mkdir()
        (path / "texts.bin").write_bytes(b"partial")
    long_ago = time.time() - STALE_AFTER_S - 60
    for path in stale:
        os.utime(path, (long_ago, long_ago))
    restarted = KnowledgeBase(folder, tmp_path / "cache")
    assert restarted.refresh().cache == "reused"  # they are no part of the cache
    write(folder / "extra.md", "More text.")
    restarted.refresh()  # a write
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in fresh)  # young: perhaps another process's write in progress
    assert KnowledgeBase(folder, tmp_path / "cache").refresh().cache == "reused"


def test_a_cache_from_before_generations_loads_and_is_replaced(folder, tmp_path):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    manifest = json.loads(kb.cache_file.read_bytes())
    (kb.cache_path / manifest.pop("texts")).rename(kb.cache_path / "texts.bin")
    (kb.cache_path / manifest.pop("arrays")).rename(kb.cache_path / "arrays.npz")
    kb.cache_file.write_text(json.dumps(manifest))
    restarted = KnowledgeBase(folder, tmp_path / "cache")
    assert restarted.refresh().cache == "reused"
    assert restarted.search("parrot", 1)[0].chunk.source == "pets.md"
    write(folder / "extra.md", "More text.")
    restarted.refresh()
    assert not (kb.cache_path / "texts.bin").exists() and not (kb.cache_path / "arrays.npz").exists()
    assert len(list(kb.cache_path.iterdir())) == 3


@pytest.mark.parametrize("name", ["../outside.bin", "", ".hidden", 7])
def test_a_manifest_naming_odd_data_files_is_damage(folder, tmp_path, caplog, name):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    manifest = json.loads(kb.cache_file.read_bytes())
    manifest["texts"] = name
    kb.cache_file.write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="rag.knowledge"):
        report = KnowledgeBase(folder, tmp_path / "cache").refresh()
    assert report.cache == "rebuilt (damaged: ValueError)" and "odd texts file" in caplog.text


def test_missing_folder_gives_an_empty_knowledge_base(tmp_path):
    kb = KnowledgeBase(tmp_path / "nope", tmp_path / "cache")
    assert kb.refresh().chunks == 0
    assert kb.search("anything", 5) == []


def test_searches_keep_working_during_refreshes(folder, tmp_path):
    for number in range(30):
        write(folder / f"filler{number}.md", f"# Filler {number}\n\nUnrelated text number {number} about gardening.")
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    failures: list[BaseException] = []
    stop = threading.Event()

    def searcher():
        while not stop.is_set():
            try:
                results = kb.search("parrot Captain Beaky", 3)
                assert results and results[0].chunk.source == "pets.md"
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                failures.append(exc)
                return

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for thread in threads:
        thread.start()
    for round_number in range(5):
        write(folder / "filler0.md", f"# Filler\n\nChanged {round_number} gardening text.")
        kb.refresh()
    stop.set()
    for thread in threads:
        thread.join()
    assert failures == []


async def test_asearch_runs_in_a_worker_thread(folder, tmp_path):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    await kb.arefresh()
    main_thread = threading.get_ident()
    seen = []
    original = kb.collection.search

    def spy(query, k, scope):
        seen.append(threading.get_ident())
        return original(query, k, scope)

    kb.collection.search = spy
    results = await asyncio.gather(kb.asearch("parrot", 2), kb.asearch("espresso", 2))
    assert results[0][0].chunk.source == "pets.md"
    assert seen and all(ident != main_thread for ident in seen)


def test_search_many_merges_by_rank(folder, tmp_path):
    kb = KnowledgeBase(folder, tmp_path / "cache")
    kb.refresh()
    other = KnowledgeBase(write(tmp_path / "other" / "x.md", "# Parrots\n\nParrots live long.").parent, tmp_path / "c2")
    other.refresh()
    merged = search_many([other, kb], "parrot", 4)
    assert [r.chunk.source for r in merged] == ["x.md", "pets.md"]  # both rank 1: the first retriever wins the tie
    assert merged[1].score == kb.search("parrot", 1)[0].score  # raw scores are kept
