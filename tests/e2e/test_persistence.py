"""What survives a restart: shared documents, chat settings, feedback; and password login when configured."""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.e2e.conftest import (
    ASSISTANT, AppServer, ask, make_app_root, open_chat, pin, wait_for_answer, wait_for_answer_with_sources,
)

pytestmark = pytest.mark.e2e

SHARED_FACT = "# Heron release\n\nThe Heron release train departs every ninth Thursday from the staging dock.\n"


@pytest.fixture
def own_app(embedded_model, tmp_path):
    server = AppServer(make_app_root(tmp_path / "root"), embedded_model.base_url,
                       embedded_model.small_name, embedded_model.large_name)
    server.start()
    yield server
    server.stop()


def test_shared_document_settings_and_feedback_survive_a_restart(page, own_app):
    open_chat(page, own_app)
    pin(page, "Small model only")
    page.locator("#upload-button-input").set_input_files(
        [{"name": "../heron.md", "mimeType": "text/markdown", "buffer": SHARED_FACT.encode()}])
    ask(page, "When does the Heron release train depart?")
    assert "heron.md" in wait_for_answer_with_sources(page).lower()

    page.get_by_role("button", name="Add to shared knowledge").first.click()
    page.get_by_text("is now shared knowledge").first.wait_for(timeout=30_000)
    shared = list((own_app.knowledge_dir / "uploads").iterdir())
    assert len(shared) == 1 and shared[0].name.endswith("-heron.md") and shared[0].read_text() == SHARED_FACT

    page.locator(ASSISTANT).filter(has_text="Answered by").last.locator(".positive-feedback-off").click()
    submit = page.get_by_role("button", name="Submit")
    if submit.count():
        submit.click()
    deadline = time.monotonic() + 10
    rows = []
    while time.monotonic() < deadline and not rows:
        with sqlite3.connect(own_app.data_dir / "chat.db") as db:
            rows = db.execute('SELECT "value" FROM feedbacks').fetchall()
        time.sleep(0.2)
    assert rows == [(1,)]
    thread_url = page.url

    own_app.restart()

    page.goto(thread_url)
    page.get_by_text("When does the Heron release train depart?").first.wait_for(timeout=30_000)
    page.locator("#chat-settings-open-modal").click()
    assert "Small model only" in page.locator("#mode").inner_text()  # the pinned mode came back
    page.keyboard.press("Escape")

    open_chat(page, own_app)  # a new conversation sees the shared document
    ask(page, "When does the Heron release train depart?")
    assert "heron.md" in wait_for_answer_with_sources(page).lower()


def test_remove_command_drops_an_upload(page, own_app):
    open_chat(page, own_app)
    page.locator("#upload-button-input").set_input_files(
        [{"name": "heron.md", "mimeType": "text/markdown", "buffer": SHARED_FACT.encode()}])
    ask(page, "/docs")
    page.get_by_text("heron.md: 1 chunks").first.wait_for(timeout=30_000)
    ask(page, "/remove heron.md")
    page.get_by_text("Removed heron.md from this conversation").first.wait_for()
    ask(page, "/docs")
    page.get_by_text("No uploads in this conversation").first.wait_for()


def test_password_login_when_configured(page, embedded_model, tmp_path):
    server = AppServer(make_app_root(tmp_path / "root"), embedded_model.base_url, embedded_model.small_name,
                       embedded_model.large_name, extra_env={"ASSISTANT_AUTH_PASSWORD": "correct horse"})
    server.start()
    try:
        page.goto(server.url)
        page.locator("#email").fill("local")
        page.locator("#password").fill("wrong")
        page.locator("#password").press("Enter")
        page.wait_for_timeout(1000)
        assert page.get_by_text("Answers come from your documents").count() == 0
        page.locator("#password").fill("correct horse")
        page.locator("#password").press("Enter")
        page.get_by_text("Answers come from your documents").first.wait_for(timeout=30_000)
    finally:
        server.stop()
