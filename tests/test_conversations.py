"""A conversation's state: history and metrics come back from the thread's own stored messages (Chainlit's
SQLAlchemy data layer on real SQLite); the app's own file holds only what Chainlit does not keep, and goes
when the thread is deleted."""

import json
import sqlite3

from assistant.conversations import (
    HISTORY_KEY, METRICS_KEY, ConversationStore, history_from_steps, metrics_from_steps,
)
from assistant.storage import LocalFileStorage, ensure_schema, thread_data_layer
from routing.metrics import LegMetrics, TurnMetrics
from tests.fixtures.chat_database import chat_database_with_thread

THREAD = "thread-1"


def turn_metrics(model: str, total_ms: float) -> dict:
    leg = LegMetrics(role="small", alias="phi", model=model, outcome="answered", ttft_ms=100.0, generation_ms=200.0,
                     total_ms=total_ms, prompt_tokens=10, completion_tokens=5, tokens_estimated=False,
                     decode_tokens_per_s=20.0, cost_usd=0.001)
    return TurnMetrics(total_ms=total_ms, legs=[leg], answered_by=model).to_dict()


def insert_step(db, step_id, kind, created, output, metadata=None):
    db.execute(
        'INSERT INTO steps ("id", "name", "type", "threadId", "output", "metadata", "createdAt") '
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (step_id, kind, kind, THREAD, output, json.dumps(metadata or {}), created),
    )


async def test_history_and_metrics_come_back_from_the_stored_messages_and_leave_with_the_thread(tmp_path):
    url = await chat_database_with_thread(tmp_path, THREAD)
    with sqlite3.connect(tmp_path / "chat.db") as db:
        insert_step(db, "s0", "assistant_message", "2026-01-01T00:00:01Z", "Welcome")  # no metadata: not history
        insert_step(db, "s1", "user_message", "2026-01-01T00:00:02Z", "How many vacation days?")
        insert_step(db, "s2", "assistant_message", "2026-01-01T00:00:03Z", "25 days [1]\n---\nfooter",
                    {HISTORY_KEY: "25 days (handbook.md).", METRICS_KEY: turn_metrics("phi", 900.0)})
        insert_step(db, "s3", "user_message", "2026-01-01T00:00:04Z", "/docs")  # a command, never answered
        insert_step(db, "s4", "assistant_message", "2026-01-01T00:00:05Z", "Shared knowledge: ...")
        insert_step(db, "s5", "user_message", "2026-01-01T00:00:06Z", "And receipts?")
        insert_step(db, "s6", "assistant_message", "2026-01-01T00:00:07Z", "Above 20 euros [1].",
                    {HISTORY_KEY: "Above 20 euros (expenses.md).", METRICS_KEY: turn_metrics("gpt", 2100.0)})

    store = ConversationStore(tmp_path / "conversations")
    await store.aupdate(THREAD, documents={"files": []}, chat_settings={"mode": "small"})
    deleted = []

    async def forget(thread_id):
        deleted.append(thread_id)
        await store.adelete(thread_id)

    layer = thread_data_layer(url, LocalFileStorage(tmp_path / "files"), forget)
    thread = await layer.get_thread(THREAD)

    assert history_from_steps(thread["steps"]) == [
        {"role": "user", "content": "How many vacation days?"},
        {"role": "assistant", "content": "25 days (handbook.md)."},
        {"role": "user", "content": "And receipts?"},
        {"role": "assistant", "content": "Above 20 euros (expenses.md)."},
    ]
    session = metrics_from_steps(thread["steps"])
    assert [t.answered_by for t in session.turns] == ["phi", "gpt"]
    assert [t.total_ms for t in session.turns] == [900.0, 2100.0]
    assert session.total_cost_usd == 0.002

    assert (await store.aload(THREAD))["chat_settings"] == {"mode": "small"}
    await layer.delete_thread(THREAD)
    assert deleted == [THREAD]
    assert await store.aload(THREAD) == {} and not (tmp_path / "conversations" / f"{THREAD}.json").exists()
    assert await layer.get_thread(THREAD) is None
    await layer.close()


async def test_a_save_waits_for_a_write_lock_held_longer_than_sqlites_default_instead_of_being_lost(tmp_path):
    """Twenty chats saving at once on a loaded machine held the SQLite file longer than sqlite3's default
    5 s busy wait; Chainlit logged "database is locked" and the message was not stored."""
    import asyncio
    import threading
    import time

    url = f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}"
    await ensure_schema(url)
    with sqlite3.connect(tmp_path / "chat.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute('INSERT INTO threads ("id", "createdAt", "name", "metadata") VALUES (?, ?, ?, ?)',
                   (THREAD, "2026-01-01T00:00:00Z", "t", "{}"))

    locked, release = threading.Event(), threading.Event()

    def hold_the_write_lock():
        db = sqlite3.connect(tmp_path / "chat.db", isolation_level=None)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait()
        db.execute("COMMIT")
        db.close()

    holder = threading.Thread(target=hold_the_write_lock)
    holder.start()
    assert locked.wait(5)
    asyncio.get_running_loop().call_later(5.5, release.set)
    layer = thread_data_layer(url, LocalFileStorage(tmp_path / "files"), lambda _: None)
    started = time.monotonic()
    # The statement Chainlit's create_step runs goes through execute_sql, which logs a failure and drops it.
    stored = await layer.execute_sql('INSERT INTO steps ("id", "threadId", "name", "type", "output") '
                                     "VALUES (:id, :thread, 'assistant', 'assistant_message', 'kept')",
                                     {"id": "s1", "thread": THREAD})
    waited = time.monotonic() - started
    holder.join()
    await layer.close()
    assert stored == 1
    with sqlite3.connect(tmp_path / "chat.db") as db:
        assert db.execute("SELECT output FROM steps WHERE id = 's1'").fetchall() == [("kept",)]
    assert waited >= 5.0  # it really waited for the lock, past sqlite3's default
