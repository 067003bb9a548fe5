"""Routing in the browser: pinning a model, a visible escalation, and the stop button.

The model server here is the scripted OpenAI-compatible server (real HTTP), so two distinct models with
exact behaviour are available; the Chainlit app and the browser are real.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import ASSISTANT, AppServer, ask, make_app_root, open_chat, pin, wait_for_answer
from tests.fake_openai_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.e2e

SMALL = "Phi-4-mini-instruct-generic-cpu"
LARGE = "gpt-oss-20b-generic-cpu"
CONFIDENT = Script(
    tokens=["The", " router", " sends", " questions", " to", " the", " small", " model", " first", " and",
            " escalates", " weak", " answers", " [1]", "."],
    logprobs=[-0.01] * 15,
)


@pytest.fixture(scope="module")
def fake_models():
    with FakeOpenAIServer([SMALL, LARGE]) as server:
        yield server


@pytest.fixture(scope="module")
def scripted_app(fake_models, tmp_path_factory):
    root = make_app_root(tmp_path_factory.mktemp("routing-root"))
    server = AppServer(root, fake_models.base_url, "phi-4-mini", "gpt-oss-20b")
    server.start()
    yield server
    server.stop()


def test_pinning_each_model_changes_the_answering_model(page, scripted_app, fake_models):
    fake_models.script(SMALL, CONFIDENT)
    fake_models.script(LARGE, CONFIDENT)
    open_chat(page, scripted_app)

    pin(page, "Large model only")
    ask(page, "What does the router do?")
    assert f"Answered by {LARGE}" in wait_for_answer(page).replace("`", "")

    pin(page, "Small model only")
    ask(page, "And what does it do first?")
    assert f"Answered by {SMALL}" in wait_for_answer(page).replace("`", "")
    asked = [r.model for r in fake_models.requests]
    assert asked[-2:] == [LARGE, SMALL]


def test_short_answer_escalates_visibly_with_its_reason(page, scripted_app, fake_models):
    fake_models.script(SMALL, Script(tokens=["No", "."], logprobs=[-0.01, -0.01]))
    fake_models.script(LARGE, CONFIDENT)
    open_chat(page, scripted_app)
    ask(page, "Explain the escalation policy.")
    final = wait_for_answer(page).replace("`", "")
    assert f"Answered by {LARGE}" in final
    page.locator('[id="step-Escalated to the large model"]').first.click()
    page.get_by_text("Why:").first.wait_for()
    assert "chars" in page.locator('[data-step-type="llm"]').first.inner_text()  # the reason names the length rule
    badge = page.locator('[data-testid="metrics-escalation"]').last
    assert "escalated" in badge.inner_text()


def test_stop_button_keeps_the_partial_answer_and_closes_the_upstream_stream(page, scripted_app, fake_models):
    fake_models.script(SMALL, Script(tokens=[f" word{i}" for i in range(300)], token_delay=0.05,
                                     logprobs=[-0.01] * 300))
    open_chat(page, scripted_app)
    pin(page, "Small model only")
    ask(page, "Write a very long answer.")
    page.locator(ASSISTANT).last.get_by_text("word5").wait_for(timeout=20_000)
    page.locator("#stop-button").click()
    page.get_by_text("Stopped by you").last.wait_for(timeout=10_000)
    assert "Task manually stopped" not in page.locator("body").inner_text()
    text = page.locator(ASSISTANT).filter(has_text="Stopped by you").last.inner_text()
    assert "word5" in text  # the partial answer is kept
    deadline = time.monotonic() + 5
    record = fake_models.requests_for(SMALL)[-1]
    while not record.client_disconnected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record.client_disconnected, "the upstream stream was left generating"
    assert record.tokens_sent < 150


def test_a_question_nothing_matches_is_answered_with_that_said(page, scripted_app, fake_models):
    fake_models.script(SMALL, CONFIDENT)
    fake_models.script(LARGE, CONFIDENT)
    open_chat(page, scripted_app)
    ask(page, "Zanzibar xylophone quokka?")
    text = wait_for_answer(page)
    assert "Nothing in the knowledge base or this conversation's uploads matched the question" in text
    user_turn = fake_models.requests[-1].body["messages"][-1]["content"]
    assert user_turn.startswith("There are no sources for this question")  # the model is told to say so too
