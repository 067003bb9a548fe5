"""Citations in an answer: which ``[n]`` point at which numbered source, and which sentences a source
supports although the model cited nothing.

Only real citation syntax counts: ``[1]``, ``[1, 3]``, ``[2-4]``, ``[Source 2]`` with numbers of one or
two digits, not followed by ``(`` (a Markdown link). ``[2024]`` is a year, not a citation. A number
with no source behind it (``[7]`` when five sources were given, ``[0]``) is a *dangling* citation:
it is listed apart, never linked.

Attribution: small models often forget to cite. After the answer, every sentence without a citation
is compared word by word (the BM25 analysis: lower case, stopwords out, stemmed) with each source it
was given; when one source contains most of the sentence's content words, that source is attached to
the sentence, marked as attributed by the app (``by="app"``), never passed off as the model's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from rag.bm25 import analyze
from rag.types import ScoredChunk

# One or two digits each: "[2024]" is a year, "[123]" no source list this long.
_NUMBER = r"\d{1,2}"
CITATION = re.compile(
    rf"\[(?:sources?\s*|refs?\.?\s*)?({_NUMBER}(?:\s*(?:[,;]|[-–]|and)\s*(?:sources?\s*)?{_NUMBER})*)\](?!\()",
    re.IGNORECASE,
)
_PARTS = re.compile(rf"({_NUMBER})\s*[-–]\s*({_NUMBER})|({_NUMBER})")
MAX_RANGE = 20

# A sentence ends at . ! ? followed by space, or at a line break; list items and headings are their own.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")
_ONLY_CITATIONS = re.compile(r"^\W*(?:" + CITATION.pattern + r"\W*)+$", re.IGNORECASE)

# Words that carry no claim, on top of the index's stopwords (they are stemmed like the text).
_FILLER = frozenset(
    analyze(
        "also about after all any can could do does did has have had he her his how i its may me might more "
        "most must my our over own same she should so some than them those through too under up very we "
        "were what when where which while who whom why would you your yes answer question source sources "
        "document documents according based"
    )
)
MIN_CONTENT_WORDS = 3  # shorter sentences ("Yes.", "See below.") are never attributed
MIN_COVERAGE = 0.6  # share of the sentence's content words the source must contain


@dataclass(frozen=True)
class Citation:
    """One source linked to one sentence of the answer."""

    number: int  # the source's number in the prompt: [number]
    source: ScoredChunk
    by: str  # "model": written in the answer; "app": attributed after the answer by word overlap
    sentence: int  # index into the answer's sentences
    coverage: float | None = None  # app attributions: share of the sentence's content words in the source


@dataclass(frozen=True)
class Sentence:
    start: int
    end: int
    text: str


@dataclass
class ResolvedCitations:
    sentences: list[Sentence] = field(default_factory=list)
    citations: list[Citation] = field(default_factory=list)
    dangling: list[int] = field(default_factory=list)  # cited numbers with no source, in order of appearance

    def numbers(self, by: str | None = None) -> list[int]:
        """Distinct source numbers cited (by the model, the app, or either), in order of first appearance."""
        seen: list[int] = []
        for citation in self.citations:
            if (by is None or citation.by == by) and citation.number not in seen:
                seen.append(citation.number)
        return seen


def citation_numbers(text: str) -> list[int]:
    """Every number written as a citation in ``text`` (dangling ones too), in order of first appearance."""
    numbers: list[int] = []
    for match in CITATION.finditer(text or ""):
        for number in _expand(match.group(1)):
            if number not in numbers:
                numbers.append(number)
    return numbers


def _expand(body: str) -> list[int]:
    numbers: list[int] = []
    for low, high, single in _PARTS.findall(body):
        if single:
            numbers.append(int(single))
        else:
            a, b = int(low), int(high)
            numbers.extend(range(a, b + 1) if 0 <= b - a <= MAX_RANGE else (a, b))
    return numbers


def strip_citations(text: str) -> str:
    """``text`` without its citation markers (and without the space left before them)."""
    return re.sub(r"[ \t]*" + CITATION.pattern, "", text or "", flags=re.IGNORECASE)


def replace_citations(text: str, label: Callable[[int], str | None]) -> str:
    """Each citation marker replaced by the labels of its numbers (``label(n)``; None drops that number)."""

    def substitute(match: re.Match) -> str:
        labels = [label(n) for n in _expand(match.group(1))]
        labels = list(dict.fromkeys(item for item in labels if item))
        return f" ({'; '.join(labels)})" if labels else ""

    return re.sub(r"[ \t]*" + CITATION.pattern, substitute, text or "", flags=re.IGNORECASE)


def split_sentences(text: str) -> list[Sentence]:
    """Sentences with their character spans; a run of bare citations joins the sentence before it."""
    sentences: list[Sentence] = []
    position = 0
    for piece in _SENTENCE_END.split(text or ""):
        start = text.index(piece, position) if piece else position
        end = start + len(piece)
        position = end
        if not piece.strip():
            continue
        if sentences and _ONLY_CITATIONS.match(piece):
            previous = sentences[-1]
            sentences[-1] = Sentence(previous.start, end, text[previous.start:end])
            continue
        sentences.append(Sentence(start, end, piece))
    return sentences


def _content(text: str) -> set[str]:
    return {word for word in analyze(strip_citations(text)) if word not in _FILLER}


def resolve_citations(
    text: str,
    sources: Sequence[ScoredChunk],
    *,
    attribute: bool = True,
    skip_sentence: Callable[[str], bool] | None = None,
) -> ResolvedCitations:
    """Link each ``[n]`` of ``text`` to ``sources[n - 1]``; list the dangling ones; attribute uncited sentences.

    ``skip_sentence(sentence)`` true: never attribute that sentence (e.g. a decline).
    """
    result = ResolvedCitations(sentences=split_sentences(text or ""))
    source_words: list[set[str]] | None = None
    for index, sentence in enumerate(result.sentences):
        written = citation_numbers(sentence.text)
        linked = False
        for number in written:
            if 1 <= number <= len(sources):
                result.citations.append(Citation(number, sources[number - 1], "model", index))
                linked = True
            elif number not in result.dangling:
                result.dangling.append(number)
        if linked or not attribute or not sources:
            continue
        if skip_sentence is not None and skip_sentence(sentence.text):
            continue
        words = _content(sentence.text)
        if len(words) < MIN_CONTENT_WORDS:
            continue
        if source_words is None:
            source_words = [set(analyze(f"{s.chunk.title}\n{s.chunk.text}")) for s in sources]
        best, best_coverage = None, 0.0
        for number, known in enumerate(source_words, start=1):
            matched = len(words & known)
            coverage = matched / len(words)
            if matched >= MIN_CONTENT_WORDS and coverage > best_coverage:
                best, best_coverage = number, coverage
        if best is not None and best_coverage >= MIN_COVERAGE:
            result.citations.append(Citation(best, sources[best - 1], "app", index, round(best_coverage, 3)))
    return result
