"""What one turn produced, complete, in one object: the pipeline builds it, every front end renders it.

The chat, the demo page, ``compare``, ``bench`` and ``evaluate`` read a :class:`TurnRecord` from the
turn's last event (:class:`assistant.events.TurnFinished`) and derive nothing themselves: the answer,
the numbered sources the model was given, the citations resolved against them (model-written and
app-attributed apart, dangling numbers listed apart), the routing decision and the metrics summary of
the answering leg are all here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rag.citations import Citation, ResolvedCitations, replace_citations
from rag.types import ScoredChunk
from routing.client import Response
from routing.metrics import MetricsSummary, TurnMetrics
from routing.router import RoutingDecision

APP_MARK = "†"  # follows a citation the app attributed (the model did not write it)


@dataclass
class Notice:
    level: str  # "info", "warning" or "error"
    message: str
    kind: str | None = None  # for a model-server failure, its kind: "ServerUnreachable", "ModelNotFound", ...


@dataclass
class TurnRecord:
    question: str
    text: str  # the answer as the answering model wrote it ("" when none answered)
    answered_by: str | None  # served model id; None when no model answered
    answered_role: str | None  # "small" or "large"
    answered_alias: str | None
    sources: list[ScoredChunk]  # what the model was given, numbered: sources[n - 1] is [n]
    citations: ResolvedCitations
    routing: RoutingDecision
    metrics: TurnMetrics
    supported: bool = True  # some source reached the score floor (or a reference text was given)
    sources_found: int = 0  # sources at or above the floor (reference chunks included)
    notices: list[Notice] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)  # every model call, in order
    cancelled: bool = False

    # ------------------------------------------------------------------------------ citations
    @property
    def cited(self) -> list[int]:
        """Source numbers the model cited that point at a source, in order of first appearance."""
        return self.citations.numbers("model")

    @property
    def attributed(self) -> list[int]:
        """Source numbers the app attached to uncited sentences (and the model did not cite elsewhere)."""
        return [n for n in self.citations.numbers("app") if n not in self.cited]

    @property
    def dangling(self) -> list[int]:
        """Numbers the model wrote as citations that point at no source."""
        return list(self.citations.dangling)

    def cited_sources(self) -> list[tuple[int, ScoredChunk, str]]:
        """``(number, source, by)`` for every source the answer cites: the model's first, then the app's."""
        return [(n, self.sources[n - 1], "model") for n in self.cited] + [
            (n, self.sources[n - 1], "app") for n in self.attributed
        ]

    def citations_by(self, by: str) -> list[Citation]:
        return [c for c in self.citations.citations if c.by == by]

    # ------------------------------------------------------------------------------ text forms
    def display_text(self) -> str:
        """The answer with the app's attributions shown after their sentences as ``[n]†``."""
        inserts: dict[int, list[int]] = {}
        for citation in self.citations_by("app"):
            sentence = self.citations.sentences[citation.sentence]
            inserts.setdefault(sentence.end, []).append(citation.number)
        text = self.text
        for end in sorted(inserts, reverse=True):
            marks = "".join(f"[{n}]{APP_MARK}" for n in inserts[end])
            text = text[:end] + " " + marks + text[end:]
        return text

    def history_text(self) -> str:
        """The answer as the next turn's history: each ``[n]`` replaced by its source's name, dangling ones
        dropped, so the next prompt's own numbering cannot be confused with this turn's."""

        def label(number: int) -> str | None:
            if 1 <= number <= len(self.sources):
                return self.sources[number - 1].chunk.location
            return None

        return replace_citations(self.text, label)

    # ------------------------------------------------------------------------------ figures
    @property
    def summary(self) -> MetricsSummary:
        return self.metrics.summary()

    def to_dict(self) -> dict:
        """JSON-able form (demo page, --json outputs)."""
        return {
            "question": self.question,
            "text": self.text,
            "answered_by": self.answered_by,
            "answered_role": self.answered_role,
            "answered_alias": self.answered_alias,
            "sources": [
                {"number": n, "source": s.chunk.source, "location": s.chunk.location, "title": s.chunk.title,
                 "score": round(s.score, 3)}
                for n, s in enumerate(self.sources, start=1)
            ],
            "cited": self.cited,
            "attributed": self.attributed,
            "dangling": self.dangling,
            "citations": [
                {"number": c.number, "by": c.by, "sentence": c.sentence, "coverage": c.coverage}
                for c in self.citations.citations
            ],
            "routing": self.routing.to_dict(),
            "summary": self.summary.to_dict(),
            "supported": self.supported,
            "sources_found": self.sources_found,
            "notices": [{"level": n.level, "message": n.message} for n in self.notices],
            "cancelled": self.cancelled,
        }
