"""Chainlit rendering of the pipeline's events: retrieval step, cited sources, the metrics bar, settings labels."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import chainlit as cl

from assistant.events import SourcesFound
from assistant.record import APP_MARK, TurnRecord
from assistant.settings import RoutingMode
from rag.bm25 import analyze
from rag.citations import CITATION, citation_numbers
from rag.types import ScoredChunk

ANSWER_FOOTER = "\n\n---\n"
SNIPPET_CHARS = 160
CITED_BY_MODEL = "model"  # the answer cites it as [n]
CITED_BY_APP = "app"  # the model did not cite it; the app attributed a sentence to it ([n]†)
GIVEN = "given"  # the answer cites nothing: every source the model was given is listed

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_text(text: str) -> str:
    """Text from a file (a name, an excerpt, a refusal) shown literally: no markdown, so no image, link or
    table cell can come from it; on one line."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(text).split()))


# ------------------------------------------------------------------------------------------------
# Thinking
# ------------------------------------------------------------------------------------------------


class ThinkingStep:
    """A reasoning model's thinking, streamed token by token into a collapsible "Thinking" step above the
    answer and renamed "Thought for N s" when the answer starts (the pattern of Chainlit's cookbook).
    The step shows with ``[UI] cot = "full"`` (``tool_call`` would hide an llm step)."""

    def __init__(self, step: cl.Step):
        self.step = step

    @classmethod
    async def start(cls) -> "ThinkingStep":
        step = cl.Step(name="Thinking", type="llm", default_open=True, auto_collapse=True, show_input=False)
        await step.__aenter__()  # the async-with protocol, held open across the pipeline's events
        return cls(step)

    async def add(self, text: str) -> None:
        await self.step.stream_token(text)

    async def finish(self, seconds: float | None, *, answered: bool) -> None:
        if seconds is None:
            self.step.name = "Stopped while thinking"
        else:
            self.step.name = f"Thought for {seconds:.0f} s" if seconds >= 1 else "Thought for <1 s"
            if not answered:
                self.step.name += " (no answer: the token budget ran out)"
        await self.step.__aexit__(None, None, None)


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------


@dataclass
class SourceView:
    """One source as the reader sees it under an answer."""

    number: int  # [n] in the answer and in the prompt
    label: str  # the file (and section when it says more than the file name)
    location: str  # file, with page for PDFs
    excerpt: str  # the text the model was given
    score: float  # BM25
    cited_by: str  # CITED_BY_MODEL or CITED_BY_APP
    # The excerpt cut into [text, highlighted] runs: words of the question are highlighted.
    segments: list[list] = field(default_factory=list)


# Question words the search keeps as terms but a reader does not look for in a passage.
_NOT_HIGHLIGHTED = frozenset(analyze(" ".join(
    ["how", "does", "do", "did", "what", "which", "who", "whom", "why", "when", "where", "can", "could", "would",
     "should", "tell", "explain", "describe", "please"])))


def highlight_segments(text: str, question: str) -> list[list]:
    """``text`` as [[run, is_match], ...] where matches are words whose BM25 term is one of the question's."""
    terms = set(analyze(question)) - _NOT_HIGHLIGHTED
    segments: list[list] = []
    position = 0
    for match in _WORD.finditer(text):
        stems = analyze(match.group(0))
        hit = bool(stems) and stems[0] in terms
        if not hit:
            continue
        if match.start() > position:
            segments.append([text[position:match.start()], False])
        segments.append([match.group(0), True])
        position = match.end()
    if position < len(text):
        segments.append([text[position:], False])
    return segments


def source_label(scored: ScoredChunk) -> str:
    """The file (with its PDF page), then the page title and section when they say more than the file name."""
    return scored.chunk.citation


def source_views(record: TurnRecord) -> list[SourceView]:
    """The sources to list under an answer: those the model cited, then those the app attributed; when the
    answer cites none, every source the model was given (marked as such)."""
    shown = record.cited_sources() or [(n, s, GIVEN) for n, s in enumerate(record.sources, start=1)]
    return [
        SourceView(
            number=number,
            label=source_label(scored),
            location=scored.chunk.location,
            excerpt=scored.chunk.text,
            score=round(scored.score, 2),
            cited_by=by,
            segments=highlight_segments(scored.chunk.text, record.question),
        )
        for number, scored, by in shown
    ]


def citation_anchor(anchor: str, number: int) -> str:
    return f"#source-{anchor}-{number}"


def link_citations(text: str, numbers: set[int], anchor: str) -> str:
    """Turn each cited number the sources list shows into a link the Sources element opens
    (``#source-<anchor>-<n>``). Numbers with no listed source (dangling ones) stay plain text."""

    def replace(match) -> str:
        parts = citation_numbers(match.group(0))
        if not any(p in numbers for p in parts):
            return match.group(0)
        linked = [f"[{p}]({citation_anchor(anchor, p)})" if p in numbers else str(p) for p in parts]
        return "\\[" + ", ".join(linked) + "\\]"

    return CITATION.sub(replace, text)


def sources_props(views: list[SourceView], anchor: str, dangling: list[int] = ()) -> dict:
    return {"anchor": anchor, "sources": [asdict(v) for v in views], "dangling": list(dangling),
            "app_mark": APP_MARK}


def sources_element(views: list[SourceView], anchor: str, dangling: list[int] = ()) -> cl.CustomElement:
    # Inline, not side: Chainlit opens its side panel by itself whenever side elements change.
    return cl.CustomElement(name="Sources", props=sources_props(views, anchor, dangling), display="inline")


def sources_line(views: list[SourceView]) -> str:
    """The sources in one line of text (for logs and tests; the chat shows the Sources element)."""
    if not views:
        return ""
    title = "Sources given to the model (none cited)" if views[0].cited_by == GIVEN else "Cited sources"
    return f"{title}: " + ", ".join(f"[{v.number}]{APP_MARK if v.cited_by == CITED_BY_APP else ''} {v.location}"
                                    for v in views)


def render_sources(record: TurnRecord, anchor: str) -> tuple[str, list[SourceView]]:
    """(the answer as shown, each cited [n] linked to its source; the sources to list) for a finished turn."""
    views = source_views(record)
    linked = {v.number for v in views if v.cited_by != GIVEN}
    return link_citations(record.display_text(), linked, anchor), views


def routing_line(record: TurnRecord) -> str:
    """What the router did, when there is more to say than "the small model answered"."""
    decision = record.routing
    if decision.action == "answered" and decision.mode != "draft_refine":
        return ""
    return f"*Routing: {decision.describe()}*"


# ------------------------------------------------------------------------------------------------
# Retrieval step
# ------------------------------------------------------------------------------------------------


def retrieval_text(event: SourcesFound, min_score: float) -> str:
    """The retrieval step's text: the query searched, then one row per source. Query, file names and excerpts
    come from users and files, so they are shown literally (no markdown)."""
    searched = f"Searched for: {md_text(event.query)}\n"
    if not event.sources:
        return f"{searched}\nNo source matched the question ({event.retrieval_ms:.1f} ms)."
    rows = [searched, "| # | score | source | excerpt |", "|---|---|---|---|"]
    for i, scored in enumerate(event.sources, start=1):
        excerpt = md_text(" ".join(scored.chunk.text.split())[:SNIPPET_CHARS])
        weak = "" if scored.score >= min_score else " (weak)"
        rows.append(f"| {i} | {scored.score:.2f}{weak} | {md_text(scored.chunk.citation)} | {excerpt}… |")
    rows.append(f"\n{len(event.sources)} sources in {event.retrieval_ms:.1f} ms.")
    return "\n".join(rows)


async def show_retrieval(event: SourcesFound, min_score: float) -> None:
    # show_input=False: the query goes in the text, not in a code box labelled "json".
    async with cl.Step(name="Retrieval", type="retrieval", default_open=False, show_input=False,
                       icon="search") as step:
        step.output = retrieval_text(event, min_score)


ESCALATION_STEP = "Escalated to the large model"
REFINE_STEP = "Draft set aside for refining"


async def show_escalation(reason: str, from_model: str, draft: str, early: bool, purpose: str = "answer") -> None:
    # A fixed step name: Chainlit asks /avatars/<name> for it, and a reason with "<" or ":" answers 400.
    name = REFINE_STEP if purpose == "refine" else ESCALATION_STEP
    async with cl.Step(name=name, type="llm", default_open=False, show_input=False, icon="arrow-up-right") as step:
        if purpose == "refine":
            why = f"**Why:** {reason}; the large model refines the draft."
        else:
            why = f"**Why:** {reason} ({'stopped early' if early else 'after the answer'})."
        step.output = f"{why}\n\nDraft by `{from_model}`, set aside:\n\n{draft or '(empty)'}"


# ------------------------------------------------------------------------------------------------
# Metrics bar
# ------------------------------------------------------------------------------------------------


def metrics_props(record: TurnRecord, session_cost_usd: float) -> dict:
    props = record.metrics.to_dict()
    props.update(record.summary.to_dict())  # the answering leg's rate and role, not the last leg's
    props["session_cost_usd"] = session_cost_usd
    return props


def metrics_element(record: TurnRecord, session_cost_usd: float) -> cl.CustomElement:
    return cl.CustomElement(name="MetricsBar", props=metrics_props(record, session_cost_usd), display="inline")


# ------------------------------------------------------------------------------------------------
# Routing modes in the settings
# ------------------------------------------------------------------------------------------------


@dataclass
class ServedModels:
    """The served model ids behind the small and large roles (the aliases when the server does not answer)."""

    small: str
    large: str
    error: str | None = None  # why the server could not be asked

    @property
    def one_model(self) -> bool:
        return self.small == self.large


def mode_labels(small: str, large: str) -> dict[str, str]:
    """One distinct label per routing mode, naming the model each uses (also when one model serves both roles)."""
    if small == large:
        return {
            RoutingMode.AUTOMATIC.value: f"Automatic — {small} answers; no escalation (same model in both roles)",
            RoutingMode.SMALL_ONLY.value: f"Small model only — {small}",
            RoutingMode.LARGE_ONLY.value: f"Large model only — {large} (same model as small)",
            RoutingMode.DRAFT_THEN_REFINE.value: f"Draft then refine — {small} drafts and refines",
        }
    return {
        RoutingMode.AUTOMATIC.value: f"Automatic — {small} first, {large} when the answer is weak",
        RoutingMode.SMALL_ONLY.value: f"Small model only — {small}",
        RoutingMode.LARGE_ONLY.value: f"Large model only — {large}",
        RoutingMode.DRAFT_THEN_REFINE.value: f"Draft then refine — {small} drafts, {large} corrects",
    }


def mode_description(small: str, large: str) -> str:
    text = "Which model answers. A change applies from the next message."
    if small == large:
        text += (f" One model, {small}, serves both the small and the large role here, so the modes give "
                 "the same answers; configure a second model to compare them.")
    return text


# ------------------------------------------------------------------------------------------------
# Charts
# ------------------------------------------------------------------------------------------------

NEUTRAL_TEXT = "#8b95a5"  # readable on Chainlit's light and dark backgrounds
NEUTRAL_GRID = "rgba(139, 149, 165, 0.25)"


def follow_theme(figure):
    """A figure that sits on the page's own background: transparent, with text and grid lines in a grey
    that reads on the light and the dark theme (Plotly's default template paints white boxes)."""
    figure.update_layout(
        template="none",
        paper_bgcolor="rgba(0,0,0,0)",
        plot_bgcolor="rgba(0,0,0,0)",
        font={"color": NEUTRAL_TEXT},
        legend={"bgcolor": "rgba(0,0,0,0)"},
    )
    figure.update_xaxes(gridcolor=NEUTRAL_GRID, linecolor=NEUTRAL_GRID, zerolinecolor=NEUTRAL_GRID)
    figure.update_yaxes(gridcolor=NEUTRAL_GRID, linecolor=NEUTRAL_GRID, zerolinecolor=NEUTRAL_GRID)
    return figure
