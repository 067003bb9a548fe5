"""The retrieval query of a question in a conversation, without a model call.

A follow-up such as "and how do I undo that?" says nothing searchable about its subject: the subject is
in an earlier question. When a question refers back (a pronoun or demonstrative like "it", "that",
"them"; an opening "and"/"what about"; or too few content words of its own), the key terms of the
earlier questions are added to it, walking back until a question that stands on its own. The
question's own words stay first and are never dropped, so a question that does not refer back is
searched exactly as asked.
"""

from __future__ import annotations

import re
from typing import Sequence

from rag.bm25 import ENGLISH_STOPWORDS

# Words that point at something said before.
REFERRING_WORDS = frozenset(
    "it its it's itself that those these this them they their theirs there one ones same former latter above "
    "previous earlier aforementioned".split()
)
_OPENINGS = ("and ", "but ", "also ", "what about", "how about", "and what", "then ", "so ")
# Words of how a question is asked, not of what it is about.
_QUESTION_WORDS = frozenset(
    "how what why when where which who whom whose do does did doing done can could should would will shall may "
    "might must i me my mine we us our you your yours he she him her his is am are was were be been being have has "
    "had having get got make made use using used way ways want need like just also again please tell explain show "
    "know about there here any some all more most other else very really thing things something anything work "
    "works working go going".split()
)
_WORD = re.compile(r"[^\W_][\w.\-]*[^\W_]|[^\W_]", re.UNICODE)
MIN_OWN_TERMS = 2  # a question with fewer content words than this is taken as a follow-up
MAX_LOOKBACK = 3  # earlier questions consulted at most


def content_words(text: str) -> list[str]:
    """The words that say what ``text`` is about, in order, without repeats (original spelling kept)."""
    seen: set[str] = set()
    words = []
    for word in _WORD.findall(text):
        lower = word.lower()
        if lower in ENGLISH_STOPWORDS or lower in _QUESTION_WORDS or lower in REFERRING_WORDS or lower in seen:
            continue
        if len(lower) == 1 and not lower.isdigit():
            continue
        seen.add(lower)
        words.append(word)
    return words


def refers_back(question: str) -> bool:
    text = " ".join(question.lower().split())
    if text.startswith(_OPENINGS):
        return True
    if any(word in REFERRING_WORDS for word in re.findall(r"[a-z']+", text)):
        return True
    return len(content_words(question)) < MIN_OWN_TERMS


def earlier_questions(history: Sequence[dict]) -> list[str]:
    """The user's earlier messages, most recent first."""
    return [str(m.get("content") or "") for m in reversed(list(history)) if m.get("role") == "user"]


def retrieval_query(question: str, history: Sequence[dict] = ()) -> str:
    """``question``, plus the key terms of the earlier questions it refers back to."""
    question = question.strip()
    if not history or not refers_back(question):
        return question
    own = {word.lower() for word in content_words(question)}
    added: list[str] = []
    for earlier in earlier_questions(history)[:MAX_LOOKBACK]:
        for word in content_words(earlier):
            if word.lower() not in own:
                own.add(word.lower())
                added.append(word)
        if not refers_back(earlier):
            break
    return f"{question} {' '.join(added)}" if added else question
