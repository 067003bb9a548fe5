"""One question, one turn: retrieve, build the grounded prompt, answer, maybe escalate. No UI code.

The chat app, the demo page and the command-line tools all run this same code and render the events
of :mod:`assistant.events`; the last one carries the turn's complete :class:`~assistant.record.TurnRecord`.
A turn has three stages, each its own method:

1. :meth:`Pipeline.retrieve`: the knowledge base and the user's documents (timed), and/or a pasted
   reference text as sources;
2. :meth:`Pipeline.build_prompt`: the grounded prompt (timed) with the earlier turns;
3. :meth:`Pipeline.answer_legs`: the model calls a :class:`routing.router.Router` plans and decides
   on, every one streamed by the one helper :meth:`Pipeline.stream_leg`. In draft-then-refine mode the
   large model gets the very messages the draft was written from (the same numbered sources), then
   the draft and the request to improve it.

After the answer its citations are resolved against the numbered sources, and uncited sentences a
source clearly supports get that source attributed by the app (:mod:`rag.citations`).

Failures never raise out of :meth:`Pipeline.run`: they end the turn with a ``Notice`` and a
``TurnFinished`` whose record keeps whatever text there is. ``asyncio.CancelledError`` (the user
pressed stop) is the exception: it propagates after the upstream stream is closed, and nothing more
is yielded.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import AsyncIterator, Sequence

from assistant.events import (
    AnswerStarted, AnswerWasThinking, Escalated, Notice, PromptBuilt, Queued, SourcesFound, Thinking, ThinkingFinished,
    Token, TurnFinished,
)
from assistant.record import TurnRecord
from rag.citations import resolve_citations
from rag.followup import retrieval_query
from rag.index import Retriever
from rag.prompt import GroundedPrompt, build_grounded_messages, neutralise, reference_text_sources
from rag.tokens import count_message_tokens
from rag.types import ScoredChunk
from routing.client import ModelClient, ModelServerError, Response
from routing.metrics import LegMetrics, Price, TurnMetrics, prices_from_settings
from routing.options import RoutingOptions
from routing.policy import looks_declined
from routing.reasoning import REASONING, WAS_THINKING
from routing.router import ANSWERED, FAILED, NOT_ESCALATED, LegPlan, RoutingDecision, Router

REFINE_INSTRUCTION = (
    "Above is a draft answer to my question. Check it against the numbered sources: correct anything "
    "the sources do not support, add what it missed, and keep the [n] citations. If the sources do not "
    "contain the answer, say so plainly. Reply with the improved answer only, not with comments on the draft."
)
MIN_REFINE_TOKENS = 64  # less room than this for the refined answer: the draft is kept
# A search that took less than this last time runs on the event loop: handing it to a worker thread and
# back cost more than the search itself (15-90 ms on a loaded 2-core machine, for a 1 ms search).
INLINE_SEARCH_MS = 3.0


@dataclass
class Retrieval:
    """What the retrieval stage found."""

    query: str  # what was searched: the question, or with an earlier question's key terms for a follow-up
    shown: list[ScoredChunk]  # reference chunks, then the retrieved chunks (what the user sees)
    supporting: list[ScoredChunk]  # those that count as support: they go into the prompt
    supported: bool
    retrieval_ms: float
    notices: list[Notice] = field(default_factory=list)


@dataclass
class PreparedPrompt:
    """Stages 1 and 2 of a turn (see :meth:`Pipeline.prepare`): what a model would be sent."""

    sources: SourcesFound
    prompt: PromptBuilt
    messages: list[dict]  # OpenAI chat messages: system, history..., user
    notices: list[Notice] = field(default_factory=list)


@dataclass
class _Leg:
    """One model call of the turn, with what became of it."""

    role: str
    alias: str
    purpose: str = "answer"
    response: Response | None = None
    outcome: str = "answered"  # "answered", "escalated", "drafted", "cancelled", "failed"
    reason: str | None = None
    error_kind: str | None = None  # the client's error class when it failed


class Pipeline:
    def __init__(self, settings, client: ModelClient, knowledge: Retriever | None = None):
        self.settings = settings
        self.client = client
        self.knowledge = knowledge
        self.prices = prices_from_settings(settings)
        self.last_search_ms = float("inf")  # how long the last search itself took (inline or in a thread)
        self.inline_search_ms = INLINE_SEARCH_MS

    def aliases(self) -> dict[str, str]:
        return {"small": self.settings.small_model, "large": self.settings.large_model}

    # ------------------------------------------------------------------------------------ turn
    async def run(
        self,
        question: str,
        *,
        history: Sequence[dict] = (),
        options: RoutingOptions | None = None,
        documents: Retriever | None = None,
        reference_text: str | None = None,
        retrieve: bool | None = None,
    ) -> AsyncIterator[object]:
        """Yield the events of one turn (see :mod:`assistant.events` for their order).

        ``documents``: the conversation's DocumentSet, whose search covers the shared knowledge base and
        the conversation's uploads in one scoped search (without it, the knowledge base alone is searched).
        ``reference_text``: pasted text whose chunks are sources [1].. in reading order; with it,
        retrieval runs only if ``retrieve=True`` (default: retrieve when there is no reference text).
        Only sources that count as support go into the prompt.
        """
        options = options or RoutingOptions.from_settings(self.settings)
        started = time.perf_counter()
        metrics = TurnMetrics()

        found = await self.retrieve(
            question, options, history=history, documents=documents, reference_text=reference_text,
            retrieve=retrieve if retrieve is not None else not reference_text,
        )
        metrics.retrieval_ms = found.retrieval_ms
        yield SourcesFound(query=found.query, sources=found.shown, retrieval_ms=found.retrieval_ms, supported=found.supported)

        t0 = time.perf_counter()
        prompt = self.build_prompt(question, found.supporting, history, options)
        metrics.prompt_ms = (time.perf_counter() - t0) * 1000
        yield PromptBuilt(sources_used=prompt.sources_used, prompt_tokens=prompt.prompt_tokens, prompt_ms=metrics.prompt_ms)

        same_model = await self._same_model_for_both() if Router.needs_served_models(options) else None
        router = Router(options, supported=found.supported, sources=prompt.sources_used, same_model=same_model)
        legs: list[_Leg] = []
        notices = list(found.notices)
        async with aclosing(self.answer_legs(router, prompt, options, legs, notices)) as leg_events:
            async for event in leg_events:
                yield event
        for notice in notices:
            yield notice

        metrics.total_ms = (time.perf_counter() - started) * 1000
        yield TurnFinished(
            self._record(question, prompt.sources_used, router.decision, legs, metrics, notices,
                         supported=found.supported, sources_found=len(found.supporting))
        )

    async def run_messages(
        self, messages: list[dict], *, role: str, alias: str | None = None, options: RoutingOptions | None = None,
        price: Price | None = None, logprobs: bool = False,
    ) -> AsyncIterator[object]:
        """One model call with the messages as given (no retrieval, no routing), as events and a record.

        For ``compare`` and ``bench``. ``role`` names the leg (``small``/``large`` use their alias and
        price from the settings); ``alias`` overrides the model asked for.
        """
        options = options or RoutingOptions.from_settings(self.settings)
        started = time.perf_counter()
        leg = _Leg(role, alias or self.aliases().get(role, role))
        decision = RoutingDecision(mode="direct", legs=[(role, "answer")])
        notices: list[Notice] = []
        plan = LegPlan(role, "answer", logprobs=logprobs, watch=False)
        async with aclosing(self.stream_leg(leg, plan, messages, options, price=price, notices=notices)) as leg_events:
            async for event in leg_events:
                yield event
        if leg.outcome == "failed":
            decision.action, decision.note = FAILED, leg.reason
            notices.append(Notice("error", leg.reason or "The model failed.", leg.error_kind))
        for notice in notices:
            yield notice
        metrics = TurnMetrics(total_ms=(time.perf_counter() - started) * 1000)
        yield TurnFinished(self._record(messages[-1]["content"] if messages else "", [], decision, [leg], metrics,
                                        notices, supported=False, sources_found=0, prices={role: price}))

    async def prepare(
        self,
        question: str,
        *,
        history: Sequence[dict] = (),
        options: RoutingOptions | None = None,
        documents: Retriever | None = None,
        reference_text: str | None = None,
        retrieve: bool | None = None,
    ) -> PreparedPrompt:
        """Stages 1 and 2 of :meth:`run` only, the same code: the sources and the grounded prompt, no model
        call. For a front end that generates elsewhere (the demo page's in-browser engine)."""
        options = options or RoutingOptions.from_settings(self.settings)
        found = await self.retrieve(
            question, options, history=history, documents=documents, reference_text=reference_text,
            retrieve=retrieve if retrieve is not None else not reference_text,
        )
        t0 = time.perf_counter()
        prompt = self.build_prompt(question, found.supporting, history, options)
        prompt_ms = (time.perf_counter() - t0) * 1000
        return PreparedPrompt(
            sources=SourcesFound(query=found.query, sources=found.shown, retrieval_ms=found.retrieval_ms,
                                 supported=found.supported),
            prompt=PromptBuilt(sources_used=prompt.sources_used, prompt_tokens=prompt.prompt_tokens, prompt_ms=prompt_ms),
            messages=prompt.messages,
            notices=list(found.notices),
        )

    # ------------------------------------------------------------------------------ stage 1: sources
    async def retrieve(
        self,
        question: str,
        options: RoutingOptions,
        *,
        history: Sequence[dict] = (),
        documents: Retriever | None,
        reference_text: str | None,
        retrieve: bool,
    ) -> Retrieval:
        """One scoped search: a conversation's DocumentSet searches the shared knowledge and its own uploads
        together, on one set of collection statistics, so every score is on the same scale (without one, the
        knowledge base alone is searched). The query is the question, with the earlier question's key terms
        when it refers back to it (:func:`rag.followup.retrieval_query`)."""
        t0 = time.perf_counter()
        retriever = documents if documents is not None else self.knowledge
        query = retrieval_query(question, history) if retrieve else question
        notices: list[Notice] = []
        retrieved: list[ScoredChunk] = []
        if retrieve and retriever is not None:
            try:
                retrieved = await self._search(retriever, query)
            except Exception as exc:  # a broken index must not lose the turn: answer without sources
                notices.append(Notice("warning", f"The document search failed ({exc}); answering without sources."))
        reference = reference_text_sources(reference_text, self.settings.chunk_tokens) if reference_text else []
        supporting = reference + [s for s in retrieved if s.score >= options.min_source_score]
        return Retrieval(
            query=query,
            shown=reference + retrieved,
            supporting=supporting,
            supported=bool(supporting),
            retrieval_ms=(time.perf_counter() - t0) * 1000,
            notices=notices,
        )

    def warm_up_search(self) -> None:
        """One search of the knowledge base for words it holds, once it has loaded (in the loading thread): the
        first question's search then knows whether it is fast enough for the event loop, and runs warm."""
        chunks = self.knowledge.chunks if self.knowledge is not None else ()
        if not chunks:
            return
        t0 = time.perf_counter()
        self.knowledge.search(" ".join(chunks[0].text.split()[:8]), self.settings.top_k)
        self.last_search_ms = (time.perf_counter() - t0) * 1000

    async def _search(self, retriever: Retriever, query: str) -> list[ScoredChunk]:
        """Small indexes are searched on the event loop, large ones in a thread so other chats keep streaming;
        which one it is, the previous search's own time says."""

        def timed() -> list[ScoredChunk]:
            t0 = time.perf_counter()
            try:
                return retriever.search(query, self.settings.top_k)
            finally:
                self.last_search_ms = (time.perf_counter() - t0) * 1000

        if self.last_search_ms < self.inline_search_ms:
            return timed()
        return await asyncio.to_thread(timed)

    # ------------------------------------------------------------------------------ stage 2: prompt
    def build_prompt(
        self, question: str, sources: list[ScoredChunk], history: Sequence[dict], options: RoutingOptions
    ) -> GroundedPrompt:
        """The grounded prompt: only sources that support the question; none -> the prompt says "say so"."""
        return build_grounded_messages(
            question,
            sources,
            history=list(history),
            context_window=self.settings.context_window,
            max_answer_tokens=options.max_tokens,
            history_budget=self.settings.history_token_budget,
        )

    def refine_messages(self, prompt: GroundedPrompt, draft: str, options: RoutingOptions) -> tuple[list[dict], int] | None:
        """The draft's own messages (same numbered sources), the draft, the request to improve it, and the
        room left for the refined answer; None when too little room is left even without the history."""
        tail = [{"role": "assistant", "content": neutralise(draft)}, {"role": "user", "content": REFINE_INSTRUCTION}]
        candidates = [prompt.messages]
        if len(prompt.messages) > 2:  # earlier turns are the first thing to give up
            candidates.append([prompt.messages[0], prompt.messages[-1]])
        for messages in candidates:
            room = self.settings.context_window - count_message_tokens(messages + tail)
            if room >= MIN_REFINE_TOKENS:
                return messages + tail, min(options.large_max_tokens, room)
        return None

    # ------------------------------------------------------------------------------ stage 3: answer
    async def answer_legs(
        self, router: Router, prompt: GroundedPrompt, options: RoutingOptions, legs: list[_Leg], notices: list[Notice]
    ) -> AsyncIterator[object]:
        """Stream the legs the router plans; record them on ``legs`` and what went wrong on ``notices``."""
        aliases = self.aliases()
        plan: LegPlan | None = router.first_leg()
        messages, max_tokens = prompt.messages, None  # None: the role's own budget
        while plan is not None:
            leg = _Leg(plan.role, aliases[plan.role], plan.purpose)
            legs.append(leg)
            async with aclosing(self.stream_leg(leg, plan, messages, options, router=router, max_tokens=max_tokens,
                                                  notices=notices)) as events:
                async for event in events:
                    yield event
            first = len(legs) == 1
            if leg.outcome == "failed":
                router.leg_failed(first, leg.reason or f"the {leg.role} model failed")
                notices.append(self._failure_notice(leg, first, legs))
                return
            if not first:
                if leg.purpose == "refine":
                    router.refined(legs[0].response.text, leg.response.text)
                return
            draft = leg.response.text
            plan = router.after_answer(draft, leg.response.token_logprobs)
            if router.decision.action == NOT_ESCALATED:
                notices.append(Notice("info", router.decision.describe()))
            if plan is None:
                return
            if plan.purpose == "refine":
                refine = self.refine_messages(prompt, draft, options)
                if refine is None:
                    router.keep_draft("no room left in the context window for a refined answer")
                    return
                messages, max_tokens = refine
            leg.outcome = "drafted" if plan.purpose == "refine" else "escalated"
            leg.reason = router.decision.reason
            yield Escalated(
                reason=router.decision.reason or "",
                from_model=leg.response.model,
                to_alias=aliases[plan.role],
                draft=draft,
                early=router.decision.early,
                purpose=plan.purpose,
            )

    async def stream_leg(
        self,
        leg: _Leg,
        plan: LegPlan,
        messages: list[dict],
        options: RoutingOptions,
        *,
        router: Router | None = None,
        max_tokens: int | None = None,
        price: Price | None = None,
        notices: list[Notice] | None = None,
    ) -> AsyncIterator[object]:
        """Stream one model call as AnswerStarted + (Thinking... ThinkingFinished)? + Tokens; record its Response
        and outcome on ``leg``.

        With ``plan.watch``, each delta goes to ``router.watch``; a reason back stops the stream (leaving
        the ``async with`` closes the HTTP stream, so the server stops generating). The large role gets
        its own token budget and the reasoning effort. Thinking is streamed as ``Thinking`` events and
        kept out of the answer text (and so out of the history, the citation and length checks and the
        router's watch). An answer cut by its budget gets a warning notice; a leg that spent its whole
        budget thinking counts as failed, so a cascade keeps the small answer. A server failure is
        recorded (outcome "failed", reason = the client's message), not raised. CancelledError
        propagates; the stream is closed by then.
        """
        large = leg.role == "large"
        budget = max_tokens or (options.large_max_tokens if large else options.max_tokens)
        stream = self.client.stream(
            leg.alias, messages, temperature=options.temperature, max_tokens=budget, logprobs=plan.logprobs,
            reasoning_effort=(options.reasoning_effort or None) if large else None,
        )
        leg.response = stream.response
        # Wait for a slot of the model server here, not inside it: the wait is visible, a stopped turn leaves
        # the line without reaching the server, and the first-token limit starts when the request is sent.
        ticket = self.client.queue.ticket()
        thinking_open = False
        try:
            async for status in ticket.wait(update_every_s=1.0):
                yield Queued(role=leg.role, position=status.position, waiting=status.waiting,
                             expected_wait_s=status.expected_wait_s)
            async with stream:
                yield AnswerStarted(role=leg.role, alias=leg.alias, model=stream.response.model, purpose=leg.purpose)
                async for kind, text in stream.parts():
                    if kind == REASONING:
                        thinking_open = True
                        yield Thinking(text=text, role=leg.role)
                        continue
                    if kind == WAS_THINKING:
                        if router is not None:
                            router.answer_restarted()
                        yield AnswerWasThinking(text=text, role=leg.role)
                        yield _thinking_finished(leg, answered=True)
                        continue
                    if thinking_open:
                        thinking_open = False
                        yield _thinking_finished(leg, answered=True)
                    yield Token(text=text, role=leg.role)
                    if plan.watch and router is not None and router.watch(text, stream.response.token_logprobs):
                        break  # leaving the async with closes the upstream stream
        except asyncio.CancelledError:
            leg.outcome = "cancelled"
            raise
        except ModelServerError as exc:
            leg.outcome, leg.reason, leg.error_kind = "failed", str(exc), type(exc).__name__
            if exc.partial is not None:
                leg.response = exc.partial
            if leg.response.error is None:
                leg.response.error = str(exc)
        finally:
            ticket.release()
        if thinking_open:
            yield _thinking_finished(leg, answered=False)
        response = leg.response
        if leg.outcome != "failed" and response.truncated:
            if not response.text.strip():
                leg.outcome = "failed"
                leg.reason = (f"{response.model} spent its whole budget of {budget} tokens thinking and gave no "
                              "answer (raise the large model's token budget or lower its reasoning effort)")
            elif notices is not None:
                notices.append(Notice("warning", f"The answer of {response.model} was cut off by its budget of "
                                                 f"{budget} tokens; it is incomplete."))

    def _failure_notice(self, leg: _Leg, first: bool, legs: list[_Leg]) -> Notice:
        if first:
            return Notice("error", leg.reason or f"The {leg.role} model failed.", leg.error_kind)
        kept = "draft" if leg.purpose == "refine" else "small model's answer"
        return Notice("warning", f"The large model ({leg.alias}) could not answer, so the {kept} is kept. {leg.reason}",
                      leg.error_kind)

    # ------------------------------------------------------------------------------ the record
    def _record(
        self, question, sources, decision: RoutingDecision, legs: list[_Leg], metrics: TurnMetrics, notices,
        *, supported: bool, sources_found: int, prices: dict | None = None,
    ) -> TurnRecord:
        answering = next((leg for leg in reversed(legs) if leg.outcome == "answered"), legs[0] if legs else None)
        response = answering.response if answering else None
        text = response.text if response else ""
        # Only a finished answer is "answered by" a model; a cut-short one is the model's partial text.
        answered_by = response.model if response and text and answering.outcome != "failed" else None
        metrics.answered_by = answered_by
        metrics.escalation_reason = decision.reason if decision.escalated else None
        metrics.confidence = decision.confidence
        metrics.legs = [
            LegMetrics.from_response(leg.role, leg.response, self._price(leg, prices), leg.outcome, leg.reason)
            for leg in legs
            if leg.response is not None
        ]
        return TurnRecord(
            question=question,
            text=text,
            answered_by=answered_by,
            answered_role=answering.role if answered_by else None,
            answered_alias=answering.alias if answered_by else None,
            sources=list(sources),
            citations=resolve_citations(text, sources, skip_sentence=looks_declined),
            routing=decision,
            metrics=metrics,
            supported=supported,
            sources_found=sources_found,
            notices=list(notices),
            responses=[leg.response for leg in legs if leg.response is not None],
        )

    async def _same_model_for_both(self) -> str | None:
        """The served id when both roles resolve to the same model, else None (also when unresolvable)."""
        aliases = self.aliases()
        try:
            small = await self.client.resolve(aliases["small"])
            large = await self.client.resolve(aliases["large"])
        except ModelServerError:
            return None
        return small if small == large else None

    def _price(self, leg: _Leg, prices: dict | None = None) -> Price:
        # A request that failed before its first token (refused, unreachable) is not billed.
        if leg.outcome == "failed" and leg.response.timings.first_token is None:
            return Price(0.0, 0.0)
        price = (prices or {}).get(leg.role) or self.prices.get(leg.role)
        return price or Price(0.0, 0.0)


def _thinking_finished(leg: _Leg, *, answered: bool) -> ThinkingFinished:
    seconds = leg.response.timings.thinking_s or 0.0
    return ThinkingFinished(role=leg.role, seconds=seconds, answered=answered)
