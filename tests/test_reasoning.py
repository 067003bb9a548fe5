"""The inline reasoning splitter: every dialect, with the content cut at every possible place."""

import pytest

from routing.reasoning import ANSWER, REASONING, WAS_THINKING, InlineReasoningSplitter

THOUGHT = "The user asks about vacation. Source [1] says 25 days."
FINAL = "Every employee gets 25 days of paid vacation [1]."

DIALECTS = {
    "harmony": f"<|channel|>analysis<|message|>{THOUGHT}<|end|><|start|>assistant<|channel|>final<|message|>{FINAL}",
    "harmony from start": (
        f"<|start|>assistant<|channel|>analysis<|message|>{THOUGHT}<|end|>"
        f"<|start|>assistant<|channel|>final<|message|>{FINAL}<|return|>"
    ),
    "harmony stripped": f"analysis{THOUGHT}assistantfinal{FINAL}",
    "think": f"<think>\n{THOUGHT}\n</think>\n\n{FINAL}",
    # DeepSeek-R1-style templates end the prompt with "<think>\n": the reply starts inside the thinking.
    "think opened by the template": f"{THOUGHT}\n</think>\n\n{FINAL}",
}


def split(chunks):
    splitter = InlineReasoningSplitter()
    parts = []
    for chunk in chunks:
        parts += splitter.feed(chunk)
    parts += splitter.finish()
    reasoning = answer = ""
    for kind, text in parts:
        if kind == WAS_THINKING:
            assert text.startswith(answer), "was_thinking holds the answer text passed through so far, and the rest"
            reasoning, answer = reasoning + text, ""
        elif kind == REASONING:
            reasoning += text
        else:
            answer += text
    return reasoning, answer, splitter


@pytest.mark.parametrize("dialect", DIALECTS)
def test_whole_content_splits_into_thinking_and_answer(dialect):
    reasoning, answer, splitter = split([DIALECTS[dialect]])
    assert reasoning.strip() == THOUGHT
    assert answer == FINAL
    assert "<|" not in answer and "think>" not in answer and "assistantfinal" not in answer


@pytest.mark.parametrize("dialect", DIALECTS)
def test_every_single_cut_between_two_chunks_gives_the_same_split(dialect):
    content = DIALECTS[dialect]
    for cut in range(1, len(content)):
        reasoning, answer, _ = split([content[:cut], content[cut:]])
        assert (reasoning.strip(), answer) == (THOUGHT, FINAL), f"cut at {cut}: {content[:cut]!r}"


@pytest.mark.parametrize("dialect", DIALECTS)
def test_one_character_at_a_time(dialect):
    reasoning, answer, _ = split(list(DIALECTS[dialect]))
    assert (reasoning.strip(), answer) == (THOUGHT, FINAL)


def test_thinking_streams_before_the_answer_arrives():
    splitter = InlineReasoningSplitter()
    assert splitter.feed("<|channel|>analysis<|message|>Let me") == [(REASONING, "Let me")]
    assert splitter.in_reasoning
    assert splitter.feed(" think<|en") == [(REASONING, " think")]  # "<|en" may be a marker: held
    assert splitter.feed("d|><|start|>assistant<|channel|>final<|message|>Yes") == [(ANSWER, "Yes")]
    assert not splitter.in_reasoning


def test_plain_answers_pass_through_at_once():
    splitter = InlineReasoningSplitter()
    assert splitter.feed("The") == [(ANSWER, "The")]
    assert splitter.feed(" <think> tag is HTML-like") == [(ANSWER, " <think> tag is HTML-like")]
    assert splitter.dialect == "plain"


@pytest.mark.parametrize("text", ["analysis shows that 25 days apply.", "analysis.", "<b>bold</b> text", "an apple"])
def test_prose_that_starts_like_a_marker_stays_the_answer(text):
    reasoning, answer, splitter = split(list(text))
    assert (reasoning, answer) == ("", text)
    assert splitter.dialect == "plain"


def test_thinking_without_an_answer_is_all_reasoning():
    reasoning, answer, splitter = split(["<|channel|>analysis<|message|>I need to check", " the sources and"])
    assert reasoning == "I need to check the sources and"
    assert answer == ""
    assert splitter.in_reasoning  # cut off while thinking
    reasoning, answer, _ = split(["<think>Hmm, the budget", " runs out here"])
    assert (reasoning, answer) == ("Hmm, the budget runs out here", "")


def test_a_held_partial_marker_is_released_at_the_end():
    reasoning, answer, _ = split(["<think>ends with a <", "/thi"])
    assert reasoning == "ends with a </thi"
    reasoning, answer, _ = split(["<|chan"])
    assert answer == "<|chan"  # never became a marker: it was text


def test_commentary_channels_count_as_thinking():
    content = (
        "<|channel|>analysis<|message|>plan<|end|><|start|>assistant<|channel|>commentary to=functions.search "
        "<|constrain|>json<|message|>{\"q\": 1}<|call|><|start|>assistant<|channel|>final<|message|>Done."
    )
    reasoning, answer, _ = split([content])
    assert reasoning == 'plan{"q": 1}'
    assert answer == "Done."


def test_a_harmony_message_without_a_channel_is_the_answer():
    reasoning, answer, _ = split(["<|start|>assistant<|mess", "age|>Plain reply.<|end|>"])
    assert (reasoning, answer) == ("", "Plain reply.")


def test_an_unopened_think_close_turns_the_text_so_far_into_thinking_as_it_streams():
    splitter = InlineReasoningSplitter()
    assert splitter.feed("Okay, the user asks") == [(ANSWER, "Okay, the user asks")]  # no marker: passed at once
    assert splitter.feed(" about leave.\n</th") == [(ANSWER, " about leave.\n")]  # a possible close: held
    assert splitter.feed("ink>\n\nEvery") == [(WAS_THINKING, "Okay, the user asks about leave.\n"), (ANSWER, "Every")]
    assert splitter.feed(" employee.\n</think>") == [(ANSWER, " employee.\n</think>")]  # only the first close counts
    assert splitter.finish() == []


@pytest.mark.parametrize("text", [
    "Models such as DeepSeek-R1 end their thinking with `</think>` before the answer.",
    "The tag </think> closes a think block.",
    "A reply with thinking looks like this:\n```\n<think>\nplanning\n</think>\nThe answer.\n```",
])
def test_a_think_close_inside_a_sentence_stays_the_answer(text):
    reasoning, answer, _ = split(list(text))
    assert (reasoning, answer) == ("", text)


def test_a_reply_that_starts_with_the_close_is_all_answer():
    reasoning, answer, _ = split(["</think>\n\n", FINAL])
    assert (reasoning, answer) == ("", FINAL)
