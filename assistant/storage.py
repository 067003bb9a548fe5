"""Chat history on SQLite (or PostgreSQL): the schema Chainlit's SQLAlchemy data layer expects, and a
local file store so message elements persist too.

Chainlit's ``SQLAlchemyDataLayer`` does not create its tables; ``ensure_schema`` creates them and adds
columns a newer Chainlit writes (e.g. ``steps.defaultOpen``), idempotently, on every start.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Awaitable, Callable

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

# Column name -> SQL type. TEXT holds JSON (metadata, props, generation) as Chainlit serialises it.
SCHEMA: dict[str, dict[str, str]] = {
    "users": {
        "id": "TEXT PRIMARY KEY",
        "identifier": "TEXT NOT NULL UNIQUE",
        "metadata": "TEXT NOT NULL",
        "createdAt": "TEXT",
    },
    "threads": {
        "id": "TEXT PRIMARY KEY",
        "createdAt": "TEXT",
        "name": "TEXT",
        "userId": "TEXT",
        "userIdentifier": "TEXT",
        "tags": "TEXT",
        "metadata": "TEXT",
    },
    "steps": {
        "id": "TEXT PRIMARY KEY",
        "name": "TEXT NOT NULL",
        "type": "TEXT NOT NULL",
        "threadId": "TEXT NOT NULL",
        "parentId": "TEXT",
        "streaming": "BOOLEAN",
        "waitForAnswer": "BOOLEAN",
        "isError": "BOOLEAN",
        "metadata": "TEXT",
        "tags": "TEXT",
        "input": "TEXT",
        "output": "TEXT",
        "createdAt": "TEXT",
        "command": "TEXT",
        "modes": "TEXT",
        "start": "TEXT",
        "end": "TEXT",
        "generation": "TEXT",
        "showInput": "TEXT",
        "language": "TEXT",
        "indent": "INT",
        "defaultOpen": "BOOLEAN",
        "autoCollapse": "BOOLEAN",
        "icon": "TEXT",
    },
    "elements": {
        "id": "TEXT PRIMARY KEY",
        "threadId": "TEXT",
        "type": "TEXT",
        "url": "TEXT",
        "chainlitKey": "TEXT",
        "name": "TEXT NOT NULL",
        "display": "TEXT",
        "objectKey": "TEXT",
        "size": "TEXT",
        "page": "INT",
        "language": "TEXT",
        "forId": "TEXT",
        "mime": "TEXT",
        "props": "TEXT",
        "path": "TEXT",
        "autoPlay": "BOOLEAN",
        "playerConfig": "TEXT",
    },
    "feedbacks": {
        "id": "TEXT PRIMARY KEY",
        "forId": "TEXT NOT NULL",
        "threadId": "TEXT NOT NULL",
        "value": "INT NOT NULL",
        "comment": "TEXT",
    },
}


# SQLite allows one writer at a time; a chat whose write finds the file locked waits this long for it
# (sqlite3's default, 5 s, was exceeded with 20 chats saving at once on a loaded 2-core machine).
SQLITE_BUSY_TIMEOUT_S = 60.0


def connect_args_for(url: str) -> dict[str, Any]:
    return {"timeout": SQLITE_BUSY_TIMEOUT_S} if url.startswith("sqlite") else {}


async def ensure_schema(url: str) -> None:
    """Create missing tables and add missing columns. Safe to run on every start.

    A SQLite file is switched to write-ahead logging (kept in the file): readers then never block the
    writer nor the writer them, so a thread list loading does not hold up a streaming answer's save."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args=connect_args_for(url))
    try:
        if url.startswith("sqlite") and not url.endswith(":memory:"):
            async with engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        async with engine.begin() as conn:
            for table, columns in SCHEMA.items():
                body = ", ".join(f'"{name}" {kind}' for name, kind in columns.items())
                await conn.execute(text(f'CREATE TABLE IF NOT EXISTS {table} ({body})'))
                existing = await conn.run_sync(lambda sync, t=table: _column_names(sync, t))
                for name, kind in columns.items():
                    if name not in existing:
                        plain = kind.replace("PRIMARY KEY", "").replace("NOT NULL", "").replace("UNIQUE", "").strip()
                        await conn.execute(text(f'ALTER TABLE {table} ADD COLUMN "{name}" {plain}'))
    finally:
        await engine.dispose()


def _column_names(sync_conn, table: str) -> set[str]:
    from sqlalchemy import inspect

    return {column["name"] for column in inspect(sync_conn).get_columns(table)}


_SAFE_PART = re.compile(r"[^A-Za-z0-9._-]+")


def safe_key(object_key: str) -> str:
    """An object key made of safe path parts only: no '..', no absolute paths, no odd characters."""
    parts = [_SAFE_PART.sub("_", part) for part in object_key.replace("\\", "/").split("/")]
    parts = [part for part in parts if part not in ("", ".", "..")]
    if not parts:
        raise ValueError("empty object key")
    return "/".join(parts)


class LocalFileStorage:
    """Chainlit storage provider that keeps element files in a local folder, served at ``url_prefix``."""

    def __init__(self, root: Path, url_prefix: str = "/storage"):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url_prefix = url_prefix.rstrip("/")

    def path_for(self, object_key: str) -> Path:
        path = (self.root / safe_key(object_key)).resolve()
        if self.root not in path.parents:
            raise ValueError("object key outside the storage folder")
        return path

    async def upload_file(
        self, object_key: str, data: bytes | str, mime: str = "application/octet-stream", overwrite: bool = True,
        content_disposition: str | None = None,
    ) -> dict[str, Any]:
        key = safe_key(object_key)
        path = self.path_for(key)
        if path.exists() and not overwrite:
            return {"object_key": key, "url": f"{self.url_prefix}/{key}"}
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = data.encode("utf-8") if isinstance(data, str) else data
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.replace(tmp, path)
        return {"object_key": key, "url": f"{self.url_prefix}/{key}"}

    async def delete_file(self, object_key: str) -> bool:
        try:
            self.path_for(object_key).unlink()
            return True
        except (FileNotFoundError, ValueError):
            return False

    async def get_read_url(self, object_key: str) -> str:
        return f"{self.url_prefix}/{safe_key(object_key)}"

    async def close(self) -> None:
        return None


class HeldWrites:
    """The chat database's writes, one at a time in the order they were asked for, and held back while a
    question is on its way to the model.

    Chainlit fires each write as a task of its own on the event loop the chats share. A user's message
    starts four or five of them (the message, its thread, Chainlit's run step, the retrieval step), and
    their SQLAlchemy work ran between the question's arrival and its request to the model server. Held
    until that request is sent (``release``, or ``max_hold_s`` at the latest), they run while the model
    reads the prompt. One at a time also means a step's update can no longer land before its creation.
    """

    def __init__(self, max_hold_s: float = 0.5):
        self.max_hold_s = max_hold_s
        self._lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()
        self._holds: dict[str, asyncio.TimerHandle] = {}
        self._inside = contextvars.ContextVar("inside_a_write", default=False)

    def hold(self, key: str) -> None:
        """Hold writes until ``release(key)``; each hold lets go by itself after ``max_hold_s``."""
        if key in self._holds:
            return
        self._holds[key] = asyncio.get_running_loop().call_later(self.max_hold_s, self.release, key)
        self._open.clear()

    def release(self, key: str) -> None:
        timer = self._holds.pop(key, None)
        if timer is not None:
            timer.cancel()
        if not self._holds:
            self._open.set()

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    async def run(self, write: Callable[..., Awaitable[Any]], *args, **kwargs) -> Any:
        if self._inside.get():  # a write made by a write (create_step updates its thread): already in turn
            return await write(*args, **kwargs)
        async with self._lock:
            await self._open.wait()
            token = self._inside.set(True)
            try:
                return await write(*args, **kwargs)
            finally:
                self._inside.reset(token)

    async def settled(self) -> None:
        """Once the writes asked for before this call are done (for a read that must see them)."""
        if self._inside.get():
            return
        async with self._lock:
            await self._open.wait()


def thread_data_layer(conninfo: str, storage_provider, on_delete, writes: HeldWrites | None = None):
    """Chainlit's SQLAlchemy data layer, with its writes in order and held while a question is sent
    (``HeldWrites``); it also calls ``await on_delete(thread_id)`` once a thread is deleted, so what the
    app keeps beside the thread (its uploads, its conversation state) goes with it."""
    from chainlit.data.sql_alchemy import SQLAlchemyDataLayer

    class ThreadDataLayer(SQLAlchemyDataLayer):
        # Writes (a write made inside another, like create_step's update_thread, runs in that one's turn).
        async def create_step(self, step_dict):
            if step_dict.get("type") == "user_message" and step_dict.get("threadId"):
                self.writes.hold(step_dict["threadId"])  # the app releases it once the answer's request is sent
            return await self.writes.run(super().create_step, step_dict)

        async def update_step(self, step_dict):
            return await self.writes.run(super().update_step, step_dict)

        async def delete_step(self, step_id):
            return await self.writes.run(super().delete_step, step_id)

        async def create_element(self, element):
            return await self.writes.run(super().create_element, element)

        async def delete_element(self, element_id, thread_id=None):
            return await self.writes.run(super().delete_element, element_id, thread_id)

        async def update_thread(self, thread_id, name=None, user_id=None, metadata=None, tags=None):
            return await self.writes.run(super().update_thread, thread_id, name, user_id, metadata, tags)

        async def delete_thread(self, thread_id: str):
            await self.writes.run(super().delete_thread, thread_id)
            await on_delete(thread_id)

        async def upsert_feedback(self, feedback):
            return await self.writes.run(super().upsert_feedback, feedback)

        async def delete_feedback(self, feedback_id):
            return await self.writes.run(super().delete_feedback, feedback_id)

        # Reads that must see the writes asked for before them.
        async def get_thread(self, thread_id):
            await self.writes.settled()
            return await super().get_thread(thread_id)

        async def get_thread_author(self, thread_id):
            await self.writes.settled()
            return await super().get_thread_author(thread_id)

        async def list_threads(self, pagination, filters):
            await self.writes.settled()
            return await super().list_threads(pagination, filters)

        async def get_element(self, thread_id, element_id):
            await self.writes.settled()
            return await super().get_element(thread_id, element_id)

    layer = ThreadDataLayer(conninfo=conninfo, storage_provider=storage_provider, connect_args=connect_args_for(conninfo))
    layer.writes = writes or HeldWrites()
    return layer
