"""The browser demo page at ``/demo``: one prompt, the small or the large model, streamed over SSE.

The page (``demo/`` at the repository root: plain HTML, CSS and JavaScript, nothing from the web)
talks only to the app's own server:

* ``GET  /demo``               the page
* ``GET  /demo/static/{name}`` ``demo.css``, ``demo.js`` and ``engine.js`` (nothing else is served)
* ``GET  /demo/api/info``      the two roles, their served model names, the model server's host, and
  whether the in-browser engine can run (``browser_engine``, see :mod:`assistant.browser_engine`)
* ``POST /demo/api/prompt``    the same JSON as the stream; answers the sources and the grounded prompt
  (the pipeline's first two stages, no model call) for the page's in-browser engine to generate from
* ``POST /demo/api/stream``    JSON ``{prompt, role, reference_text, temperature, max_tokens}``,
  answered as ``text/event-stream`` with the events ``sources``, ``prompt``, ``started``, ``thinking``
  and ``thought`` (a reasoning model's thinking, and its end), ``token``, ``notice`` and ``done`` (see
  :func:`event_payload`).

The stream runs the same :class:`~assistant.pipeline.Pipeline` as the chat, with the routing mode
pinned to the chosen role. When the browser hangs up (its Stop button aborts the fetch), the ASGI
server cancels the response; the pipeline's generator is then closed, which leaves the model
client's ``async with`` and closes the upstream HTTP stream, so the model server stops generating.
No API key or full endpoint URL ever goes to the browser: only the host.

The page is served cross-origin isolated (COOP/COEP headers), which lets the in-browser engine run
WebAssembly threads; everything it loads comes from this server.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator, Callable
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse

from assistant.browser_engine import NODE_MODULES, find_browser_engine, install_browser_engine_routes
from assistant.events import (
    AnswerStarted, Escalated, Notice, PromptBuilt, SourcesFound, Thinking, ThinkingFinished, Token, TurnFinished,
)
from assistant.settings import PROJECT_ROOT
from routing.client import ModelClient, ModelServerError
from routing.options import MAX_TOKENS_LIMIT, RoutingMode, RoutingOptions

DEMO_DIR = PROJECT_ROOT / "demo"
STATIC_FILES = {
    "demo.css": "text/css; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "engine.js": "text/javascript; charset=utf-8",  # the in-browser engine, imported by demo.js when used
}
ROLE_MODES = {"small": RoutingMode.SMALL_ONLY, "large": RoutingMode.LARGE_ONLY}
MAX_PROMPT_CHARS = 20_000
MAX_REFERENCE_CHARS = 200_000
# A request within the text limits is well under this even with every character escaped.
MAX_BODY_BYTES = 2 * 1024 * 1024

# The page loads only its own files and talks only to this server. The in-browser engine compiles
# WebAssembly ('wasm-unsafe-eval', not 'unsafe-eval') and runs it in workers made from blob: URLs; the
# two Cross-Origin headers make the page cross-origin isolated, so those workers may share memory (threads).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; worker-src 'self' blob:; "
        "style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class DemoRequestError(ValueError):
    """A request the page should not have sent; the message is shown on the page."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


async def read_json_body(request: Request, limit: int) -> Any:
    """The request's JSON body, read up to ``limit`` bytes (a longer body is refused, not read whole)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise DemoRequestError("The request body must be JSON (Content-Type: application/json).", 415)
    declared = request.headers.get("content-length", "")
    too_large = DemoRequestError(f"The request body is over the {limit // 1024} KB limit.", 413)
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise too_large
    try:
        return json.loads(bytes(raw))
    except RecursionError:
        raise DemoRequestError("The request body is nested too deeply.") from None
    except ValueError:  # malformed JSON, bad UTF-8, or a number too long to convert
        raise DemoRequestError("The request body must be JSON.") from None


def install_demo_routes(
    app: FastAPI,
    get_pipeline: Callable[[], Any],
    settings,
    get_client: Callable[[], ModelClient] | None = None,
    *,
    move_to_front: bool = True,
    node_modules: Path = NODE_MODULES,
) -> None:
    """Register the demo routes on ``app`` ahead of every route already there.

    ``get_pipeline()`` is called per request and returns the chat's Pipeline. ``get_client()``
    returns the ModelClient used to resolve the served model names (default: the pipeline's
    ``client`` attribute). Chainlit's catch-all page route would otherwise shadow the GET routes,
    hence the move to the front; a caller that moves its own newly added routes to the front
    afterwards (by index) passes ``move_to_front=False``, or the two moves undo each other.
    """
    resolve_client = get_client or (lambda: get_pipeline().client)
    first_new = len(app.router.routes)

    async def page() -> Response:
        return HTMLResponse((DEMO_DIR / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    async def static_file(name: str) -> Response:
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            return JSONResponse({"error": "not found"}, status_code=404)
        return FileResponse(DEMO_DIR / name, media_type=media_type, headers={"Cache-Control": "no-cache"})

    async def info() -> Response:
        data = await model_info(resolve_client(), settings)
        data["browser_engine"] = find_browser_engine(settings, node_modules).info(settings.context_window)
        return JSONResponse(data)

    async def prompt(request: Request) -> Response:
        """The in-browser engine's request: what the server would send its model, and nothing more."""
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return JSONResponse({"error": "The request body must be JSON."}, status_code=400)
        if isinstance(body, dict):
            body = {**body, "role": "small"}  # the prompt is the same for every role; generation is the page's
        try:
            demo_request = parse_demo_request(body, settings)
        except DemoRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        prepared = await get_pipeline().prepare(
            demo_request["prompt"],
            options=demo_request["options"],
            reference_text=demo_request["reference_text"],
        )
        return JSONResponse(prompt_payload(prepared))

    async def stream(request: Request) -> Response:
        try:
            body = await read_json_body(request, MAX_BODY_BYTES)
            demo_request = parse_demo_request(body, settings)
        except DemoRequestError as exc:
            return JSONResponse({"error": str(exc)}, status_code=exc.status)
        pipeline = get_pipeline()
        events = pipeline.run(
            demo_request["prompt"],
            history=(),
            options=demo_request["options"],
            documents=None,
            reference_text=demo_request["reference_text"],
        )
        return StreamingResponse(sse_stream(events), media_type="text/event-stream", headers=SSE_HEADERS)

    app.add_api_route("/demo", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/demo/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/demo/static/{name}", static_file, methods=["GET"], include_in_schema=False)
    app.add_api_route("/demo/api/info", info, methods=["GET"], include_in_schema=False)
    app.add_api_route("/demo/api/stream", stream, methods=["POST"], include_in_schema=False)
    app.add_api_route("/demo/api/prompt", prompt, methods=["POST"], include_in_schema=False)
    install_browser_engine_routes(app, settings, node_modules)

    if move_to_front:
        new_routes = app.router.routes[first_new:]
        del app.router.routes[first_new:]
        app.router.routes[0:0] = new_routes


def parse_demo_request(body: Any, settings) -> dict:
    """Check the page's JSON and turn it into pipeline arguments; ``DemoRequestError`` says what is wrong."""
    if not isinstance(body, dict):
        raise DemoRequestError("The request body must be a JSON object.")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DemoRequestError("The prompt is empty: type a question first.")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise DemoRequestError(f"The prompt is too long ({len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}).")
    role = body.get("role", "small")
    if not isinstance(role, str) or role not in ROLE_MODES:
        raise DemoRequestError("The model must be 'small' or 'large'.")
    reference_text = body.get("reference_text") or ""
    if not isinstance(reference_text, str):
        raise DemoRequestError("The reference text must be text.")
    if len(reference_text) > MAX_REFERENCE_CHARS:
        raise DemoRequestError(
            f"The reference text is too long ({len(reference_text)} characters; the limit is {MAX_REFERENCE_CHARS})."
        )
    temperature = _number(body.get("temperature", settings.temperature), "Temperature")
    max_tokens = _number(body.get("max_tokens", settings.max_tokens), "Max tokens")
    try:
        options = RoutingOptions.from_settings(settings).with_overrides(
            # The page's token limit is the chosen model's budget (the large model's thinking included).
            {"mode": ROLE_MODES[role], "temperature": temperature, "max_tokens": max_tokens,
             "large_max_tokens": max_tokens}
        )
    except ValueError as exc:
        message = str(exc)
        if "temperature" in message:
            raise DemoRequestError("Temperature must be between 0 and 2.") from None
        if "max_tokens" in message:
            raise DemoRequestError(f"Max tokens must be a whole number from 1 to {MAX_TOKENS_LIMIT}.") from None
        raise DemoRequestError(message) from None
    return {"prompt": prompt.strip(), "role": role, "reference_text": reference_text.strip() or None, "options": options}


def _number(value: Any, label: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise DemoRequestError(f"{label} must be a number.")
    try:
        return float(value)
    except (ValueError, OverflowError):
        raise DemoRequestError(f"{label} must be a number.") from None


async def model_info(client: ModelClient, settings) -> dict:
    """The roles with their aliases and served model names, and the model server's host (never the key)."""
    aliases = {"small": settings.small_model, "large": settings.large_model}
    resolved = await asyncio.gather(*(client.resolve(alias) for alias in aliases.values()), return_exceptions=True)
    roles = {}
    for (role, alias), result in zip(aliases.items(), resolved):
        if isinstance(result, BaseException) and not isinstance(result, Exception):
            raise result
        if isinstance(result, Exception):
            message = str(result) if isinstance(result, ModelServerError) else f"{result.__class__.__name__}: {result}"
            roles[role] = {"alias": alias, "model": None, "error": message}
        else:
            roles[role] = {"alias": alias, "model": result, "error": None}
    return {
        "roles": roles,
        "endpoint_host": endpoint_host(settings.model_endpoint),
        "embedded": bool(settings.embedded_active),
        "defaults": {"temperature": settings.temperature, "max_tokens": settings.max_tokens},
        "max_tokens_limit": MAX_TOKENS_LIMIT,
    }


def endpoint_host(endpoint: str) -> str:
    """``http://user:key@127.0.0.1:5272/v1`` -> ``127.0.0.1:5272``: credentials never leave the server."""
    parts = urlsplit(endpoint)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{parts.port}" if parts.port else host


async def sse_stream(events: AsyncIterator) -> AsyncIterator[str]:
    """Pipeline events as server-sent events; the pipeline generator is always closed at the end.

    When the client hangs up, the ASGI server cancels this generator while it waits for the next
    event (or the response is dropped); ``aclose`` then runs the pipeline's ``finally`` blocks,
    which close the upstream model stream. It is shielded so the cancellation cannot cut it short.
    """
    try:
        while True:
            try:
                event = await events.__anext__()
            except StopAsyncIteration:
                break
            except Exception as exc:  # the pipeline should turn failures into events; say so if not
                message = str(exc) if isinstance(exc, ModelServerError) else f"The demo failed: {exc.__class__.__name__}: {exc}"
                yield format_sse("notice", {"level": "error", "message": message})
                yield format_sse("done", {"error": True, "cancelled": False, "answered_by": None, "server": None})
                break
            payload = event_payload(event)
            if payload is not None:
                yield format_sse(*payload)
    finally:
        with anyio.CancelScope(shield=True):
            await events.aclose()


def format_sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _source_summary(scored) -> dict:
    chunk = scored.chunk
    return {"location": chunk.location, "title": chunk.title, "score": round(scored.score, 3)}


def event_payload(event) -> tuple[str, dict] | None:
    """One pipeline event as ``(sse event name, JSON data)``."""
    if isinstance(event, Token):
        return "token", {"text": event.text, "role": event.role}
    if isinstance(event, Thinking):
        return "thinking", {"text": event.text, "role": event.role}
    if isinstance(event, ThinkingFinished):
        return "thought", {"seconds": round(event.seconds, 2), "answered": event.answered, "role": event.role}
    if isinstance(event, SourcesFound):
        return "sources", {
            "count": len(event.sources),
            "supported": event.supported,
            "retrieval_ms": round(event.retrieval_ms, 2),
            "sources": [_source_summary(s) for s in event.sources],
        }
    if isinstance(event, PromptBuilt):
        return "prompt", {
            "prompt_tokens": event.prompt_tokens,
            "prompt_ms": round(event.prompt_ms, 2),
            "sources_used": [_source_summary(s) for s in event.sources_used],
        }
    if isinstance(event, AnswerStarted):
        return "started", {"role": event.role, "alias": event.alias, "model": event.model, "purpose": event.purpose}
    if isinstance(event, Notice):
        return "notice", {"level": event.level, "message": event.message}
    if isinstance(event, Escalated):
        # A pinned role never escalates; if a future mode does, say so rather than drop it.
        return "notice", {"level": "info", "message": f"Escalated to {event.to_alias}: {event.reason}"}
    if isinstance(event, TurnFinished):
        return "done", done_payload(event)
    return None


def prompt_payload(prepared) -> dict:
    """A :class:`~assistant.pipeline.PreparedPrompt` as JSON: the stream's ``sources`` and ``prompt`` events,
    any notices, and the chat messages for the page's engine to apply the model's chat template to."""
    return {
        "sources": event_payload(prepared.sources)[1],
        "prompt": event_payload(prepared.prompt)[1],
        "notices": [event_payload(notice)[1] for notice in prepared.notices],
        "messages": prepared.messages,
    }


def done_payload(finished: TurnFinished) -> dict:
    """The turn's record for the page: its figures (the answering leg's), citations and routing decision."""
    record = finished.record
    summary = record.summary
    answered = summary.calls > 0
    server = {
        "ttft_ms": _round(summary.ttft_ms),
        "total_ms": _round(summary.total_ms),
        "retrieval_ms": _round(summary.retrieval_ms),
        "prompt_ms": _round(summary.prompt_ms),
        "model_ttft_ms": _round(summary.model_ttft_ms),
        "prompt_tokens": summary.prompt_tokens if answered else None,
        "completion_tokens": summary.completion_tokens if answered else None,
        "tokens_estimated": summary.tokens_estimated if answered else None,
        "tokens_per_s": _round(summary.decode_tokens_per_s),
        "thinking_ms": _round(summary.thinking_ms),
        "first_answer_ms": _round(summary.first_answer_ms),
        "reasoning_tokens": summary.reasoning_tokens if answered else None,
        "reasoning_estimated": summary.reasoning_estimated if answered else None,
    }
    data = record.to_dict()
    return {
        "error": False,
        "cancelled": record.cancelled,
        "answered_by": record.answered_by,
        "answered_role": record.answered_role,
        "chars": len(record.text),
        "cited": record.cited,
        "attributed": record.attributed,
        "dangling": record.dangling,
        "sources": data["sources"],
        "routing": data["routing"],
        "server": server,
    }


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)
