"""A chat driven the way the browser drives it: Chainlit's socket.io protocol, with python-socketio.

    async with ChatClient(app_url) as chat:        # logs in (header auth), connects, starts the chat
        await chat.wait_for_text("Answers come from your documents")
        turn = await chat.ask("How does the router work?")
        turn.answer                                 # the last assistant message of the turn, as shown

Every event is kept with its arrival time (``time.perf_counter()``) for load tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx
import socketio


@dataclass
class Turn:
    question: str
    sent_at: float
    ended_at: float | None = None
    message_ids: list[str] = field(default_factory=list)  # assistant messages created during the turn
    contents: dict[str, str] = field(default_factory=dict)  # id -> text at the end of the turn
    first_token_at: float | None = None
    events: list[tuple[float, str, dict]] = field(default_factory=list)

    @property
    def answer(self) -> str:
        """The text of the turn's last assistant message still shown."""
        for message_id in reversed(self.message_ids):
            if message_id in self.contents:
                return self.contents[message_id]
        return ""

    def texts(self) -> list[str]:
        return [self.contents[m] for m in self.message_ids if m in self.contents]


class ChatClient:
    def __init__(self, base_url: str, *, thread_id: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.thread_id = thread_id
        self.session_id = str(uuid.uuid4())
        self.sio = socketio.AsyncClient(reconnection=False)
        self.messages: dict[str, dict] = {}  # id -> step dict as last shown (output = text)
        self.order: list[str] = []
        self.actions: dict[str, list[dict]] = {}  # message id -> actions shown under it
        self.events: list[tuple[float, str, dict]] = []
        self.connected_at: float | None = None
        self._turn: Turn | None = None
        self._changed = asyncio.Event()
        self._task_running = False
        for name in ("new_message", "update_message", "stream_start", "stream_token", "delete_message",
                     "task_start", "task_end", "first_interaction", "action"):
            self.sio.on(name, self._handler(name))

    def _handler(self, name: str):
        async def handle(data=None, *args):
            self._record(name, data if isinstance(data, dict) else {"value": data})
        return handle

    def _record(self, name: str, data: dict) -> None:
        now = time.perf_counter()
        self.events.append((now, name, data))
        turn = self._turn
        if turn is not None:
            turn.events.append((now, name, data))
        if name in ("new_message", "stream_start", "update_message"):
            message_id = data.get("id")
            if message_id not in self.messages:
                self.order.append(message_id)
                if turn is not None and data.get("type") == "assistant_message":
                    turn.message_ids.append(message_id)
            self.messages[message_id] = dict(data)
            # An answer shown empty before its first token starts its stream with that token in stream_start.
            if name == "stream_start" and turn is not None and turn.first_token_at is None and data.get("output"):
                turn.first_token_at = now
        elif name == "stream_token":
            message = self.messages.setdefault(data["id"], {"id": data["id"], "output": ""})
            if data.get("isSequence"):
                message["output"] = data.get("token", "")
            else:
                message["output"] = (message.get("output") or "") + data.get("token", "")
            if turn is not None and turn.first_token_at is None and data.get("token"):
                turn.first_token_at = now
        elif name == "action":
            self.actions.setdefault(data.get("forId"), []).append(data)
        elif name == "delete_message":
            self.messages.pop(data.get("id"), None)
        elif name == "task_start":
            self._task_running = True
        elif name == "task_end":
            self._task_running = False
        self._changed.set()
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------------------------- session
    async def connect(self) -> "ChatClient":
        async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as http:
            login = await http.post("/auth/header")
            login.raise_for_status()
            cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
        self.cookie = cookie
        auth = {"clientType": "webapp", "sessionId": self.session_id, "userEnv": "{}", "chatProfile": None}
        if self.thread_id:
            auth["threadId"] = self.thread_id
        await self.sio.connect(self.base_url, socketio_path="/ws/socket.io", transports=["websocket"],
                               headers={"Cookie": cookie}, auth=auth, wait_timeout=30)
        self.connected_at = time.perf_counter()
        await self.sio.emit("connection_successful")
        return self

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
        # A connection the server dropped (an app killed in a test) leaves engineio's aiohttp session open.
        http = getattr(self.sio.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()

    async def __aenter__(self) -> "ChatClient":
        return await self.connect()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ---------------------------------------------------------------------------------- waiting
    async def wait_until(self, predicate, timeout_s: float) -> None:
        deadline = time.perf_counter() + timeout_s
        while not predicate():
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"condition not met within {timeout_s:g} s; last texts: {self.texts()[-3:]}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), timeout=min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    def texts(self) -> list[str]:
        return [self.messages[m].get("output") or "" for m in self.order if m in self.messages]

    async def wait_for_text(self, fragment: str, timeout_s: float = 30) -> float:
        """Wait until a shown message contains ``fragment``; returns the time it first did."""
        await self.wait_until(lambda: any(fragment in text for text in self.texts()), timeout_s)
        return time.perf_counter()

    # ---------------------------------------------------------------------------------- turns
    def send(self, question: str) -> Turn:
        """Send a question and return its Turn at once (see :meth:`finish`)."""
        turn = Turn(question=question, sent_at=time.perf_counter())
        self._turn = turn
        message = {
            "id": str(uuid.uuid4()),
            "threadId": self.thread_id or "",
            "name": "User",
            "type": "user_message",
            "output": question,
            "createdAt": datetime.now(timezone.utc).isoformat(),
        }
        self._task_running = True
        asyncio.ensure_future(self.sio.emit("client_message", {"message": message, "fileReferences": []}))
        return turn

    async def finish(self, turn: Turn, timeout_s: float = 120) -> Turn:
        """Wait for the turn's task to end; fill in the final text of its messages."""
        def ended() -> bool:  # a task_end after the turn's own task_start (an earlier task's may arrive late)
            names = [name for _, name, _ in turn.events]
            return "task_start" in names and "task_end" in names[names.index("task_start"):]

        await self.wait_until(ended, timeout_s)
        turn.ended_at = time.perf_counter()
        turn.contents = {m: self.messages[m].get("output") or "" for m in turn.message_ids if m in self.messages}
        return turn

    async def ask(self, question: str, timeout_s: float = 120) -> Turn:
        return await self.finish(self.send(question), timeout_s)

    async def stop(self) -> None:
        await self.sio.emit("stop")

    def run_action(self, message_id: str, name: str) -> Turn:
        """Click an action button shown under a message: like a question, a Turn that ends at task_end."""
        actions = self.actions.get(message_id, [])
        action = next(a for a in actions if a.get("name") == name)
        turn = Turn(question=f"action:{name}", sent_at=time.perf_counter())
        self._turn = turn

        async def call() -> None:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=300, headers={"Cookie": self.cookie}) as http:
                reply = await http.post("/project/action", json={"sessionId": self.session_id, "action": action})
                turn.events.append((time.perf_counter(), "task_start", {}))
                turn.events.append((time.perf_counter(), "task_end", {"status": reply.status_code}))
                self._changed.set()

        asyncio.ensure_future(call())
        return turn
