"""What the client says when the model server fails, for the server that actually answers; the kept model
list. Real HTTP on loopback: the scripted server, and a raw socket server that cuts during the headers."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from routing.client import (
    ModelClient,
    ServerCutConnection,
    ServerOverloaded,
    ServerRefused,
    ServerSilent,
    StreamInterrupted,
)
from tests.fake_openai_server import FakeOpenAIServer, HeaderCuttingServer, Script, _free_port

MODEL = "SmolLM2-135M-Instruct"
MESSAGES = [{"role": "user", "content": "What is BM25?"}]


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer([MODEL]) as fake:
        yield fake


async def failure(server, kind: type[Exception], **client_options) -> Exception:
    """The error of one answer asked from ``server``, which must be of type ``kind``."""
    client = ModelClient(server.base_url, **client_options)
    try:
        with pytest.raises(kind) as caught:
            await client.complete(MODEL, MESSAGES)
    finally:
        await client.close()
    return caught.value


@pytest.fixture(autouse=True)
def fresh_scripts(server):
    server.scripts.clear()
    server.requests.clear()
    server.models = [MODEL]
    yield


async def test_refused_names_the_server_that_had_answered_not_foundry():
    with FakeOpenAIServer([MODEL]) as short_lived:
        client = ModelClient(short_lived.base_url, connect_timeout_s=1.0)
        await client.resolve(MODEL)
    try:
        with pytest.raises(ServerRefused) as caught:
            await client.complete(MODEL, MESSAGES)
    finally:
        await client.close()
    message = str(caught.value)
    assert "connection refused" in message and "not running" in message
    assert MODEL in message and "foundry" not in message.lower()


async def test_refused_before_any_answer_lists_how_to_start_a_server():
    client = ModelClient(f"http://127.0.0.1:{_free_port()}/v1", connect_timeout_s=1.0)
    try:
        with pytest.raises(ServerRefused) as caught:
            await client.complete("phi-4-mini", MESSAGES)
    finally:
        await client.close()
    assert "ASSISTANT_MODEL_ENDPOINT" in str(caught.value)


async def test_embedded_server_gone_says_restart_the_app():
    with FakeOpenAIServer([MODEL]) as short_lived:
        client = ModelClient(short_lived.base_url, connect_timeout_s=1.0, server_kind="embedded")
        await client.resolve(MODEL)
    try:
        with pytest.raises(ServerRefused, match=r"embedded llama\.cpp server .* restart the app"):
            await client.complete(MODEL, MESSAGES)
    finally:
        await client.close()


async def test_connection_cut_during_the_headers_is_not_called_unreachable():
    with HeaderCuttingServer([MODEL]) as cutting:
        client = ModelClient(cutting.base_url, first_token_timeout_s=10)
        try:
            started = time.perf_counter()
            with pytest.raises(ServerCutConnection) as caught:
                await client.complete(MODEL, MESSAGES)
            assert time.perf_counter() - started < 5
        finally:
            await client.close()
        # Asked once more on a new connection (a closed kept-alive connection looks the same to the client), then
        # reported: a server that really died is not asked a third time.
        assert cutting.chat_requests == 2
    message = str(caught.value)
    assert "closed the connection before answering" in message and "Cannot reach" not in message
    assert "llama.cpp" in message and "foundry" not in message.lower()  # owned_by "me": llama-cpp-python


async def test_cut_mid_answer_says_what_was_kept(server):
    server.script(MODEL, Script(tokens=["one", " two", " three", " four"], drop_after=2))
    error = await failure(server, StreamInterrupted)
    assert error.partial.text == "one two"
    assert "tokens that arrived are kept" in str(error)


async def test_cut_before_any_text_does_not_claim_something_was_kept(server):
    server.script(MODEL, Script(tokens=["one", " two"], drop_after=0))
    error = await failure(server, StreamInterrupted)
    assert error.partial.text == ""
    assert "Nothing of the answer had arrived" in str(error) and "kept above" not in str(error)


async def test_an_error_event_mid_answer_is_reported_in_the_servers_words(server):
    error = {"error": {"code": 500, "message": "Decoding failed: out of memory", "type": "server_error"}}
    server.script(MODEL, Script(tokens=["one", " two", " three"], end_after=2, end_event=f"data: {json.dumps(error)}\n\n"))
    error = await failure(server, StreamInterrupted)
    message = str(error)
    assert "stopped the answer with an error: Decoding failed: out of memory" in message
    assert "tokens that arrived are kept" in message and "closed the connection" not in message
    assert error.partial.text == "one two" and not error.partial.complete


@pytest.mark.parametrize("end_event", ['error: {"code": 500, "message": "slot failed", "type": "server_error"}\n\n', ""],
                         ids=["an SSE 'error:' line", "nothing"])
async def test_a_stream_that_ends_cleanly_without_a_finish_reason_is_not_a_whole_answer(server, end_event):
    server.script(MODEL, Script(tokens=["one", " two", " three"], end_after=2, end_event=end_event))
    error = await failure(server, StreamInterrupted)
    assert "ended its stream without finishing the answer" in str(error)
    assert error.partial.text == "one two" and not error.partial.complete


async def test_a_silent_stream_fails_after_the_silence_limit_not_the_first_token_limit(server):
    # Headers and the opening role chunk, then nothing at all.
    server.script(MODEL, Script(first_token_delay=60))
    client = ModelClient(server.base_url, first_token_timeout_s=120, stream_silence_timeout_s=0.5)
    started = time.perf_counter()
    try:
        with pytest.raises(ServerSilent) as caught:
            await client.complete(MODEL, MESSAGES)
    finally:
        await client.close()
    assert time.perf_counter() - started < 5
    assert "sent nothing at all for 0.5 s" in str(caught.value)
    assert caught.value.partial.error == "silent"
    record = server.requests[-1]
    for _ in range(100):  # the stream is closed, so the server stops
        if record.client_disconnected:
            break
        await asyncio.sleep(0.02)
    assert record.client_disconnected


async def test_keep_alives_keep_a_slow_stream_alive(server):
    # A server reading a long prompt: no token for 1.2 s, but a keep-alive every 0.2 s.
    server.script(MODEL, Script(tokens=["late", " answer"], first_token_delay=1.2, ping_every=0.2))
    client = ModelClient(server.base_url, first_token_timeout_s=10, stream_silence_timeout_s=0.6)
    try:
        response = await client.complete(MODEL, MESSAGES)
    finally:
        await client.close()
    assert response.text == "late answer" and response.complete


async def test_overloaded_server_says_wait_and_ask_again(server):
    server.script(MODEL, Script(status=503, error_message="server busy"))
    error = await failure(server, ServerOverloaded)
    assert "HTTP 503" in str(error) and "ask again" in str(error)


# Error bodies as real servers send them, and the words the user must see.
ERROR_BODIES = {
    "OpenAI / llama.cpp / Foundry Local": (b'{"error": {"code": 503, "message": "Loading model", "type": "unavailable_error"}}',
                                           "Loading model"),
    "vLLM": (b'{"object": "error", "message": "The server is overloaded.", "type": "ServiceUnavailable", "code": 503}',
             "The server is overloaded."),
    "Ollama": (b'{"error": "server busy, please try again.  maximum pending requests exceeded"}',
               "server busy, please try again. maximum pending requests exceeded"),
    "FastAPI": (b'{"detail": "Service Unavailable"}', "Service Unavailable"),
    "plain text": (b"upstream unavailable", "upstream unavailable"),
}


@pytest.mark.parametrize("shape", ERROR_BODIES)
async def test_a_busy_server_is_quoted_in_its_own_words_whatever_its_error_shape(server, shape):
    body, words = ERROR_BODIES[shape]
    server.script(MODEL, Script(status=503, error_body=body))
    error = await failure(server, ServerOverloaded)
    assert f"(HTTP 503: {words})" in str(error)
    assert "Error code" not in str(error) and "{" not in str(error)


async def test_a_rejected_reasoning_effort_in_ollamas_error_shape_is_dropped_and_asked_again(server):
    server.script(MODEL, Script(status=400, error_body=b'{"error": "invalid option: reasoning_effort"}'),
                  Script(tokens=["fine"]))
    client = ModelClient(server.base_url)
    try:
        response = await client.complete(MODEL, MESSAGES, reasoning_effort="high")
    finally:
        await client.close()
    assert response.text == "fine"
    assert "reasoning_effort" in server.requests[0].body and "reasoning_effort" not in server.requests[1].body


# ------------------------------------------------------------------------------------ kept model list


async def test_model_list_is_kept_and_refreshed_in_the_background(server):
    client = ModelClient(server.base_url, model_list_max_age_s=0.3)
    calls = []
    original = client._fetch_models

    async def counted():
        calls.append(time.perf_counter())
        return await original()

    client._fetch_models = counted
    try:
        assert await client.list_models() == [MODEL]
        assert await client.list_models() == [MODEL]
        assert len(calls) == 1  # fresh: from memory
        await asyncio.sleep(0.35)
        server.models = [MODEL, "new-model"]
        assert await client.list_models() == [MODEL]  # stale: answered at once, refreshed behind
        await asyncio.sleep(0.2)
        assert len(calls) == 2 and await client.list_models() == [MODEL, "new-model"]
    finally:
        await client.close()


async def test_server_health_never_waits_for_a_busy_server():
    """llama.cpp answers /models only between generations: a check that hangs must not hold a welcome."""
    with FakeOpenAIServer([MODEL]) as fake:
        client = ModelClient(fake.base_url)
        release = asyncio.Event()
        original = client._fetch_models

        async def blocked():
            await release.wait()
            return await original()

        client._fetch_models = blocked
        try:
            started = time.perf_counter()
            health = await client.server_health(wait_s=0.1)
            assert time.perf_counter() - started < 0.5
            assert health.models is None and health.error is None and health.checking
            release.set()
            await asyncio.sleep(0.2)
            health = await client.server_health(wait_s=0.1)
            assert health.models == [MODEL] and health.error is None
            assert client.cached_resolution("smollm2-135m") == MODEL
        finally:
            await client.close()


async def test_server_health_keeps_the_failure_of_the_last_check():
    client = ModelClient(f"http://127.0.0.1:{_free_port()}/v1", connect_timeout_s=0.5)
    try:
        health = await client.server_health(wait_s=2)
        assert health.models is None and isinstance(health.error, ServerRefused)
    finally:
        await client.close()


async def test_a_connection_closed_before_any_byte_is_asked_once_more_on_a_new_one():
    """A kept-alive connection the server has just closed (its idle timeout) fails the next request with no byte
    of answer; that request is sent once more, on a new connection, instead of failing the question."""
    chats = []

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET"):
                body = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            else:
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                chats.append(1)
                if len(chats) > 1:  # the first chat request gets nothing: the connection just closes
                    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                             "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": "stop"}]}
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
                                 + f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = ModelClient(f"http://127.0.0.1:{port}/v1", first_token_timeout_s=10)
    try:
        response = await client.complete(MODEL, MESSAGES)
    finally:
        await client.close()
        server.close()
    assert response.text == "Hello" and len(chats) == 2
