"""Chainlit rendering of the pipeline's events: retrieval steps, source elements, the metrics bar."""

from __future__ import annotations

import re

import chainlit as cl

from assistant.events import SourcesFound
from assistant.record import APP_MARK, TurnRecord
from rag.types import ScoredChunk

ANSWER_FOOTER = "\n\n---\n"
SNIPPET_CHARS = 160
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~])")


def md_text(text: str) -> str:
    """Text from a file (a name, an excerpt, a refusal) shown literally: no markdown, so no image, link or
    table cell can come from it; on one line."""
    return _MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(text).split()))


def md_defused(text: str) -> str:
    """Document text that keeps its markdown formatting but can load nothing: ``](`` and ``][`` are broken and
    link definitions escaped, so no image or link (inline, reference or shortcut form) survives."""
    text = text.replace("](", "]\\(").replace("][", "]\\[")
    return re.sub(r"\[(?=[^\]\n]*\]:)", r"\\[", text)


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


def source_label(number: int, scored: ScoredChunk) -> str:
    # The browser turns each occurrence of an element's name into a markdown link [name](...), so the name itself
    # must not hold markdown: brackets become parentheses and backticks/angle brackets/backslashes go.
    citation = scored.chunk.citation.replace("[", "(").replace("]", ")")
    citation = " ".join(re.sub(r"[`<>\\]", "", citation).split())
    return f"[{number}] {citation}"


async def show_retrieval(event: SourcesFound, min_score: float) -> None:
    async with cl.Step(name="Retrieval", type="retrieval", default_open=False) as step:
        step.input = event.query
        if not event.sources:
            step.output = f"No source matched the question ({event.retrieval_ms:.1f} ms)."
            return
        rows = ["| # | score | source | excerpt |", "|---|---|---|---|"]
        for i, scored in enumerate(event.sources, start=1):
            excerpt = md_text(" ".join(scored.chunk.text.split())[:SNIPPET_CHARS])
            weak = "" if scored.score >= min_score else " (weak)"
            rows.append(f"| {i} | {scored.score:.2f}{weak} | {md_text(scored.chunk.citation)} | {excerpt}… |")
        rows.append(f"\n{len(event.sources)} sources in {event.retrieval_ms:.1f} ms.")
        step.output = "\n".join(rows)


def source_elements(record: TurnRecord) -> tuple[str, list[cl.Text]]:
    """The 'Sources' footer lines and one side-panel element per cited source (all given sources if none is cited).

    Sources the model cited come first; then those the app attributed to uncited sentences (marked †);
    numbers that point at no source are named apart and linked to nothing.
    """
    if not record.sources:
        return "", []
    cited = record.cited_sources()
    shown = cited or [(n, s, "given") for n, s in enumerate(record.sources, start=1)]
    elements, labels = [], {"model": [], "app": [], "given": []}
    for number, scored, by in shown:
        label = source_label(number, scored)
        labels[by].append(label + (APP_MARK if by == "app" else ""))
        heading = (f"**{md_text(scored.chunk.title)}** — {md_text(scored.chunk.citation)} "
                   f"(chunk {scored.chunk.position + 1}, score {scored.score:.2f})")
        elements.append(cl.Text(name=label, content=f"{heading}\n\n{md_defused(scored.chunk.text)}", display="side"))
    lines = []
    if labels["model"]:
        lines.append("Cited sources: " + ", ".join(labels["model"]))
    if labels["app"]:
        lines.append(f"Attributed by the app ({APP_MARK}: the model did not cite it; the sentence's words are in it): "
                     + ", ".join(labels["app"]))
    if labels["given"]:
        lines.append("Sources given to the model (none cited): " + ", ".join(labels["given"]))
    if record.dangling:
        lines.append("Citations that point at no source: " + ", ".join(f"[{n}]" for n in record.dangling))
    return "\n\n".join(lines), elements


def routing_line(record: TurnRecord) -> str:
    """What the router did, when there is more to say than "the small model answered"."""
    decision = record.routing
    if decision.action == "answered" and decision.mode != "draft_refine":
        return ""
    return f"*Routing: {decision.describe()}*"


def metrics_props(record: TurnRecord, session_cost_usd: float) -> dict:
    props = record.metrics.to_dict()
    props.update(record.summary.to_dict())  # the answering leg's rate, not the last leg's
    props["session_cost_usd"] = session_cost_usd
    return props


def metrics_element(record: TurnRecord, session_cost_usd: float) -> cl.CustomElement:
    return cl.CustomElement(name="MetricsBar", props=metrics_props(record, session_cost_usd), display="inline")
