"""Sharing an upload survives a crash at any point: kill the process before each file-system change it makes.

A child process shares a conversation's upload into the knowledge folder and refreshes the knowledge base,
as ``app.on_share_document`` does. A Python audit hook counts the changes it makes to files (opening for
writing, renaming, removing, making folders) and ends the process with ``os._exit`` just before the N-th: no
``finally``, no cleanup, like ``kill -9``. For N = 1, 2, ... until the child finishes, a fresh process (as
the restarted app) then checks that the cache loads as it is, that the document is either whole in the
shared knowledge or not there at all, and that the conversation's upload is intact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assistant.uploads import file_sha256, save_upload
from rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from rag.knowledge import KnowledgeBase
from rag.loaders import document_chunks, load_bytes
from tests.fixtures.documents import write

PROJECT = Path(__file__).resolve().parents[1]
CRASHED = 137
MUTATING_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree", "os.truncate"}
DISPLAY_NAME = "field notes.md"


def _writes(args: tuple) -> bool:
    """Whether an ``open`` audit event opens for writing (builtin open: a mode string; os.open: flags)."""
    mode, flags = args[1], args[2]
    if isinstance(mode, str):
        return any(letter in mode for letter in "wax+")
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


def child(crash_before: int, upload: str, knowledge: str, cache: str) -> None:
    """Load the knowledge base (as the running app has), then share and refresh, dying before change N."""
    from assistant.uploads import share_document

    kb = KnowledgeBase(Path(knowledge), Path(cache))
    kb.refresh()
    count = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal count
        if event in MUTATING_EVENTS or (event == "open" and _writes(args)):
            count += 1
            if count == crash_before:
                os._exit(CRASHED)

    sys.addaudithook(hook)
    share_document(Path(upload), DISPLAY_NAME, Path(knowledge) / "uploads")
    kb.refresh()
    os._exit(0)


def run_child(crash_before: int, upload: Path, knowledge: Path, cache: Path) -> int:
    code = (f"from tests.test_share_crash import child; "
            f"child({crash_before}, {str(upload)!r}, {str(knowledge)!r}, {str(cache)!r})")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, CRASHED), done.stderr[-2000:]
    return done.returncode


def document_text(number: int) -> str:
    sections = [f"## Part {n}\n\nThe quokka census of region {n} counted {n * 7} animals near the "
                f"lighthouse; volunteers logged weather, tides and burrow entrances for each transect.\n"
                for n in range(40)]
    return f"# Field notes {number}\n\n" + "\n".join(sections)


def expected_chunks(data: bytes, source: str) -> list[str]:
    document = load_bytes(data, Path(source).name, source)
    chunks = document_chunks(document, source, chunk_tokens=DEFAULT_CHUNK_TOKENS, overlap=DEFAULT_OVERLAP)
    return [chunk.text for chunk in chunks]


@pytest.fixture
def setup(tmp_path):
    knowledge = tmp_path / "knowledge"
    write(knowledge / "pets.md", "# Pets\n\nThe office parrot is called Captain Beaky.\n")
    write(knowledge / "guides" / "deploy.txt", "Deployments happen every Thursday after the standup.")
    cache = tmp_path / "cache"
    KnowledgeBase(knowledge, cache).refresh()
    session_file = write(tmp_path / "session" / "notes.md", document_text(1))
    upload = save_upload(session_file, tmp_path / "data" / "uploads" / "thread-1", 10_000_000, DISPLAY_NAME)
    return knowledge, cache, upload


def snapshot(paths: list[Path], into: Path) -> None:
    for path in paths:
        shutil.copytree(path, into / path.name)


def restore(paths: list[Path], snapshot_dir: Path) -> None:
    for path in paths:
        shutil.rmtree(path)
        shutil.copytree(snapshot_dir / path.name, path)  # copytree keeps modification times


def visible_files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def check_after_crash(knowledge: Path, cache: Path, upload: Path, upload_sha: str, before: int) -> str:
    """The invariants after a crash; returns where the document ended up ("shared" or "conversation")."""
    assert file_sha256(upload) == upload_sha, f"crash before change {before}: the upload changed"
    restarted = KnowledgeBase(knowledge, cache)
    report = restarted.refresh()
    assert report.cache in ("reused", "updated"), f"crash before change {before}: cache {report.cache}"
    shared = visible_files(knowledge) - {"pets.md", "guides/deploy.txt"}
    assert restarted.search("Captain Beaky parrot", 1)[0].chunk.source == "pets.md"
    if not shared:
        assert not [c for c in restarted.chunks if c.source.startswith("uploads/")]
        return "conversation"
    assert len(shared) == 1, f"crash before change {before}: {shared}"
    source = shared.pop()
    data = (knowledge / source).read_bytes()
    assert data == upload.read_bytes(), f"crash before change {before}: the shared copy differs from the upload"
    indexed = [c.text for c in sorted(restarted.chunks, key=lambda c: c.position) if c.source == source]
    assert indexed == expected_chunks(data, source), f"crash before change {before}: the index differs"
    assert restarted.search("quokka census lighthouse", 1)[0].chunk.source == source
    assert KnowledgeBase(knowledge, cache).refresh().cache == "reused"  # and the rewritten cache loads
    return "shared"


def test_a_crash_at_any_point_of_sharing_loses_nothing_and_corrupts_nothing(setup, tmp_path):
    knowledge, cache, upload = setup
    upload_sha = file_sha256(upload)
    conversation = upload.parent
    pristine = tmp_path / "pristine"
    snapshot([knowledge, cache, conversation], pristine)
    outcomes = []
    for before in range(1, 60):
        restore([knowledge, cache, conversation], pristine)
        code = run_child(before, upload, knowledge, cache)
        outcomes.append(check_after_crash(knowledge, cache, upload, upload_sha, before))
        if code == 0:
            break
    else:
        pytest.fail("sharing made more than 60 changes to files")
    assert code == 0 and outcomes[-1] == "shared"  # the last run was not killed: the share completed
    crashes = outcomes[:-1]
    assert len(crashes) >= 10  # the copy (folder, temporary file, rename) and the cache write were each cut
    # Killed before the copy was in place the document stays in the conversation only; after, it is whole.
    assert "conversation" in crashes and "shared" in crashes
    assert crashes == sorted(crashes)  # "conversation" ... then "shared": never back
