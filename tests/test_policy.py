import math

import pytest

from assistant.settings import RoutingMode, Settings
from rag.types import Chunk, ScoredChunk
from routing.policy import (
    grounded_share,
    grounding_signals,
    EarlyMonitor,
    RoutingOptions,
    assess,
    looks_declined,
    quantile,
    refine_reason,
    token_confidence,
)

OPTIONS = RoutingOptions(min_answer_chars=40, confidence_threshold=0.30, min_source_score=1.0)
LONG_ANSWER = "Employees get 25 days of paid vacation per year, and up to 5 unused days carry over [1]."


def source(score: float) -> ScoredChunk:
    return ScoredChunk(Chunk(id="h.md#0", text="Vacation: 25 days.", source="h.md", title="Vacation", position=0), score)


def logprobs_for(probabilities):
    return [math.log(p) for p in probabilities]


# ------------------------------------------------------------------------------------ options


def test_options_from_settings_and_overrides():
    settings = Settings(routing_mode="small", confidence_threshold=0.5, max_tokens=300, _env_file=None)
    options = RoutingOptions.from_settings(settings)
    assert options.mode is RoutingMode.SMALL_ONLY
    assert options.confidence_threshold == 0.5 and options.max_tokens == 300

    changed = options.with_overrides(
        {"routing_mode": "draft_refine", "temperature": "0.7", "max_tokens": 128.0, "unrelated_widget": 3}
    )
    assert changed.mode is RoutingMode.DRAFT_THEN_REFINE
    assert changed.temperature == 0.7 and changed.max_tokens == 128
    assert options.mode is RoutingMode.SMALL_ONLY  # the original is unchanged


def test_reasoning_effort_from_the_chat_settings_select():
    options = RoutingOptions()
    assert options.with_overrides({"reasoning_effort": "high"}).reasoning_effort == "high"
    # The select cannot offer an empty value: "default" stands for sending none (the server's default).
    assert options.with_overrides({"reasoning_effort": "default"}).reasoning_effort == ""
    with pytest.raises(ValueError, match="reasoning_effort"):
        options.with_overrides({"reasoning_effort": "extreme"})


@pytest.mark.parametrize(
    "values",
    [{"mode": "medium"}, {"max_tokens": 12.5}, {"confidence_threshold": 1.5}, {"temperature": "hot"}],
)
def test_bad_overrides_name_the_option(values):
    key = next(iter(values))
    with pytest.raises(ValueError, match=key):
        RoutingOptions().with_overrides(values)


# ------------------------------------------------------------------------------------ confidence


def test_quantile_interpolates_like_numpy():
    values = [0.9, 0.1, 0.5, 0.7, 0.3]
    assert quantile(values, 0.0) == 0.1
    assert quantile(values, 1.0) == 0.9
    assert quantile(values, 0.5) == 0.5
    assert quantile(values, 0.1) == pytest.approx(0.1 + 0.4 * 0.2)  # between 0.1 and 0.3


def test_confidence_is_a_low_quantile_not_the_mean():
    # 85 sure tokens and 15 guesses: the mean probability looks fine, the 10th percentile does not.
    probabilities = [0.99] * 85 + [0.05] * 15
    confidence = token_confidence(logprobs_for(probabilities), 0.10)
    assert sum(probabilities) / len(probabilities) > 0.8
    assert confidence == pytest.approx(0.05)


def test_confidence_is_none_without_logprobs():
    assert token_confidence(None) is None
    assert token_confidence([]) is None


# ------------------------------------------------------------------------------------ declines


@pytest.mark.parametrize(
    "text",
    [
        "I don't know.",
        "i DO NOT KNOW!!",
        "I\u2019m sorry, but I can\u2019t help with that.",
        "Sorry - that is not something I can answer.",
        "I am not sure about this.",
        "I cannot answer this question from the sources.",
        "The provided sources do not cover parental leave.",
        "The documents don't explicitly mention the on-call rotation.",
        "The context does not contain information about the budget.",
        "Based on the sources, there is no information about travel.",
        "This is not covered in the documents.",
        "The answer cannot be determined from the given text.",
        "**The sources don't say.**",
        "As an AI, I have no access to that.",
    ],
)
def test_declines_are_detected(text):
    assert looks_declined(text)


@pytest.mark.parametrize(
    "text",
    [
        LONG_ANSWER,
        "The documents do not need to be signed by a manager before submission [2].",
        "Sorting is stable: equal keys keep their order [1].",
        # A long answer that notes a missing detail at its end has still answered.
        LONG_ANSWER * 2 + " The sources do not mention whether this applies to contractors.",
    ],
)
def test_answers_are_not_declines(text):
    assert not looks_declined(text)


# ------------------------------------------------------------------------------------ assess


def test_confident_long_supported_answer_stays():
    result = assess(LONG_ANSWER, logprobs_for([0.95] * 30), [source(4.2)], OPTIONS)
    assert not result.escalate
    assert result.reasons == []
    assert result.confidence_available and result.confidence == pytest.approx(0.95)


def test_short_answer_escalates_with_reason():
    result = assess("25 days [1].", logprobs_for([0.95] * 5), [source(4.2)], OPTIONS)
    assert result.escalate
    assert result.reasons == ["answer 12 chars < 40"]


def test_unsure_answer_escalates_with_reason():
    result = assess(LONG_ANSWER, logprobs_for([0.9] * 20 + [0.1] * 5), [source(4.2)], OPTIONS)
    assert result.escalate
    assert result.reasons == [f"confidence {result.confidence:.2f} < 0.30"]


def test_decline_with_support_escalates():
    result = assess("The sources do not cover the vacation policy at all, sorry.", None, [source(4.2)], OPTIONS)
    assert result.escalate and "declined" in result.reasons
    assert not result.confidence_available and result.confidence is None


def test_decline_without_support_stays():
    # Nothing was retrieved: "the documents do not cover this" is the right answer.
    result = assess("The documents do not cover this.", None, [source(0.4)], OPTIONS)
    assert not result.escalate
    assert result.declined and not result.supported


def test_no_support_alone_does_not_escalate_but_is_named_when_weak():
    assert not assess(LONG_ANSWER, logprobs_for([0.95] * 30), [], OPTIONS).escalate
    weak = assess("Maybe 25.", None, [source(0.5)], OPTIONS)
    assert weak.escalate
    assert weak.reasons == ["answer 9 chars < 40", "no source above score 1"]


def test_caller_can_state_support():
    # A pasted reference text supports the question whatever its chunks' scores.
    result = assess("The documents do not cover this.", None, [source(0.4)], OPTIONS, supported=True)
    assert result.escalate and result.supported and result.reasons[0] == "declined"


def test_missing_logprobs_fall_back_to_other_signals():
    long_result = assess(LONG_ANSWER, None, [source(4.2)], OPTIONS)
    assert not long_result.escalate and not long_result.confidence_available
    assert assess("25 days.", None, [source(4.2)], OPTIONS).escalate


def test_refine_reason_for_long_or_flagged_drafts():
    options = RoutingOptions(refine_min_chars=100, min_answer_chars=40)
    ok = assess(LONG_ANSWER, None, [source(3)], options)
    assert refine_reason(LONG_ANSWER, ok, options) is None
    long_draft = LONG_ANSWER * 2
    assert refine_reason(long_draft, assess(long_draft, None, [source(3)], options), options) == (
        f"draft {len(long_draft)} chars >= 100"
    )
    short = assess("25.", None, [source(3)], options)
    assert refine_reason("25.", short, options) == "answer 3 chars < 40"


# ------------------------------------------------------------------------------------ early monitor


def test_early_monitor_fires_on_an_opening_refusal():
    monitor = EarlyMonitor(OPTIONS)
    assert monitor.feed("I", [-0.1]) is None
    assert monitor.feed("'m", [-0.1] * 2) is None
    assert monitor.feed(" sorry", [-0.1] * 3) == "declined at the start"
    assert monitor.fired == "declined at the start"


def test_early_monitor_ignores_a_refusal_when_nothing_was_retrieved():
    monitor = EarlyMonitor(OPTIONS, supported=False)
    assert monitor.feed("I don't know.", None) is None


def test_early_monitor_waits_for_n_tokens_then_checks_confidence():
    options = RoutingOptions(early_check_tokens=10, early_confidence_floor=0.2)
    monitor = EarlyMonitor(options)
    logprobs: list[float] = []
    fired_at = None
    for i in range(30):
        logprobs.append(math.log(0.05))
        reason = monitor.feed(" word", list(logprobs))
        if reason:
            fired_at = i + 1
            break
    assert fired_at == 10
    assert monitor.fired == "confidence 0.05 < 0.20 after 10 tokens"


def test_early_monitor_keeps_a_confident_answer_and_a_late_disclaimer():
    monitor = EarlyMonitor(RoutingOptions(early_check_tokens=5))
    for word in LONG_ANSWER.split(" ") * 3:
        assert monitor.feed(word + " ", [math.log(0.9)] * 40) is None
    assert monitor.feed("The sources do not mention contractors.", [math.log(0.9)] * 45) is None


def test_early_monitor_without_logprobs_only_checks_declines():
    monitor = EarlyMonitor(RoutingOptions(early_check_tokens=1))
    assert all(monitor.feed(w + " ", None) is None for w in LONG_ANSWER.split())


# ----------------------------------------------------------------------------------------- grounding

HANDBOOK = ScoredChunk(Chunk(id="h.md#0", text="Every employee gets 25 days of paid vacation per year; up to 5 unused "
                             "days carry over.", source="h.md", title="Vacation", position=0), 3.0)
EXPENSES = ScoredChunk(Chunk(id="e.md#0", text="Receipts are required for any expense above 20 euros.",
                             source="e.md", title="Expenses", position=0), 2.0)


def test_grounding_signals_each_fire_on_their_own():
    sources = [HANDBOOK, EXPENSES]
    assert grounding_signals(LONG_ANSWER, sources, supported=True) == {}
    uncited = grounding_signals("Employees get plenty of paid vacation every year.", sources, supported=True)
    assert list(uncited) == ["no citation"] and "none of the 2 sources" in uncited["no citation"]
    unknown = grounding_signals("Employees get 25 days of paid vacation [3].", sources, supported=True)
    assert list(unknown) == ["unknown citation"] and "[3]" in unknown["unknown citation"]
    off_topic = grounding_signals("Quarterly revenue targets depend on regional marketing budgets [2].", sources,
                                  supported=True)
    assert list(off_topic) == ["low overlap"] and "0%" in off_topic["low overlap"]
    # Without supporting sources an uncited answer is expected.
    assert grounding_signals("Employees get plenty of paid vacation every year.", sources, supported=False) == {}


def test_without_logprobs_the_grounding_signals_decide_and_the_reason_says_so():
    options = RoutingOptions()
    uncited = "Employees get plenty of paid vacation every single year, more than most companies offer."
    verdict = assess(uncited, None, [HANDBOOK], options)
    assert verdict.escalate and verdict.grounding_decided
    assert verdict.reason == "no logprobs, so checked against its sources: cites none of the 1 sources given"
    # With logprobs present the same answer is judged by its confidence; the signal is still recorded.
    sure = assess(uncited, logprobs_for([0.99] * 20), [HANDBOOK], options)
    assert not sure.escalate and not sure.grounding_decided and list(sure.grounding) == ["no citation"]


def test_grounded_share_uses_content_words():
    assert grounded_share("Paid vacation days per employee.", ["Every employee gets 25 days of paid vacation."]) == 1.0
    assert grounded_share("Too short.", ["anything"]) is None
