"""The retrieval query of a follow-up question: the earlier question's key terms when it refers back."""

import pytest

from rag.followup import refers_back, retrieval_query


def turns(*questions):
    history = []
    for question in questions:
        history += [{"role": "user", "content": question}, {"role": "assistant", "content": "An answer."}]
    return history


@pytest.mark.parametrize("question", [
    "And how do I undo that?", "How do I write them back?", "Is it deleted automatically?", "What about Windows?",
    "Why?", "and decompress?",
])
def test_questions_that_refer_back(question):
    assert refers_back(question)


@pytest.mark.parametrize("question", [
    "How do I read an environment variable?", "How do I create a ZIP archive with several files?",
])
def test_questions_that_stand_alone(question):
    assert not refers_back(question)


def test_a_follow_up_gets_the_earlier_questions_key_terms():
    history = turns("How do I compute an HMAC of a message with a secret key?")
    query = retrieval_query("And how do I compare two of them without timing attacks?", history)
    assert query.startswith("And how do I compare two of them without timing attacks?")
    for term in ("HMAC", "message", "secret", "key"):
        assert term in query.split()
    assert "How" not in query.split()[len("And how do I compare two of them without timing attacks?".split()):]


def test_a_standalone_question_is_searched_as_asked():
    history = turns("How do I compute an HMAC of a message?")
    assert retrieval_query("How do I read an environment variable?", history) == "How do I read an environment variable?"
    assert retrieval_query("And how do I undo that?", []) == "And how do I undo that?"


def test_a_chain_of_follow_ups_reaches_the_question_that_named_the_subject():
    history = turns("How do I create a tar archive?", "How do I list its contents?")
    query = retrieval_query("And extract them?", history)
    assert "tar" in query and "archive" in query and "contents" in query


def test_only_user_turns_count():
    history = [{"role": "user", "content": "How do I parse JSON?"},
               {"role": "assistant", "content": "Use xml.etree.ElementTree for XML files."}]
    query = retrieval_query("And write it?", history)
    assert "JSON" in query and "xml" not in query.lower()
