"""A scripted OpenAI-compatible server on loopback, for tests at the HTTP boundary.

It speaks real HTTP and real server-sent events, so the client under test runs its real code path;
only the model's behaviour is scripted: which tokens, how fast, with or without usage and logprobs,
a stream cut half-way, a server that never answers, an HTTP error. It records every request and
whether the client hung up before the stream ended.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


@dataclass
class Script:
    """How the fake model answers one request."""

    tokens: list[str] = field(default_factory=lambda: ["Hello", " there", "."])
    first_token_delay: float = 0.0
    token_delay: float = 0.0
    logprobs: list[float] | None = None  # one per token; None: the server sends no logprobs
    send_usage: bool = True
    prompt_tokens: int = 42
    drop_after: int | None = None  # cut the connection after this many tokens
    # After this many tokens, send ``end_event`` (raw SSE text) and end the stream cleanly: no finish reason, no
    # [DONE]. A server reporting an error mid-answer ('data: {"error": ...}') or ending with an 'error:' line.
    end_after: int | None = None
    end_event: str = ""
    status: int = 200
    error_message: str = "scripted error"
    error_body: bytes | None = None  # the error response's body as sent (default: OpenAI's {"error": {"message"}})
    reject_logprobs: bool = False  # answer 400 when the request asks for logprobs
    reject_reasoning_effort: bool = False  # answer 400 when the request carries reasoning_effort
    finish_reason: str = "stop"
    role_chunk_first: bool = True  # llama.cpp sends a role-only chunk first
    headers_delay: float = 0.0  # seconds before the response headers (a server busy with the prompt)
    ping_every: float | None = None  # SSE comment lines while waiting for the first token (sse-starlette's keep-alive)
    # A reasoning model's thinking, streamed before ``tokens`` in a delta field of its own:
    # "reasoning_content" (Foundry Local, llama.cpp, vLLM < Nov 2025) or "reasoning" (Ollama, vLLM).
    # Inline dialects (Harmony, <think>) put their markers in ``tokens`` instead.
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning_content"
    reasoning_delay: float = 0.0  # seconds between thinking tokens
    delta_extra: dict = field(default_factory=dict)  # fields every delta carries (Ollama: role, content "")
    logprobs_null: bool = False  # Foundry Local: "logprobs": null in every choice, even when asked for
    reasoning_tokens_in_usage: bool = False  # usage.completion_tokens_details.reasoning_tokens


@dataclass
class RequestRecord:
    model: str
    body: dict
    received: float
    tokens_sent: int = 0
    client_disconnected: bool = False
    completed: bool = False
    ended: float | None = None
    first_content_at: float | None = None  # when the first content chunk was handed to the server to send


class FakeOpenAIServer:
    def __init__(self, models: list[str] | None = None):
        self.models = list(models or ["Phi-4-mini-instruct-generic-cpu", "gpt-oss-20b-generic-cpu"])
        self.scripts: dict[str, list[Script]] = {}
        self.default_script = Script()
        self.requests: list[RequestRecord] = []
        self.in_flight = 0
        self.max_in_flight = 0  # chat requests being answered at once, at most
        self.port = _free_port()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/chat/completions", self._chat, methods=["POST"]),
            ]
        )

    # ----------------------------------------------------------------------------- scripting
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, model: str, *scripts: Script) -> None:
        """Queue scripts for a model id; the last one repeats once the queue is down to it."""
        self.scripts[model] = list(scripts)

    def _next_script(self, model: str) -> Script:
        queue = self.scripts.get(model)
        if not queue:
            return self.default_script
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def requests_for(self, model: str) -> list[RequestRecord]:
        return [r for r in self.requests if r.model == model]

    # ----------------------------------------------------------------------------- handlers
    async def _models(self, request: Request):
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model", "owned_by": "test"} for m in self.models]})

    async def _chat(self, request: Request):
        body = await request.json()
        model = body.get("model", "")
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        streaming = False
        try:
            response = await self._answer(request, body, model)
            streaming = isinstance(response, StreamingResponse)  # then the stream's end releases the count
            return response
        finally:
            if not streaming:
                self.in_flight -= 1

    async def _answer(self, request: Request, body: dict, model: str):
        record = RequestRecord(model=model, body=body, received=time.perf_counter())
        self.requests.append(record)
        script = self._next_script(model)
        if model not in self.models:
            return JSONResponse({"error": {"message": f"model {model} not found"}}, status_code=404)
        if script.status != 200:
            if script.error_body is not None:
                return Response(script.error_body, status_code=script.status, media_type="application/json")
            return JSONResponse({"error": {"message": script.error_message}}, status_code=script.status)
        if script.reject_logprobs and body.get("logprobs"):
            return JSONResponse({"error": {"message": "logprobs is not supported"}}, status_code=400)
        if script.reject_reasoning_effort and "reasoning_effort" in body:
            return JSONResponse({"error": {"message": "Unrecognized request argument: reasoning_effort"}}, status_code=400)
        if script.headers_delay:
            await asyncio.sleep(script.headers_delay)
        if not body.get("stream"):
            return JSONResponse(_whole_completion(model, script))
        return StreamingResponse(self._events(model, body, script, record), media_type="text/event-stream")

    async def _events(self, model: str, body: dict, script: Script, record: RequestRecord):
        created = int(time.time())
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model}
        want_logprobs = bool(body.get("logprobs")) and script.logprobs is not None
        try:
            if script.role_chunk_first:
                yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
            if script.ping_every:
                waited = 0.0
                while waited < script.first_token_delay:
                    step = min(script.ping_every, script.first_token_delay - waited)
                    await asyncio.sleep(step)
                    waited += step
                    yield ": ping\n\n"
            else:
                await asyncio.sleep(script.first_token_delay)
            for i, thought in enumerate(script.reasoning):
                if i:
                    await asyncio.sleep(script.reasoning_delay)
                choice = {"index": 0, "delta": {**script.delta_extra, script.reasoning_field: thought},
                          "finish_reason": None}
                if script.logprobs_null:
                    choice["logprobs"] = None
                yield _sse({**base, "choices": [choice]})
            if script.reasoning:
                await asyncio.sleep(script.token_delay)
            for i, token in enumerate(script.tokens):
                if i:
                    await asyncio.sleep(script.token_delay)
                if script.drop_after is not None and i >= script.drop_after:
                    raise ConnectionAbortedError("scripted drop")
                if script.end_after is not None and i >= script.end_after:
                    if script.end_event:
                        yield script.end_event
                    return
                choice = {"index": 0, "delta": {**script.delta_extra, "content": token}, "finish_reason": None}
                if script.logprobs_null:
                    choice["logprobs"] = None
                elif want_logprobs:
                    lp = script.logprobs[i] if i < len(script.logprobs) else script.logprobs[-1]
                    choice["logprobs"] = {"content": [{"token": token, "logprob": lp, "bytes": None, "top_logprobs": []}]}
                if record.first_content_at is None:
                    record.first_content_at = time.perf_counter()
                yield _sse({**base, "choices": [choice]})
                record.tokens_sent = i + 1
            yield _sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": script.finish_reason}]})
            if script.send_usage and (body.get("stream_options") or {}).get("include_usage"):
                completion = len(script.tokens) + len(script.reasoning)
                usage = {
                    "prompt_tokens": script.prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": script.prompt_tokens + completion,
                }
                if script.reasoning_tokens_in_usage:
                    usage["completion_tokens_details"] = {"reasoning_tokens": len(script.reasoning)}
                yield _sse({**base, "choices": [], "usage": usage})
            yield "data: [DONE]\n\n"
            record.completed = True
        except (asyncio.CancelledError, GeneratorExit):
            record.client_disconnected = True
            raise
        finally:
            record.ended = time.perf_counter()
            self.in_flight -= 1

    # ----------------------------------------------------------------------------- lifecycle
    def start(self) -> "FakeOpenAIServer":
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="critical", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.time() + 10
        while not self._server.started:
            if time.time() > deadline:
                raise RuntimeError("fake OpenAI server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _whole_completion(model: str, script: Script) -> dict:
    text = "".join(script.tokens)
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": script.finish_reason}],
        "usage": {
            "prompt_tokens": script.prompt_tokens,
            "completion_tokens": len(script.tokens),
            "total_tokens": script.prompt_tokens + len(script.tokens),
        },
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HeaderCuttingServer:
    """Answers GET /v1/models, takes each chat request, starts the response headers and closes the
    connection before they are complete: a server that dies while answering (raw TCP, loopback)."""

    def __init__(self, models: list[str]):
        self.models = list(models)
        self.port = _free_port()
        self.chat_requests = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._server = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if head.startswith(b"GET"):
                body = json.dumps({"object": "list", "data": [
                    {"id": m, "object": "model", "owned_by": "me"} for m in self.models]}).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                             + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            else:
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                self.chat_requests += 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")  # never finished
            await writer.drain()
        finally:
            writer.close()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._server.wait_closed())
            self._loop.close()

    def __enter__(self) -> "HeaderCuttingServer":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        self._server.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Serve a scripted model on loopback until interrupted (for benchmarks and manual checks)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--models", default="fake-small,fake-large")
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--first-token-delay", type=float, default=0.5)
    parser.add_argument("--token-delay", type=float, default=0.02)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(args.models.split(","))
    if args.port:
        server.port = args.port
    server.default_script = Script(tokens=[f" word{i}" for i in range(args.tokens)],
                                   first_token_delay=args.first_token_delay, token_delay=args.token_delay)
    server.start()
    print(server.base_url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
