"""The chat database's writes: one at a time in the order asked, held from a question's arrival until its
request is sent to the model (or a short limit), and never hidden from the reads that follow them."""

import asyncio
import sqlite3
import time

from assistant.storage import HeldWrites, LocalFileStorage, thread_data_layer
from routing.client import ModelClient, on_request_sent
from tests.fake_openai_server import FakeOpenAIServer, Script
from tests.fixtures.chat_database import chat_database_with_thread

THREAD = "thread-1"


async def test_writes_run_one_at_a_time_in_the_order_asked():
    writes = HeldWrites()
    log = []

    async def write(name, pause):
        log.append(f"{name} starts")
        await asyncio.sleep(pause)
        log.append(f"{name} ends")

    # Fired as Chainlit fires them: tasks, the first one slower than the second.
    tasks = [asyncio.create_task(writes.run(write, "create", 0.05)), asyncio.create_task(writes.run(write, "update", 0))]
    await asyncio.gather(*tasks)
    assert log == ["create starts", "create ends", "update starts", "update ends"]


async def test_a_hold_keeps_writes_back_until_released():
    writes = HeldWrites(max_hold_s=10)
    done = []

    async def write():
        done.append(time.monotonic())

    writes.hold(THREAD)
    task = asyncio.create_task(writes.run(write))
    await asyncio.sleep(0.1)
    assert done == [] and writes.held
    released = time.monotonic()
    writes.release(THREAD)
    await task
    assert done and done[0] >= released and not writes.held


async def test_a_hold_nobody_releases_lets_go_by_itself():
    writes = HeldWrites(max_hold_s=0.2)
    writes.hold(THREAD)
    started = time.monotonic()
    await asyncio.wait_for(writes.run(asyncio.sleep, 0), timeout=5)
    assert 0.15 <= time.monotonic() - started < 5


async def test_every_hold_must_be_released_before_writes_go():
    writes = HeldWrites(max_hold_s=10)
    writes.hold("a")
    writes.hold("b")
    writes.release("a")
    assert writes.held
    writes.release("b")
    writes.release("b")  # twice is harmless
    assert not writes.held


async def test_a_write_made_inside_a_write_does_not_wait_for_itself():
    writes = HeldWrites()

    async def inner():
        return "inner done"

    async def outer():
        return await writes.run(inner)  # create_step calls update_thread, both writes

    assert await asyncio.wait_for(writes.run(outer), timeout=2) == "inner done"


async def chat_database(tmp_path, writes):
    url = await chat_database_with_thread(tmp_path, THREAD)

    async def forget(_thread_id):
        return None

    return thread_data_layer(url, LocalFileStorage(tmp_path / "files"), forget, writes)


def step(step_id, kind, output, created):
    return {"id": step_id, "threadId": THREAD, "name": kind, "type": kind, "output": output, "createdAt": created,
            "metadata": {}}


def stored_outputs(tmp_path):
    with sqlite3.connect(tmp_path / "chat.db") as db:
        return dict(db.execute('SELECT "id", "output" FROM steps').fetchall())


async def test_a_users_question_holds_the_chat_database_until_released(tmp_path):
    from chainlit.context import init_http_context

    init_http_context()
    writes = HeldWrites(max_hold_s=10)
    layer = await chat_database(tmp_path, writes)

    question = asyncio.create_task(layer.create_step(step("q1", "user_message", "How?", "2026-01-01T00:00:01.000000Z")))
    run_step = asyncio.create_task(layer.create_step(step("r1", "run", "", "2026-01-01T00:00:01.000001Z")))
    await asyncio.sleep(0.2)
    assert writes.held and stored_outputs(tmp_path) == {}  # nothing written while the question is being sent

    reader = asyncio.create_task(layer.get_thread(THREAD))  # a read waits for the writes asked before it
    await asyncio.sleep(0.05)
    assert not reader.done()

    writes.release(THREAD)
    await asyncio.wait_for(asyncio.gather(question, run_step), timeout=10)
    thread = await asyncio.wait_for(reader, timeout=10)
    await layer.close()
    assert {s["id"] for s in thread["steps"]} == {"q1", "r1"}
    assert stored_outputs(tmp_path) == {"q1": "How?", "r1": ""}


async def test_an_update_fired_right_after_its_creation_is_the_one_kept(tmp_path):
    from chainlit.context import init_http_context

    init_http_context()
    layer = await chat_database(tmp_path, HeldWrites())
    first = step("a1", "assistant_message", "draft", "2026-01-01T00:00:02.000000Z")
    final = {**first, "output": "final answer"}
    tasks = [asyncio.create_task(layer.create_step(first)), asyncio.create_task(layer.update_step(final))]
    await asyncio.gather(*tasks)
    await layer.close()
    assert stored_outputs(tmp_path)["a1"] == "final answer"


async def test_the_model_client_says_when_the_request_is_sent_before_the_answer_starts():
    with FakeOpenAIServer(["small"]) as fake:
        fake.script("small", Script(tokens=["Hi", "."], headers_delay=1.0))
        client = ModelClient(fake.base_url)
        sent_at = []
        on_request_sent.set(lambda: sent_at.append(time.monotonic()))
        try:
            started = time.monotonic()
            async with client.stream("small", [{"role": "user", "content": "Hello?"}]) as stream:
                headers_at = time.monotonic()
                text = "".join([delta async for delta in stream])
        finally:
            on_request_sent.set(None)
            await client.close()
    assert text == "Hi."
    assert sent_at, "never told that the request was sent"
    # Told while the server still held its answer back (a model reading the prompt), not when it answered.
    assert sent_at[0] - started < 0.5 < headers_at - started
