"""End-to-end fixtures: the real llama.cpp server with SmolLM2, the real Chainlit app in its own app root,
and Debian's chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from assistant.embedded import EmbeddedModelServer, default_model_path, free_port, stop_process

PROJECT = Path(__file__).resolve().parents[2]
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
            ASSISTANT_MAX_TOKENS="96",
            ASSISTANT_TEMPERATURE="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 60) -> "AppServer":
        log = open(self.root / "chainlit.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chainlit", "run", str(PROJECT / "app.py"), "--headless",
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


@pytest.fixture(scope="session")
def embedded_model(tmp_path_factory):
    server = EmbeddedModelServer(default_model_path(), log_path=tmp_path_factory.mktemp("llama") / "llama.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def app_server(embedded_model, tmp_path_factory):
    root = make_app_root(tmp_path_factory.mktemp("app-root"))
    server = AppServer(root, embedded_model.base_url, embedded_model.small_name, embedded_model.large_name)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    yield page
    context.close()


def open_chat(page, server: AppServer) -> None:
    page.goto(server.url)
    # Text typed before the socket connects is lost. The welcome text comes with the page; the settings
    # button appears once the app has answered over the socket (on_chat_start sends the chat settings).
    page.get_by_text("Answers come from your documents").first.wait_for(timeout=30_000)
    page.locator("#chat-settings-open-modal").wait_for(timeout=30_000)


def ask(page, question: str) -> None:
    """Send once the app can take it: while a task runs (or attachments upload) there is no enabled send button."""
    # Wait for the previous task to end first: the composer re-renders then and can drop text typed earlier.
    page.wait_for_function("() => !document.querySelector('#stop-button') && !!document.querySelector('#chat-submit')",
                           timeout=180_000)
    for _ in range(3):
        page.locator("#chat-input").fill(question)
        try:
            page.wait_for_function(
                "() => { const b = document.querySelector('#chat-submit'); return b && !b.disabled; }", timeout=10_000)
        except PlaywrightTimeout:
            continue  # the text was dropped by a re-render, or uploads are still going: type it again
        finished_answers[id(page)] = page.locator(FINISHED_ANSWER).count()
        sent_before = page.locator(USER_MESSAGE).count()
        try:  # the composer can re-render (and drop the text) between the check and the click: verify it was sent
            page.locator("#chat-submit").click(timeout=5_000)
            page.wait_for_function(f"() => document.querySelectorAll('{USER_MESSAGE}').length > {sent_before}",
                                   timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    shot = PROJECT / "test-artifacts" / f"could-not-send-{int(time.time())}.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    raise AssertionError(f"could not send {question!r}; screenshot: {shot}")


ASSISTANT = '[data-step-type="assistant_message"]'
USER_MESSAGE = '[data-step-type="user_message"]'
FINISHED_ANSWER = f'{ASSISTANT}:has-text("Answered by"), {ASSISTANT}:has-text("No model answered")'
finished_answers: dict[int, int] = {}  # page -> finished answers on it when the last question was sent


def wait_for_answer(page, timeout_s: float = 90) -> str:
    """The text of the answer to the last question sent with :func:`ask`, once it has finished."""
    before = finished_answers.get(id(page), 0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        answers = page.locator(FINISHED_ANSWER)
        if answers.count() > before:
            return answers.last.inner_text()
        time.sleep(0.1)
    raise AssertionError(f"no finished answer; page shows: {page.locator('body').inner_text()[-2000:]}")
