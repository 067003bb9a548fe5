"""The OpenAI-compatible model client: alias resolution, streaming, reasoning, timings, usage and logprobs.

One call gives one :class:`Response` (answer text, the model's thinking kept apart from it, served
model id, timings on the monotonic clock, usage, token logprobs), in the spirit of Simon Willison's ``llm``.
Thinking arrives in ``delta.reasoning_content`` (Foundry Local, llama.cpp, older vLLM), in
``delta.reasoning`` (Ollama, current vLLM), or inline in ``content`` (Harmony or ``<think>``; split by
:mod:`routing.reasoning`). Streaming goes through :class:`ChatStream`,
an async context manager: leaving it (normally, on ``break``, on an error or on cancellation) closes
the HTTP stream, which makes llama.cpp and Foundry Local stop generating.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator, Callable, Sequence

import httpx
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from rag.tokens import count_message_tokens, count_tokens
from routing.queue import ServerQueue
from routing.reasoning import ANSWER, REASONING, WAS_THINKING, InlineReasoningSplitter

REASONING_EFFORTS = ("low", "medium", "high")
# Where servers put the thinking of a reasoning model in a streamed delta, in the order they are read.
REASONING_FIELDS = ("reasoning_content", "reasoning")

START_HINT = (
    "Start Foundry Local (`foundry service start`, then `foundry model run phi-4-mini`) or another "
    "OpenAI-compatible server, or point ASSISTANT_MODEL_ENDPOINT (or FOUNDRY_LOCAL_ENDPOINT) at one."
)

# How to bring each kind of server back, once we know which kind answers at the endpoint.
RESTART_HINTS = {
    "embedded": "The embedded llama.cpp server started with the app has stopped: restart the app (`./start.sh`).",
    "llama.cpp": "Start the llama.cpp server at {endpoint} again (it served {models}).",
    "ollama": "Start Ollama again (`ollama serve`); it served {models}.",
    "vllm": "Start the vLLM server at {endpoint} again (it served {models}).",
    "foundry": (
        "Start Foundry Local again (`foundry service start`). Its port changes on each start: "
        "`foundry service status` shows it; set ASSISTANT_MODEL_ENDPOINT to match."
    ),
    "server": "Start the model server at {endpoint} again (it served {models}).",
}

MODEL_LIST_MAX_AGE_S = 30.0  # the served-model list and health are fetched again in the background after this


# --------------------------------------------------------------------------------------------------
# What one call returns
# --------------------------------------------------------------------------------------------------


@dataclass
class Timings:
    """Monotonic timestamps (``time.perf_counter``) of one streamed call."""

    request_sent: float
    first_token: float | None = None  # the first token of any kind, thinking included
    last_token: float | None = None
    finished: float | None = None
    first_reasoning_token: float | None = None
    last_reasoning_token: float | None = None
    first_answer_token: float | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.request_sent

    @property
    def first_answer_s(self) -> float | None:
        """Request to the first token of the answer itself (after any thinking)."""
        return None if self.first_answer_token is None else self.first_answer_token - self.request_sent

    @property
    def thinking_s(self) -> float | None:
        """First to last thinking token; None when the model did not think."""
        if self.first_reasoning_token is None or self.last_reasoning_token is None:
            return None
        return self.last_reasoning_token - self.first_reasoning_token

    @property
    def generation_s(self) -> float | None:
        """First token to last token: the decode time."""
        if self.first_token is None or self.last_token is None:
            return None
        return self.last_token - self.first_token

    @property
    def total_s(self) -> float | None:
        end = self.finished if self.finished is not None else self.last_token
        return None if end is None else end - self.request_sent


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int  # thinking and answer together, as servers count them
    estimated: bool = False
    reasoning_tokens: int = 0
    reasoning_estimated: bool = False  # the server gave no completion_tokens_details.reasoning_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def answer_tokens(self) -> int:
        return max(self.completion_tokens - self.reasoning_tokens, 0)


@dataclass
class Response:
    alias: str
    model: str
    text: str = ""  # the answer only
    reasoning: str = ""  # the model's thinking, never part of the answer
    finish_reason: str | None = None
    usage: Usage | None = None
    timings: Timings = field(default_factory=lambda: Timings(request_sent=time.perf_counter()))
    token_logprobs: list[float] | None = None
    content_chunks: int = 0
    cancelled: bool = False
    error: str | None = None

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Completion tokens after the first, over the first-to-last token time (not over the total)."""
        gen = self.timings.generation_s
        if self.usage is None or gen is None or gen <= 0 or self.usage.completion_tokens < 2:
            return None
        return (self.usage.completion_tokens - 1) / gen

    @property
    def decode_chunks_per_s(self) -> float | None:
        """Content chunks after the first, over the first-to-last token time. llama.cpp streams one token a
        chunk, so without server usage this is closer to its real decode rate than a tiktoken estimate."""
        gen = self.timings.generation_s
        if gen is None or gen <= 0 or self.content_chunks < 2:
            return None
        return (self.content_chunks - 1) / gen

    @property
    def complete(self) -> bool:
        return not self.cancelled and self.error is None

    @property
    def truncated(self) -> bool:
        """Cut by its token budget: the server said so, or the model thought and never answered."""
        if self.cancelled or self.error is not None:
            return False
        return self.finish_reason == "length" or (bool(self.reasoning.strip()) and not self.text.strip())


# --------------------------------------------------------------------------------------------------
# Errors, each with a message a user can act on
# --------------------------------------------------------------------------------------------------


class ModelServerError(Exception):
    """Base class. ``partial`` holds whatever was received before the failure."""

    def __init__(self, message: str, *, partial: Response | None = None):
        super().__init__(message)
        self.partial = partial


class ServerUnreachable(ModelServerError):
    pass


class ModelTimeout(ModelServerError):
    pass


class StreamInterrupted(ModelServerError):
    pass


class ModelNotFound(ModelServerError):
    def __init__(self, alias: str, served: Sequence[str]):
        listing = ", ".join(served) if served else "(none)"
        super().__init__(f"No served model matches '{alias}'. The server serves: {listing}.")
        self.alias = alias
        self.served = list(served)


class ServerRejected(ModelServerError):
    pass


class ServerRefused(ServerUnreachable):
    """Nothing listens at the endpoint: the server is not running."""


class ServerCutConnection(StreamInterrupted):
    """The connection closed before the response headers: the request was taken, then dropped."""


class ServerSilent(ModelTimeout):
    """The stream started, then no byte at all (no token, no keep-alive) arrived for too long."""


class ServerOverloaded(ServerRejected):
    """HTTP 429/503: the server is up but will not take the request now."""


@dataclass
class ServerHealth:
    """What is known of the model server without waiting for it."""

    models: list[str] | None = None  # served ids from the last good /models answer
    error: ModelServerError | None = None  # the last check failed (and nothing newer succeeded)
    checked_at: float | None = None  # time.monotonic() of the last finished check
    checking: bool = False  # a check is running

    @property
    def known(self) -> bool:
        return self.models is not None or self.error is not None


# Foundry Local's execution-provider variants, and llama.cpp file names' quantisation suffixes.
_DEVICE_SUFFIX = re.compile(r"-(?:generic|cuda|trt-?rtx|tensorrt|qnn|vitis|openvino|dml|webgpu)?-?(cpu|gpu|npu)$")
_QUANT_SUFFIX = re.compile(r"[-_.](?:q\d[\w]*|iq\d[\w]*|f16|bf16|fp16|f32|int4|int8)$")


@dataclass(frozen=True)
class ModelName:
    """A served id taken apart: ``microsoft/Phi-4-mini-instruct-generic-cpu:5`` -> key ``phi4mini``,
    device ``cpu``, version 5. ``gpt-oss:20b`` -> key ``gptoss``, size tag ``20b``."""

    id: str
    key: str  # lower case, letters and digits only, no vendor, "-instruct", device, tag or quantisation
    tag: str = ""  # an Ollama-style size/variant tag ("20b"); not "latest", not a version number
    version: int | None = None  # Foundry Local's ":N"
    device: str | None = None  # "cpu", "gpu", "npu"

    @classmethod
    def parse(cls, model_id: str) -> "ModelName":
        name = model_id.strip().lower().rsplit("/", 1)[-1]
        name, _, tag = name.partition(":")
        if name.endswith(".gguf"):
            name = name[: -len(".gguf")]
        name = _QUANT_SUFFIX.sub("", name)
        device = None
        found = _DEVICE_SUFFIX.search(name)
        if found:
            device, name = found.group(1), name[: found.start()]
        name = re.sub(r"[-_.]instruct(?=$|[-_.])", "", name)
        version = int(tag) if tag.isdigit() else None
        size_tag = "" if tag in ("", "latest") or version is not None else re.sub(r"[^a-z0-9]", "", tag)
        return cls(model_id, re.sub(r"[^a-z0-9]", "", name), size_tag, version, device)

    @property
    def full_key(self) -> str:
        return self.key + self.tag


@dataclass(frozen=True)
class Resolution:
    """Which served id an alias resolved to, how, and (when it was a choice) why that one."""

    alias: str
    model: str
    how: str  # "exact", "case", "same name", "same name without tag", "prefix", "contains"
    candidates: tuple[str, ...] = ()
    note: str = ""  # for the user: why this variant, when several matched

    def describe(self) -> str:
        if self.how == "exact":
            return ""
        text = f"`{self.alias}` matched `{self.model}` ({self.how})"
        return text + (f"; {self.note}" if self.note else "")


def gpu_available() -> bool:
    """An NVIDIA GPU with its driver loaded: Foundry Local's CUDA variants can run."""
    return Path("/proc/driver/nvidia/version").exists() or shutil.which("nvidia-smi") is not None


def explain_alias(alias: str, served: Sequence[str], *, prefer_gpu: bool | None = None) -> Resolution:
    """Find each server's own name for the model an alias names (see :func:`resolve_alias`)."""
    if alias in served:
        return Resolution(alias, alias, "exact")
    same_case = [c for c in served if c.lower() == alias.lower()]
    if same_case:
        return Resolution(alias, same_case[0], "case", tuple(same_case))
    wanted = ModelName.parse(alias)
    names = [ModelName.parse(c) for c in served]
    tiers = (
        ("same name", lambda n: n.full_key == wanted.full_key),
        ("same name without tag", lambda n: n.key == wanted.full_key or n.full_key == wanted.key),
        ("prefix", lambda n: bool(wanted.full_key) and n.full_key.startswith(wanted.full_key)),
        ("contains", lambda n: bool(wanted.full_key) and wanted.full_key in n.full_key),
    )
    for how, matches in tiers:
        found = [n for n in names if matches(n)]
        if found:
            return _choose(alias, how, found, gpu_available() if prefer_gpu is None else prefer_gpu)
    raise ModelNotFound(alias, served)


def _choose(alias: str, how: str, found: list[ModelName], prefer_gpu: bool) -> Resolution:
    """Of several variants: the device this machine runs best (GPU when one is present, else CPU; the
    order Foundry Local documents for its own alias resolution), then the newest version, then the
    shortest id."""
    preferred = "gpu" if prefer_gpu else "cpu"

    def rank(n: ModelName):
        device_rank = 0 if n.device in (preferred, None) else 1
        return (device_rank, -(n.version or 0), len(n.id), n.id)

    ordered = sorted(found, key=rank)
    chosen = ordered[0]
    ids = tuple(n.id for n in ordered)
    if len(ordered) == 1:
        return Resolution(alias, chosen.id, how, ids)
    others = ", ".join(f"`{n.id}`" for n in ordered[1:])
    runner_up = ordered[1]
    if chosen.device == preferred and runner_up.device not in (preferred, None):
        why = ("a GPU is present, so the GPU variant" if prefer_gpu
               else "no GPU found on this machine, so the CPU variant")
    elif (chosen.version or 0) != (runner_up.version or 0):
        why = f"the newest version (:{chosen.version})"
    else:
        why = "the shortest matching name"
    return Resolution(alias, chosen.id, how, ids, note=f"chose it over {others}: {why}")


def resolve_alias(alias: str, served: Sequence[str], *, prefer_gpu: bool | None = None) -> str:
    """The served id for an alias: the exact id, else a case-insensitive match, else the same model under
    the server's own name (vendor prefix, ``:tag``, ``-instruct``, device variant and punctuation ignored:
    ``phi-4-mini`` finds ``Phi-4-mini-instruct-generic-cpu:5``, ``phi4-mini:latest`` and
    ``microsoft/Phi-4-mini-instruct``; ``gpt-oss-20b`` finds ``gpt-oss:20b``), else the served id that starts
    with or contains it. Among several variants the choice is explained by :func:`explain_alias`.

    Nothing matching is an error that lists what is served: llama.cpp would otherwise answer an unknown
    id with its first model.
    """
    return explain_alias(alias, served, prefer_gpu=prefer_gpu).model


# --------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------


class ModelClient:
    def __init__(
        self,
        endpoint: str,
        api_key: str = "not-needed-for-local",
        *,
        connect_timeout_s: float = 3.0,
        first_token_timeout_s: float = 120.0,
        stream_idle_timeout_s: float = 60.0,
        stream_silence_timeout_s: float = 30.0,
        concurrency: int = 1,
        server_kind: str | None = None,
        model_list_max_age_s: float = MODEL_LIST_MAX_AGE_S,
    ):
        self.endpoint = endpoint.rstrip("/")
        self.connect_timeout_s = connect_timeout_s
        self.first_token_timeout_s = first_token_timeout_s
        self.stream_idle_timeout_s = stream_idle_timeout_s
        self.stream_silence_timeout_s = stream_silence_timeout_s
        self.model_list_max_age_s = model_list_max_age_s
        # "embedded", "llama.cpp", "ollama", "vllm", "foundry", "server"; None until the server has answered.
        self.server_kind = server_kind
        # Requests wait here for one of the server's slots, not inside the server (see routing.queue).
        self.queue = ServerQueue(concurrency)
        # A margin so that our own first-token and idle limits fire before httpx's read timeout.
        read_timeout = max(first_token_timeout_s, stream_idle_timeout_s) + 1.0
        timeout = httpx.Timeout(read_timeout, connect=connect_timeout_s)
        self._openai = openai.AsyncOpenAI(
            base_url=self.endpoint,
            api_key=api_key or "not-needed",
            max_retries=0,
            timeout=timeout,
            http_client=httpx.AsyncClient(
                transport=_ByteClockTransport(httpx.AsyncHTTPTransport()),
                timeout=timeout,
                follow_redirects=True,
                limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100),
            ),
        )
        self._resolved: dict[str, str] = {}
        self.resolutions: dict[str, Resolution] = {}  # alias -> how it was resolved, for the welcome
        self._logprobs_supported: dict[str, bool] = {}
        self._effort_supported: dict[str, bool] = {}
        self.health = ServerHealth()
        self._check: asyncio.Task | None = None

    @classmethod
    def from_settings(cls, settings) -> "ModelClient":
        return cls(
            settings.model_endpoint,
            settings.api_key,
            connect_timeout_s=settings.connect_timeout_s,
            first_token_timeout_s=settings.first_token_timeout_s,
            stream_idle_timeout_s=settings.stream_idle_timeout_s,
            stream_silence_timeout_s=getattr(settings, "stream_silence_timeout_s", 30.0),
            concurrency=getattr(settings, "server_concurrency", 1),
            server_kind="embedded" if getattr(settings, "embedded_active", False) else None,
        )


    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
        await self._openai.close()

    # ------------------------------------------------------------------ served models and health
    # llama.cpp's server answers GET /models behind the lock its generation holds: asked while it
    # answers, the list waits for the whole answer. So the list is kept, served from memory, and
    # fetched again in the background once it is older than model_list_max_age_s.

    async def _fetch_models(self) -> list[str]:
        try:
            page = await self._openai.models.list()
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            raise _as_model_error(exc, self.endpoint, hint=self.restart_hint()) from exc
        models = [model.id for model in page.data]
        if self.server_kind is None:
            self.server_kind = _server_kind([getattr(model, "owned_by", "") or "" for model in page.data], self.endpoint)
        return models

    async def _run_check(self) -> list[str]:
        self.health.checking = True
        try:
            models = await self._fetch_models()
        except ModelServerError as exc:
            busy = self.queue.running > 0 and isinstance(exc, ModelTimeout)
            if not (busy and self.health.models is not None):  # a server busy answering is not down
                self.health.error = exc
            self.health.checked_at = time.monotonic()
            raise
        finally:
            self.health.checking = False
        self.health = ServerHealth(models=models, checked_at=time.monotonic())
        return models

    def _start_check(self) -> asyncio.Task:
        """One check at a time: callers that arrive while one runs share it."""
        if self._check is None or self._check.done():
            self._check = asyncio.ensure_future(self._run_check())
            # A background check's failure is recorded in self.health; nobody awaits it necessarily.
            self._check.add_done_callback(lambda task: task.cancelled() or task.exception())
        return self._check

    def _fresh(self) -> bool:
        checked = self.health.checked_at
        return checked is not None and time.monotonic() - checked < self.model_list_max_age_s

    async def list_models(self, *, refresh: bool = False) -> list[str]:
        """The served model ids. From memory while fresh; a stale list is returned at once and fetched
        again in the background; with no list yet (or ``refresh``), waits for the server."""
        if not refresh and self.health.models is not None:
            if not self._fresh():
                self._start_check()
            return list(self.health.models)
        return list(await asyncio.shield(self._start_check()))

    async def server_health(self, wait_s: float = 0.15) -> ServerHealth:
        """What is known now, never waiting more than ``wait_s`` (for a welcome message): starts a check
        in the background when the last one is stale."""
        if not self._fresh() and not (self._check is not None and not self._check.done()):
            self._start_check()
        if not self.health.known and self._check is not None and not self._check.done():
            await asyncio.wait({self._check}, timeout=wait_s)
        return self.health

    def cached_resolution(self, alias: str) -> str | None:
        """The served id for ``alias`` from the kept list, without asking the server (None if unknown)."""
        if alias in self._resolved:
            return self._resolved[alias]
        if self.health.models is None:
            return None
        try:
            return resolve_alias(alias, self.health.models)
        except ModelNotFound:
            return None

    async def resolve(self, alias: str, *, refresh: bool = False) -> str:
        if not refresh and alias in self._resolved:
            return self._resolved[alias]
        served = await self.list_models(refresh=refresh)
        try:
            resolution = explain_alias(alias, served)
        except ModelNotFound:
            if refresh:
                raise
            # The kept list may predate a model loaded since: ask once more before saying it is not served.
            resolution = explain_alias(alias, await self.list_models(refresh=True))
        self.resolutions[alias] = resolution
        self._resolved[alias] = resolution.model
        return resolution.model

    def restart_hint(self) -> str:
        """What to do when the server stops answering, for the kind of server that answered here."""
        if self.server_kind is None:
            return START_HINT
        models = ", ".join(f"`{m}`" for m in (self.health.models or [])) or "its models"
        return RESTART_HINTS.get(self.server_kind, RESTART_HINTS["server"]).format(endpoint=self.endpoint, models=models)

    def stream(
        self,
        alias: str,
        messages: list[dict],
        *,
        temperature: float = 0.2,
        max_tokens: int = 512,
        logprobs: bool = True,
        reasoning_effort: str | None = None,
    ) -> "ChatStream":
        """``max_tokens`` is always sent: Foundry Local stops near 512 tokens without it (and says "stop").
        ``reasoning_effort`` (low / medium / high) goes as the top-level ``reasoning_effort`` field, which
        Foundry Local, llama.cpp, Ollama and vLLM read; a server that rejects it is asked again without."""
        return ChatStream(
            self, alias, messages, temperature=temperature, max_tokens=max_tokens, logprobs=logprobs,
            reasoning_effort=reasoning_effort,
        )

    async def complete(self, alias: str, messages: list[dict], **kwargs) -> Response:
        """Stream a whole answer and return its :class:`Response`."""
        async with self.stream(alias, messages, **kwargs) as stream:
            async for _ in stream:
                pass
        return stream.response


class ChatStream:
    """``async with client.stream(...) as s: async for delta in s: ...``; then ``s.response``.

    Iterating yields the answer text only. ``s.parts()`` yields ``(kind, text)`` with kind
    ``"reasoning"`` or ``"answer"``, for callers that show the thinking too. Use one or the other.
    """

    def __init__(
        self, client: ModelClient, alias: str, messages: list[dict], *, temperature, max_tokens, logprobs,
        reasoning_effort=None,
    ):
        self._client = client
        self.alias = alias
        self.messages = messages
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.want_logprobs = logprobs
        self.reasoning_effort = reasoning_effort or None
        self.response = Response(alias=alias, model=alias)
        self._upstream = None
        self._finished = False
        self._splitter = InlineReasoningSplitter()
        self._usage_reasoning_tokens: int | None = None

    async def __aenter__(self) -> "ChatStream":
        model_id = await self._client.resolve(self.alias)
        self.response.model = model_id
        want_logprobs = self.want_logprobs and self._client._logprobs_supported.get(model_id, True)
        effort = self.reasoning_effort if self._client._effort_supported.get(model_id, True) else None
        try:
            for _attempt in range(3):
                self.response.timings = Timings(request_sent=time.perf_counter())
                try:
                    self._upstream = await self._create_or_raise(model_id, want_logprobs, effort)
                    break
                except ServerCutConnection as exc:
                    # Closed without a byte of answer: most often a kept-alive connection the server had just
                    # closed (its idle timeout). Once more, on a new connection; a server that really died fails again.
                    if _attempt > 0 or not _closed_before_any_byte(exc):
                        raise
                except ServerRejected as exc:
                    # A server that rejects an optional parameter: remember, and ask again without it.
                    rejected = _rejected_parameter(exc)
                    if want_logprobs and rejected == "logprobs":
                        self._client._logprobs_supported[model_id] = want_logprobs = False
                    elif effort and rejected == "reasoning_effort":
                        self._client._effort_supported[model_id] = False
                        effort = None
                    else:
                        raise
        except ModelServerError:
            # __aexit__ does not run when __aenter__ fails: give the partial response its end time and usage.
            self._finalize()
            raise
        return self

    def _first_token_wait_left(self) -> float:
        """The first-token limit counts from the request, across headers and any content-less chunks."""
        deadline = self.response.timings.request_sent + self._client.first_token_timeout_s
        return max(deadline - time.perf_counter(), 0.0)

    def _first_token_timeout(self) -> ModelTimeout:
        self.response.error = "timeout"
        return ModelTimeout(
            f"The model server at {self._client.endpoint} did not start answering within "
            f"{self._client.first_token_timeout_s:g} s of receiving the question (it may be reading a long "
            "prompt or stuck). Ask again, or raise ASSISTANT_FIRST_TOKEN_TIMEOUT_S for a slow model.",
            partial=self.response,
        )

    async def _create_or_raise(self, model_id: str, want_logprobs: bool, effort: str | None = None):
        try:
            return await asyncio.wait_for(
                self._create(model_id, want_logprobs, effort), timeout=self._first_token_wait_left()
            )
        except asyncio.TimeoutError as exc:
            raise self._first_token_timeout() from exc
        except (openai.BadRequestError, openai.UnprocessableEntityError) as exc:
            raise ServerRejected(f"The model server rejected the request: {_server_said(exc)}", partial=self.response) from exc
        except (openai.APIConnectionError, openai.APIStatusError) as exc:
            self.response.error = exc.__class__.__name__
            raise _as_model_error(exc, self._client.endpoint, self.response, hint=self._client.restart_hint()) from exc

    async def _create(self, model_id: str, want_logprobs: bool, effort: str | None = None):
        body = {
            "model": model_id,
            "messages": self.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if want_logprobs:
            # llama.cpp returns logprobs only when top_logprobs is also given.
            body["logprobs"] = True
            body["top_logprobs"] = 1
        if effort:
            body["reasoning_effort"] = effort
        # The SDK's own post, as chat.completions.create makes it, without create's walk of every message
        # through the parameter types (4-5 ms of event-loop time per question here, for plain strings).
        return await self._client._openai.post(
            "/chat/completions", body=body, cast_to=ChatCompletion, stream=True,
            stream_cls=openai.AsyncStream[ChatCompletionChunk],
        )

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, GeneratorExit)):
            self.response.cancelled = True
        elif not self._finished and self.response.error is None:
            # Left early with a break, or an exception in the caller's loop: the caller stopped reading.
            # (A failure of the stream itself has set response.error instead.)
            self.response.cancelled = True
        await self._close_upstream()
        self._finalize()

    async def aclose(self) -> None:
        if not self._finished:
            self.response.cancelled = True
        await self._close_upstream()
        self._finalize()

    async def _close_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            try:
                await asyncio.shield(upstream.close())
            except Exception:
                pass

    def __aiter__(self) -> AsyncIterator[str]:
        return self._answer_deltas()

    async def _answer_deltas(self) -> AsyncIterator[str]:
        async for kind, text in self.parts():
            if kind == ANSWER:
                yield text

    async def parts(self) -> AsyncIterator[tuple[str, str]]:
        """``("reasoning", text)`` and ``("answer", text)`` in the order the model produced them, and
        ``("was_thinking", text)`` when the answer text so far turns out to have been thinking (see
        :mod:`routing.reasoning`)."""
        if self._upstream is None:
            return
        response = self.response
        timings = response.timings
        iterator = self._upstream.__aiter__()
        while True:
            # Thinking is progress: after the first token of any kind, only the idle limit applies.
            try:
                chunk = await self._next_chunk(iterator)
            except StopAsyncIteration:
                break

            if chunk.usage is not None:
                self._read_usage(chunk.usage)
            if getattr(chunk, "model", None):
                response.model = chunk.model or response.model
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.finish_reason:
                response.finish_reason = choice.finish_reason
            logprobs = getattr(choice, "logprobs", None)
            if logprobs is not None and getattr(logprobs, "content", None):
                if response.token_logprobs is None:
                    response.token_logprobs = []
                response.token_logprobs.extend(item.logprob for item in logprobs.content)
            delta = choice.delta
            if delta is None:
                continue
            thinking = _reasoning_field(delta)
            content = delta.content
            if thinking or content:
                now = time.perf_counter()
                if timings.first_token is None:
                    timings.first_token = now
                timings.last_token = now
            if content:
                response.content_chunks += 1
            parts = [(REASONING, thinking)] if thinking else []
            if content:
                parts += self._splitter.feed(content)
            for part in parts:
                self._record(part)
                yield part
        for part in self._splitter.finish():
            self._record(part)
            yield part
        if response.finish_reason is None:
            # Every server here ends a whole answer with a finish reason; a stream that closes cleanly without
            # one was broken off (llama.cpp, for one, ends with an 'error:' line, which SSE readers skip).
            raise self._unfinished()
        self._finished = True
        timings.finished = time.perf_counter()

    async def _next_chunk(self, iterator):
        """The next parsed chunk, within the stream's limits: the first-token limit (from the request),
        the idle limit between tokens, and the silence limit (no byte at all, not even a keep-alive,
        since the last one: a server that sent its headers and then went quiet)."""
        client = self._client
        timings = self.response.timings
        clock = _byte_clock(self._upstream)
        pending = asyncio.ensure_future(iterator.__anext__())
        waited_from = time.perf_counter()
        try:
            while True:
                waiting_for_first = timings.first_token is None
                left = (self._first_token_wait_left() if waiting_for_first
                        else client.stream_idle_timeout_s - (time.perf_counter() - waited_from))
                silence_left = (client.stream_silence_timeout_s - (time.perf_counter() - clock.last_byte)
                                if clock is not None else left)
                done, _ = await asyncio.wait({pending}, timeout=max(min(left, silence_left), 0.0))
                if done:
                    return pending.result()
                if clock is not None and time.perf_counter() - clock.last_byte >= client.stream_silence_timeout_s:
                    raise self._silent()
                if left <= 0 or (waiting_for_first and self._first_token_wait_left() <= 0):
                    raise self._first_token_timeout() if waiting_for_first else self._idle_timeout()
        except StopAsyncIteration:
            raise
        except httpx.TimeoutException as exc:
            raise (self._first_token_timeout() if timings.first_token is None else self._idle_timeout()) from exc
        except (httpx.HTTPError, openai.APIError) as exc:
            if type(exc) is openai.APIError:  # the SDK's reading of a 'data: {"error": ...}' event in the stream
                raise self._reported(exc) from exc
            raise self._cut(exc) from exc
        finally:
            if not pending.done():
                pending.cancel()

    def _kept(self) -> str:
        text = self.response.text
        if not text:
            return "Nothing of the answer had arrived."
        tokens = count_tokens(text)
        return f"The {tokens} token{'s' if tokens != 1 else ''} that arrived {'are' if tokens != 1 else 'is'} kept above."

    def _silent(self) -> ServerSilent:
        self.response.error = "silent"
        what = "started its answer" if self.response.timings.first_token is not None else "accepted the request"
        return ServerSilent(
            f"The model server at {self._client.endpoint} {what}, then sent nothing at all for "
            f"{self._client.stream_silence_timeout_s:g} s (no text, no keep-alive): it looks stuck. {self._kept()} "
            f"Ask again; if it stays silent, restart it. {self._client.restart_hint()}",
            partial=self.response,
        )

    def _idle_timeout(self) -> ModelTimeout:
        self.response.error = "timeout"
        return ModelTimeout(
            f"The model server at {self._client.endpoint} stopped sending text for "
            f"{self._client.stream_idle_timeout_s:g} s in the middle of the answer. {self._kept()} Ask again.",
            partial=self.response,
        )

    def _reported(self, exc: openai.APIError) -> StreamInterrupted:
        self.response.error = "error event in the stream"
        return StreamInterrupted(
            f"The model server at {self._client.endpoint} stopped the answer with an error: "
            f"{_one_line(exc.message)}. {self._kept()} Ask again.",
            partial=self.response,
        )

    def _unfinished(self) -> StreamInterrupted:
        self.response.error = "stream ended unfinished"
        return StreamInterrupted(
            f"The model server at {self._client.endpoint} ended its stream without finishing the answer (no "
            f"finish reason: an error on its side, or something between cutting it). {self._kept()} Ask again.",
            partial=self.response,
        )

    def _cut(self, exc: Exception) -> StreamInterrupted:
        self.response.error = f"stream interrupted: {exc.__class__.__name__}"
        return StreamInterrupted(
            f"The model server at {self._client.endpoint} closed the connection in the middle of the answer "
            f"(it may have crashed or restarted). {self._kept()} Ask again. {self._client.restart_hint()}",
            partial=self.response,
        )

    def _record(self, part: tuple[str, str]) -> None:
        kind, text = part
        now = time.perf_counter()
        timings = self.response.timings
        if kind == REASONING:
            self.response.reasoning += text
            if timings.first_reasoning_token is None:
                timings.first_reasoning_token = now
            timings.last_reasoning_token = now
        elif kind == WAS_THINKING:  # the answer so far was thinking: ``text`` is all of it
            self.response.reasoning += text
            self.response.text = ""
            if timings.first_reasoning_token is None:
                timings.first_reasoning_token = timings.first_answer_token or now
            timings.first_answer_token = None
            timings.last_reasoning_token = now
        else:
            self.response.text += text
            if timings.first_answer_token is None:
                timings.first_answer_token = now

    def _read_usage(self, usage) -> None:
        details = getattr(usage, "completion_tokens_details", None)
        reasoning_tokens = getattr(details, "reasoning_tokens", None) if details is not None else None
        self.response.usage = Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
        self._usage_reasoning_tokens = reasoning_tokens

    def _finalize(self) -> None:
        response = self.response
        if response.timings.finished is None:
            response.timings.finished = time.perf_counter()
        # Text still held back by the inline splitter (a stream cut short) is kept as what it seemed to be.
        for part in self._splitter.finish():
            self._record(part)
        reasoning_estimate = count_tokens(response.reasoning) if response.reasoning else 0
        if response.usage is None:
            # Servers without usage in streams (llama.cpp), and every cut-short answer: estimate.
            response.usage = Usage(
                prompt_tokens=count_message_tokens(self.messages),
                completion_tokens=count_tokens(response.text) + reasoning_estimate,
                estimated=True,
                reasoning_tokens=reasoning_estimate,
                reasoning_estimated=bool(response.reasoning),
            )
        elif self._usage_reasoning_tokens is not None:
            response.usage.reasoning_tokens = self._usage_reasoning_tokens
        elif response.reasoning:
            # The server counted the thinking in completion_tokens without saying how much of it there was.
            response.usage.reasoning_tokens = min(reasoning_estimate, response.usage.completion_tokens)
            response.usage.reasoning_estimated = True


def _reasoning_field(delta) -> str | None:
    """The thinking in a delta's ``reasoning_content`` or ``reasoning`` field (the SDK keeps unknown fields)."""
    for name in REASONING_FIELDS:
        value = getattr(delta, name, None)
        if value is None and delta.model_extra:
            value = delta.model_extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _rejected_parameter(exc: ServerRejected) -> str | None:
    """Which optional parameter a 400/422 answer complains about, if it names one we can drop."""
    cause = exc.__cause__
    if not isinstance(cause, (openai.BadRequestError, openai.UnprocessableEntityError)):
        return None
    text = f"{cause} {_server_said(cause)}".lower()
    if "logprob" in text:
        return "logprobs"
    if "reasoning" in text:
        return "reasoning_effort"
    return None


def _causes(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _closed_before_any_byte(exc: Exception) -> bool:
    return any(isinstance(c, httpx.RemoteProtocolError) and "without sending a response" in str(c)
               for c in _causes(exc))


def _as_model_error(
    exc: Exception, endpoint: str, partial: Response | None = None, *, hint: str = START_HINT
) -> ModelServerError:
    """A failure before the response headers, told as what happened and what to do."""
    causes = list(_causes(exc))
    if isinstance(exc, openai.APIConnectionError):
        if any(isinstance(c, ConnectionRefusedError) or "connection refused" in str(c).lower()
               or getattr(c, "errno", None) == 111 for c in causes):
            return ServerRefused(
                f"Nothing is listening at {endpoint} (connection refused): the model server is not running. {hint}",
                partial=partial,
            )
        if any(isinstance(c, httpx.ConnectTimeout) for c in causes) or (
            isinstance(exc, openai.APITimeoutError) and not any(isinstance(c, httpx.ReadTimeout) for c in causes)
        ):
            return ServerUnreachable(
                f"No answer from {endpoint} to a connection attempt: the host is unreachable or the server is hung. "
                f"{hint}",
                partial=partial,
            )
        if isinstance(exc, openai.APITimeoutError):
            return ModelTimeout(f"The model server at {endpoint} did not answer in time. {hint}", partial=partial)
        if any(isinstance(c, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)) for c in causes):
            return ServerCutConnection(
                f"The model server at {endpoint} took the request, then closed the connection before answering "
                f"(it may have crashed or restarted). Ask again. {hint}",
                partial=partial,
            )
        return ServerUnreachable(f"Cannot reach the model server at {endpoint}. {hint}", partial=partial)
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code in (429, 503):
            return ServerOverloaded(
                f"The model server at {endpoint} is busy and turned the request away (HTTP {exc.status_code}: "
                f"{_server_said(exc)}). Wait a moment and ask again.",
                partial=partial,
            )
        return ServerRejected(
            f"The model server at {endpoint} answered HTTP {exc.status_code}: {_server_said(exc)}", partial=partial
        )
    return ModelServerError(str(exc), partial=partial)


def _one_line(text: str, limit: int = 300) -> str:
    """A server's message as one line of at most ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _server_said(exc: openai.APIStatusError) -> str:
    """The server's own words for an HTTP error, in the shapes real servers send: ``{"error": {"message": ...}}``
    (OpenAI, llama.cpp, Foundry Local), ``{"message": ...}`` (vLLM), ``{"error": "..."}`` (Ollama; the SDK hands
    over the string), ``{"detail": ...}`` (FastAPI servers) or plain text. The SDK's own message keeps only
    the first shape's text."""
    body = exc.body
    said = None
    if isinstance(body, dict):
        for key in ("message", "detail", "error"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                said = value
                break
    elif isinstance(body, str) and body.strip():
        said = body
    return "no reason given" if said is None else _one_line(said)


def _server_kind(owners: list[str], endpoint: str) -> str:
    """Which server answers, from the ``owned_by`` of its models (llama-cpp-python says "me")."""
    owned = {owner.lower() for owner in owners}
    if owned & {"me", "llamacpp", "llama.cpp"}:
        return "llama.cpp"
    if "vllm" in owned:
        return "vllm"
    if "library" in owned or endpoint.rstrip("/").endswith(":11434/v1"):
        return "ollama"
    if any("microsoft" in owner for owner in owned):
        return "foundry"
    return "server"


# ----------------------------------------------------------------------------------------------------
# Time of the last byte received on each response, keep-alives included (the OpenAI SDK hides those).
# ----------------------------------------------------------------------------------------------------


@dataclass
class _ByteClock:
    last_byte: float


class _ClockedStream(httpx.AsyncByteStream):
    def __init__(self, inner, clock: _ByteClock):
        self._inner = inner
        self._clock = clock

    async def __aiter__(self):
        async for part in self._inner:
            self._clock.last_byte = time.perf_counter()
            yield part

    async def aclose(self) -> None:
        await self._inner.aclose()


# Called, in the task that sends it, once a request has been written to the model server's connection (or
# has failed before): the chat holds its database writes until then (assistant.storage.HeldWrites).
on_request_sent: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("on_request_sent", default=None)


class _ByteClockTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport):
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        sent = on_request_sent.get()
        if sent is None:
            response = await self._inner.handle_async_request(request)
        else:
            async def trace(event: str, info: dict) -> None:  # httpcore's request trace
                if event.endswith("send_request_body.complete"):
                    sent()

            request.extensions = {**request.extensions, "trace": trace}
            try:
                response = await self._inner.handle_async_request(request)
            finally:
                sent()
        clock = _ByteClock(time.perf_counter())
        response.stream = _ClockedStream(response.stream, clock)
        response.extensions["byte_clock"] = clock
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def _byte_clock(upstream) -> _ByteClock | None:
    response = getattr(upstream, "response", None)
    extensions = getattr(response, "extensions", None) or {}
    return extensions.get("byte_clock")
