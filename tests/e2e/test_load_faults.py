"""Many chats, broken model servers and a crashed app, against the real Chainlit app.

Chats are python-socketio clients speaking Chainlit's socket protocol (tests/chat_client.py), the model
server is the scripted one on loopback (real HTTP and SSE). Bounded: a handful of chats, answers of a
second or two, every wait with a limit.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import threading
import time
import uuid
from datetime import datetime, timezone

import httpx
import pytest

from assistant.uploads import safe_name
from benchmarks.chat_client import ChatClient
from benchmarks.harness import AppServer, make_app_root
from rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from rag.knowledge import KnowledgeBase
from rag.loaders import document_chunks, load_bytes
from tests.fake_openai_server import FakeOpenAIServer, HeaderCuttingServer, Script
from tests.fixtures.documents import made_up_words

MODEL = "fake-small"
FINISHED = "Answered by"


def run(coro, timeout_s: float = 150):
    """Run a coroutine on its own loop in a thread: sync Playwright may hold the main thread's loop."""
    result: dict = {}

    def target():
        try:
            result["value"] = asyncio.run(asyncio.wait_for(coro, timeout_s))
        except BaseException as exc:  # re-raised in the test's thread
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout_s + 10)
    if "error" in result:
        raise result["error"]
    return result.get("value")


def words(count: int, tag: str = "w") -> list[str]:
    return [f" {tag}{i}" for i in range(count)]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer([MODEL]) as server:
        yield server


@pytest.fixture(autouse=True)
def fresh_fake(fake):
    fake.scripts.clear()
    fake.requests.clear()
    fake.max_in_flight = 0
    fake.default_script = Script(tokens=words(20), first_token_delay=0.2, token_delay=0.02)
    yield


@pytest.fixture(scope="module")
def app(fake, tmp_path_factory):
    root = make_app_root(tmp_path_factory.mktemp("load-app"))
    server = AppServer(root, fake.base_url, MODEL, MODEL, extra_env={"ASSISTANT_ROUTING_MODE": "small"})
    server.start()
    yield server
    server.stop()


async def new_chat(app: AppServer) -> ChatClient:
    chat = await ChatClient(app.url).connect()
    await chat.wait_for_text("Answers come from your documents", timeout_s=30)
    return chat


def queue_texts(turn) -> list[tuple[float, str]]:
    return [(t, data.get("output") or "") for t, name, data in turn.events
            if name in ("new_message", "update_message") and "in line" in (data.get("output") or "")]


def position(text: str) -> int:
    if "next in line" in text:
        return 1
    return int(re.search(r"number (\d+) in line", text).group(1))


# ------------------------------------------------------------------------------------------ the queue


def test_chats_asking_at_once_wait_in_line_and_all_get_answers(app, fake):
    chats_count = 6

    async def scenario():
        chats = [await new_chat(app) for _ in range(chats_count)]
        try:
            turns = [chat.send(f"Question {n}: how does the router decide?") for n, chat in enumerate(chats)]
            done = await asyncio.gather(*(chat.finish(turn, 90) for chat, turn in zip(chats, turns)))
        finally:
            for chat in chats:
                await chat.close()
        return done

    turns = run(scenario())
    assert all(FINISHED in turn.answer for turn in turns), [t.answer[-300:] for t in turns]
    assert all(" w19" in turn.answer for turn in turns)
    assert fake.max_in_flight == 1  # the server never had two requests at once
    assert len(fake.requests) == chats_count
    waited = [turn for turn in turns if queue_texts(turn)]
    assert len(waited) == chats_count - 1  # everyone but the first was told they wait
    first_positions = sorted(position(queue_texts(turn)[0][1]) for turn in waited)
    assert first_positions == list(range(1, chats_count))  # one running, the others in line 1..5
    last = next(turn for turn in waited if position(queue_texts(turn)[0][1]) == chats_count - 1)
    first_seen, _ = queue_texts(last)[0]
    assert first_seen - last.sent_at < 1.5  # the last in line knows it from the first second
    updates = [text for _, text in queue_texts(last)]
    assert any("next in line" in text for text in updates)  # it moved up while waiting
    assert any("about" in text and " s to wait" in text for text in updates)  # with an estimate once measured
    # The waiting notice is gone once the answer starts.
    assert all("in line" not in text for turn in turns for text in turn.texts())


def test_a_stopped_or_abandoned_chat_leaves_the_line_without_reaching_the_server(app, fake):
    fake.default_script = Script(tokens=words(30), first_token_delay=0.5, token_delay=0.05)

    async def scenario():
        busy, stopper, leaver = [await new_chat(app) for _ in range(3)]
        try:
            running = busy.send("A long question")
            await busy.wait_until(lambda: len(fake.requests) == 1, 10)
            stopped = stopper.send("I will stop waiting")
            await stopper.wait_until(lambda: queue_texts(stopped), 10)
            abandoned = leaver.send("I will close the tab")
            await leaver.wait_until(lambda: queue_texts(abandoned), 10)
            await stopper.stop()
            await leaver.close()
            await stopper.finish(stopped, 20)
            await busy.finish(running, 60)
            await asyncio.sleep(1.0)  # time for a wrongly kept request to reach the server
            return running, stopped
        finally:
            for chat in (busy, stopper, leaver):
                await chat.close()

    running, stopped = run(scenario())
    assert FINISHED in running.answer
    assert len(fake.requests) == 1, [r.body["messages"][-1]["content"][-80:] for r in fake.requests]
    assert "Stopped by you" in stopped.answer


# ------------------------------------------------------------------------------------------ failures


def test_cut_mid_answer_keeps_the_text_offers_retry_and_is_not_answered_by(app, fake):
    fake.script(MODEL, Script(tokens=words(12, "cut"), drop_after=5, token_delay=0.02),
                Script(tokens=words(6, "again"), token_delay=0.02))

    async def scenario():
        chat = await new_chat(app)
        try:
            broken = await chat.ask("Tell me about routing", 60)
            answer_id = broken.message_ids[-1]
            await chat.wait_until(lambda: chat.actions.get(answer_id), 10)
            retried = chat.run_action(answer_id, "retry_answer")
            await chat.finish(retried, 60)
            return broken, retried, [a["name"] for a in chat.actions[answer_id]]
        finally:
            await chat.close()

    broken, retried, actions = run(scenario())
    text = broken.answer
    assert "cut0 cut1 cut2 cut3 cut4" in text and "cut5" not in text
    assert "in the middle of the answer" in text and "kept above" in text
    assert FINISHED not in text and "Cut short" in text
    assert "retry_answer" in actions
    assert FINISHED in retried.answer and "again5" in retried.answer


def test_cut_during_the_headers_says_so_with_a_retry(tmp_path):
    with HeaderCuttingServer([MODEL]) as cutting:
        server = AppServer(make_app_root(tmp_path / "root"), cutting.base_url, MODEL, MODEL,
                           extra_env={"ASSISTANT_ROUTING_MODE": "small"})
        server.start()
        try:
            async def scenario():
                chat = await new_chat(server)
                try:
                    turn = await chat.ask("Anything", 60)
                    answer_id = turn.message_ids[-1]
                    await chat.wait_until(lambda: chat.actions.get(answer_id), 10)
                    return turn, [a["name"] for a in chat.actions[answer_id]]
                finally:
                    await chat.close()

            turn, actions = run(scenario())
        finally:
            server.stop()
    text = turn.answer
    assert "closed the connection before answering" in text and "Cannot reach" not in text
    assert "foundry" not in text.lower()
    assert "No model answered" in text and FINISHED not in text
    assert "retry_answer" in actions


# ------------------------------------------------------------------------------------------ crash


def test_kill_9_mid_answer_leaves_the_partial_answer_with_a_note(app, fake):
    fake.default_script = Script(tokens=words(200, "slow"), first_token_delay=0.1, token_delay=0.05)

    async def ask_until_streaming_then_kill():
        chat = await new_chat(app)
        try:
            chat.send("Write a long answer")
            await chat.wait_until(lambda: " slow40" in "".join(chat.texts()), 30)  # streaming for 2 s
            thread_id = next(data["thread_id"] for _, name, data in chat.events if name == "first_interaction")
            seen = "".join(chat.texts())
            os.kill(app.process.pid, signal.SIGKILL)  # no shutdown hook, no final write
        finally:
            await chat.close()
        return thread_id, seen

    thread_id, seen = run(ask_until_streaming_then_kill())
    app.process.wait(10)

    database = app.data_dir / "chat.db"
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        outputs = [row[0] for row in db.execute(
            "SELECT output FROM steps WHERE threadId = ? AND type = 'assistant_message'", (thread_id,))]
    partial = next(text for text in outputs if "slow0" in (text or ""))
    assert "cut short: the app stopped while it was being written" in partial
    assert "slow0 slow1 slow2" in partial and " slow10" in partial
    for state in (app.data_dir / "conversations").glob("*.json"):
        json.loads(state.read_text())  # every conversation file is whole

    app.start()

    async def reopen():
        resumed = ChatClient(app.url, thread_id=thread_id)
        resumed.sio.on("resume_thread", lambda data: resumed._record("resume_thread", data))
        await resumed.connect()
        try:
            await resumed.wait_until(lambda: any(n == "resume_thread" for _, n, _ in resumed.events), 30)
            thread = next(d for _, n, d in resumed.events if n == "resume_thread")
            return [step.get("output") or "" for step in thread.get("steps", [])]
        finally:
            await resumed.close()

    steps = run(reopen())
    assert any("slow0" in text and "cut short" in text for text in steps)


# Share (an upload into the shared knowledge) copies the file into knowledge/uploads (a hidden temporary name,
# then a rename) and refreshes the index, whose cache write ends with the manifest's atomic replacement. The
# app is killed when one of these steps is seen from outside, in the file system.
SHARE_KILL_POINTS = {
    "indexing": "the copy is in the knowledge folder; the index is being updated",
    "writing the cache": "a new cache data file has appeared; its manifest is not yet replaced",
    "copying": "a temporary copy has appeared in the knowledge folder",
}


def field_notes(tag: str, words: int = 120_000) -> tuple[bytes, str]:
    """A markdown document of about 0.9 MB with little repetition (its cache data files are not tiny), and a
    sentence of its own that a question can find."""
    text = made_up_words(random.Random(tag), words)
    sentence = f"The {tag} ledger records the quokka burrows at Cape Mentelle."
    parts = [f"# Field notes {tag}\n\n{sentence}\n"]
    for section in range(words // 150):
        parts.append(f"## Transect {section}\n\n" + " ".join(text[section * 150:(section + 1) * 150]) + ".\n")
    return "\n".join(parts).encode(), sentence


async def upload_in(chat: ChatClient, name: str, data: bytes) -> dict:
    """Attach a file to a message as the browser does; returns the Share action shown for it."""
    async with httpx.AsyncClient(base_url=chat.base_url, headers={"Cookie": chat.cookie}, timeout=60) as http:
        reply = await http.post("/project/file", params={"session_id": chat.session_id},
                                files={"file": (name, data, "text/markdown")})
    reply.raise_for_status()
    message = {"id": str(uuid.uuid4()), "threadId": "", "name": "User", "type": "user_message", "output": "",
               "createdAt": datetime.now(timezone.utc).isoformat()}
    await chat.sio.emit("client_message", {"message": message, "fileReferences": [{"id": reply.json()["id"]}]})

    def share_action():
        return next((a for actions in chat.actions.values() for a in actions
                     if a.get("name") == "share_document" and a["payload"].get("name") == name), None)

    await chat.wait_until(share_action, 90)
    return share_action()


def kill_when(process, seen, limit_s: float) -> bool:
    """SIGKILL ``process`` as soon as ``seen()`` is true (polled every half millisecond); False if it never was."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if seen():
            os.kill(process.pid, signal.SIGKILL)
            return True
        time.sleep(0.0005)
    return False


def manifest_sources(cache_file) -> set[str]:
    """The files the cache on disk lists; it must be whole: a manifest that parses, naming data files that exist."""
    manifest = json.loads(cache_file.read_bytes())
    for key in ("texts", "arrays"):
        assert (cache_file.parent / manifest[key]).is_file(), f"the manifest names a missing {key} file"
    return {item["source"] for item in manifest["files"]}


def test_kill_9_mid_share_leaves_the_document_whole_in_knowledge_or_in_the_conversation(app, fake):
    cache = KnowledgeBase(app.knowledge_dir, app.root / "cache" / "index")  # where the app's cache is (no I/O)
    shared_folder = app.knowledge_dir / "uploads"
    killed_mid_share = []
    for number, (point, meaning) in enumerate(SHARE_KILL_POINTS.items()):
        name = f"field notes {number}.md"
        data, sentence = field_notes(f"round{number}")
        target = shared_folder / safe_name(name, hashlib.sha256(data).hexdigest())
        data_files_before = set(cache.cache_path.glob("texts-*.bin"))
        seen = {
            "indexing": target.exists,
            "writing the cache": lambda: bool(set(cache.cache_path.glob("texts-*.bin")) - data_files_before),
            "copying": lambda: shared_folder.is_dir() and any(p.name.startswith(".incoming-")
                                                                for p in shared_folder.iterdir()),
        }[point]

        async def share_and_kill():
            chat = await new_chat(app)
            try:
                return await share_in(chat)
            finally:
                await chat.close()

        async def share_in(chat):
            action = await upload_in(chat, name, data)
            thread_id = next(d["thread_id"] for _, n, d in chat.events if n == "first_interaction")
            async with httpx.AsyncClient(base_url=app.url, headers={"Cookie": chat.cookie}, timeout=120) as http:
                click = asyncio.ensure_future(http.post("/project/action",
                                                        json={"sessionId": chat.session_id, "action": action}))
                # The copy's window is a few milliseconds: when the share ends without the poll seeing it, the
                # app is killed right after (the rest of the checks still run on what it left).
                killed = await asyncio.to_thread(kill_when, app.process, lambda: seen() or click.done(), 60)
                try:
                    await click
                    finished_first = True  # the share ended before the kill (its answer arrived)
                except httpx.HTTPError:
                    finished_first = False
            return thread_id, killed, finished_first

        thread_id, killed, finished_first = run(share_and_kill())
        assert killed, f"{point}: never saw that {meaning}; log: {app.log_tail()}"
        app.process.wait(10)

        # On disk, before the restart: nothing half-written.
        upload = app.data_dir / "uploads" / thread_id / target.name
        assert upload.read_bytes() == data, f"{point}: the conversation's copy of the upload is not intact"
        state = json.loads((app.data_dir / "conversations" / f"{thread_id}.json").read_text())
        assert [d["name"] for d in state["documents"]["documents"]] == [name]
        in_knowledge = target.exists()
        assert not in_knowledge or target.read_bytes() == data, f"{point}: a partial document in knowledge/"
        committed = f"uploads/{target.name}" in manifest_sources(cache.cache_file)
        with sqlite3.connect(app.data_dir / "chat.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        if not committed and not finished_first:
            killed_mid_share.append(point)
        print(f"kill when {point}: in knowledge/ {in_knowledge}, in the cache {committed}, "
              f"share had answered {finished_first}")

        log_before = len(app.log_tail(10**9))
        app.start()
        deadline = time.monotonic() + 60  # the knowledge base loads in the background: wait for its report
        while not (loaded := re.search(r"knowledge: .*; cache (\w+)", app.log_tail(10**9)[log_before:])):
            assert time.monotonic() < deadline, f"{point}: the knowledge base did not load: {app.log_tail()}"
            time.sleep(0.2)
        assert loaded.group(1) in ("reused", "updated"), f"{point}: the cache was {loaded.group(1)}"

        async def after_restart():
            chat = await new_chat(app)
            try:
                turn = await chat.ask(f"What does the round{number} ledger record about quokka burrows?", 60)
            finally:
                await chat.close()
            prompt = json.dumps(fake.requests[-1].body["messages"])
            resumed = ChatClient(app.url, thread_id=thread_id)
            resumed.sio.on("resume_thread", lambda d: resumed._record("resume_thread", d))
            await resumed.connect()
            try:
                await resumed.wait_until(lambda: any(n == "resume_thread" for _, n, _ in resumed.events), 30)
                steps = next(d for _, n, d in resumed.events if n == "resume_thread").get("steps", [])
                docs = await resumed.ask("/docs", 30)
            finally:
                await resumed.close()
            return turn, prompt, [s.get("output") or "" for s in steps], docs

        turn, prompt, steps, docs = run(after_restart())
        assert "damaged" not in app.log_tail(10**9)[log_before:]
        assert FINISHED in turn.answer  # the app answers
        assert (sentence in prompt) == in_knowledge, f"{point}: shared {in_knowledge}, retrieved {sentence in prompt}"
        assert any("is ready for this conversation" in text for text in steps)  # the thread reopens
        assert name.replace(" ", "") in docs.answer.replace(" ", "").replace("\\", "")  # the upload is still there
        if in_knowledge:  # whole in the index: every chunk of the document, as a fresh indexing makes them
            restarted = KnowledgeBase(app.knowledge_dir, app.root / "cache" / "index")
            assert restarted.refresh().cache == "reused"  # the app's cache, as the app left it, loads
            source = f"uploads/{target.name}"
            indexed = [c.text for c in sorted(restarted.chunks, key=lambda c: c.position) if c.source == source]
            fresh = document_chunks(load_bytes(data, target.name, source), source,
                                    chunk_tokens=DEFAULT_CHUNK_TOKENS, overlap=DEFAULT_OVERLAP)
            assert indexed == [c.text for c in fresh], f"{point}: the shared document's index is not whole"
    # The kill at the copy can miss its few milliseconds on a busy machine; the index update takes seconds.
    assert "indexing" in killed_mid_share, killed_mid_share


def test_share_command_shares_an_upload_by_name_as_its_button_does(app, fake):
    """A reopened thread has no Share button (Chainlit does not keep actions): `/share NAME` does the same."""
    name = "heron notes.md"
    data = b"# Heron notes\n\nThe heron census counts forty-one nests on the east bank.\n"
    target = app.knowledge_dir / "uploads" / safe_name(name, hashlib.sha256(data).hexdigest())

    async def share():
        chat = await new_chat(app)
        try:
            await upload_in(chat, name, data)
            # Each reply has words of its own; waiting for them does not depend on which task_end is whose.
            chat.send("/share no such file.md")
            await chat.wait_for_text("No upload named", 60)
            chat.send(f"/share {name}")
            await chat.wait_for_text("is now shared knowledge", 60)
            chat.send(f"/share {name}")
            await chat.wait_for_text("was already in the shared knowledge", 60)
        finally:
            await chat.close()
        other = await new_chat(app)
        try:
            return await other.ask("How many nests does the heron census count?", 60)
        finally:
            await other.close()

    turn = run(share())
    assert target.read_bytes() == data
    # Another conversation now finds it: its sentence went into that chat's prompt.
    assert FINISHED in turn.answer
    assert "forty-one nests" in json.dumps(fake.requests[-1].body["messages"])


def test_a_question_during_the_first_indexing_says_it_searched_only_part_of_the_knowledge(fake, tmp_path):
    """A large knowledge folder is indexed in the background after a start. A question asked before that ends
    (here without waiting: ASSISTANT_KNOWLEDGE_WAIT_S=0) is told it searched only what was ready; once indexing
    has ended, the same knowledge is searched whole."""
    root = make_app_root(tmp_path / "root")
    rng = random.Random(7)
    for number in range(16):  # about 50 MB: several seconds of indexing on this 2-core machine
        words = made_up_words(rng, 450_000, vocabulary_size=5000)
        body = "\n\n".join(" ".join(words[i:i + 150]) + "." for i in range(0, len(words), 150))
        (root / "knowledge" / f"survey {number:02d}.md").write_text(f"# Survey {number}\n\n{body}\n")
    (root / "knowledge" / "zz heron.md").write_text("# Heron\n\nThe heron census counts forty-one nests.\n")
    server = AppServer(root, fake.base_url, MODEL, MODEL,
                       extra_env={"ASSISTANT_ROUTING_MODE": "small", "ASSISTANT_KNOWLEDGE_WAIT_S": "0"})
    server.start()
    try:
        async def ask(question):
            chat = await new_chat(server)
            try:
                return await chat.ask(question, 120)
            finally:
                await chat.close()

        early = run(ask("How many nests does the heron census count?"))
        notice = [text for text in early.texts() if "still being indexed" in text]
        assert notice, early.texts()
        assert FINISHED in early.answer  # answered all the same, from what was ready

        deadline = time.monotonic() + 240
        while not re.search(r"knowledge: .*; cache \w+", server.log_tail(10**7)):  # the load's report
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.5)
        later = run(ask("How many nests does the heron census count?"))
        assert not any("still being indexed" in text for text in later.texts())
        assert "forty-one nests" in json.dumps(fake.requests[-1].body["messages"])
    finally:
        server.stop()
