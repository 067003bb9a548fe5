"""The events one turn of the pipeline yields, in order. Front ends render these and nothing else.

A turn yields: ``SourcesFound`` -> ``PromptBuilt`` -> ``AnswerStarted`` -> ``Token``... ->
(``Escalated`` -> ``AnswerStarted`` -> ``Token``...)? -> ``Notice``* -> ``TurnFinished``.
A reasoning model's leg streams ``Thinking``... then ``ThinkingFinished`` before its first ``Token``
(thinking is never part of the answer text).
On a model-server failure the turn still ends with ``TurnFinished``, after a ``Notice`` of level
"error" that says what to start or set; the text streamed so far is in ``TurnFinished.text``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.types import ScoredChunk
from routing.client import Response
from routing.metrics import TurnMetrics


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
    purpose: str = "answer"  # "answer", or "refine" in draft-then-refine mode


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
class ThinkingFinished:
    role: str
    seconds: float  # first to last thinking token
    answered: bool  # False when the token budget ran out (or the stream ended) while it was thinking


@dataclass
class Escalated:
    """The answer so far (the draft) is set aside; the large model answers next."""

    reason: str  # e.g. "confidence 0.41 < 0.60"
    from_model: str
    to_alias: str
    draft: str
    early: bool  # the small model was stopped before it finished


@dataclass
class Notice:
    level: str  # "info", "warning" or "error"
    message: str


@dataclass
class TurnFinished:
    text: str  # the final answer as shown
    answered_by: str | None  # served model id, None when no model answered
    metrics: TurnMetrics
    responses: list[Response] = field(default_factory=list)
    cited: list[int] = field(default_factory=list)  # source numbers cited as [n] in the text
    sources_used: list[ScoredChunk] = field(default_factory=list)
    cancelled: bool = False
    # Retrieval outcome, so a front end can say "nothing in the documents matched" next to the answer.
    supported: bool = True  # some source reached the score floor (or a reference text was given)
    sources_found: int = 0  # sources at or above the floor (reference chunks included)
