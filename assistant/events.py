"""The events one turn of the pipeline yields, in order. Front ends render these and nothing else.

A turn yields: ``SourcesFound`` -> ``PromptBuilt`` -> ``Queued``* -> ``AnswerStarted`` -> ``Token``... ->
(``Escalated`` -> ``AnswerStarted`` -> ``Token``...)? -> ``Notice``* -> ``TurnFinished``.
A reasoning model's leg streams ``Thinking``... then ``ThinkingFinished`` before its first ``Token``
(thinking is never part of the answer text). When thinking arrives as answer text that only a late, unopened
``</think>`` shows to be thinking, the ``Token``s already streamed are followed by ``AnswerWasThinking`` and
``ThinkingFinished``, then the answer's ``Token``s.
On a model-server failure the turn still ends with ``TurnFinished``, after a ``Notice`` of level
"error" that says what to start or set; the text streamed so far is in ``TurnFinished.text``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from assistant.record import Notice, TurnRecord
from rag.types import ScoredChunk


@dataclass
class SourcesFound:
    query: str
    sources: list[ScoredChunk]
    retrieval_ms: float
    supported: bool  # some source scored at or above the floor


@dataclass
class PromptBuilt:
    sources_used: list[ScoredChunk]  # numbered [1]..[n] in this order in the prompt
    prompt_tokens: int
    prompt_ms: float


@dataclass
class AnswerStarted:
    role: str  # "small" or "large"
    alias: str
    model: str  # the served model id that is answering
    purpose: str = "answer"  # "answer"; "draft" then "refine" in draft-then-refine mode


@dataclass
class Queued:
    """The model server is busy: this leg waits for a slot (repeated while it waits, about every second)."""

    role: str
    position: int  # 1 = next
    waiting: int  # legs waiting, this one included
    expected_wait_s: float | None  # None until the server has finished a request to estimate from


@dataclass
class Token:
    text: str
    role: str


@dataclass
class Thinking:
    """A piece of a reasoning model's thinking, streamed live; shown apart, never in the answer."""

    text: str
    role: str


@dataclass
class AnswerWasThinking:
    """The text streamed as the answer so far was the model's thinking: its server sent the close of a think block
    whose opening was in the prompt's template. ``text`` is all of that thinking; a ThinkingFinished follows, then
    the answer's tokens."""

    text: str
    role: str


@dataclass
class ThinkingFinished:
    role: str
    seconds: float  # first to last thinking token
    answered: bool  # False when the token budget ran out (or the stream ended) while it was thinking


@dataclass
class Escalated:
    """The answer so far (the draft) is set aside; the large model answers next (or refines it)."""

    reason: str  # e.g. "confidence 0.41 < 0.60"
    from_model: str
    to_alias: str
    draft: str
    early: bool  # the small model was stopped before it finished
    purpose: str = "answer"  # "answer", or "refine": the large model works on the draft


__all__ = ["SourcesFound", "PromptBuilt", "Queued", "AnswerStarted", "Token", "Escalated", "Notice", "TurnFinished", "TurnRecord"]


@dataclass
class TurnFinished:
    """The turn's last event: its complete record."""

    record: TurnRecord
