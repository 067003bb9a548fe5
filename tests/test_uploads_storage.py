import asyncio
import json
import os
import sqlite3
import time

import pytest

from assistant.conversations import ConversationStore
from assistant.storage import SCHEMA, LocalFileStorage, ensure_schema, safe_key
from assistant.uploads import STALE_INCOMING_S, UploadError, safe_name, save_upload, share_document

SHA = "ab" * 32


@pytest.mark.parametrize(
    "display, expected",
    [
        ("../../etc/passwd.md", f"{SHA[:16]}-passwd.md"),
        ("report final (v2).PDF", f"{SHA[:16]}-report_final_v2.pdf"),
        ("..\\..\\windows\\system.ini", f"{SHA[:16]}-system.ini"),
        ("/abs/path/.hidden", f"{SHA[:16]}-document.hidden"),
        ("noext", f"{SHA[:16]}-noext"),
        ("evil.md/../../x", f"{SHA[:16]}-x"),
    ],
)
def test_safe_name_never_carries_a_path(display, expected):
    name = safe_name(display, SHA)
    assert name == expected
    assert "/" not in name and "\\" not in name and not name.startswith(".")


def test_save_upload_copies_out_of_the_session_folder(tmp_path):
    src = tmp_path / "session" / "upload.md"
    src.parent.mkdir()
    src.write_text("# Notes\nhello")
    kept = save_upload(src, tmp_path / "kept", limit_bytes=1000, display_name="../../etc/passwd.md")
    assert kept.parent == tmp_path / "kept"
    assert kept.name.endswith("-passwd.md")
    src.unlink()  # Chainlit deletes its copy when the session ends
    assert kept.read_text() == "# Notes\nhello"


def test_save_upload_refuses_empty_and_oversized_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(UploadError, match="empty"):
        save_upload(empty, tmp_path / "kept", limit_bytes=1000)
    big = tmp_path / "big.txt"
    big.write_bytes(b"x" * 3_000_000)
    with pytest.raises(UploadError, match="over the 2 MB limit"):
        save_upload(big, tmp_path / "kept", limit_bytes=2 * 1048576)
    assert not (tmp_path / "kept").exists() or not any((tmp_path / "kept").iterdir())


def test_share_document_is_atomic_and_deduplicated_by_content(tmp_path):
    src = tmp_path / "a.md"
    src.write_text("shared fact")
    shared = tmp_path / "knowledge" / "uploads"
    target, created = share_document(src, "../../notes.md", shared)
    assert created and target.parent == shared and target.read_text() == "shared fact"
    again, created_again = share_document(src, "other-name.md", shared)
    assert again == target and not created_again
    assert [p.name for p in shared.iterdir()] == [target.name]  # no temp files left behind


def test_a_partial_copy_left_by_a_killed_process_is_removed_once_stale(tmp_path):
    shared = tmp_path / "knowledge" / "uploads"
    shared.mkdir(parents=True)
    stale, fresh = shared / ".incoming-killed", shared / ".incoming-in-progress"
    stale.write_bytes(b"half a docum")
    fresh.write_bytes(b"half a docum")
    long_ago = time.time() - STALE_INCOMING_S - 60
    os.utime(stale, (long_ago, long_ago))
    src = tmp_path / "a.md"
    src.write_text("shared fact")
    target, _ = share_document(src, "notes.md", shared)
    assert sorted(p.name for p in shared.iterdir()) == sorted([target.name, fresh.name])


def test_safe_key_and_local_storage_stay_inside_their_folder(tmp_path):
    assert safe_key("user/../../etc/passwd") == "user/etc/passwd"
    storage = LocalFileStorage(tmp_path / "files")
    result = asyncio.run(storage.upload_file("u1/el1/../../../x.txt", b"data"))
    assert result["url"] == "/storage/u1/el1/x.txt"
    assert (tmp_path / "files" / "u1" / "el1" / "x.txt").read_bytes() == b"data"
    assert asyncio.run(storage.delete_file("u1/el1/x.txt")) is True
    assert asyncio.run(storage.delete_file("u1/el1/x.txt")) is False


def test_schema_is_created_and_upgraded_idempotently(tmp_path):
    db = tmp_path / "chat.db"
    conn = sqlite3.connect(db)
    conn.execute('CREATE TABLE steps ("id" TEXT PRIMARY KEY, "name" TEXT, "type" TEXT, "threadId" TEXT)')
    conn.commit()
    conn.close()
    url = f"sqlite+aiosqlite:///{db}"
    asyncio.run(ensure_schema(url))
    asyncio.run(ensure_schema(url))  # a second start changes nothing and does not fail
    conn = sqlite3.connect(db)
    for table, columns in SCHEMA.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        assert set(columns) <= present, table
    conn.close()


def test_conversation_store_round_trip_and_damage(tmp_path):
    store = ConversationStore(tmp_path)
    store.update("thread-1", chat_settings={"mode": "small"})
    store.update("thread-1", history=[{"role": "user", "content": "hi"}])
    assert store.load("thread-1") == {"chat_settings": {"mode": "small"}, "history": [{"role": "user", "content": "hi"}]}
    (tmp_path / "thread-2.json").write_text("{not json")
    assert store.load("thread-2") == {}
    with pytest.raises(ValueError):
        store.load("../../etc/passwd")
    assert json.loads((tmp_path / "thread-1.json").read_text())["chat_settings"]["mode"] == "small"
