"""End-to-end fixtures: the real llama.cpp server with SmolLM2, the real Chainlit app in its own app root,
and Debian's chromium driven by Playwright."""

from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from assistant.embedded import EmbeddedModelServer, default_model_path
from benchmarks.harness import ASSISTANT, CHROMIUM, CHROMIUM_ARGS, PROJECT, USER_MESSAGE, AppServer, make_app_root


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
    watch(page)
    yield page
    context.close()
    socket_events.pop(id(page), None)
    turn_started_at.pop(id(page), None)


class SocketEvents:
    """Chainlit's own socket events as the page receives them (the app talks websocket only).

    The browser tests wait on these signals (``task_start`` / ``task_end`` of each turn, the welcome's
    ``new_message``), never on text growing or on sleeps.
    """

    FRAME = re.compile(r"^42(?:/[^,]*,)?\d*(\[.*)$", re.S)

    def __init__(self, page):
        self.page = page
        self.names: list[str] = []
        self.running = False
        page.on("websocket", self._attach)

    def _attach(self, socket) -> None:
        if "/ws/socket.io" in socket.url:
            socket.on("framereceived", self._frame)

    def _frame(self, payload) -> None:
        match = self.FRAME.match(payload) if isinstance(payload, str) else None
        if not match:
            return
        try:
            name = json.loads(match.group(1))[0]
        except (ValueError, IndexError, TypeError):
            return
        self.names.append(name)
        if name == "task_start":
            self.running = True
        elif name == "task_end":
            self.running = False

    def count(self, name: str) -> int:
        return self.names.count(name)

    def wait(self, condition, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}; socket events: "
                                     f"{self.names[-12:]}; page: {self.page.locator('body').inner_text()[-1500:]}")
            self.page.wait_for_timeout(50)  # lets Playwright deliver the frames

socket_events: dict[int, SocketEvents] = {}  # id(page) -> its watcher
turn_started_at: dict[int, int] = {}  # id(page) -> index in its events of the last question's task_start


def watch(page) -> SocketEvents:
    if id(page) not in socket_events:
        socket_events[id(page)] = SocketEvents(page)
    return socket_events[id(page)]


def open_chat(page, server: AppServer) -> None:
    """Open a new conversation and wait for the app's first message to arrive over the socket (text typed
    before the socket connects is lost)."""
    events = watch(page)
    welcomed = events.count("new_message")
    page.goto(server.url)
    wait_for_new_chat(page, welcomed)


def wait_for_new_chat(page, welcomed: int) -> None:
    """Wait until a new conversation has started: ``welcomed`` is the page's count of ``new_message`` events
    before it was opened (or before signing in)."""
    events = watch(page)
    # The welcome itself comes with the page (a chat profile's description, with the starters); the
    # server details step arrives over the socket once the app has started the conversation.
    events.wait(lambda: events.count("new_message") > welcomed, 60, "the server details step")
    page.locator("#welcome-screen").wait_for(timeout=30_000)
    page.locator("#chat-input").wait_for(timeout=30_000)


def ask(page, question: str) -> None:
    """Send a question once no task runs, and return when the server has started its task.

    Chainlit emits ``task_start`` when it takes a message: that, not the text on the page, confirms
    the question was sent. The composer can re-render and drop typed text; then it is typed again.
    """
    events = watch(page)
    events.wait(lambda: not events.running, 240, "the previous task to end")
    page.wait_for_function("() => !document.querySelector('#stop-button')", timeout=30_000)
    starts = events.count("task_start")
    sent_before = page.locator(USER_MESSAGE).count()
    for _ in range(3):
        if page.locator(USER_MESSAGE).count() == sent_before:
            page.locator("#chat-input").fill(question)
            try:
                page.wait_for_function(
                    "() => { const b = document.querySelector('#chat-submit'); return b && !b.disabled; }",
                    timeout=10_000)
                page.locator("#chat-submit").click(timeout=5_000)
            except PlaywrightTimeout:
                continue  # the text was dropped by a re-render, or uploads are still going: type it again
        try:
            events.wait(lambda: events.count("task_start") > starts, 20, "the server to take the question")
        except AssertionError:
            continue
        turn_started_at[id(page)] = max(i for i, name in enumerate(events.names) if name == "task_start")
        return
    shot = PROJECT / "test-artifacts" / f"could-not-send-{int(time.time())}.png"
    shot.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(shot), full_page=True)
    raise AssertionError(f"could not send {question!r}; socket events: {events.names[-12:]}; screenshot: {shot}")


LAST_MESSAGE_IS_AN_ANSWER = f"""() => {{
    const users = document.querySelectorAll('{USER_MESSAGE}');
    const answers = document.querySelectorAll('{ASSISTANT}');
    if (!answers.length) return false;
    const answer = answers[answers.length - 1];
    return !users.length
        || !!(users[users.length - 1].compareDocumentPosition(answer) & Node.DOCUMENT_POSITION_FOLLOWING);
}}"""


def wait_for_task_end(page, timeout_s: float = 600) -> None:
    """Wait for the ``task_end`` of the turn started by the last :func:`ask`, and for the UI to show it."""
    events = watch(page)
    started = turn_started_at.get(id(page), -1)
    events.wait(lambda: "task_end" in events.names[started + 1:], timeout_s, "the turn's task_end")
    page.wait_for_function("() => !document.querySelector('#stop-button')", timeout=30_000)


def wait_for_answer(page, timeout_s: float = 600) -> str:
    """The text of the last message of the turn started by the last :func:`ask`, once that turn has ended.

    Only a message below the question counts, so an earlier answer can never stand in for this one.
    """
    wait_for_task_end(page, timeout_s)
    page.wait_for_function(LAST_MESSAGE_IS_AN_ANSWER, timeout=30_000)
    return page.locator(ASSISTANT).last.inner_text()


def pin(page, label: str) -> None:
    """Choose a routing mode in the chat settings and wait for the app to confirm it."""
    page.locator("#chat-settings-open-modal").click()
    page.locator("#mode").click()
    page.get_by_role("option", name=label).click()
    page.locator("#confirm").click()
    page.get_by_text("Settings saved").last.wait_for()


def wait_for_answer_with_sources(page, timeout_s: float = 600) -> str:
    """:func:`wait_for_answer` for an answer that lists sources: also waits for its Sources element, a custom
    element that Chainlit renders a moment after the text (a loaded run read the text before it came)."""
    wait_for_answer(page, timeout_s)
    answer = page.locator(ASSISTANT).last
    answer.locator('[data-testid="source"]').first.wait_for(timeout=30_000)
    return answer.inner_text()
