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
* **grounding** (from the answer and its sources, for servers that send no logprobs, such as Foundry
  Local): the answer cites no source although supporting sources were given; it cites a number that
  was not given; little of its content is found in the sources it cites. See :func:`grounding_signals`.
  Computed for every answer (the evaluation counts them); they decide only when logprobs are absent,
  and the reason says so.

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

from rag.citations import citation_numbers as cited_numbers
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


# Grounding: is the answer built on the sources it was given?
NO_CITATION = "no citation"
UNKNOWN_CITATION = "unknown citation"
LOW_OVERLAP = "low overlap"
GROUNDING_SIGNALS = (NO_CITATION, UNKNOWN_CITATION, LOW_OVERLAP)

_WORD = re.compile(r"[a-z0-9]+")
_COMMON_WORDS = frozenset(
    "about above after again also because been before being below between both could does doing down during each "
    "from further have having here into itself more most much must only other over same should some such than "
    "that their theirs them then there these they this those through under until very were what when where "
    "which while will with would your yours answer sources source according".split()
)
MIN_WORDS_FOR_OVERLAP = 4  # answers with fewer content words are judged by length instead


def content_words(text: str) -> list[str]:
    """Words of four letters or more that carry content, cut to five letters (a crude stem: vacation/vacations)."""
    return [w[:5] for w in _WORD.findall(text.lower()) if len(w) >= 4 and w not in _COMMON_WORDS]


def grounded_share(text: str, cited_texts: Sequence[str]) -> float | None:
    """The share of the answer's content words found in the texts it cites; None for too few words."""
    words = content_words(text)
    if len(words) < MIN_WORDS_FOR_OVERLAP:
        return None
    known = set()
    for cited in cited_texts:
        known.update(content_words(cited))
    return sum(w in known for w in words) / len(words)


def _source_text(source) -> str:
    chunk = getattr(source, "chunk", source)
    return getattr(chunk, "text", "") or ""


def grounding_signals(
    text: str, sources: Sequence, *, supported: bool, min_share: float = 0.30
) -> dict[str, str]:
    """Signals computed from the answer and the numbered sources it was given, key -> reason text.

    * ``no citation``: supporting sources were given and the answer cites none of them;
    * ``unknown citation``: it cites a number outside 1..len(sources);
    * ``low overlap``: less than ``min_share`` of its content words occur in the sources it cites.
    """
    fired: dict[str, str] = {}
    cited = cited_numbers(text)
    given = len(sources)
    if supported and given and not cited:
        fired[NO_CITATION] = f"cites none of the {given} sources given"
    unknown = [n for n in cited if not 1 <= n <= given]
    if unknown:
        fired[UNKNOWN_CITATION] = "cites " + ", ".join(f"[{n}]" for n in unknown) + f" but {given} sources were given"
    valid = [n for n in cited if 1 <= n <= given]
    if valid:
        share = grounded_share(text, [_source_text(sources[n - 1]) for n in valid])
        if share is not None and share < min_share:
            fired[LOW_OVERLAP] = f"only {share:.0%} of its words are in the sources it cites"
    return fired


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
    grounding: dict[str, str] = field(default_factory=dict)  # grounding signals that fired (key -> reason)
    grounding_decided: bool = False  # logprobs were absent, so the grounding signals counted

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
    grounding = grounding_signals(text, sources, supported=supported, min_share=options.min_grounded_share)
    # Without logprobs the grounding signals stand in for confidence, on answers long enough to judge.
    grounding_decides = confidence is None and not declined and chars >= options.min_answer_chars

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
    for name in GROUNDING_SIGNALS:
        if name in grounding:
            signals.append(Signal(name, True, options.min_grounded_share if name == LOW_OVERLAP else None,
                                  True, grounding[name] + ("" if grounding_decides else " (not deciding: logprobs present)")))
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
        if grounding_decides:
            reasons.extend(f"no logprobs, so checked against its sources: {why}" for why in grounding.values())
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
        grounding=grounding,
        grounding_decided=grounding_decides and not (declined and not supported),
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
