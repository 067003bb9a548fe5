"""The pipeline against the scripted OpenAI-compatible server (real HTTP, real streaming)."""

import asyncio
import math
import time

import pytest

from assistant.events import AnswerStarted, Escalated, Notice, PromptBuilt, SourcesFound, Token, TurnFinished
from assistant.pipeline import REFINE_INSTRUCTION, Pipeline
from assistant.record import TurnRecord
from assistant.settings import RoutingMode, Settings
from rag.prompt import NO_SOURCES_NOTE, REFERENCE_SOURCE
from rag.types import Chunk, ScoredChunk
from routing.client import START_HINT, ModelClient
from routing.policy import RoutingOptions
from tests.fake_openai_server import FakeOpenAIServer, Script, _free_port

SMALL = "Phi-4-mini-instruct-generic-cpu"
LARGE = "gpt-oss-20b-generic-cpu"
SURE = math.log(0.95)

VACATION = Chunk(
    id="handbook.md#0",
    text="Vacation: every employee gets 25 days of paid vacation per year. Up to 5 unused days carry over.",
    source="handbook.md",
    title="Vacation",
    position=0,
)
EXPENSES = Chunk(
    id="expenses.md#0",
    text="Expenses: receipts are required for any expense above 20 euros, submitted within 30 days.",
    source="expenses.md",
    title="Expenses",
    position=0,
)


class WordOverlapRetriever:
    """A tiny retriever: score = number of question words in the chunk."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.queries = []

    def search(self, query: str, k: int) -> list[ScoredChunk]:
        self.queries.append(query)
        words = {w.strip("?.,").lower() for w in query.split() if len(w) > 3}
        scored = [ScoredChunk(c, float(sum(w in c.text.lower() for w in words))) for c in self.chunks]
        return sorted((s for s in scored if s.score > 0), key=lambda s: s.score, reverse=True)[:k]


def words(text: str) -> list[str]:
    parts = text.split(" ")
    return [parts[0]] + [" " + p for p in parts[1:]]


LONG_SMALL = "Every employee gets 25 days of paid vacation per year, and up to 5 unused days carry over [1]."
LONG_LARGE = "Each employee receives 25 paid vacation days a year; at most 5 unused days carry over to next year [1]."


def answer(text: str, probability: float = 0.95, **kw) -> Script:
    tokens = words(text)
    return Script(tokens=tokens, logprobs=[math.log(probability)] * len(tokens), **kw)


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer() as fake:
        yield fake


@pytest.fixture
def fake(server):
    server.scripts.clear()
    server.requests.clear()
    server.default_script = Script()
    return server


def make_pipeline(fake, retriever=None, **settings_kw):
    settings = Settings(model_endpoint=fake.base_url, _env_file=None, **settings_kw)
    client = ModelClient.from_settings(settings)
    return Pipeline(settings, client, knowledge=retriever if retriever is not None else WordOverlapRetriever([VACATION, EXPENSES]))


async def collect(pipeline, question="How many vacation days do employees get?", **kw):
    events = [event async for event in pipeline.run(question, **kw)]
    await pipeline.client.close()
    return events


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


def finished(events) -> TurnRecord:
    assert isinstance(events[-1], TurnFinished)
    return events[-1].record


def kinds(events):
    """Event type names with runs of Tokens collapsed."""
    names = []
    for e in events:
        name = type(e).__name__
        if not (name == "Token" and names and names[-1] == "Token"):
            names.append(name)
    return names


async def wait_for(condition, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------------------------ automatic


async def test_confident_long_answer_stays_with_the_small_model(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    events = await collect(make_pipeline(fake))

    assert kinds(events) == ["SourcesFound", "PromptBuilt", "AnswerStarted", "Token", "TurnFinished"]
    end = finished(events)
    assert end.text == LONG_SMALL
    assert end.answered_by == SMALL
    assert of(events, AnswerStarted)[0].model == SMALL
    assert "".join(t.text for t in of(events, Token)) == LONG_SMALL
    assert end.metrics.confidence == pytest.approx(0.95)
    assert end.metrics.escalation_reason is None
    assert [leg.outcome for leg in end.metrics.legs] == ["answered"]
    assert end.cited == [1]
    assert [s.chunk.source for s in end.sources][0] == "handbook.md"
    assert not fake.requests_for(LARGE)


async def test_short_answer_escalates_to_the_large_model(fake):
    fake.script(SMALL, answer("25 days [1]."))
    fake.script(LARGE, answer(LONG_LARGE))
    events = await collect(make_pipeline(fake))

    assert kinds(events) == [
        "SourcesFound", "PromptBuilt", "AnswerStarted", "Token", "Escalated", "AnswerStarted", "Token", "TurnFinished",
    ]
    escalated = of(events, Escalated)[0]
    assert escalated.reason == "answer 12 chars < 40"
    assert escalated.draft == "25 days [1]." and not escalated.early
    assert escalated.from_model == SMALL and escalated.to_alias == "gpt-oss-20b"
    started = of(events, AnswerStarted)
    assert [(s.role, s.model) for s in started] == [("small", SMALL), ("large", LARGE)]
    end = finished(events)
    assert end.text == LONG_LARGE and end.answered_by == LARGE
    assert end.metrics.escalation_reason == "answer 12 chars < 40"
    assert [(leg.role, leg.outcome) for leg in end.metrics.legs] == [("small", "escalated"), ("large", "answered")]
    # Both models got the same grounded prompt.
    assert fake.requests_for(SMALL)[0].body["messages"] == fake.requests_for(LARGE)[0].body["messages"]


async def test_unsure_answer_escalates_with_the_confidence_in_the_reason(fake):
    fake.script(SMALL, answer(LONG_SMALL, probability=0.2))
    fake.script(LARGE, answer(LONG_LARGE))
    events = await collect(make_pipeline(fake, early_check_tokens=1000))
    assert of(events, Escalated)[0].reason == "confidence 0.20 < 0.30"
    assert finished(events).metrics.confidence == pytest.approx(0.2)


async def test_refusal_at_the_start_stops_the_small_stream_early(fake):
    refusal = words("I'm sorry, but I cannot help with that. " + "More filler words follow here. " * 40)
    fake.script(SMALL, Script(tokens=refusal, logprobs=[SURE] * len(refusal), token_delay=0.01))
    fake.script(LARGE, answer(LONG_LARGE))
    events = await collect(make_pipeline(fake))

    escalated = of(events, Escalated)[0]
    assert escalated.early and escalated.reason == "declined at the start"
    assert escalated.draft == "I'm sorry,"
    record = fake.requests_for(SMALL)[0]
    await wait_for(lambda: record.ended is not None)
    assert record.client_disconnected and not record.completed
    assert record.tokens_sent < 10 < len(refusal)
    end = finished(events)
    assert end.text == LONG_LARGE
    small_leg = end.metrics.legs[0]
    assert small_leg.outcome == "escalated" and small_leg.reason == "declined at the start"
    assert end.responses[0].cancelled  # the small stream was closed, not finished
    assert end.metrics.confidence == pytest.approx(0.95)  # of the small tokens received before the stop


async def test_low_running_confidence_stops_the_small_stream_after_n_tokens(fake):
    tokens = words("maybe perhaps " * 60)
    fake.script(SMALL, Script(tokens=tokens, logprobs=[math.log(0.05)] * len(tokens), token_delay=0.005))
    fake.script(LARGE, answer(LONG_LARGE))
    events = await collect(make_pipeline(fake, early_check_tokens=8))
    escalated = of(events, Escalated)[0]
    assert escalated.early and escalated.reason == "confidence 0.05 < 0.15 after 8 tokens"
    assert len(of([e for e in events if getattr(e, "role", "") == "small"], Token)) == 8
    record = fake.requests_for(SMALL)[0]
    await wait_for(lambda: record.ended is not None)
    assert record.client_disconnected and record.tokens_sent < len(tokens)


async def test_missing_logprobs_fall_back_to_length_and_declines(fake):
    fake.script(SMALL, Script(tokens=words(LONG_SMALL), logprobs=None))
    events = await collect(make_pipeline(fake))
    end = finished(events)
    assert end.text == LONG_SMALL and not of(events, Escalated)
    assert end.metrics.confidence is None


async def test_server_rejecting_logprobs_still_answers(fake):
    fake.script(SMALL, Script(tokens=words(LONG_SMALL), logprobs=[SURE] * 30, reject_logprobs=True))
    end = finished(await collect(make_pipeline(fake)))
    assert end.text == LONG_SMALL and end.metrics.confidence is None


async def test_large_model_down_keeps_the_small_answer_with_a_warning(fake):
    fake.script(SMALL, answer("25 days [1]."))
    fake.script(LARGE, Script(status=503, error_message="model is loading"))
    events = await collect(make_pipeline(fake))

    assert kinds(events)[-4:] == ["Token", "Escalated", "Notice", "TurnFinished"]
    notice = of(events, Notice)[0]
    assert notice.level == "warning" and "small model's answer is kept" in notice.message and "503" in notice.message
    end = finished(events)
    assert end.text == "25 days [1]." and end.answered_by == SMALL
    assert [(leg.role, leg.outcome) for leg in end.metrics.legs] == [("small", "escalated"), ("large", "failed")]
    assert end.metrics.legs[1].cost_usd == 0


async def test_large_model_not_served_keeps_the_small_answer(fake):
    fake.script(SMALL, answer("25 days [1]."))
    pipeline = make_pipeline(fake, large_model="llama-70b")
    events = await collect(pipeline)
    notice = of(events, Notice)[0]
    assert notice.level == "warning" and "llama-70b" in notice.message and SMALL in notice.message
    assert finished(events).answered_by == SMALL


async def test_small_model_unreachable_gives_an_error_notice_with_the_hint():
    settings = Settings(model_endpoint=f"http://127.0.0.1:{_free_port()}/v1", connect_timeout_s=1, _env_file=None)
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), knowledge=WordOverlapRetriever([VACATION]))
    events = await collect(pipeline)

    assert kinds(events) == ["SourcesFound", "PromptBuilt", "Notice", "TurnFinished"]
    notice = of(events, Notice)[0]
    assert notice.level == "error" and START_HINT in notice.message
    end = finished(events)
    assert end.text == "" and end.answered_by is None
    assert end.metrics.legs[0].outcome == "failed"


async def test_stream_cut_midway_keeps_the_partial_text(fake):
    fake.script(SMALL, Script(tokens=words(LONG_SMALL), logprobs=[SURE] * 30, drop_after=4))
    events = await collect(make_pipeline(fake))
    notice = of(events, Notice)[0]
    assert notice.level == "error" and "in the middle of the answer" in notice.message
    end = finished(events)
    assert end.text == "".join(words(LONG_SMALL)[:4])
    assert end.answered_by is None  # a cut-short answer is partial text, not an answer by the model
    assert end.metrics.legs[0].outcome == "failed"
    assert not fake.requests_for(LARGE)


# ------------------------------------------------------------------------------------ modes


async def test_small_mode_never_escalates(fake):
    fake.script(SMALL, answer("25 days [1]."))
    events = await collect(make_pipeline(fake), options=RoutingOptions(mode=RoutingMode.SMALL_ONLY))
    assert finished(events).text == "25 days [1]." and not of(events, Escalated)
    assert [r.model for r in fake.requests] == [SMALL]


async def test_large_mode_uses_only_the_large_model(fake):
    fake.script(LARGE, answer(LONG_LARGE))
    events = await collect(make_pipeline(fake), options=RoutingOptions(mode=RoutingMode.LARGE_ONLY))
    assert [(s.role, s.model) for s in of(events, AnswerStarted)] == [("large", LARGE)]
    end = finished(events)
    assert end.answered_by == LARGE and end.metrics.legs[0].role == "large"
    assert [r.model for r in fake.requests] == [LARGE]


async def test_large_mode_failure_is_an_error(fake):
    fake.script(LARGE, Script(status=500))
    events = await collect(make_pipeline(fake), options=RoutingOptions(mode=RoutingMode.LARGE_ONLY))
    assert of(events, Notice)[0].level == "error"
    assert finished(events).answered_by is None


async def test_draft_then_refine_sends_the_draft_to_the_large_model(fake):
    draft = LONG_SMALL * 3
    fake.script(SMALL, answer(draft))
    fake.script(LARGE, answer(LONG_LARGE))
    options = RoutingOptions(mode=RoutingMode.DRAFT_THEN_REFINE, refine_min_chars=200)
    events = await collect(make_pipeline(fake), options=options)

    escalated = of(events, Escalated)[0]
    assert escalated.reason == f"draft {len(draft)} chars >= 200" and not escalated.early
    assert [(s.role, s.purpose) for s in of(events, AnswerStarted)] == [("small", "draft"), ("large", "refine")]
    refine_messages = fake.requests_for(LARGE)[0].body["messages"]
    assert refine_messages[-2] == {"role": "assistant", "content": draft}
    assert refine_messages[-1] == {"role": "user", "content": REFINE_INSTRUCTION}
    assert VACATION.text in refine_messages[-3]["content"]  # the sources are there too
    assert finished(events).text == LONG_LARGE


async def test_draft_then_refine_keeps_a_good_short_draft(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    options = RoutingOptions(mode=RoutingMode.DRAFT_THEN_REFINE, refine_min_chars=600)
    events = await collect(make_pipeline(fake), options=options)
    assert finished(events).text == LONG_SMALL and not fake.requests_for(LARGE)


async def test_options_reach_the_server(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    await collect(make_pipeline(fake), options=RoutingOptions(temperature=0.0, max_tokens=77))
    body = fake.requests_for(SMALL)[0].body
    assert body["temperature"] == 0.0 and body["max_tokens"] == 77 and body["logprobs"] is True


# ------------------------------------------------------------------------------------ cancellation


async def test_cancelling_the_turn_closes_the_upstream_stream(fake):
    tokens = words("word " * 300)
    fake.script(SMALL, Script(tokens=tokens, logprobs=[SURE] * len(tokens), token_delay=0.01))
    pipeline = make_pipeline(fake)
    seen = []

    async def consume():
        async for event in pipeline.run("How many vacation days?"):
            seen.append(event)

    task = asyncio.create_task(consume())
    await wait_for(lambda: sum(isinstance(e, Token) for e in seen) >= 3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    record = fake.requests_for(SMALL)[0]
    await wait_for(lambda: record.ended is not None)
    assert record.client_disconnected and record.tokens_sent < 50
    assert not any(isinstance(e, (TurnFinished, Escalated)) for e in seen)
    assert not fake.requests_for(LARGE)
    await pipeline.client.close()


async def test_closing_the_event_stream_closes_the_upstream_at_once(fake):
    # The demo page's server closes the generator when the browser hangs up.
    tokens = words("word " * 300)
    fake.script(SMALL, Script(tokens=tokens, logprobs=[SURE] * len(tokens), token_delay=0.01))
    pipeline = make_pipeline(fake)
    events = pipeline.run("How many vacation days?")
    tokens_seen = 0
    async for event in events:
        tokens_seen += isinstance(event, Token)
        if tokens_seen == 3:
            break
    await events.aclose()
    record = fake.requests_for(SMALL)[0]
    await wait_for(lambda: record.ended is not None, timeout=1.0)
    assert record.client_disconnected and record.tokens_sent < 50
    await pipeline.client.close()


# ------------------------------------------------------------------------------------ prompt inputs


async def test_history_is_passed_to_the_model(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    history = [
        {"role": "user", "content": "Who approves vacation requests?"},
        {"role": "assistant", "content": "Your team lead approves them [1]."},
    ]
    # A window with room for whole earlier answers (see rag.prompt.history_style_for).
    await collect(make_pipeline(fake, context_window=8192), history=history)
    messages = fake.requests_for(SMALL)[0].body["messages"]
    assert messages[0]["role"] == "system"
    assert messages[1:3] == history
    assert "How many vacation days" in messages[3]["content"]


async def test_no_supporting_source_is_reported_and_the_prompt_says_so(fake):
    fake.script(SMALL, answer("The documents do not cover this question."))
    events = await collect(make_pipeline(fake), question="What is the capital of Mongolia?")
    found = of(events, SourcesFound)[0]
    assert not found.supported
    end = finished(events)
    assert not end.supported and end.sources_found == 0 and end.sources == []
    assert NO_SOURCES_NOTE in fake.requests_for(SMALL)[0].body["messages"][-1]["content"]
    # The decline is the right answer here: no escalation.
    assert not of(events, Escalated) and end.answered_by == SMALL


class BrokenRetriever:
    def search(self, query, k):
        raise OSError("index file damaged")


async def test_a_failing_search_answers_without_sources_and_warns(fake):
    fake.script(SMALL, answer("The documents do not cover this question."))
    events = await collect(make_pipeline(fake, retriever=BrokenRetriever()))
    notice = of(events, Notice)[0]
    assert notice.level == "warning" and "index file damaged" in notice.message
    assert not finished(events).supported and finished(events).answered_by == SMALL


async def test_a_conversations_documents_are_searched_once_in_place_of_the_knowledge_base(fake):
    # A DocumentSet's search already covers the shared knowledge base (one scoped search, one scale).
    fake.script(SMALL, answer(LONG_SMALL))
    uploads = WordOverlapRetriever([EXPENSES, VACATION])
    knowledge = WordOverlapRetriever([VACATION])
    question = "Are receipts required for expenses above 20 euros?"
    events = await collect(make_pipeline(fake, retriever=knowledge), question=question, documents=uploads)
    assert uploads.queries == [question] and knowledge.queries == []
    found = of(events, SourcesFound)[0]
    assert [s.chunk.source for s in found.sources][0] == "expenses.md"
    assert found.query == question
    assert found.retrieval_ms >= 0 and of(events, PromptBuilt)[0].prompt_tokens > 0


async def test_a_follow_up_is_searched_with_the_earlier_questions_terms(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    knowledge = WordOverlapRetriever([EXPENSES, VACATION])
    history = [{"role": "user", "content": "How many vacation days do employees get?"},
               {"role": "assistant", "content": "25 days [1]."}]
    events = await collect(make_pipeline(fake, retriever=knowledge), question="Can I carry them over?",
                           history=history)
    found = of(events, SourcesFound)[0]
    assert found.query == knowledge.queries[0]
    assert found.query.startswith("Can I carry them over?") and "vacation" in found.query and "employees" in found.query


async def test_reference_text_becomes_the_sources(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    knowledge = WordOverlapRetriever([VACATION])
    reference = "The launch is planned for March 3. The budget is 40,000 euros."
    events = await collect(make_pipeline(fake, retriever=knowledge), question="When is the launch?", reference_text=reference)
    assert knowledge.queries == []  # a reference text replaces retrieval unless retrieve=True
    end = finished(events)
    assert [s.chunk.source for s in end.sources] == [REFERENCE_SOURCE]
    assert end.supported
    assert reference in fake.requests_for(SMALL)[0].body["messages"][-1]["content"]


# ------------------------------------------------------------------------------------ metrics


async def test_metrics_legs_and_costs(fake):
    small_tokens, large_tokens = words("25 days [1]."), words(LONG_LARGE)
    fake.script(SMALL, Script(tokens=small_tokens, logprobs=[SURE] * 3, prompt_tokens=100))
    fake.script(LARGE, Script(tokens=large_tokens, logprobs=[SURE] * 30, prompt_tokens=120))
    end = finished(await collect(make_pipeline(fake)))
    small, large = end.metrics.legs
    assert (small.prompt_tokens, small.completion_tokens, small.tokens_estimated) == (100, len(small_tokens), False)
    assert (large.prompt_tokens, large.completion_tokens) == (120, len(large_tokens))
    # Default prices: small 0.10/0.40, large 0.50/2.00 USD per million tokens.
    assert small.cost_usd == pytest.approx((100 * 0.10 + len(small_tokens) * 0.40) / 1e6)
    assert large.cost_usd == pytest.approx((120 * 0.50 + len(large_tokens) * 2.00) / 1e6)
    assert end.metrics.cost_usd == pytest.approx(small.cost_usd + large.cost_usd)
    assert (small.model, large.model) == (SMALL, LARGE)
    assert end.metrics.answered_by == LARGE
    assert end.metrics.total_ms >= end.metrics.retrieval_ms + end.metrics.prompt_ms
    assert small.ttft_ms is not None and small.ttft_ms > 0


async def test_usage_is_estimated_when_the_server_sends_none(fake):
    fake.script(SMALL, Script(tokens=words(LONG_SMALL), logprobs=[SURE] * 30, send_usage=False))
    end = finished(await collect(make_pipeline(fake)))
    leg = end.metrics.legs[0]
    assert leg.tokens_estimated and leg.completion_tokens > 10 and leg.prompt_tokens > 50


# ------------------------------------------------------------------------------------ the turn's record

BOTH = "How many vacation days are there, and are receipts required for expenses?"


def number_of(record, source: str) -> int:
    return next(n for n, s in enumerate(record.sources, start=1) if s.chunk.source == source)


async def test_record_links_citations_attributes_uncited_sentences_and_lists_dangling_ones(fake):
    pipeline = make_pipeline(fake)
    # The sources' order comes from retrieval: find the numbers first with a throwaway turn.
    fake.script(SMALL, answer(LONG_SMALL))
    probe = finished(await collect(pipeline, question=BOTH))
    vacation, expenses = number_of(probe, "handbook.md"), number_of(probe, "expenses.md")
    text = (
        f"Every employee gets 25 days of paid vacation per year. "
        f"Receipts are required for any expense above 20 euros [{expenses}]. In [2024] this was new [7]."
    )
    fake.script(SMALL, answer(text))
    record = finished(await collect(make_pipeline(fake), question=BOTH))

    assert record.text == text
    assert record.cited == [expenses] and record.attributed == [vacation] and record.dangling == [7]
    assert [(n, s.chunk.source, by) for n, s, by in record.cited_sources()] == [
        (expenses, "expenses.md", "model"), (vacation, "handbook.md", "app"),
    ]
    assert record.display_text().startswith(f"Every employee gets 25 days of paid vacation per year. [{vacation}]†")
    # History keeps the source names, not this turn's numbers (the next prompt numbers its own sources).
    history = record.history_text()
    assert f"[{expenses}]" not in history and "[7]" not in history and "(expenses.md)" in history
    assert "In [2024] this was new." in history  # a year is not a citation
    data = record.to_dict()
    assert data["attributed"] == [vacation] and data["dangling"] == [7]
    assert {c["by"] for c in data["citations"]} == {"model", "app"}


async def test_the_routing_decision_is_an_object_with_signals_values_and_thresholds(fake):
    fake.script(SMALL, answer("25 days [1]."))
    fake.script(LARGE, answer(LONG_LARGE))
    record = finished(await collect(make_pipeline(fake)))
    decision = record.routing
    assert decision.action == "escalated" and decision.reason == "answer 12 chars < 40" and not decision.early
    assert decision.legs == [("small", "answer"), ("large", "answer")]
    length = next(s for s in decision.signals if s.name == "length")
    assert (length.value, length.threshold, length.fired) == (12, 40, True)
    confidence = next(s for s in decision.signals if s.name == "confidence")
    assert confidence.value == pytest.approx(0.95) and confidence.threshold == 0.30 and not confidence.fired
    assert [s.name for s in decision.fired] == ["length"]
    assert record.answered_role == "large" and record.answered_alias == "gpt-oss-20b"
    assert "Escalated to the large model: answer 12 chars < 40" in decision.describe()


async def test_an_early_stop_is_recorded_with_the_signal_that_fired(fake):
    refusal = words("I'm sorry, but I cannot help with that. " + "More filler words follow here. " * 40)
    fake.script(SMALL, Script(tokens=refusal, logprobs=[SURE] * len(refusal), token_delay=0.01))
    fake.script(LARGE, answer(LONG_LARGE))
    record = finished(await collect(make_pipeline(fake)))
    assert record.routing.action == "escalated early" and record.routing.early
    assert record.routing.signals[0].name == "early decline" and record.routing.signals[0].fired


async def test_metrics_summary_comes_from_the_answering_leg_not_the_last_one(fake):
    fake.script(SMALL, answer("25 days [1]."))
    large_tokens = words(LONG_LARGE)
    fake.script(LARGE, Script(tokens=large_tokens, logprobs=[SURE] * 30, token_delay=0.05, drop_after=5))
    record = finished(await collect(make_pipeline(fake)))

    assert record.text == "25 days [1]." and record.answered_role == "small"
    assert record.routing.action == "kept small answer"
    small_leg, large_leg = record.metrics.legs
    assert large_leg.outcome == "failed" and large_leg.decode_tokens_per_s is not None
    summary = record.summary
    assert summary.answered_role == "small" and summary.calls == 2
    assert summary.decode_tokens_per_s == small_leg.decode_tokens_per_s != large_leg.decode_tokens_per_s
    assert summary.model_ttft_ms == small_leg.ttft_ms
    assert summary.completion_tokens == small_leg.completion_tokens + large_leg.completion_tokens


async def test_draft_then_refine_lets_the_draft_finish_and_refines_it_from_the_same_sources(fake):
    # An unsure draft that opens with a refusal would be cut at once in automatic mode; here it runs to its end.
    draft = "I'm not sure, but every employee gets 25 days of paid vacation per year [1]. " * 2
    tokens = words(draft.strip())
    fake.script(SMALL, Script(tokens=tokens, logprobs=[math.log(0.05)] * len(tokens)))
    fake.script(LARGE, answer(LONG_LARGE))
    options = RoutingOptions(mode=RoutingMode.DRAFT_THEN_REFINE, refine_min_chars=600, early_check_tokens=4)
    events = await collect(make_pipeline(fake), options=options)

    small_request, large_request = fake.requests_for(SMALL)[0], fake.requests_for(LARGE)[0]
    assert small_request.completed and small_request.tokens_sent == len(tokens)
    assert large_request.body["messages"][:-2] == small_request.body["messages"]  # same numbered sources
    assert of(events, Escalated)[0].purpose == "refine" and not of(events, Escalated)[0].early
    record = finished(events)
    assert record.text == LONG_LARGE and record.answered_role == "large"
    decision = record.routing
    assert decision.action == "refined" and decision.legs == [("small", "draft"), ("large", "refine")]
    assert decision.refine.refined and decision.refine.draft == draft.strip()
    assert decision.refine.words_added > 0 and decision.refine.words_removed > 0
    assert decision.describe().startswith("Draft → refined (declined; ")
    assert [leg.outcome for leg in record.metrics.legs] == ["drafted", "answered"]


async def test_draft_then_refine_says_why_the_draft_was_kept(fake):
    fake.script(SMALL, answer(LONG_SMALL))
    options = RoutingOptions(mode=RoutingMode.DRAFT_THEN_REFINE, refine_min_chars=600)
    record = finished(await collect(make_pipeline(fake), options=options))
    assert record.routing.action == "draft kept" and not record.routing.refine.refined
    assert record.routing.describe() == (
        f"Draft kept: draft {len(LONG_SMALL)} chars < 600 and no check flagged it."
    )


async def test_draft_then_refine_keeps_the_draft_when_the_large_model_fails(fake):
    draft = LONG_SMALL * 3
    fake.script(SMALL, answer(draft))
    fake.script(LARGE, Script(status=503, error_message="model is loading"))
    options = RoutingOptions(mode=RoutingMode.DRAFT_THEN_REFINE, refine_min_chars=200)
    events = await collect(make_pipeline(fake), options=options)
    record = finished(events)
    assert record.text == draft and record.answered_role == "small"
    assert record.routing.action == "draft kept" and "refining failed" in record.routing.refine.reason
    assert "so the draft is kept" in of(events, Notice)[0].message


async def test_draft_then_refine_keeps_the_draft_when_no_room_is_left_to_refine_it(fake):
    draft = " ".join(f"word{i}" for i in range(300))
    fake.script(SMALL, answer(draft))
    options = RoutingOptions(mode=RoutingMode.DRAFT_THEN_REFINE, refine_min_chars=100, max_tokens=200)
    events = await collect(make_pipeline(fake, context_window=512), options=options)
    record = finished(events)
    assert not fake.requests_for(LARGE) and not of(events, Escalated)
    assert record.text == draft and record.routing.action == "draft kept"
    assert record.routing.legs == [("small", "draft")]
    assert record.routing.describe() == "Draft kept: no room left in the context window for a refined answer."
