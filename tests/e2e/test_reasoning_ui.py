"""A reasoning model in the browser: its thinking streams into a "Thinking" step that becomes "Thought for N s",
only the answer is in the message (and in the history sent back), the metrics bar splits thinking from answering,
and escalation works with Foundry Local's null logprobs.

One field dialect (Foundry Local's ``delta.reasoning_content``) and one inline dialect (Harmony text in
``content``), spoken by the scripted server with Foundry Local's model ids; Chainlit and chromium are real.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from playwright.sync_api import expect

from tests.dialects import ANSWER_TEXT, THOUGHT, THOUGHT_TEXT, UNOPENED_THINK_TOKENS, by_name
from tests.e2e.conftest import ASSISTANT, AppServer, ask, make_app_root, open_chat, pin, wait_for_answer
from tests.fake_openai_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.e2e

FOUNDRY = by_name("Foundry Local")
HARMONY = by_name("Harmony inline")
SMALL, LARGE = FOUNDRY.small_id, FOUNDRY.large_id
# On topic and long enough, but it cites none of the sources it was given: without logprobs this escalates.
UNCITED = Script(
    tokens=["Employees", " receive", " a", " generous", " amount", " of", " paid", " time", " off", " every",
            " year,", " and", " part", " of", " it", " carries", " over."],
    logprobs_null=True,
)
SLOW_THOUGHT = [f" step {i} of checking the vacation source." for i in range(8)]


@pytest.fixture(scope="module")
def foundry_models():
    with FakeOpenAIServer(FOUNDRY.models()) as server:
        yield server


@pytest.fixture(scope="module")
def reasoning_app(foundry_models, tmp_path_factory):
    root = make_app_root(tmp_path_factory.mktemp("reasoning-root"))
    server = AppServer(root, foundry_models.base_url, "phi-4-mini", "gpt-oss-20b")
    server.start()
    yield server
    server.stop()


def test_field_dialect_thinking_streams_into_its_step_and_escalation_works_without_logprobs(
    page, reasoning_app, foundry_models
):
    thinking_slowly = replace(FOUNDRY.large, reasoning=SLOW_THOUGHT, reasoning_delay=0.4)
    foundry_models.script(SMALL, UNCITED)
    foundry_models.script(LARGE, thinking_slowly)
    open_chat(page, reasoning_app)
    ask(page, "How many vacation days do employees get?")

    # While the model thinks, the step is open and fills live.
    page.get_by_text("step 2 of checking").first.wait_for(timeout=30_000)
    assert page.get_by_text("Using Thinking").first.is_visible()  # Chainlit's label for a running step
    assert ANSWER_TEXT not in page.locator("body").inner_text()  # still thinking: no answer yet
    final = wait_for_answer(page)

    # Only the answer is the answer.
    assert ANSWER_TEXT in final
    assert "step 3 of checking" not in final and "reasoning_content" not in final
    assert f"Answered by {LARGE}" in final.replace("`", "")
    # The step was renamed when the answer began.
    step = page.get_by_text("Thought for").first
    step.wait_for()
    # Escalated on the grounding signal, and the reason says logprobs were missing.
    badge = page.locator('[data-testid="metrics-escalation"]').last
    assert "no logprobs" in badge.inner_text() and "cites none" in badge.inner_text()
    # Thinking and answering apart in the metrics bar (Foundry counts reasoning tokens: no "~").
    thinking = page.locator('[data-testid="metrics-thinking"]').last.inner_text()
    assert "thinking" in thinking and f"{len(SLOW_THOUGHT)} tok" in thinking and "~" not in thinking
    assert "first answer token" in page.locator('[data-testid="metrics-first-answer"]').last.inner_text()

    # The thinking is not in the history sent back with the next question.
    foundry_models.script(SMALL, UNCITED)
    foundry_models.script(LARGE, FOUNDRY.large)
    before = len(foundry_models.requests)
    ask(page, "And how many days carry over?")
    wait_for_answer(page)
    for request in foundry_models.requests[before:]:
        sent = " ".join(m["content"] for m in request.body["messages"])
        # A 2048-token window gets the earlier questions, not the earlier answers (rag.prompt.history_style_for).
        assert "How many vacation days do employees get?" in sent and "step 3 of checking" not in sent


def test_inline_harmony_is_split_into_the_step_and_the_answer(page, reasoning_app, foundry_models):
    foundry_models.script(LARGE, HARMONY.large)
    open_chat(page, reasoning_app)
    pin(page, "Large model only")
    ask(page, "How many vacation days do employees get?")
    final = wait_for_answer(page)
    assert ANSWER_TEXT in final
    for marker in ("<|channel|>", "<|message|>", "analysis", "assistantfinal", THOUGHT[1].strip()):
        assert marker not in final
    page.get_by_text("Thought for").first.wait_for()
    # Opening the step shows the thinking, markers removed.
    page.get_by_text("Thought for").last.click()
    page.get_by_text(THOUGHT[1].strip()).first.wait_for()
    thinking = page.locator('[data-testid="metrics-thinking"]').last.inner_text()
    assert "~" in thinking  # inline thinking: the server did not count its tokens
    assert f"Answered by {LARGE}" in final.replace("`", "")
    assert "reasoning_effort" in foundry_models.requests[-1].body
    assert THOUGHT_TEXT not in page.locator(ASSISTANT).last.inner_text()


def test_demo_page_shows_the_thinking_apart_from_the_answer(page, reasoning_app, foundry_models):
    foundry_models.script(LARGE, replace(FOUNDRY.large, reasoning_delay=0.2))
    page.goto(reasoning_app.url + "/demo")
    expect(page.locator("#model-large")).to_have_text(LARGE, timeout=10_000)
    page.check("#role-large")
    page.fill("#prompt", "How many vacation days do employees get?")
    page.click("#send")
    page.wait_for_selector("#status[data-state='done']", timeout=60_000)
    assert page.is_visible("#thinking")
    assert page.inner_text("#thinking-summary").startswith("Thought for")
    assert page.inner_text("#output") == ANSWER_TEXT
    assert page.eval_on_selector("#thinking-text", "e => e.textContent") == THOUGHT_TEXT


def test_thinking_opened_by_the_template_moves_into_the_step_when_its_close_arrives(page, reasoning_app, foundry_models):
    # The thinking streams as answer text (slowly, so the page shows it) until "</think>" says what it was.
    foundry_models.script(LARGE, Script(tokens=list(UNOPENED_THINK_TOKENS), token_delay=0.3))
    open_chat(page, reasoning_app)
    pin(page, "Large model only")
    ask(page, "How many vacation days do employees get?")
    page.locator(ASSISTANT).get_by_text(THOUGHT[1].strip()).first.wait_for(timeout=30_000)  # shown as it came
    final = wait_for_answer(page)
    assert ANSWER_TEXT in final
    assert "</think>" not in final and THOUGHT[1].strip() not in final
    page.get_by_text("Thought for").first.wait_for()
    page.get_by_text("Thought for").last.click()
    page.get_by_text(THOUGHT[1].strip()).first.wait_for()
    assert f"Answered by {LARGE}" in final.replace("`", "")


def test_reasoning_effort_chosen_in_the_chat_settings_reaches_the_large_model(page, reasoning_app, foundry_models):
    foundry_models.script(LARGE, FOUNDRY.large)
    open_chat(page, reasoning_app)
    page.locator("#chat-settings-open-modal").click()
    page.locator("#mode").click()
    page.get_by_role("option", name="Large model only").click()
    page.locator("#reasoning_effort").click()
    page.get_by_role("option", name="High").click()
    page.locator("#confirm").click()
    page.get_by_text("Settings saved").last.wait_for()
    ask(page, "How many vacation days do employees get?")
    wait_for_answer(page)
    assert foundry_models.requests[-1].body["reasoning_effort"] == "high"

    foundry_models.script(LARGE, FOUNDRY.large)
    saved = page.get_by_text("Settings saved")
    before = saved.count()
    page.locator("#chat-settings-open-modal").click()
    page.locator("#reasoning_effort").click()
    page.get_by_role("option", name="The server's default").click()
    page.locator("#confirm").click()
    expect(saved).to_have_count(before + 1)
    ask(page, "And how many carry over?")
    wait_for_answer(page)
    assert "reasoning_effort" not in foundry_models.requests[-1].body
