"""When the small model's answer is good enough, and when the large model should answer instead.

Pure functions and small dataclasses: no I/O. The pipeline feeds them the small model's text, its
token log-probabilities (when the server sends them) and the retrieved sources.

Signals, each computed from the answer itself:

* **length**: an answer shorter than ``min_answer_chars`` says too little to be useful.
* **confidence**: a low quantile (default the 10th percentile) of the per-token probabilities
  ``exp(logprob)``. Not the mean log-probability: a mean is pulled by length (a long answer made of
  many easy tokens - punctuation, copied source text - averages out the few tokens where the model
  was guessing, while a short answer is dominated by them), so the same threshold would mean
  different things for a 20-token and a 300-token answer. The low quantile asks a length-neutral
  question: "how sure was the model at its least sure tokens?". ``None`` when the server sends no
  logprobs; the other signals still work.
* **declined**: the answer opens with a refusal or says the sources do not cover the question
  (``DECLINE_PATTERNS``, English, case- and punctuation-insensitive).
* **retrieval support**: some source scored at or above ``min_source_score``.

How support combines with the rest (a decision, see :func:`assess`): missing support alone never
escalates - the large model would get the same (empty) sources, so it cannot ground its answer any
better. With no support, a decline is the correct answer (the prompt asks the model to say the
documents do not cover the question), so a decline there stays too. With support, a decline means
the small model failed to use sources that were there: that escalates. Short or unsure answers
escalate in both cases; when unsupported the reason says so as well.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from routing.options import RoutingMode, RoutingOptions

__all__ = ["RoutingMode", "RoutingOptions", "Signal", "Assessment", "assess", "EarlyMonitor", "refine_reason"]


# --------------------------------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile, interpolated linearly between order statistics (numpy's default method)."""
    if len(values) == 0:
        raise ValueError("quantile of no values")
    return float(np.quantile(np.asarray(values, dtype=float), q))


def token_confidence(token_logprobs: Sequence[float] | None, q: float = 0.10) -> float | None:
    """The q-quantile of per-token probabilities ``exp(logprob)``; ``None`` without logprobs.

    A low quantile rather than the mean log-probability: the mean is biased by length (many easy
    tokens in a long answer hide the few unsure ones), a low quantile looks at the unsure ones.
    """
    if not token_logprobs:
        return None
    probabilities = [math.exp(min(lp, 0.0)) for lp in token_logprobs if lp is not None and not math.isnan(lp)]
    if not probabilities:
        return None
    return quantile(probabilities, q)


_SUBJECTS = r"(?:provided |given |available |retrieved |supplied |above |these |the |this )*(?:sources?|documents?|context|passages?|excerpts?|text|information|materials?|knowledge base|notes?)"
_NEGATED = r"(?:do not|does not|did not|don't|doesn't|didn't|cannot|can't|can not)"
_VERBS = r"(?:cover|contain|mention|include|say|state|provide|address|specify|discuss|describe|explain|answer|tell|give)"

DECLINE_PATTERNS: tuple[re.Pattern[str], ...] = tuple(
    re.compile(p)
    for p in (
        r"\bi (?:do not|don't) (?:know|have (?:enough |any |the )?(?:information|details|data|context))\b",
        r"\bi(?: am|'m) (?:not sure|unsure|not certain|unable|not able|afraid)\b",
        r"\bi(?: cannot| can't| can not| could not| couldn't| am unable to|'m unable to) (?:answer|help|provide|find|determine|say|tell|assist|locate|see)\b",
        r"^(?:i'm |i am )?sorry\b",
        r"\bas an ai\b",
        r"\bi (?:must|have to) (?:decline|refuse)\b",
        r"\bunable to (?:answer|find|determine|locate|provide)\b",
        r"\bno (?:relevant |specific |such )?(?:information|mention|details?|data) (?:about|on|regarding|for|of|in|is|was|available)\b",
        r"\bthere (?:is|are) no (?:relevant |specific )?(?:information|mention|details?|sources?|data)\b",
        rf"\b{_SUBJECTS} {_NEGATED} (?:\w+ )?{_VERBS}\b",
        rf"\b{_SUBJECTS} {_NEGATED} have (?:any |enough |the |specific )?(?:information|details?|data|mention)\b",
        rf"\bnot (?:covered|mentioned|included|addressed|specified|stated|found|discussed|described) (?:in|by) {_SUBJECTS}\b",
        rf"\b(?:isn't|is not|aren't|are not) (?:covered|mentioned|included|addressed|specified|stated|found|discussed) (?:in|by) {_SUBJECTS}\b",
        r"\bcannot be (?:answered|determined|found) (?:from|with|in|based on)\b",
        rf"\boutside (?:the scope of )?{_SUBJECTS}\b",
    )
)

# Where a decline counts: in the opening of the answer. A long answer that notes at its end that one
# detail is not in the sources has still answered.
DECLINE_WINDOW_CHARS = 160


def normalize_for_patterns(text: str) -> str:
    """Lower case, straight apostrophes, punctuation (but apostrophes) to spaces, one space between words."""
    text = text.lower().replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"\s*'\s*", "'", text)  # "i ' m" -> "i'm"
    return re.sub(r"\s+", " ", text).strip()


def looks_declined(text: str) -> bool:
    """True when the opening of the answer refuses or says the sources do not cover the question."""
    opening = normalize_for_patterns(text)[:DECLINE_WINDOW_CHARS]
    return any(p.search(opening) for p in DECLINE_PATTERNS)


def retrieval_supported(sources: Iterable, min_source_score: float) -> bool:
    """Some source (anything with a ``score``) scored at or above the floor."""
    return any(getattr(s, "score", 0.0) >= min_source_score for s in sources)


# --------------------------------------------------------------------------------------------------
# The verdict on a finished answer
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signal:
    """One thing the router measured, against the limit it is judged by."""

    name: str  # "length", "confidence", "declined", "support", "draft length", "early decline", "early confidence"
    value: float | int | bool | None  # None: not measurable (e.g. no logprobs)
    threshold: float | int | None
    fired: bool  # the value crossed the limit (on its own it may still not escalate: see assess)
    detail: str  # how the app says it, e.g. "answer 12 chars < 40"

    def to_dict(self) -> dict:
        return {"name": self.name, "value": self.value, "threshold": self.threshold, "fired": self.fired,
                "detail": self.detail}


@dataclass
class Assessment:
    escalate: bool
    reasons: list[str] = field(default_factory=list)
    confidence: float | None = None
    confidence_available: bool = False
    declined: bool = False
    supported: bool = True
    signals: list[Signal] = field(default_factory=list)

    @property
    def reason(self) -> str | None:
        return "; ".join(self.reasons) if self.reasons else None


def assess(
    text: str,
    token_logprobs: Sequence[float] | None,
    sources: Sequence,
    options: RoutingOptions,
    *,
    supported: bool | None = None,
) -> Assessment:
    """Should the large model answer instead of this (small model) answer?

    Escalates when the answer is short, unsure (low-quantile token probability below the threshold)
    or declines although sources supported the question. No retrieval support alone does not
    escalate, nor does a decline without support (it is the right answer); see the module docstring.
    """
    confidence = token_confidence(token_logprobs, options.confidence_quantile)
    if supported is None:  # the caller may know better (a pasted reference text always supports)
        supported = retrieval_supported(sources, options.min_source_score)
    declined = looks_declined(text)
    chars = len(text.strip())

    short = chars < options.min_answer_chars
    unsure = confidence is not None and confidence < options.confidence_threshold
    signals = [
        Signal("length", chars, options.min_answer_chars, short,
               f"answer {chars} chars {'<' if short else '>='} {options.min_answer_chars}"),
        Signal("confidence", None if confidence is None else round(confidence, 4), options.confidence_threshold, unsure,
               "no token probabilities from the server" if confidence is None else
               f"confidence {confidence:.2f} {'<' if unsure else '>='} {options.confidence_threshold:.2f}"),
        Signal("declined", declined, None, declined, "declined" if declined else "did not decline"),
        Signal("support", supported, options.min_source_score, not supported,
               f"{'a' if supported else 'no'} source above score {options.min_source_score:g}"),
    ]
    reasons: list[str] = []
    if declined and not supported:
        # "The documents do not cover this" with nothing retrieved: correct, and the large model
        # would get the same empty sources.
        pass
    else:
        if declined:
            reasons.append("declined")
        if short:
            reasons.append(f"answer {chars} chars < {options.min_answer_chars}")
        if unsure:
            reasons.append(f"confidence {confidence:.2f} < {options.confidence_threshold:.2f}")
        if reasons and not supported:
            reasons.append(f"no source above score {options.min_source_score:g}")
    return Assessment(
        escalate=bool(reasons),
        reasons=reasons,
        confidence=confidence,
        confidence_available=confidence is not None,
        declined=declined,
        supported=supported,
        signals=signals,
    )


def draft_length_signal(draft: str, options: RoutingOptions) -> Signal:
    chars = len(draft.strip())
    long_enough = chars >= options.refine_min_chars
    return Signal("draft length", chars, options.refine_min_chars, long_enough,
                  f"draft {chars} chars {'>=' if long_enough else '<'} {options.refine_min_chars}")


def refine_reason(draft: str, assessment: Assessment, options: RoutingOptions) -> str | None:
    """Draft-then-refine: why the large model should refine this draft, or None to keep it.

    A long draft is worth polishing (>= ``refine_min_chars``); a draft ``assess`` flags needs fixing.
    """
    reasons = list(assessment.reasons)
    signal = draft_length_signal(draft, options)
    if signal.fired:
        reasons.insert(0, signal.detail)
    return "; ".join(reasons) if reasons else None


# --------------------------------------------------------------------------------------------------
# Stopping the small model early
# --------------------------------------------------------------------------------------------------


class EarlyMonitor:
    """Watches the small model's stream and says when to stop it, as soon as the outcome is clear.

    ``feed(delta, token_logprobs_so_far)`` after each delta returns a reason to stop, else None.
    It fires once, when the answer opens with a refusal or a "the sources do not cover" (unless
    retrieval found no support: then that is the right answer), or when, after ``early_check_tokens``
    tokens, the running low-quantile confidence is below ``early_confidence_floor``. ``signal`` then
    holds what fired.
    """

    def __init__(self, options: RoutingOptions, *, supported: bool = True):
        self.options = options
        self.supported = supported
        self.text = ""
        self.deltas = 0
        self.confidence: float | None = None
        self.fired: str | None = None
        self.signal: Signal | None = None

    def feed(self, delta: str, token_logprobs: Sequence[float] | None = None) -> str | None:
        if self.fired:
            return self.fired
        opening_so_far = len(self.text) < DECLINE_WINDOW_CHARS
        self.text += delta
        self.deltas += 1
        if self.supported and opening_so_far and looks_declined(self.text):
            self.fired = "declined at the start"
            self.signal = Signal("early decline", True, None, True, self.fired)
            return self.fired
        if token_logprobs:
            tokens = len(token_logprobs)
            if tokens >= self.options.early_check_tokens:
                self.confidence = token_confidence(token_logprobs, self.options.confidence_quantile)
                if self.confidence is not None and self.confidence < self.options.early_confidence_floor:
                    self.fired = (
                        f"confidence {self.confidence:.2f} < {self.options.early_confidence_floor:.2f} "
                        f"after {tokens} tokens"
                    )
                    self.signal = Signal("early confidence", round(self.confidence, 4),
                                         self.options.early_confidence_floor, True, self.fired)
                    return self.fired
        return None
