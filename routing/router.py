"""The routing decision of one turn, in one place.

The pipeline asks a :class:`Router` three things and does what it says:

1. before streaming, :meth:`Router.first_leg`: which model answers first, with or without token
   logprobs, and whether the stream is watched (and may be stopped early);
2. while that leg streams, :meth:`Router.watch` after each delta: a reason to stop it now, or None;
3. after it, :meth:`Router.after_answer`: the next leg (escalate, or refine a draft), or None to keep
   the answer. :meth:`Router.leg_failed` and :meth:`Router.refined` record how a second leg ended.

:attr:`Router.decision` is the outcome as data (:class:`RoutingDecision`): the mode, every signal
measured with its value and threshold, what was done and why. The signals themselves are computed by
:mod:`routing.policy`; this module only combines them. No I/O here: whether both roles are served by
the same model is found out by the caller and passed in.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Sequence

from rag.citations import citation_numbers
from routing.options import RoutingMode, RoutingOptions
from routing.policy import EarlyMonitor, Signal, assess, draft_length_signal

# What the router did, as RoutingDecision.action says it.
ANSWERED = "answered"  # the first leg's answer is the answer
ESCALATED = "escalated"  # the large model answered instead (after the small answer finished)
ESCALATED_EARLY = "escalated early"  # the small stream was stopped, the large model answered
NOT_ESCALATED = "not escalated"  # a signal fired but the large role is the same model
REFINED = "refined"  # draft-then-refine: the large model refined the draft
DRAFT_KEPT = "draft kept"  # draft-then-refine: the draft needed no refining (or refining failed)
KEPT_SMALL = "kept small answer"  # the large model failed; the small answer stands
FAILED = "failed"  # no model answered


@dataclass(frozen=True)
class LegPlan:
    """One model call the router wants."""

    role: str  # "small" or "large"
    purpose: str  # "answer", "draft" (draft-then-refine's first leg) or "refine"
    logprobs: bool  # ask the server for token logprobs (they slow llama.cpp down: only when read)
    watch: bool  # feed the stream to Router.watch, which may stop it


@dataclass
class RefineOutcome:
    """Draft-then-refine: the draft, and what the refining changed (or why the draft was kept)."""

    draft: str
    refined: bool
    reason: str  # why it was refined, or why the draft was kept
    words_added: int = 0
    words_removed: int = 0
    citations_before: list[int] = field(default_factory=list)
    citations_after: list[int] = field(default_factory=list)

    @property
    def summary(self) -> str:
        if not self.refined:
            return f"draft kept: {self.reason}"
        parts = [f"{self.words_added} words added, {self.words_removed} removed"]
        if self.citations_before != self.citations_after:
            before = ", ".join(map(str, self.citations_before)) or "none"
            after = ", ".join(map(str, self.citations_after)) or "none"
            parts.append(f"citations [{before}] → [{after}]")
        return "draft → refined (" + self.reason + "): " + "; ".join(parts)

    def to_dict(self) -> dict:
        return {"draft": self.draft, "refined": self.refined, "reason": self.reason, "words_added": self.words_added,
                "words_removed": self.words_removed, "citations_before": self.citations_before,
                "citations_after": self.citations_after, "summary": self.summary}


def describe_changes(draft: str, final: str, reason: str) -> RefineOutcome:
    """Word-level difference between a draft and its refined version."""
    before, after = draft.split(), final.split()
    added = removed = 0
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=before, b=after, autojunk=False).get_opcodes():
        if tag in ("replace", "delete"):
            removed += i2 - i1
        if tag in ("replace", "insert"):
            added += j2 - j1
    return RefineOutcome(draft=draft, refined=True, reason=reason, words_added=added, words_removed=removed,
                         citations_before=citation_numbers(draft), citations_after=citation_numbers(final))


@dataclass
class RoutingDecision:
    """What the router measured and did in one turn."""

    mode: str
    action: str = ANSWERED
    reason: str | None = None  # why it escalated / refined / kept the draft / did not escalate
    signals: list[Signal] = field(default_factory=list)
    legs: list[tuple[str, str]] = field(default_factory=list)  # (role, purpose) of each leg, in order
    early: bool = False  # the first leg was stopped before it finished
    note: str | None = None  # e.g. why an escalation was not carried out
    refine: RefineOutcome | None = None
    confidence: float | None = None  # of the first leg, None without logprobs
    grounding_decided: bool = False  # no logprobs: the grounding signals decided on the first answer

    @property
    def escalated(self) -> bool:
        return len(self.legs) > 1

    @property
    def fired(self) -> list[Signal]:
        return [signal for signal in self.signals if signal.fired]

    @property
    def would_escalate(self) -> bool:
        """Some signal asked for the large model (also when the mode or the same-model rule kept the small one)."""
        return self.reason is not None and self.action != DRAFT_KEPT

    def describe(self) -> str:
        """One sentence for people: what happened and why."""
        if self.action == ESCALATED_EARLY:
            return f"Escalated to the large model, small model stopped early: {self.reason}."
        if self.action == ESCALATED:
            return f"Escalated to the large model: {self.reason}."
        if self.action == NOT_ESCALATED:
            return f"Not escalated ({self.reason}): {self.note}"
        if self.action in (REFINED, DRAFT_KEPT) and self.refine is not None:
            return self.refine.summary[0].upper() + self.refine.summary[1:] + "."
        if self.action == KEPT_SMALL:
            return f"Escalation ({self.reason}) failed; the small model's answer is kept."
        if self.action == FAILED:
            return f"The {self.legs[0][0] if self.legs else ''} model failed: {self.note}".replace("The  model", "The model")
        pinned = {RoutingMode.SMALL_ONLY.value: "small", RoutingMode.LARGE_ONLY.value: "large"}.get(self.mode)
        if pinned:
            return f"Answered by the {pinned} model (routing pinned to it)."
        checks = "; ".join(s.detail for s in self.signals if s.value is not None and s.name in ("length", "confidence"))
        return "Answered by the small model: no signal asked for the large one" + (f" ({checks})." if checks else ".")

    def to_dict(self) -> dict:
        return {
            "mode": self.mode, "action": self.action, "reason": self.reason, "early": self.early,
            "note": self.note, "confidence": self.confidence, "escalated": self.escalated,
            "grounding_decided": self.grounding_decided,
            "legs": [{"role": role, "purpose": purpose} for role, purpose in self.legs],
            "signals": [signal.to_dict() for signal in self.signals],
            "refine": self.refine.to_dict() if self.refine else None,
            "description": self.describe(),
        }


class Router:
    """Plans the legs of one turn and decides, from the stream and the finished answer, what comes next."""

    def __init__(
        self, options: RoutingOptions, *, supported: bool, sources: Sequence = (), same_model: str | None = None
    ):
        """``sources``: the numbered sources the model is given (the grounding signals read them)."""
        self.options = options
        self.sources = list(sources)
        self.mode = RoutingMode(options.mode)
        self.supported = supported
        self.same_model = same_model if self.mode is RoutingMode.AUTOMATIC else None
        self.decision = RoutingDecision(mode=self.mode.value)
        self._monitor: EarlyMonitor | None = None
        self._next: LegPlan | None = None

    @staticmethod
    def needs_served_models(options: RoutingOptions) -> bool:
        """Whether the caller should find out if both roles are served by one model (see ``same_model``)."""
        return RoutingMode(options.mode) is RoutingMode.AUTOMATIC

    # ------------------------------------------------------------------------------ before
    def first_leg(self) -> LegPlan:
        if self.mode is RoutingMode.LARGE_ONLY:
            plan = LegPlan("large", "answer", logprobs=False, watch=False)
        elif self.mode is RoutingMode.SMALL_ONLY:
            plan = LegPlan("small", "answer", logprobs=False, watch=False)
        elif self.mode is RoutingMode.DRAFT_THEN_REFINE:
            # The draft runs to its end: the large model refines a complete draft, never a cut one.
            plan = LegPlan("small", "draft", logprobs=True, watch=False)
        elif self.same_model:
            # Escalating to the very model that just answered would only double the wait; token logprobs
            # (read only to decide on escalation) are not worth their cost either.
            plan = LegPlan("small", "answer", logprobs=False, watch=False)
        else:
            plan = LegPlan("small", "answer", logprobs=True, watch=True)
        if plan.watch:
            self._monitor = EarlyMonitor(self.options, supported=self.supported)
        self.decision.legs.append((plan.role, plan.purpose))
        return plan

    # ------------------------------------------------------------------------------ during
    def watch(self, delta: str, token_logprobs: Sequence[float] | None) -> str | None:
        """After each delta of a watched leg: a reason to stop the stream now, else None."""
        if self._monitor is None:
            return None
        return self._monitor.feed(delta, token_logprobs)

    def answer_restarted(self) -> None:
        """What the watched leg streamed so far was thinking, not answer: watch its answer afresh."""
        if self._monitor is not None:
            self._monitor = EarlyMonitor(self.options, supported=self.supported)

    # ------------------------------------------------------------------------------ after
    def after_answer(self, text: str, token_logprobs: Sequence[float] | None) -> LegPlan | None:
        """The first leg finished (or was stopped by :meth:`watch`): the next leg, or None to keep its answer."""
        verdict = assess(text, token_logprobs, self.sources, self.options, supported=self.supported)
        self.decision.confidence = verdict.confidence
        self.decision.grounding_decided = verdict.grounding_decided
        monitor = self._monitor
        if monitor is not None and monitor.fired:
            confidence = next(s for s in verdict.signals if s.name == "confidence")
            self.decision.signals = [monitor.signal, confidence]
            self.decision.action, self.decision.reason, self.decision.early = ESCALATED_EARLY, monitor.fired, True
            return self._plan_next("large", "answer")
        self.decision.signals = list(verdict.signals)
        if self.mode is RoutingMode.DRAFT_THEN_REFINE:
            length = draft_length_signal(text, self.options)
            self.decision.signals.insert(0, length)
            reasons = ([length.detail] if length.fired else []) + verdict.reasons
            if reasons:
                self.decision.reason = "; ".join(reasons)
                self.decision.refine = RefineOutcome(draft=text, refined=False, reason="refining")
                return self._plan_next("large", "refine")
            self.decision.action = DRAFT_KEPT
            self.decision.reason = f"{length.detail} and no check flagged it"
            self.decision.refine = RefineOutcome(draft=text, refined=False, reason=self.decision.reason)
            return None
        self.decision.reason = verdict.reason
        if self.mode is not RoutingMode.AUTOMATIC or not verdict.escalate:
            self.decision.action = ANSWERED
            return None
        if self.same_model:
            self.decision.action = NOT_ESCALATED
            self.decision.note = (
                f"the large role is served by the same model, {self.same_model}. "
                "Configure a larger model to let the router escalate."
            )
            return None
        self.decision.action = ESCALATED
        return self._plan_next("large", "answer")

    def _plan_next(self, role: str, purpose: str) -> LegPlan:
        if self.decision.action not in (ESCALATED_EARLY,):
            self.decision.action = REFINED if purpose == "refine" else ESCALATED
        self._next = LegPlan(role, purpose, logprobs=False, watch=False)
        self.decision.legs.append((role, purpose))
        return self._next

    def leg_failed(self, first: bool, message: str) -> None:
        """A leg ended in an error: with the first, nothing answered; with the second, the first answer stands."""
        if first:
            self.decision.action, self.decision.note = FAILED, message
            return
        self.decision.note = message
        if self._next is not None and self._next.purpose == "refine":
            self.decision.action = DRAFT_KEPT
            draft = self.decision.refine.draft if self.decision.refine else ""
            self.decision.refine = RefineOutcome(draft=draft, refined=False, reason=f"refining failed: {message}")
        else:
            self.decision.action = KEPT_SMALL

    def keep_draft(self, reason: str) -> None:
        """The planned refine cannot run (e.g. no room left for it): the draft stands, and the record says why."""
        if self._next is not None:
            self.decision.legs.pop()
            self._next = None
        draft = self.decision.refine.draft if self.decision.refine else ""
        self.decision.action = DRAFT_KEPT
        self.decision.refine = RefineOutcome(draft=draft, refined=False, reason=reason)

    def refined(self, draft: str, final: str) -> None:
        """The refine leg answered: record what it changed."""
        self.decision.refine = describe_changes(draft, final, self.decision.reason or "refine")
