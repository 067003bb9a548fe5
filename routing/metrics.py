"""Per-answer metrics and simulated cloud cost, from the :class:`Response` objects of real calls."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

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
        )


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

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(
            cost_usd=self.cost_usd,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            tokens_estimated=self.tokens_estimated,
            ttft_ms=self.ttft_ms,
            generation_ms=self.generation_ms,
        )
        return data
