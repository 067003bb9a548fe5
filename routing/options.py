"""The options of one turn, validated in one place.

:class:`RoutingOptions` is the single definition of every per-turn option: its default, its range and its
meaning. The app's settings take their routing fields from it (same defaults, same limits, read from
``ASSISTANT_*`` variables), the chat settings panel and the demo page's API send overrides that go
through :meth:`RoutingOptions.with_overrides`, which raises ``ValueError`` naming the bad key.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Mapping

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError


class RoutingMode(str, Enum):
    AUTOMATIC = "automatic"
    SMALL_ONLY = "small"
    LARGE_ONLY = "large"
    DRAFT_THEN_REFINE = "draft_refine"


MAX_TOKENS_LIMIT = 32_768
REASONING_EFFORT_CHOICES = ("", "low", "medium", "high")  # "": send none, the server's default
SERVER_DEFAULT_EFFORT = "default"  # "" in a chat settings select (whose items cannot have an empty value)


def _effort(value: object) -> str:
    value = str(value).strip().lower()
    if value == SERVER_DEFAULT_EFFORT:
        value = ""
    if value not in REASONING_EFFORT_CHOICES:
        raise ValueError("must be low, medium, high or empty")
    return value


ReasoningEffort = Annotated[str, AfterValidator(_effort)]


class RoutingOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    mode: RoutingMode = Field(default=RoutingMode.AUTOMATIC, description="Which model answers.")
    temperature: float = Field(default=0.2, ge=0, le=2, description="Sampling temperature.")
    max_tokens: int = Field(default=512, ge=1, le=MAX_TOKENS_LIMIT, description="Largest answer, in tokens.")
    min_answer_chars: int = Field(default=40, ge=0, description="Answers shorter than this escalate.")
    confidence_threshold: float = Field(
        default=0.30, ge=0, le=1, description="Escalate when the low-quantile token probability is below this."
    )
    confidence_quantile: float = Field(default=0.10, gt=0, lt=1, description="Quantile of token probabilities used.")
    early_check_tokens: int = Field(default=24, ge=1, description="Tokens streamed before early escalation may fire.")
    early_confidence_floor: float = Field(
        default=0.15, ge=0, le=1, description="Running confidence below this after N tokens stops the small model."
    )
    min_source_score: float = Field(default=1.0, ge=0, description="BM25 score a source needs to count as support.")
    refine_min_chars: int = Field(default=600, ge=0, description="Draft-then-refine: drafts this long get refined.")
    min_grounded_share: float = Field(
        default=0.30, ge=0, le=1,
        description="Without logprobs: escalate when less of the answer is in the sources it cites.",
    )
    large_max_tokens: int = Field(
        default=2048, ge=1, le=MAX_TOKENS_LIMIT,
        description="Token budget of the large model, thinking and answer together (a reasoning model thinks first).",
    )
    reasoning_effort: ReasoningEffort = Field(
        default="low", description="How hard the large model thinks: low, medium or high (empty: the server's default)."
    )

    @classmethod
    def from_settings(cls, settings) -> "RoutingOptions":
        """The options of an object with the same attribute names (``routing_mode`` for ``mode``)."""
        values = {name: getattr(settings, name) for name in cls.model_fields if hasattr(settings, name)}
        if hasattr(settings, "routing_mode"):
            values["mode"] = settings.routing_mode
        return cls.model_validate(values)

    def with_overrides(self, values: Mapping[str, object] | None) -> "RoutingOptions":
        """A copy with the known keys of ``values`` applied (``routing_mode`` is read as ``mode``).

        Unknown keys and ``None`` values are ignored. Numbers may come as floats or strings (chat
        widgets send them so); a whole-number option given 12.5, an unknown mode or a value out of
        range raises ``ValueError`` naming the key.
        """
        if not values:
            return self
        changes = {key: value for key, value in values.items() if key in type(self).model_fields and value is not None}
        if "mode" not in changes and values.get("routing_mode") is not None:
            changes["mode"] = values["routing_mode"]
        if isinstance(changes.get("mode"), str):
            changes["mode"] = changes["mode"].strip().lower()
        try:
            return type(self).model_validate({**self.model_dump(), **changes})
        except ValidationError as exc:
            problems = []
            for error in exc.errors():
                key = ".".join(str(part) for part in error["loc"])
                problems.append(f"routing option {key}: cannot use {error.get('input')!r} ({error['msg']})")
            raise ValueError("; ".join(problems)) from None
