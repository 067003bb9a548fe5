"""The chat as a newcomer sees it, in chromium: sources, settings, welcome, stop, feedback, steps, chart.

The scripted OpenAI-compatible server (real HTTP) gives exact answers with citations and two distinct
models; the welcome is checked against the real llama.cpp server with SmolLM2. Each test saves
screenshots to test-artifacts/ux-*.png for the closing note.
"""

from __future__ import annotations

import sqlite3
import time

import pytest

from tests.e2e.conftest import (
    ASSISTANT, PROJECT, USER_MESSAGE, AppServer, ask, make_app_root, open_chat, pin, turn_started_at, wait_for_answer,
    watch,
)
from tests.fake_openai_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.e2e

SMALL = "Phi-4-mini-instruct-generic-cpu"
LARGE = "gpt-oss-20b-generic-cpu"
ARTIFACTS = PROJECT / "test-artifacts"
CITING = Script(
    tokens=["Weak", " answers", " are", " escalated", " to", " the", " large", " model", " [1]", ".", " The",
            " router", " reads", " token", " probabilities", " [2]", "."],
    logprobs=[-0.01] * 17,
)
QUESTION = "How does the router decide to escalate weak answers?"


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ux-{name}.png"), full_page=False)


def answer_block(page):
    return page.locator(ASSISTANT).filter(has_text="Answered by").last


def side_panel_open(page) -> bool:
    return page.locator("#side-view-content, #side-view-title").count() > 0


@pytest.fixture(scope="module")
def fake_models():
    with FakeOpenAIServer([SMALL, LARGE]) as server:
        yield server


@pytest.fixture
def scripted_app(fake_models, tmp_path):
    fake_models.script(SMALL, CITING)
    fake_models.script(LARGE, CITING)
    server = AppServer(make_app_root(tmp_path / "root"), fake_models.base_url, "phi-4-mini", "gpt-oss-20b")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def watch_avatars(page):
    """Every /avatars/ request the page makes, with its status."""
    seen: list[tuple[str, int]] = []
    page.on("response", lambda r: seen.append((r.url, r.status)) if "/avatars/" in r.url else None)
    return seen


# ------------------------------------------------------------------------------------------------ 1. sources


def test_a_citation_opens_exactly_its_source_and_nothing_opens_by_itself(page, scripted_app):
    open_chat(page, scripted_app)
    ask(page, QUESTION)
    wait_for_answer(page)
    answer = answer_block(page)
    sources = answer.locator('[data-testid="source"]')
    sources.first.wait_for()
    assert sources.count() == 2  # [1] and [2] are cited
    assert not side_panel_open(page), "the side panel opened by itself"
    assert answer.locator('[data-testid="source-body"]').count() == 0  # listed, collapsed
    labels = answer.locator('[data-testid="source-label"]').all_inner_texts()
    assert all(".md" in label for label in labels), labels

    answer.get_by_role("link", name="2").first.click()
    opened = answer.locator('[data-testid="source"][data-open="true"]')
    opened.wait_for()
    assert opened.count() == 1 and opened.get_attribute("data-number") == "2"
    body = opened.locator('[data-testid="source-body"]')
    assert ".md" in body.inner_text()  # the file (and page for PDFs) above the excerpt
    marks = [m.lower() for m in body.locator("mark").all_inner_texts()]
    assert marks and set(marks) <= {"router", "decide", "decides", "escalate", "escalates", "escalated",
                                    "escalation", "weak", "answers", "answer", "answered"}, marks
    assert len(page.context.pages) == 1  # the link did not open a tab
    assert not side_panel_open(page)
    shot(page, "sources-cited-passage")

    answer.get_by_role("link", name="1").first.click()
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=\"source\"][data-open=\"true\"]').length === 1 && "
        "document.querySelector('[data-testid=\"source\"][data-open=\"true\"]').dataset.number === '1'")

    thread_url = page.url
    scripted_app.restart()
    page.goto(thread_url)
    page.get_by_text(QUESTION).first.wait_for(timeout=30_000)
    answer = answer_block(page)
    answer.locator('[data-testid="source"]').first.wait_for(timeout=15_000)
    assert answer.locator('[data-testid="source"]').count() == 2
    assert not side_panel_open(page), "the side panel opened by itself on resume"
    answer.get_by_role("link", name="2").first.click()
    answer.locator('[data-testid="source"][data-open="true"][data-number="2"] mark').first.wait_for()
    shot(page, "sources-resumed")


# ------------------------------------------------------------------------------------------------ 2. settings


def test_one_model_in_both_roles_still_offers_four_distinct_modes_and_says_so(page, tmp_path):
    with FakeOpenAIServer([SMALL]) as one:
        one.script(SMALL, CITING)
        server = AppServer(make_app_root(tmp_path / "root"), one.base_url, "phi-4-mini", "phi-4-mini").start()
        try:
            open_chat(page, server)
            page.locator("#chat-settings-open-modal").click()
            page.locator("#mode").click()
            options = page.get_by_role("option").all_inner_texts()
            assert len(options) == 4 and len(set(options)) == 4, options
            assert any(o.startswith("Small model only") for o in options)
            assert any(o.startswith("Large model only") and "same model" in o for o in options)
            assert "serves both the small and the large role" in page.locator("body").inner_text()
            shot(page, "settings-one-model")
            page.get_by_role("option", name="Large model only").click()
            page.locator("#confirm").click()
            page.get_by_text("Settings saved").last.wait_for()
            ask(page, QUESTION)
            wait_for_answer(page)
            model = answer_block(page).locator('[data-testid="metrics-model"]').inner_text()
            assert model == f"large model · {SMALL}", model
        finally:
            server.stop()


def test_each_mode_shows_the_answering_role_and_model_in_the_metrics_bar(page, scripted_app, fake_models):
    open_chat(page, scripted_app)
    expected = [("Small model only", f"small model · {SMALL}"), ("Large model only", f"large model · {LARGE}"),
                ("Automatic", f"small model · {SMALL}"), ("Draft then refine", None)]
    for label, badge in expected:
        pin(page, label)
        ask(page, f"{QUESTION} ({label})")
        wait_for_answer(page)
        text = answer_block(page).locator('[data-testid="metrics-model"]').inner_text()
        if badge:
            assert text == badge, (label, text)
        else:  # draft-then-refine answers with the large model when it refines, else keeps the small draft
            assert text in (f"small model · {SMALL}", f"large model · {LARGE}"), text
    assert not answer_block(page).locator('[data-testid="metrics-details"]').count()  # visible without details
    shot(page, "metrics-role-and-model")


# ------------------------------------------------------------------------------------------------ 3. welcome


def test_the_welcome_speaks_to_a_newcomer_and_warns_about_the_embedded_model(page, app_server):
    open_chat(page, app_server)
    welcome = page.locator("#welcome-screen")
    text = welcome.inner_text()
    assert "Ask questions about your team's documents" in text and "knowledge" in text
    assert app_server.small_model in text and "for trying the app" in text and "weak" in text
    assert app_server.model_endpoint not in text  # operator details are not in the newcomer's way
    starters = page.locator("#starters button")
    assert 3 <= starters.count() <= 4
    shot(page, "welcome")
    details = page.get_by_text("Server details").first
    details.wait_for()
    assert app_server.model_endpoint not in page.locator("body").inner_text()  # collapsed
    details.click()
    page.get_by_text(app_server.model_endpoint).first.wait_for()
    shot(page, "welcome-server-details")
    question = starters.first.inner_text()
    events = watch(page)
    starts = events.count("task_start")
    starters.first.click()
    events.wait(lambda: events.count("task_start") > starts, 30, "the starter question to be taken")
    turn_started_at[id(page)] = max(i for i, name in enumerate(events.names) if name == "task_start")
    assert "What do the documents say about" in page.locator(USER_MESSAGE).first.inner_text(), question
    assert "Answered by" in wait_for_answer(page, 600)


# ------------------------------------------------------------------------------------------------ 5. stop, feedback, steps, chart


def test_stop_gives_one_message_that_says_what_happened(page, scripted_app, fake_models):
    open_chat(page, scripted_app)
    pin(page, "Small model only")
    fake_models.script(SMALL, Script(tokens=[f" word{i}" for i in range(300)], token_delay=0.05, logprobs=[-0.01] * 300))
    ask(page, "Write a very long answer.")
    page.locator(ASSISTANT).last.get_by_text("word5").wait_for(timeout=20_000)
    before = page.locator(ASSISTANT).count()
    page.locator("#stop-button").click()
    page.get_by_text("the answer above is unfinished").last.wait_for(timeout=10_000)
    page.wait_for_timeout(1000)
    body = page.locator("body").inner_text()
    assert "Task manually stopped" not in body
    assert page.locator(ASSISTANT).count() == before  # the partial answer became the stop message: no second one
    shot(page, "stop-partial")

    fake_models.script(SMALL, Script(tokens=["Late", "."], first_token_delay=30, logprobs=[-0.01, -0.01]))
    ask(page, "Another question, stopped before the first word.")
    page.locator("#stop-button").wait_for()
    page.wait_for_timeout(1500)
    page.locator("#stop-button").click()
    stopped = page.get_by_text("no answer was written").last
    stopped.wait_for(timeout=10_000)
    assert "text above" not in stopped.inner_text()
    page.wait_for_timeout(1000)
    assert "Task manually stopped" not in page.locator("body").inner_text()
    shot(page, "stop-before-first-token")
    fake_models.script(SMALL, CITING)


def ratings(server: AppServer) -> list[tuple]:
    with sqlite3.connect(server.data_dir / "chat.db") as db:
        return db.execute('SELECT "value", "comment" FROM feedbacks ORDER BY "value"').fetchall()


def wait_for_ratings(server: AppServer, count: int) -> list[tuple]:
    deadline = time.monotonic() + 10
    rows = ratings(server)
    while len(rows) < count and time.monotonic() < deadline:
        time.sleep(0.2)
        rows = ratings(server)
    return rows


def test_a_rating_is_kept_with_or_without_a_comment(page, scripted_app):
    open_chat(page, scripted_app)
    ask(page, QUESTION)
    wait_for_answer(page)
    answer_block(page).locator(".positive-feedback-off").click()
    page.locator("#submit-feedback").wait_for()
    shot(page, "feedback-dialog")
    page.keyboard.press("Escape")  # closing the dialog without a comment
    assert wait_for_ratings(scripted_app, 1) == [(1, None)]
    answer_block(page).locator(".positive-feedback-on").wait_for()

    ask(page, "And a second question?")
    wait_for_answer(page)
    answer_block(page).locator(".negative-feedback-off").click()
    page.locator("#submit-feedback").wait_for()
    page.get_by_placeholder("Your feedback...").fill("Cites the wrong section")
    page.locator("#submit-feedback").click()
    assert wait_for_ratings(scripted_app, 2) == [(0, "Cites the wrong section"), (1, None)]
    shot(page, "feedback-kept")


def test_steps_read_as_text_avatars_resolve_and_the_chart_follows_the_dark_theme(page, scripted_app, fake_models,
                                                                                  watch_avatars):
    page.add_init_script("localStorage.setItem('vite-ui-theme', 'dark')")
    fake_models.script(SMALL, Script(tokens=["No", "."], logprobs=[-0.01, -0.01]))  # too short: escalates
    open_chat(page, scripted_app)
    ask(page, QUESTION)
    wait_for_answer(page)
    page.locator('[id="step-Retrieval"]').last.click()
    step = page.locator('[data-step-type="retrieval"]').last
    step.get_by_text("Searched for").wait_for()
    assert "json" not in step.inner_text().lower()
    page.locator('[id="step-Escalated to the large model"]').last.click()
    page.get_by_text("Why:").last.wait_for()
    assert "chars" in page.locator("body").inner_text()  # the reason is in the step's text
    shot(page, "steps-as-text")

    page.get_by_text("Latency chart").last.click()
    page.locator(".js-plotly-plot").last.wait_for(timeout=15_000)
    background = page.locator(".js-plotly-plot .main-svg").first.evaluate(
        "svg => getComputedStyle(svg).backgroundColor")
    assert background in ("rgba(0, 0, 0, 0)", "transparent"), background
    page.locator(".js-plotly-plot").last.scroll_into_view_if_needed()
    shot(page, "chart-dark")
    page.wait_for_timeout(500)
    bad = [(url, status) for url, status in watch_avatars if status >= 400]
    assert watch_avatars and not bad, bad
    fake_models.script(SMALL, CITING)


# ------------------------------------------------------------------------------------------------ 6. walkthrough

UPLOAD = ("# Falcon rollout\n\nThe Falcon rollout checklist has exactly seventeen steps. "
          "Step eleven is the canary review, owned by the platform team.\n")
UPLOAD_ANSWER = Script(tokens=["The", " checklist", " has", " seventeen", " steps", " [1]", "."], logprobs=[-0.01] * 7)


def test_walkthrough_ask_source_modes_upload_stop_feedback_resume(page, scripted_app, fake_models, watch_avatars):
    open_chat(page, scripted_app)
    assert page.locator("#starters button").count() >= 3
    shot(page, "walk-1-welcome")

    # ask, then open a cited source
    ask(page, QUESTION)
    wait_for_answer(page)
    answer_block(page).get_by_role("link", name="1").first.click()  # at once, even before the list has loaded
    answer_block(page).locator('[data-testid="source"][data-open="true"][data-number="1"]').wait_for()
    assert not side_panel_open(page) and len(page.context.pages) == 1
    shot(page, "walk-2-cited-source")

    # every routing mode, each answer saying which role and model wrote it
    for label, role in (("Small model only", "small"), ("Large model only", "large"), ("Automatic", "small"),
                        ("Draft then refine", None)):
        pin(page, label)
        ask(page, f"Which model answers now? ({label})")
        wait_for_answer(page)
        badge = answer_block(page).locator('[data-testid="metrics-model"]').inner_text()
        assert badge.startswith(f"{role} model · ") if role else " model · " in badge, (label, badge)
    shot(page, "walk-3-modes")

    # upload and ask: the cited source is the upload
    pin(page, "Small model only")
    page.locator("#upload-button-input").set_input_files(
        [{"name": "falcon.md", "mimeType": "text/markdown", "buffer": UPLOAD.encode()}])
    fake_models.script(SMALL, UPLOAD_ANSWER)
    ask(page, "How many steps does the Falcon rollout checklist have?")  # sent with the attachment
    wait_for_answer(page)
    page.get_by_text("falcon.md is ready for this conversation").first.wait_for()
    upload_answer = answer_block(page)
    upload_answer.get_by_role("link", name="1").first.click()
    opened = upload_answer.locator('[data-testid="source"][data-open="true"]')
    opened.wait_for()
    assert "falcon.md" in opened.inner_text() and "seventeen" in opened.inner_text()
    shot(page, "walk-4-upload-source")

    # stop: one message, saying the answer is unfinished
    fake_models.script(SMALL, Script(tokens=[f" word{i}" for i in range(300)], token_delay=0.05, logprobs=[-0.01] * 300))
    ask(page, "Write a very long answer.")
    page.locator(ASSISTANT).last.get_by_text("word5").wait_for(timeout=20_000)
    page.locator("#stop-button").click()
    page.get_by_text("the answer above is unfinished").last.wait_for(timeout=10_000)
    fake_models.script(SMALL, CITING)

    # feedback without a comment is kept
    page.locator(ASSISTANT).filter(has_text="Answered by").first.locator(".positive-feedback-off").click()
    page.locator("#submit-feedback").wait_for()
    page.keyboard.press("Escape")
    assert wait_for_ratings(scripted_app, 1) == [(1, None)]
    shot(page, "walk-5-stop-and-feedback")

    # resume after a restart: the same sources, one stop message, the rating, the chosen mode
    thread_url = page.url
    scripted_app.restart()
    page.goto(thread_url)
    page.get_by_text("Write a very long answer.").first.wait_for(timeout=30_000)
    page.locator('[data-testid="sources"]').first.wait_for(timeout=15_000)
    page.wait_for_timeout(1000)
    body = page.locator("body").inner_text()
    assert body.count("the answer above is unfinished") == 1 and "Task manually stopped" not in body
    assert not side_panel_open(page), "the side panel opened by itself on resume"
    assert page.locator('[data-testid="sources"]').count() == 6  # every answer keeps its sources list
    assert page.locator(".positive-feedback-on").count() == 1
    first = page.locator(ASSISTANT).filter(has_text="Answered by").first
    first.get_by_role("link", name="2").first.click()
    first.locator('[data-testid="source"][data-open="true"][data-number="2"]').wait_for()
    page.locator("#chat-settings-open-modal").click()
    assert "Small model only" in page.locator("#mode").inner_text()
    page.keyboard.press("Escape")
    page.locator("#confirm").wait_for(state="detached")
    page.wait_for_timeout(500)  # the dialog's fade-out
    shot(page, "walk-6-resumed")
    bad = [(url, status) for url, status in watch_avatars if status >= 400]
    assert not bad, bad
