"""Names and excerpts from files are shown without markdown: no remote image or link can come from them."""

from __future__ import annotations

import re

import ui
from assistant.events import SourcesFound
from rag.types import Chunk, ScoredChunk

IMAGE = "![x](http://evil.example/x.png)"
# Markdown that would load or link something: an inline image or link, a reference use, a definition.
ACTIVE = re.compile(r"(?<!\\)\]\(|(?<!\\)\]\[|^\s*(?:[>*+-]\s*)*(?<!\\)\[[^\]\n]*\]:", re.MULTILINE)


def test_md_text_shows_names_literally_on_one_line():
    shown = ui.md_text(f"{IMAGE}.md")
    assert not ACTIVE.search(shown)
    assert shown.replace("\\", "") == f"{IMAGE}.md"
    assert ui.md_text("a|b\n# c") == "a\\|b \\# c"


def test_the_retrieval_step_shows_queries_names_and_excerpts_literally():
    chunk = Chunk(id="c#0", text=f"Revenue rose. {IMAGE} [site](http://evil.example) | cell", source=f"{IMAGE}.md",
                  title="t", position=0, page=2)
    event = SourcesFound(query=f"what about {IMAGE}?", sources=[ScoredChunk(chunk, 2.0)], retrieval_ms=1.0,
                         supported=True)
    text = ui.retrieval_text(event, min_score=1.0)
    assert not ACTIVE.search(text), text
    assert "evil\\.example/x\\.png" in text  # shown, as text
    rows = [line for line in text.splitlines() if line.startswith("| 1 |")]
    assert len(rows) == 1 and rows[0].count(" | ") == 3  # the excerpt's "|" does not add a table cell


def test_the_sources_element_carries_text_not_markdown():
    # The Sources element renders its props as React text: labels and excerpts go in as data, unescaped.
    chunk = Chunk(id="c#0", text=f"x {IMAGE}", source=f"{IMAGE}.md", title="t", position=0, page=2)
    view = ui.SourceView(number=1, label=ui.source_label(ScoredChunk(chunk, 2.0)), location=chunk.location,
                         excerpt=chunk.text, score=2.0, cited_by=ui.CITED_BY_MODEL)
    props = ui.sources_props([view], "a1")
    assert props["sources"][0]["excerpt"] == f"x {IMAGE}"
