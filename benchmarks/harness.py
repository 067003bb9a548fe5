"""Running the real app for measurements and browser tests: the Chainlit app in its own app root, and the
chromium the browser drives. Used by ``benchmarks/`` and by the end-to-end tests (tests import this module;
benchmarks never import tests)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from assistant.embedded import free_port, stop_process

PROJECT = Path(__file__).resolve().parents[1]
ANSWER_MAX_TOKENS = 96  # short answers keep a benchmark's questions quick
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@dataclass
class AppServer:
    root: Path
    model_endpoint: str
    small_model: str
    large_model: str
    extra_env: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    app_file: Path = PROJECT / "app.py"  # another Chainlit app for a baseline (benchmarks/bare_chainlit_app.py)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def knowledge_dir(self) -> Path:
        return self.root / "knowledge"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def env(self) -> dict:
        env = os.environ.copy()
        for name in list(env):
            if name.startswith("ASSISTANT_") or name in ("FOUNDRY_LOCAL_ENDPOINT", "DATABASE_URL"):
                env.pop(name)
        env.update(
            CHAINLIT_APP_ROOT=str(self.root),
            ASSISTANT_MODEL_ENDPOINT=self.model_endpoint,
            ASSISTANT_SMALL_MODEL=self.small_model,
            ASSISTANT_LARGE_MODEL=self.large_model,
            ASSISTANT_KNOWLEDGE_DIR=str(self.knowledge_dir),
            ASSISTANT_DATA_DIR=str(self.data_dir),
            ASSISTANT_CACHE_DIR=str(self.root / "cache"),
            ASSISTANT_MAX_TOKENS=str(ANSWER_MAX_TOKENS),
            ASSISTANT_TEMPERATURE="0",
            # A loaded 2-core machine can take minutes to read a prompt; the limit itself is tested elsewhere.
            ASSISTANT_FIRST_TOKEN_TIMEOUT_S="600",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 60) -> "AppServer":
        with open(self.root / "chainlit.log", "ab") as log:  # the child keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-m", "chainlit", "run", str(self.app_file), "--headless",
                 "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=self.root, env=self.env(), stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Chainlit exited: {(self.root / 'chainlit.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("Chainlit did not become healthy in time")

    def stop(self) -> None:
        stop_process(self.process)

    def restart(self) -> "AppServer":
        self.stop()
        return self.start()

    def log_tail(self, chars: int = 4000) -> str:
        return (self.root / "chainlit.log").read_text(errors="replace")[-chars:]


def make_app_root(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / ".chainlit").mkdir(exist_ok=True)
    shutil.copy(PROJECT / ".chainlit" / "config.toml", root / ".chainlit" / "config.toml")
    shutil.copytree(PROJECT / "public", root / "public", dirs_exist_ok=True)
    shutil.copy(PROJECT / "chainlit.md", root / "chainlit.md")
    shutil.copytree(PROJECT / "knowledge", root / "knowledge", dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("uploads"))
    return root



ASSISTANT = '[data-step-type="assistant_message"]'
USER_MESSAGE = '[data-step-type="user_message"]'
# An answer is finished when its footer is there (the chat writes it when the turn ends).
FINISHED_ANSWER = f'{ASSISTANT}:has-text("Answered by"), {ASSISTANT}:has-text("No model answered")'


# Questions the sample knowledge folder (knowledge/) answers, for benchmarks that chat with the app.
SAMPLE_QUESTIONS = [
    "What is the internal code name of the assistant?",
    "How does the router decide to escalate?",
    "Which BM25 backends are available?",
    "How are uploads kept private?",
    "What does the metrics bar show?",
    "What is the embedded fallback model?",
    "How is cloud cost simulated?",
    "How do I point the app at Foundry Local?",
]

