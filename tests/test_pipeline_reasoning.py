"""The real pair through the pipeline: phi-4-mini answers, gpt-oss-20b thinks and answers, on each server's
streaming dialect (the scripted server speaks each one's documented chunk shapes)."""

from __future__ import annotations

import pytest

from assistant.events import AnswerWasThinking, Escalated, Notice, Thinking, ThinkingFinished, Token, TurnFinished
from assistant.pipeline import Pipeline
from assistant.settings import Settings
from routing.client import ModelClient
from tests.dialects import (
    ANSWER_TEXT, DIALECT_IDS, DIALECTS, THOUGHT_TEXT, UNOPENED_THINK_TOKENS, by_name, truncated,
)
from tests.fake_openai_server import FakeOpenAIServer, Script
from tests.test_pipeline import EXPENSES, VACATION, WordOverlapRetriever, of, words

QUESTION = "How many vacation days do employees get?"
# Long enough and on topic, but it cites none of the sources it was given.
UNCITED = "Employees receive a generous amount of paid time off every year, and part of it carries over."
CITED = "Every employee gets 25 days of paid vacation per year, and up to 5 unused days carry over [1]."


def collapsed(events) -> list[str]:
    """Event type names with runs of the same type collapsed."""
    names = [type(e).__name__ for e in events]
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def large_alias(dialect) -> str:
    return "qwen3-8b" if "qwen" in dialect.large_id else "gpt-oss-20b"


def small_script(dialect, text: str) -> Script:
    # Same server, so the same logprobs behaviour: null where the server sends null, absent elsewhere.
    return Script(tokens=words(text), logprobs_null=dialect.large.logprobs_null,
                  delta_extra=dialect.large.delta_extra, role_chunk_first=dialect.large.role_chunk_first)


async def run_turn(dialect, small: Script | None, large: Script, mode="automatic", **settings_kw):
    with FakeOpenAIServer(dialect.models()) as fake:
        if small is not None:
            fake.script(dialect.small_id, small)
        fake.script(dialect.large_id, large)
        settings = Settings(model_endpoint=fake.base_url, large_model=large_alias(dialect), routing_mode=mode,
                            _env_file=None, **settings_kw)
        client = ModelClient.from_settings(settings)
        pipeline = Pipeline(settings, client, knowledge=WordOverlapRetriever([VACATION, EXPENSES]))
        try:
            events = [event async for event in pipeline.run(QUESTION)]
        finally:
            await client.close()
        return events, list(fake.requests)


@pytest.mark.parametrize("dialect", DIALECTS, ids=DIALECT_IDS)
async def test_escalation_without_logprobs_then_the_reasoning_model_thinks_apart(dialect):
    events, requests = await run_turn(dialect, small_script(dialect, UNCITED), dialect.large)

    # The small model's uncited answer escalates on the grounding signal, and the reason says why.
    escalated = of(events, Escalated)[0]
    assert "no logprobs" in escalated.reason and "cites none of the 2 sources" in escalated.reason
    assert escalated.draft == UNCITED

    # The large model's thinking streams as Thinking events, closed before its first answer token.
    large_events = events[events.index(escalated):]
    assert collapsed(large_events) == ["Escalated", "AnswerStarted", "Thinking", "ThinkingFinished", "Token",
                                       "TurnFinished"]
    assert "".join(e.text for e in of(large_events, Thinking)).strip() == THOUGHT_TEXT
    done = of(large_events, ThinkingFinished)
    assert len(done) == 1 and done[0].answered and done[0].role == "large"
    first_token = next(i for i, e in enumerate(large_events) if isinstance(e, Token))
    assert large_events.index(done[0]) < first_token
    assert not any(isinstance(e, Thinking) for e in large_events[first_token:])

    # Only the answer is the answer: no thinking, no markers.
    assert isinstance(events[-1], TurnFinished)
    finished = events[-1].record
    assert finished.text == ANSWER_TEXT == "".join(e.text for e in of(large_events, Token))
    assert finished.answered_by == dialect.large_id and finished.cited == [1]
    assert not of(events, Notice)

    # Metrics split thinking from answering.
    leg = finished.metrics.legs[-1]
    assert leg.role == "large" and leg.outcome == "answered"
    assert leg.thinking_ms is not None and leg.reasoning_tokens > 0
    assert leg.answer_ttft_ms >= leg.ttft_ms
    assert leg.reasoning_estimated is (not dialect.large.reasoning_tokens_in_usage)
    assert leg.answer_tokens == leg.completion_tokens - leg.reasoning_tokens
    assert finished.metrics.first_answer_ms > finished.metrics.ttft_ms

    # max_tokens always sent; the large model gets its own budget and the reasoning effort.
    small_request, large_request = requests
    assert small_request.body["max_tokens"] == 512 and "reasoning_effort" not in small_request.body
    assert large_request.body["max_tokens"] == 2048 and large_request.body["reasoning_effort"] == "low"


@pytest.mark.parametrize("dialect", [by_name("Foundry"), by_name("Harmony inline")], ids=["field", "inline"])
async def test_a_cited_grounded_answer_stays_with_the_small_model_without_logprobs(dialect):
    events, requests = await run_turn(dialect, small_script(dialect, CITED), dialect.large)
    assert not of(events, Escalated)
    assert events[-1].record.text == CITED and len(requests) == 1
    assert events[-1].record.metrics.confidence is None


async def test_a_citation_of_a_source_that_was_not_given_escalates():
    dialect = by_name("Foundry")
    events, _ = await run_turn(dialect, small_script(dialect, CITED.replace("[1]", "[7]")), dialect.large)
    assert "cites [7] but 2 sources were given" in of(events, Escalated)[0].reason


@pytest.mark.parametrize("dialect", [by_name("Foundry"), by_name("Harmony inline")], ids=["field", "inline"])
async def test_large_model_out_of_budget_while_thinking_keeps_the_small_answer(dialect):
    events, _ = await run_turn(dialect, small_script(dialect, UNCITED), truncated(dialect.large))
    finished = events[-1].record
    assert of(events, ThinkingFinished)[0].answered is False
    assert finished.text == UNCITED  # the small answer is kept
    warning = [n for n in of(events, Notice) if n.level == "warning"][0]
    assert "spent its whole budget of 2048 tokens thinking" in warning.message
    assert THOUGHT_TEXT not in finished.text


async def test_large_only_answer_cut_by_its_budget_gets_a_notice():
    dialect = by_name("Ollama")
    cut = Script(tokens=words("Every employee gets 25 days of paid"), reasoning=["Thinking."],
                 reasoning_field="reasoning", finish_reason="length")
    events, requests = await run_turn(dialect, None, cut, mode="large", large_max_tokens=300)
    notice = of(events, Notice)[0]
    assert notice.level == "warning" and "cut off by its budget of 300 tokens" in notice.message
    assert events[-1].record.text == "Every employee gets 25 days of paid"
    assert events[-1].record.metrics.truncated
    assert requests[0].body["max_tokens"] == 300


async def test_large_only_with_no_answer_after_thinking_is_an_error_that_says_why():
    dialect = by_name("Foundry")
    events, _ = await run_turn(dialect, None, truncated(dialect.large), mode="large")
    errors = [n for n in of(events, Notice) if n.level == "error"]
    assert errors and "gave no answer" in errors[0].message
    assert events[-1].record.text == ""


async def test_reasoning_effort_setting_reaches_the_large_model_only():
    dialect = by_name("vLLM (delta.reasoning)")
    events, requests = await run_turn(dialect, None, dialect.large, mode="large", reasoning_effort="high")
    assert requests[0].body["reasoning_effort"] == "high"
    events, requests = await run_turn(dialect, None, dialect.large, mode="large", reasoning_effort="")
    assert "reasoning_effort" not in requests[0].body


@pytest.mark.parametrize("mode", ["large", "automatic"])
async def test_thinking_whose_opening_was_in_the_template_is_taken_out_of_the_answer_when_its_close_arrives(mode):
    """The reply streams as answer text until an unopened </think> shows it was thinking: the pipeline says so,
    closes the thinking, and the answer, the record and the router's checks see only what followed."""
    dialect = by_name("<think>")
    script = Script(tokens=list(UNOPENED_THINK_TOKENS))
    events, _ = await run_turn(dialect, script if mode == "automatic" else None, script, mode=mode)

    names = collapsed(events)
    at = names.index("AnswerWasThinking")
    assert names[at - 1:at + 3] == ["Token", "AnswerWasThinking", "ThinkingFinished", "Token"]
    was = of(events, AnswerWasThinking)
    assert len(was) == 1 and was[0].text.strip() == THOUGHT_TEXT
    after = events[events.index(was[0]):]
    assert "".join(e.text for e in of(after, Token)) == ANSWER_TEXT  # the answer, from its first character
    assert of(after, ThinkingFinished)[0].answered

    record = events[-1].record
    assert record.text == ANSWER_TEXT and "</think>" not in record.history_text()
    assert record.responses[-1].reasoning.strip() == THOUGHT_TEXT
    assert record.cited == [1]
    if mode == "automatic":  # the small model's cited answer is kept: its thinking did not count as the answer
        assert not of(events, Escalated) and record.answered_by == dialect.small_id
