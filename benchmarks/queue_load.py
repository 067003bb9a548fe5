"""Many chats on one embedded model server: do all answers arrive, and does everyone see their place in line?

    python -m benchmarks.queue_load [--chats 20] [--questions 2] [--max-tokens 48]

Starts the embedded llama.cpp model and the real Chainlit app (default settings, three sources per
question as ./start.sh sets for the embedded model), connects N socket.io chats as the browser does,
sends every chat's first question at once, and each chat's next question as soon as its previous
answer ends. Prints how many turns completed, how soon each waiting chat was told its position, the
largest position, how long the waits and answers took.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
import tempfile
import time
from pathlib import Path

from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelServer
from assistant.settings import load_settings
from routing.metrics import percentile
from benchmarks.chat_client import ChatClient
from benchmarks.harness import SAMPLE_QUESTIONS, AppServer, make_app_root

QUESTIONS = SAMPLE_QUESTIONS[1:7]


def queue_position(text: str) -> int | None:
    if "in line" not in text:
        return None
    if "next in line" in text:
        return 1
    match = re.search(r"number (\d+) in line", text)
    return int(match.group(1)) if match else None


def turn_record(turn) -> dict:
    shown = [(t, data.get("output") or "") for t, name, data in turn.events if name in ("new_message", "update_message")]
    positions = [(t - turn.sent_at, queue_position(text)) for t, text in shown if queue_position(text) is not None]
    return {
        "completed": "Answered by" in turn.answer,
        "answer_tail": turn.answer[-200:],
        "first_position_after_s": positions[0][0] if positions else None,
        "first_position": positions[0][1] if positions else None,
        "updates": len(positions),
        "first_token_s": (turn.first_token_at - turn.sent_at) if turn.first_token_at else None,
        "total_s": (turn.ended_at - turn.sent_at) if turn.ended_at else None,
    }


async def drive(url: str, chats: int, questions: int, timeout_s: float) -> list[dict]:
    clients = []
    for _ in range(chats):
        client = await ChatClient(url).connect()
        await client.wait_for_text("Answers come from your documents", timeout_s=60)
        clients.append(client)

    async def one_chat(number: int, client: ChatClient) -> list[dict]:
        records = []
        for q in range(questions):
            question = QUESTIONS[(number + q) % len(QUESTIONS)]
            try:
                turn = await client.ask(question, timeout_s)
                records.append(turn_record(turn))
            except TimeoutError as exc:
                records.append({"completed": False, "answer_tail": f"no end of turn: {exc}"[:200]})
        return records

    try:
        results = await asyncio.gather(*(one_chat(n, c) for n, c in enumerate(clients)))
    finally:
        for client in clients:
            await client.close()
    return [record for chat in results for record in chat]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=20)
    parser.add_argument("--questions", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48, help="answer length (the app's own default is 512)")
    parser.add_argument("--turn-timeout", type=float, default=1800)
    args = parser.parse_args(argv)

    settings = load_settings()
    root = make_app_root(Path(tempfile.mkdtemp(prefix="queue-load-")))
    started = time.perf_counter()
    with EmbeddedModelServer.from_settings(settings) as model:
        app = AppServer(root, model.base_url, model.small_name, model.large_name,
                        extra_env={"ASSISTANT_TOP_K": str(EMBEDDED_TOP_K), "ASSISTANT_MAX_TOKENS": str(args.max_tokens),
                                   "ASSISTANT_EMBEDDED_ACTIVE": "true"})
        app.start()
        try:
            t0 = time.perf_counter()
            records = asyncio.run(drive(app.url, args.chats, args.questions, args.turn_timeout))
            elapsed = time.perf_counter() - t0
        finally:
            app.stop()
    total = args.chats * args.questions
    completed = sum(r["completed"] for r in records)
    waited = [r for r in records if r.get("first_position") is not None]
    told_after = [r["first_position_after_s"] for r in waited]
    largest = max((r["first_position"] for r in waited), default=0)
    last_in_line = [r for r in waited if r["first_position"] == largest]
    totals = [r["total_s"] for r in records if r.get("total_s")]
    print(f"chats x questions: {args.chats} x {args.questions}, answers of at most {args.max_tokens} tokens, "
          f"default queue (1 request at a time), first-token limit {settings.first_token_timeout_s:g} s")
    print(f"completed: {completed}/{total} in {elapsed:.0f} s ({time.perf_counter() - started:.0f} s with start-up)")
    print(f"turns that waited in line: {len(waited)}; largest position: {largest}")
    if told_after:
        print(f"position shown after: median {statistics.median(told_after):.2f} s, max {max(told_after):.2f} s; "
              f"last in line told after {max(r['first_position_after_s'] for r in last_in_line):.2f} s")
        print(f"position updates per waiting turn: median {statistics.median(r['updates'] for r in waited):.0f}")
    if totals:
        print(f"turn time (send to end): median {statistics.median(totals):.1f} s, p95 {percentile(totals, 95):.1f} s, "
              f"max {max(totals):.1f} s")
    for record in records:
        if not record["completed"]:
            print(f"NOT COMPLETED: {record['answer_tail']!r}")
    return 0 if completed == total else 1


if __name__ == "__main__":
    raise SystemExit(main())
