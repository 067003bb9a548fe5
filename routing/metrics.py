"""Per-answer metrics and simulated cloud cost, from the :class:`Response` objects of real calls."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from routing.client import Response, Usage


@dataclass(frozen=True)
class Price:
    """Hypothetical cloud price in USD per million tokens."""

    input_per_m: float
    output_per_m: float

    def cost(self, usage: Usage | None) -> float:
        if usage is None:
            return 0.0
        return (usage.prompt_tokens * self.input_per_m + usage.completion_tokens * self.output_per_m) / 1_000_000


def prices_from_settings(settings) -> dict[str, Price]:
    return {
        "small": Price(settings.small_input_price, settings.small_output_price),
        "large": Price(settings.large_input_price, settings.large_output_price),
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


@dataclass
class LegMetrics:
    """One model call within a turn (a cascade has two legs)."""

    role: str  # "small" or "large"
    alias: str
    model: str
    outcome: str  # "answered", "escalated", "cancelled", "failed"
    ttft_ms: float | None
    generation_ms: float | None
    total_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    decode_tokens_per_s: float | None
    cost_usd: float
    reason: str | None = None
    # A reasoning model thinks before it answers: the split of time and tokens between the two.
    answer_ttft_ms: float | None = None  # request to the first token of the answer itself
    thinking_ms: float | None = None  # first to last thinking token; None when it did not think
    reasoning_tokens: int = 0
    reasoning_estimated: bool = False  # "~": the server did not count them (completion_tokens_details)
    answer_tokens: int | None = None
    truncated: bool = False  # cut by its token budget

    @classmethod
    def from_response(cls, role: str, response: Response, price: Price, outcome: str, reason: str | None = None):
        usage = response.usage or Usage(0, 0, estimated=True)
        return cls(
            role=role,
            alias=response.alias,
            model=response.model,
            outcome=outcome,
            ttft_ms=_ms(response.timings.ttft_s),
            generation_ms=_ms(response.timings.generation_s),
            total_ms=_ms(response.timings.total_s),
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            tokens_estimated=usage.estimated,
            decode_tokens_per_s=response.decode_tokens_per_s,
            cost_usd=price.cost(usage),
            reason=reason,
            answer_ttft_ms=_ms(response.timings.first_answer_s),
            thinking_ms=_ms(response.timings.thinking_s),
            reasoning_tokens=usage.reasoning_tokens,
            reasoning_estimated=usage.reasoning_estimated,
            answer_tokens=usage.answer_tokens,
            truncated=response.truncated,
        )

    @classmethod
    def from_dict(cls, data: dict) -> "LegMetrics":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TurnMetrics:
    """Everything measured for one question: retrieval, prompt building and each model leg."""

    retrieval_ms: float = 0.0
    prompt_ms: float = 0.0
    total_ms: float = 0.0
    legs: list[LegMetrics] = field(default_factory=list)
    answered_by: str | None = None  # served model id of the final answer
    escalation_reason: str | None = None
    confidence: float | None = None  # None when the server gave no logprobs

    @property
    def cost_usd(self) -> float:
        return sum(leg.cost_usd for leg in self.legs)

    @property
    def prompt_tokens(self) -> int:
        return sum(leg.prompt_tokens for leg in self.legs)

    @property
    def completion_tokens(self) -> int:
        return sum(leg.completion_tokens for leg in self.legs)

    @property
    def tokens_estimated(self) -> bool:
        return any(leg.tokens_estimated for leg in self.legs)

    @property
    def ttft_ms(self) -> float | None:
        """Time to the first token the user saw, measured from the start of the turn."""
        return self.retrieval_ms + self.prompt_ms + self.legs[0].ttft_ms if self.legs and self.legs[0].ttft_ms is not None else None

    @property
    def generation_ms(self) -> float:
        return sum(leg.generation_ms or 0.0 for leg in self.legs)

    @property
    def first_answer_ms(self) -> float | None:
        """Time to the first token of the final answer, from the start of the turn: any escalated draft and
        the answering model's thinking included."""
        answering = self.answering_leg
        if answering is None or answering.answer_ttft_ms is None:
            return None
        before = self.legs[: self.legs.index(answering)]
        return self.retrieval_ms + self.prompt_ms + sum(leg.total_ms or 0.0 for leg in before) + answering.answer_ttft_ms

    @property
    def thinking_ms(self) -> float | None:
        spans = [leg.thinking_ms for leg in self.legs if leg.thinking_ms is not None]
        return sum(spans) if spans else None

    @property
    def reasoning_tokens(self) -> int:
        return sum(leg.reasoning_tokens for leg in self.legs)

    @property
    def reasoning_estimated(self) -> bool:
        return any(leg.reasoning_estimated for leg in self.legs)

    @property
    def answer_tokens(self) -> int:
        return sum(leg.completion_tokens - leg.reasoning_tokens for leg in self.legs)

    @property
    def truncated(self) -> bool:
        answering = self.answering_leg
        return bool(answering and answering.truncated)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            cost_usd=self.cost_usd,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens_estimated=self.tokens_estimated,
            ttft_ms=self.ttft_ms,
            generation_ms=self.generation_ms,
            first_answer_ms=self.first_answer_ms,
            thinking_ms=self.thinking_ms,
            reasoning_tokens=self.reasoning_tokens,
            reasoning_estimated=self.reasoning_estimated,
            answer_tokens=self.answer_tokens,
            truncated=self.truncated,
        )
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TurnMetrics":
        """Inverse of :meth:`to_dict`; derived values in the dict are ignored, unknown keys too."""
        names = {f.name for f in fields(cls)} - {"legs"}
        turn = cls(**{k: v for k, v in data.items() if k in names})
        turn.legs = [LegMetrics.from_dict(leg) for leg in data.get("legs") or []]
        return turn

    def summary(self) -> "MetricsSummary":
        """The turn's numbers as every front end shows them: rates and timings of the answering leg."""
        leg = self.answering_leg
        return MetricsSummary(
            answered_by=self.answered_by,
            answered_role=leg.role if leg else None,
            escalation_reason=self.escalation_reason,
            confidence=self.confidence,
            ttft_ms=self.ttft_ms,
            total_ms=self.total_ms,
            retrieval_ms=self.retrieval_ms,
            prompt_ms=self.prompt_ms,
            model_ttft_ms=leg.ttft_ms if leg else None,
            generation_ms=leg.generation_ms if leg else None,
            decode_tokens_per_s=leg.decode_tokens_per_s if leg else None,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens_estimated=self.tokens_estimated,
            cost_usd=self.cost_usd,
            calls=len(self.legs),
            thinking_ms=self.thinking_ms,
            first_answer_ms=self.first_answer_ms,
            reasoning_tokens=self.reasoning_tokens,
            reasoning_estimated=self.reasoning_estimated,
            truncated=self.truncated,
        )

    @property
    def answering_leg(self) -> LegMetrics | None:
        """The leg whose text the user got: the last one that answered, else the last one of the answering model."""
        for leg in reversed(self.legs):
            if leg.outcome == "answered":
                return leg
        for leg in reversed(self.legs):
            if self.answered_by is not None and leg.model == self.answered_by:
                return leg
        return None


@dataclass
class MetricsSummary:
    """One turn in figures. Rates and the model's own timings are the answering leg's (not the last leg's:
    when the large model fails and the small answer is kept, these are the small model's); tokens and cost
    add up every leg; ``ttft_ms`` is from the start of the turn to the first token the user saw."""

    answered_by: str | None
    answered_role: str | None
    escalation_reason: str | None
    confidence: float | None
    ttft_ms: float | None
    total_ms: float
    retrieval_ms: float
    prompt_ms: float
    model_ttft_ms: float | None  # the answering call's own time to first token
    generation_ms: float | None
    decode_tokens_per_s: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    cost_usd: float
    calls: int
    thinking_ms: float | None = None  # a reasoning model's thinking, every leg
    first_answer_ms: float | None = None  # turn start to the answer's own first token (thinking included)
    reasoning_tokens: int = 0
    reasoning_estimated: bool = False
    truncated: bool = False  # the answer was cut by its token budget

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------------
# A conversation's metrics: running cost, per-model statistics, a latency chart
# --------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100), numpy's linear interpolation; None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def mean(values: list[float | None]) -> float | None:
    """The mean of the values that are present; None when there are none."""
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


@dataclass
class ModelStats:
    """Answers of one served model in a session.

    ``count`` answers; latency is the whole turn the user waited (retrieval included); TTFT and decode rate
    are those of the answering call itself. ``calls`` counts every call to the model (escalated drafts and
    failures too) and ``cost_usd`` sums their simulated cost.
    """

    model: str
    count: int = 0
    calls: int = 0
    mean_total_ms: float | None = None
    p95_total_ms: float | None = None
    mean_ttft_ms: float | None = None
    p95_ttft_ms: float | None = None
    mean_tokens_per_s: float | None = None
    p95_tokens_per_s: float | None = None
    cost_usd: float = 0.0
    tokens_estimated: bool = False


NO_ANSWER = "(no answer)"


@dataclass
class SessionMetrics:
    """Every measured turn of one conversation, in order."""

    turns: list[TurnMetrics] = field(default_factory=list)

    def add(self, turn: TurnMetrics) -> None:
        self.turns.append(turn)

    @property
    def total_cost_usd(self) -> float:
        return sum(turn.cost_usd for turn in self.turns)

    def model_stats(self) -> dict[str, ModelStats]:
        """Per answering model, in the order models first answered."""
        answers: dict[str, list[TurnMetrics]] = {}
        for turn in self.turns:
            if turn.answered_by is not None:
                answers.setdefault(turn.answered_by, []).append(turn)
        stats = {model: ModelStats(model=model) for model in answers}
        for turn in self.turns:
            for leg in turn.legs:
                entry = stats.setdefault(leg.model, ModelStats(model=leg.model))
                entry.calls += 1
                entry.cost_usd += leg.cost_usd
                entry.tokens_estimated = entry.tokens_estimated or leg.tokens_estimated
        for model, turns in answers.items():
            entry = stats[model]
            legs = [turn.answering_leg for turn in turns]
            totals = [turn.total_ms for turn in turns]
            ttfts = [leg.ttft_ms for leg in legs if leg is not None and leg.ttft_ms is not None]
            rates = [leg.decode_tokens_per_s for leg in legs if leg is not None and leg.decode_tokens_per_s is not None]
            entry.count = len(turns)
            entry.mean_total_ms, entry.p95_total_ms = mean(totals), percentile(totals, 95)
            entry.mean_ttft_ms, entry.p95_ttft_ms = mean(ttfts), percentile(ttfts, 95)
            entry.mean_tokens_per_s, entry.p95_tokens_per_s = mean(rates), percentile(rates, 95)
        return stats

    def to_dict(self) -> dict:
        return {"turns": [turn.to_dict() for turn in self.turns], "total_cost_usd": self.total_cost_usd}

    @classmethod
    def from_dict(cls, data: dict | None) -> "SessionMetrics":
        return cls(turns=[TurnMetrics.from_dict(turn) for turn in (data or {}).get("turns") or []])


def summary_rows(session: SessionMetrics) -> list[dict]:
    """One row per model that answered: count, mean and p95 of latency and TTFT, decode rate, cost."""
    return [asdict(stats) for stats in session.model_stats().values() if stats.count]


@dataclass
class LatencySegments:
    """One message's latency split for the chart; the three parts add up to about the turn's total."""

    model: str
    retrieval_ms: float  # retrieval and prompt building
    wait_ms: float  # from the request to the answering model's first token, escalated drafts included
    generation_ms: float


def latency_segments(turn: TurnMetrics) -> LatencySegments:
    answering = turn.answering_leg
    before = turn.legs[: turn.legs.index(answering)] if answering is not None else turn.legs
    wait = sum(leg.total_ms or 0.0 for leg in before)
    generation = 0.0
    if answering is not None:
        wait += answering.ttft_ms or 0.0
        generation = answering.generation_ms or 0.0
    return LatencySegments(
        model=turn.answered_by or NO_ANSWER,
        retrieval_ms=turn.retrieval_ms + turn.prompt_ms,
        wait_ms=wait,
        generation_ms=generation,
    )


MODEL_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
RETRIEVAL_COLOUR = "#9e9e9e"


def latency_figure(session: SessionMetrics):
    """Latency per message as stacked bars: retrieval (grey), waiting for the first token (light) and
    generation (solid), coloured and grouped in the legend by the model that answered."""
    import plotly.graph_objects as go

    segments = [latency_segments(turn) for turn in session.turns]
    labels = [f"#{i}" for i in range(1, len(segments) + 1)]
    models = list(dict.fromkeys(s.model for s in segments))
    colours = {model: MODEL_COLOURS[i % len(MODEL_COLOURS)] for i, model in enumerate(models)}
    hover = "%{x}: %{y:.0f} ms<extra>%{fullData.name}</extra>"

    figure = go.Figure()
    figure.add_trace(
        go.Bar(
            name="retrieval + prompt",
            x=labels,
            y=[s.retrieval_ms for s in segments],
            marker_color=RETRIEVAL_COLOUR,
            hovertemplate=hover,
        )
    )
    # Stacking follows trace order: every model's wait above retrieval, then its generation on top.
    for part, opacity in (("wait", 0.45), ("generation", 1.0)):
        for model in models:
            mine = [(label, s) for label, s in zip(labels, segments) if s.model == model]
            figure.add_trace(
                go.Bar(
                    name=f"{model} · {'first token' if part == 'wait' else 'generation'}",
                    legendgroup=model,
                    x=[label for label, _ in mine],
                    y=[s.wait_ms if part == "wait" else s.generation_ms for _, s in mine],
                    marker_color=colours[model],
                    opacity=opacity,
                    hovertemplate=hover,
                )
            )
    figure.update_layout(
        barmode="stack",
        title="Latency per message",
        xaxis_title="message",
        yaxis_title="ms",
        legend_title="model · part",
        xaxis={"categoryorder": "array", "categoryarray": labels},
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
    )
    return figure


def format_metrics_line(turn: TurnMetrics) -> str:
    """A compact one-line summary: model, TTFT, decode rate, tokens ("~" when estimated), simulated cost."""
    summary = turn.summary()
    parts = [summary.answered_by or NO_ANSWER]
    if summary.escalation_reason:
        parts[0] += f" (escalated: {summary.escalation_reason})"
    if summary.ttft_ms is not None:
        parts.append(f"TTFT {summary.ttft_ms:.0f} ms")
    if summary.thinking_ms is not None:
        mark = "~" if summary.reasoning_estimated else ""
        parts.append(f"thought {summary.thinking_ms / 1000:.1f} s ({mark}{summary.reasoning_tokens} tokens)")
        if summary.first_answer_ms is not None:
            parts.append(f"first answer token {summary.first_answer_ms:.0f} ms")
    if summary.decode_tokens_per_s is not None:
        parts.append(f"{summary.decode_tokens_per_s:.1f} tok/s")
    mark = "~" if summary.tokens_estimated else ""
    parts.append(f"{mark}{summary.prompt_tokens} in / {mark}{summary.completion_tokens} out tokens")
    parts.append(f"{summary.total_ms / 1000:.2f} s")
    parts.append(f"sim. ${summary.cost_usd:.6f}")
    return " · ".join(parts)
