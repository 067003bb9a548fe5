"""The chat's rendering helpers (ui.py): cited sources, citation links, highlights, routing labels, chart theme."""

from __future__ import annotations

import re

from rag.types import Chunk, ScoredChunk
import ui

ROUTING = Chunk(id="routing.md#2", text="The router escalates weak answers to the large model.", source="routing.md",
                title="Early escalation", position=2, doc_title="Routing and escalation", section="Early escalation")
MANUAL = Chunk(id="manual.pdf#7", text="Escalation happens when confidence is low.", source="manual.pdf",
               title="manual.pdf", position=7, page=4)
OVERVIEW = Chunk(id="overview.md#0", text="Quillfeather answers from documents.", source="overview.md",
                 title="overview", position=0)
USED = [ScoredChunk(ROUTING, 5.123), ScoredChunk(MANUAL, 2.5), ScoredChunk(OVERVIEW, 1.2)]


def test_the_question_words_are_highlighted_in_the_excerpt_by_their_search_terms():
    segments = ui.highlight_segments(ROUTING.text, "When does the router escalate answers?")
    assert "".join(run for run, _ in segments) == ROUTING.text  # nothing lost or added
    highlighted = [run for run, hit in segments if hit]
    assert highlighted == ["router", "escalates", "answers"]  # stems match: escalate ~ escalates
    assert not any(hit for run, hit in ui.highlight_segments("The the of", "the"))  # stopwords never
    assert not any(hit for run, hit in ui.highlight_segments("How does it do that", "How does it do that?"))


def test_citations_become_links_to_their_source_and_unknown_numbers_stay_text():
    text = "Weak answers escalate [1]. Low confidence too [1, 2]. Also [7]."
    linked = ui.link_citations(text, {1, 2}, "msg-1")
    assert "\\[[1](#source-msg-1-1)\\]" in linked
    assert "\\[[1](#source-msg-1-1), [2](#source-msg-1-2)\\]" in linked
    assert linked.endswith("Also [7].")


def test_a_source_is_labelled_with_its_file_page_and_section():
    assert ui.source_label(USED[0]) == "routing.md — Routing and escalation › Early escalation"
    assert ui.source_label(USED[1]) == "manual.pdf, page 4"
    assert ui.source_label(USED[2]) == "overview.md"


def test_routing_labels_stay_distinct_when_one_model_serves_both_roles():
    labels = ui.mode_labels("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    assert len(set(labels.values())) == 4
    assert "same model" in labels["large"] and "Small model only" in labels["small"]
    assert "both" in ui.mode_description("a", "a") and "both" not in ui.mode_description("a", "b")
    two = ui.mode_labels("phi", "gpt")
    assert "phi" in two["small"] and "gpt" in two["large"] and len(set(two.values())) == 4


def test_the_latency_chart_has_no_white_boxes():
    import plotly.graph_objects as go

    figure = ui.follow_theme(go.Figure(go.Bar(x=["#1"], y=[3])))
    layout = figure.to_plotly_json()["layout"]
    assert layout["paper_bgcolor"] == layout["plot_bgcolor"] == "rgba(0,0,0,0)"
    assert re.match(r"#8b95a5", layout["font"]["color"])
