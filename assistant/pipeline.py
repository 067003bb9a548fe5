"""One question, one turn: retrieve, build the grounded prompt, answer, maybe escalate. No UI code.

The chat app, the demo page and the evaluation command all run this same code and render the
events of :mod:`assistant.events`. A turn:

1. retrieves from the knowledge base and the user's documents (timed), and/or takes a pasted
   reference text as sources;
2. builds the grounded prompt (timed) with the earlier turns;
3. answers with the model the routing mode picks. In automatic mode the small model streams first
   while :class:`routing.policy.EarlyMonitor` watches it; if it fires, the small stream is closed at
   once (leaving ``async with`` closes the HTTP stream, so the server stops generating) and the large
   model answers. At the end :func:`routing.policy.assess` decides on the finished answer. In
   draft-then-refine mode the large model gets the draft with the sources and corrects it.

Failures never raise out of :meth:`Pipeline.run`: they end the turn with a ``Notice`` and a
``TurnFinished`` that keeps whatever text there is. ``asyncio.CancelledError`` (the user pressed
stop) is the exception: it propagates after the upstream stream is closed, and nothing more is
yielded.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol, Sequence

from assistant.events import (
    AnswerStarted, Escalated, Notice, PromptBuilt, SourcesFound, Thinking, ThinkingFinished, Token, TurnFinished,
)
from assistant.settings import RoutingMode
from rag.index import asearch_many, fuse_rankings
from rag.prompt import build_grounded_messages, cited_numbers, neutralise, reference_text_sources
from rag.tokens import count_tokens
from rag.types import ScoredChunk
from routing.client import ModelClient, ModelServerError, Response
from routing.reasoning import REASONING
from routing.metrics import LegMetrics, Price, TurnMetrics, prices_from_settings
from routing.policy import EarlyMonitor, RoutingOptions, assess, refine_reason, token_confidence

REFINE_INSTRUCTION = (
    "Above is a draft answer to my question. Check it against the numbered sources: correct anything "
    "the sources do not support, add what it missed, and keep the [n] citations. If the sources do not "
    "contain the answer, say so plainly. Reply with the improved answer only, not with comments on the draft."
)


class Retriever(Protocol):
    """What :func:`rag.index.asearch_many` searches: a KnowledgeBase, an upload's ChunkIndex."""

    def search(self, query: str, k: int) -> list[ScoredChunk]: ...


@dataclass
class _Leg:
    """One model call of the turn, with what became of it."""

    role: str
    alias: str
    purpose: str = "answer"
    response: Response | None = None
    outcome: str = "answered"
    reason: str | None = None


@dataclass
class _Turn:
    started: float
    metrics: TurnMetrics = field(default_factory=TurnMetrics)
    legs: list[_Leg] = field(default_factory=list)
    sources_found: int = 0
    supported: bool = False


class Pipeline:
    def __init__(self, settings, client: ModelClient, knowledge: Retriever | None = None):
        self.settings = settings
        self.client = client
        self.knowledge = knowledge
        self.prices = prices_from_settings(settings)

    def aliases(self) -> dict[str, str]:
        return {"small": self.settings.small_model, "large": self.settings.large_model}

    # ------------------------------------------------------------------------------------ turn
    async def run(
        self,
        question: str,
        *,
        history: Sequence[dict] = (),
        options: RoutingOptions | None = None,
        documents: Retriever | Sequence[Retriever] | None = None,
        reference_text: str | None = None,
        retrieve: bool | None = None,
    ) -> AsyncIterator[object]:
        """Yield the events of one turn (see :mod:`assistant.events` for their order).

        ``documents``: the user's uploads (one retriever, e.g. a DocumentSet, or a list), searched
        with the knowledge base and merged by :func:`rag.index.asearch_many` (rank fusion; each
        chunk keeps its own BM25 score). ``reference_text``: pasted text whose chunks are sources
        [1].. in reading order; with it, retrieval runs only if ``retrieve=True`` (default: retrieve
        when there is no reference text). Only sources at or above ``min_source_score`` go into
        the prompt.
        """
        options = options or RoutingOptions.from_settings(self.settings)
        turn = _Turn(started=time.perf_counter())
        aliases = self.aliases()

        # 1. sources
        t0 = time.perf_counter()
        should_retrieve = retrieve if retrieve is not None else not reference_text
        retrieved: list[ScoredChunk] = []
        # The conversation's documents first: rag's fusion gives ties to the retriever listed first.
        if documents is None:
            documents = []
        elif hasattr(documents, "search"):  # one retriever (a DocumentSet) rather than a list of them
            documents = [documents]
        notices: list[Notice] = []
        upload_hits: list[ScoredChunk] = []
        knowledge_hits: list[ScoredChunk] = []
        if should_retrieve:
            try:
                if documents:
                    upload_hits = await asearch_many(documents, question, self.settings.top_k)
                if self.knowledge is not None:
                    knowledge_hits = await asearch_many([self.knowledge], question, self.settings.top_k)
            except Exception as exc:  # a broken index must not lose the turn: answer without sources
                notices.append(Notice("warning", f"The document search failed ({exc}); answering without sources."))
        retrieved = fuse_rankings([upload_hits, knowledge_hits], self.settings.top_k)
        reference = reference_text_sources(reference_text, self.settings.chunk_tokens) if reference_text else []
        turn.metrics.retrieval_ms = (time.perf_counter() - t0) * 1000
        # The score floor is calibrated on the shared knowledge base. A conversation's uploads form a tiny
        # collection whose BM25 scores run far lower (idf from a handful of chunks), and the user chose them
        # for this conversation: any match of the question's terms counts as support there.
        supporting = {id(s) for s in upload_hits if s.score > 0}
        supporting |= {id(s) for s in knowledge_hits if s.score >= options.min_source_score}
        supported_retrieved = [s for s in retrieved if id(s) in supporting]
        turn.supported = bool(reference) or bool(supported_retrieved)
        turn.sources_found = len(reference) + len(supported_retrieved)
        yield SourcesFound(
            query=question,
            sources=reference + retrieved,
            retrieval_ms=turn.metrics.retrieval_ms,
            supported=turn.supported,
        )

        # 2. prompt: only sources that support the question; none -> the prompt says "say so".
        t0 = time.perf_counter()
        prompt_sources = reference + supported_retrieved
        grounded = build_grounded_messages(
            question,
            prompt_sources,
            history=list(history),
            context_window=self.settings.context_window,
            max_answer_tokens=options.max_tokens,
            history_budget=self.settings.history_token_budget,
        )
        turn.metrics.prompt_ms = (time.perf_counter() - t0) * 1000
        sources_used = grounded.sources_used
        yield PromptBuilt(sources_used=sources_used, prompt_tokens=grounded.prompt_tokens, prompt_ms=turn.metrics.prompt_ms)

        # 3. answer
        mode = RoutingMode(options.mode)
        final: _Leg | None = None
        if mode is RoutingMode.LARGE_ONLY:
            large = _Leg("large", aliases["large"])
            turn.legs.append(large)
            async with aclosing(self._answer(large, grounded.messages, options, None, logprobs=False)) as leg_events:
                async for event in leg_events:
                    yield event
            final = large
            if large.outcome == "failed":
                notices.append(Notice("error", large.reason or "The large model failed."))
            turn.metrics.confidence = _confidence(large, options)
        else:
            small = _Leg("small", aliases["small"])
            turn.legs.append(small)
            # Escalating to the very model that just answered (the embedded model serves both roles until a
            # second one is configured) would only double the wait: say what would have happened instead.
            same_model = await self._same_model_for_both(aliases) if mode is RoutingMode.AUTOMATIC else None
            monitor = (
                EarlyMonitor(options, supported=turn.supported)
                if mode in (RoutingMode.AUTOMATIC, RoutingMode.DRAFT_THEN_REFINE) and not same_model
                else None
            )
            # Token logprobs halve llama.cpp's decode speed: ask for them only when a routing decision reads them.
            decides = mode is RoutingMode.DRAFT_THEN_REFINE or (mode is RoutingMode.AUTOMATIC and not same_model)
            async with aclosing(self._answer(small, grounded.messages, options, monitor, logprobs=decides)) as leg_events:
                async for event in leg_events:
                    yield event
            final = small
            if small.outcome == "failed":
                notices.append(Notice("error", small.reason or "The small model failed."))
            else:
                escalation, early, purpose = self._decide(mode, small, monitor, prompt_sources, options, turn)
                if escalation and same_model:
                    notices.append(Notice(
                        "info",
                        f"Not escalated ({escalation}): the large role is served by the same model, {same_model}. "
                        "Configure a larger model to let the router escalate.",
                    ))
                elif escalation:
                    small.outcome, small.reason = "escalated", escalation
                    turn.metrics.escalation_reason = escalation
                    yield Escalated(
                        reason=escalation,
                        from_model=small.response.model,
                        to_alias=aliases["large"],
                        draft=small.response.text,
                        early=early,
                    )
                    large = _Leg("large", aliases["large"], purpose=purpose)
                    turn.legs.append(large)
                    messages = grounded.messages
                    if purpose == "refine":
                        messages = self._refine_messages(question, prompt_sources, history, small.response.text, options)
                    async with aclosing(self._answer(large, messages, options, None, logprobs=False)) as leg_events:
                        async for event in leg_events:
                            yield event
                    if large.outcome == "failed":
                        notices.append(
                            Notice(
                                "warning",
                                f"The large model ({aliases['large']}) could not answer, so the small model's "
                                f"answer is kept. {large.reason}",
                            )
                        )
                    else:
                        final = large

        for notice in notices:
            yield notice

        text = final.response.text if final and final.response else ""
        answered_by = final.response.model if final and final.response and final.response.text else None
        turn.metrics.answered_by = answered_by
        turn.metrics.legs = [
            LegMetrics.from_response(leg.role, leg.response, self._price(leg), leg.outcome, leg.reason)
            for leg in turn.legs
            if leg.response is not None
        ]
        turn.metrics.total_ms = (time.perf_counter() - turn.started) * 1000
        yield TurnFinished(
            text=text,
            answered_by=answered_by,
            metrics=turn.metrics,
            responses=[leg.response for leg in turn.legs if leg.response is not None],
            cited=cited_numbers(text),
            sources_used=sources_used,
            supported=turn.supported,
            sources_found=turn.sources_found,
        )

    # ------------------------------------------------------------------------------- helpers
    async def _same_model_for_both(self, aliases: dict[str, str]) -> str | None:
        """The served id when both roles resolve to the same model, else None (also when unresolvable)."""
        try:
            small = await self.client.resolve(aliases["small"])
            large = await self.client.resolve(aliases["large"])
        except ModelServerError:
            return None
        return small if small == large else None

    def _price(self, leg: _Leg) -> Price:
        # A request that failed before its first token (refused, unreachable) is not billed.
        if leg.outcome == "failed" and leg.response.timings.first_token is None:
            return Price(0.0, 0.0)
        return self.prices[leg.role]

    def _decide(self, mode, small: _Leg, monitor, sources, options, turn) -> tuple[str | None, bool, str]:
        """(escalation reason or None, stopped early, purpose of the large leg)."""
        response = small.response
        if monitor is not None and monitor.fired:
            turn.metrics.confidence = token_confidence(response.token_logprobs, options.confidence_quantile)
            return monitor.fired, True, "answer"
        assessment = assess(response.text, response.token_logprobs, sources, options, supported=turn.supported)
        turn.metrics.confidence = assessment.confidence
        if mode is RoutingMode.AUTOMATIC and assessment.escalate:
            return assessment.reason, False, "answer"
        if mode is RoutingMode.DRAFT_THEN_REFINE:
            reason = refine_reason(response.text, assessment, options)
            if reason:
                return reason, False, "refine"
        return None, False, "answer"

    def _refine_messages(self, question, sources, history, draft: str, options: RoutingOptions) -> list[dict]:
        """The grounded prompt, then the draft as the assistant's turn, then the request to improve it."""
        extra = count_tokens(draft) + count_tokens(REFINE_INSTRUCTION) + 16
        grounded = build_grounded_messages(
            question,
            sources,
            history=list(history),
            context_window=self.settings.context_window,
            max_answer_tokens=options.max_tokens + extra,
            history_budget=self.settings.history_token_budget,
        )
        return grounded.messages + [
            {"role": "assistant", "content": neutralise(draft)},
            {"role": "user", "content": REFINE_INSTRUCTION},
        ]

    async def _answer(
        self, leg: _Leg, messages: list[dict], options: RoutingOptions, monitor, *, logprobs: bool
    ) -> AsyncIterator[object]:
        """Stream one leg as AnswerStarted + (Thinking... ThinkingFinished)? + Tokens; record its Response and
        outcome on ``leg``.

        The large role gets its own token budget and the reasoning effort. Thinking is streamed as
        ``Thinking`` events and kept out of the answer text (and so out of the history, the citation
        and length checks and the early monitor). An answer cut by its budget gets a warning notice; a
        leg that spent its whole budget thinking counts as failed, so a cascade keeps the small answer.
        A server failure is recorded (outcome "failed", reason = the client's message), not raised.
        CancelledError propagates; the ``async with`` has closed the stream by then.
        """
        large = leg.role == "large"
        budget = options.large_max_tokens if large else options.max_tokens
        stream = self.client.stream(
            leg.alias, messages, temperature=options.temperature, max_tokens=budget, logprobs=logprobs,
            reasoning_effort=(options.reasoning_effort or None) if large else None,
        )
        leg.response = stream.response
        thinking_open = False
        try:
            async with stream:
                yield AnswerStarted(role=leg.role, alias=leg.alias, model=stream.response.model, purpose=leg.purpose)
                async for kind, text in stream.parts():
                    if kind == REASONING:
                        thinking_open = True
                        yield Thinking(text=text, role=leg.role)
                        continue
                    if thinking_open:
                        thinking_open = False
                        yield _thinking_finished(leg, answered=True)
                    yield Token(text=text, role=leg.role)
                    if monitor is not None and monitor.feed(text, stream.response.token_logprobs):
                        break  # leaving the async with closes the upstream stream
        except asyncio.CancelledError:
            leg.outcome = "cancelled"
            raise
        except ModelServerError as exc:
            leg.outcome, leg.reason = "failed", str(exc)
            if exc.partial is not None:
                leg.response = exc.partial
            if leg.response.error is None:
                leg.response.error = str(exc)
        if thinking_open:
            yield _thinking_finished(leg, answered=False)
        response = leg.response
        if leg.outcome != "failed" and response.truncated:
            if not response.text.strip():
                leg.outcome = "failed"
                leg.reason = (f"{response.model} spent its whole budget of {budget} tokens thinking and gave no "
                              "answer (raise the large model's token budget or lower its reasoning effort)")
            else:
                yield Notice("warning", f"The answer of {response.model} was cut off by its budget of {budget} "
                                        "tokens; it is incomplete.")


def _thinking_finished(leg: _Leg, *, answered: bool) -> ThinkingFinished:
    seconds = leg.response.timings.thinking_s or 0.0
    return ThinkingFinished(role=leg.role, seconds=seconds, answered=answered)


def _confidence(leg: _Leg, options: RoutingOptions) -> float | None:
    if leg.response is None:
        return None
    return token_confidence(leg.response.token_logprobs, options.confidence_quantile)
