"""How long does a new chat wait for its welcome while other chats are being answered?

    python -m benchmarks.welcome_load [--busy 8] [--welcomes 20]

Starts the embedded llama.cpp model and the real Chainlit app, connects ``--busy`` socket.io chats
that each ask a question with a long answer (the server answers one, the others wait in line), and
while they are being answered opens ``--welcomes`` new chats one after another, timing each from
its connection to its welcome message (which names the served models). Before the model list was
kept in the app, each welcome asked llama.cpp for it, which waits for the generation in progress.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelServer
from assistant.settings import load_settings
from routing.metrics import percentile
from benchmarks.chat_client import ChatClient
from benchmarks.harness import AppServer, make_app_root

WELCOME = "Answers come from your documents"


async def drive(url: str, busy: int, welcomes: int) -> tuple[list[float], int, int]:
    busy_chats = []
    for _ in range(busy):
        chat = await ChatClient(url).connect()
        await chat.wait_for_text(WELCOME, 120)
        busy_chats.append(chat)
    turns = [chat.send("Explain in detail how the router, the metrics and the uploads work.") for chat in busy_chats]
    # Wait until the server is generating (the first answer is streaming).
    streaming = {asyncio.ensure_future(c.wait_until(lambda t=t: t.first_token_at is not None, 600))
                 for c, t in zip(busy_chats, turns)}
    _, pending = await asyncio.wait(streaming, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    times = []
    try:
        for _ in range(welcomes):
            chat = ChatClient(url)
            await chat.connect()
            connected = chat.connected_at
            shown = await chat.wait_for_text(WELCOME, 120)
            welcome_text = next(text for text in chat.texts() if WELCOME in text)
            assert "not available" not in welcome_text, welcome_text
            times.append((shown - connected) * 1000)
            await chat.close()
        still_generating = sum(1 for t in turns if t.ended_at is None and not any(n == "task_end" for _, n, _ in t.events))
        answered = sum(1 for t in turns if t.first_token_at is not None)
    finally:
        for chat in busy_chats:
            await chat.close()
    return times, still_generating, answered


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--busy", type=int, default=8)
    parser.add_argument("--welcomes", type=int, default=20)
    args = parser.parse_args(argv)
    settings = load_settings()
    root = make_app_root(Path(tempfile.mkdtemp(prefix="welcome-load-")))
    with EmbeddedModelServer.from_settings(settings) as model:
        app = AppServer(root, model.base_url, model.small_name, model.large_name,
                        extra_env={"ASSISTANT_TOP_K": str(EMBEDDED_TOP_K), "ASSISTANT_MAX_TOKENS": "512",
                                   "ASSISTANT_EMBEDDED_ACTIVE": "true"})
        app.start()
        try:
            started = time.perf_counter()
            times, still_generating, answered = asyncio.run(drive(app.url, args.busy, args.welcomes))
            elapsed = time.perf_counter() - started
        finally:
            app.stop()
    print(f"{args.welcomes} welcomes while {args.busy} chats asked (answers of up to 512 tokens); "
          f"{still_generating} of them still waiting or answering at the end, {answered} had started answering; "
          f"{elapsed:.0f} s")
    print(f"welcome (connection to welcome message): median {statistics.median(times):.0f} ms, "
          f"p95 {percentile(times, 95):.0f} ms, max {max(times):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
