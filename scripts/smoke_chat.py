"""One real chat turn against a running app, over Chainlit's own socket, as the browser drives it.

    python scripts/smoke_chat.py http://127.0.0.1:8000 ["question"] [--timeout 600]

Signs in the way the page does (header auth: ``POST /auth/header`` sets the session cookie), opens the
socket at ``/ws/socket.io``, waits for the end of Chainlit's chat-start task (the conversation is
ready), sends the question, and waits for the turn's ``task_end``. Passes when streamed tokens arrived and a finished answer naming the model that
answered was sent; prints what it saw either way. Uses only packages the app itself installs
(Chainlit depends on python-socketio and aiohttp).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from datetime import datetime, timezone

import httpx
import socketio

QUESTION = "How does the router decide when to escalate to the large model?"


async def chat_turn(url: str, question: str, timeout_s: float) -> int:
    url = url.rstrip("/")
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        reply = await http.post("/auth/header", headers={"Origin": url})
        if reply.status_code != 200:
            print(f"sign-in failed: POST /auth/header answered {reply.status_code}: {reply.text[:300]}")
            return 1
        cookies = "; ".join(f"{name}={value}" for name, value in http.cookies.items())

    seen: dict[str, list] = {"new_message": [], "update_message": [], "stream_token": [], "task_start": [],
                             "task_end": []}
    welcome, turn_over = asyncio.Event(), asyncio.Event()
    sent_at: list[float] = []
    client = socketio.AsyncClient(reconnection=False)

    @client.on("new_message")
    async def on_new_message(step):
        seen["new_message"].append(step)

    @client.on("update_message")
    async def on_update_message(step):
        seen["update_message"].append(step)

    @client.on("stream_token")
    async def on_token(data):
        seen["stream_token"].append((time.perf_counter(), data))

    @client.on("task_start")
    async def on_task_start(_data):
        if sent_at:
            seen["task_start"].append(time.perf_counter())

    @client.on("task_end")
    async def on_task_end(_data):
        if not sent_at:
            # Chainlit runs on_chat_start as a task too: its end, after the app's first step, means the
            # conversation is ready. (The task_end sent on connecting comes before any step.)
            if seen["new_message"]:
                welcome.set()
        elif seen["task_start"]:  # the end of the task our question started
            seen["task_end"].append(time.perf_counter())
            turn_over.set()

    await client.connect(
        url,
        socketio_path="/ws/socket.io",
        transports=["websocket"],
        headers={"Cookie": cookies, "Origin": url},
        auth={"clientType": "webapp", "sessionId": str(uuid.uuid4()), "threadId": None,
              "userEnv": "{}", "chatProfile": None},
        wait_timeout=30,
    )
    try:
        await client.emit("connection_successful")
        await asyncio.wait_for(welcome.wait(), timeout=120)
        welcome_text = next((m.get("output") for m in seen["new_message"] + seen["update_message"] if m.get("output")), "")
        print("welcome:", first_line(welcome_text))
        sent_at.append(time.perf_counter())
        message = {
            "id": str(uuid.uuid4()), "threadId": "", "name": "User", "type": "user_message",
            "output": question, "createdAt": datetime.now(timezone.utc).isoformat(),
        }
        await client.emit("client_message", {"message": message, "fileReferences": []})
        await asyncio.wait_for(turn_over.wait(), timeout=timeout_s)
    except asyncio.TimeoutError:
        print("timed out; events seen:", {k: len(v) for k, v in seen.items()})
        return 1
    finally:
        await client.disconnect()

    tokens = seen["stream_token"]
    answers = [s for s in seen["new_message"] + seen["update_message"]
               if s.get("type") == "assistant_message" and "Answered by" in (s.get("output") or "")]
    print(f"question: {question}")
    print(f"streamed tokens: {len(tokens)}"
          + (f", first after {tokens[0][0] - sent_at[0]:.2f} s" if tokens else ""))
    print(f"turn ended after {seen['task_end'][0] - sent_at[0]:.2f} s")
    if not tokens or not answers:
        print("FAILED: expected streamed tokens and a finished answer ('Answered by ...').")
        for step in (seen["new_message"] + seen["update_message"])[-4:]:
            print(json.dumps({k: step.get(k) for k in ("type", "name", "output")})[:800])
        return 1
    print("answer:", answers[-1]["output"][:600])
    return 0


def first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0][:200] if text else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url")
    parser.add_argument("question", nargs="?", default=QUESTION)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the answer may take")
    args = parser.parse_args(argv)
    return asyncio.run(chat_turn(args.url, args.question, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
