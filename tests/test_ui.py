"""The chat's rendering helpers (ui.py): cited sources, citation links, highlights, routing labels, chart theme."""

from __future__ import annotations

import re

from rag.types import Chunk, ScoredChunk
from routing.metrics import LegMetrics, TurnMetrics
import ui

ROUTING = Chunk(id="routing.md#2", text="The router escalates weak answers to the large model.", source="routing.md",
                title="Early escalation", position=2)
MANUAL = Chunk(id="manual.pdf#7", text="Escalation happens when confidence is low.", source="manual.pdf",
               title="manual.pdf", position=7, page=4)
OVERVIEW = Chunk(id="overview.md#0", text="Quillfeather answers from documents.", source="overview.md",
                 title="overview", position=0)
USED = [ScoredChunk(ROUTING, 5.123), ScoredChunk(MANUAL, 2.5), ScoredChunk(OVERVIEW, 1.2)]


def test_cited_sources_are_listed_in_citation_order_with_file_page_section_and_excerpt():
    views = ui.source_views(USED, cited=[2, 1, 9], question="When does the router escalate?")
    assert [v.number for v in views] == [2, 1]  # [9] names no source: not listed
    manual, routing = views
    assert manual.location == "manual.pdf, page 4" and manual.label == "manual.pdf, page 4"
    assert routing.label == "routing.md — Early escalation"  # the section when it says more than the file
    assert routing.excerpt == ROUTING.text and routing.score == 5.12
    assert {v.cited_by for v in views} == {ui.CITED_BY_MODEL}


def test_when_the_answer_cites_nothing_every_source_given_is_listed_as_not_cited():
    views = ui.source_views(USED, cited=[], question="anything")
    assert [v.number for v in views] == [1, 2, 3]
    assert {v.cited_by for v in views} == {ui.CITED_BY_APP}
    assert ui.source_views([], cited=[1], question="x") == []


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


def test_render_sources_links_the_cited_numbers_and_lists_the_sources_for_the_element():
    from assistant.events import TurnFinished

    finished = TurnFinished(text="It escalates [1].", answered_by="m", metrics=TurnMetrics(), cited=[1],
                            sources_used=USED)
    text, views = ui.render_sources(finished, "escalate", anchor="abc")
    assert text == "It escalates \\[[1](#source-abc-1)\\]."
    assert ui.sources_line(views).startswith("Cited sources: [1] routing.md")
    props = ui.sources_props(views, "abc")
    assert props["anchor"] == "abc" and [s["number"] for s in props["sources"]] == [1]
    assert props["sources"][0]["segments"][1] == ["escalates", True]
    uncited = TurnFinished(text="It escalates.", answered_by="m", metrics=TurnMetrics(), sources_used=USED)
    text, views = ui.render_sources(uncited, "escalate", anchor="abc")
    assert text == "It escalates." and len(views) == 3


def test_routing_labels_stay_distinct_when_one_model_serves_both_roles():
    labels = ui.mode_labels("SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct")
    assert len(set(labels.values())) == 4
    assert "same model" in labels["large"] and "Small model only" in labels["small"]
    assert "both" in ui.mode_description("a", "a") and "both" not in ui.mode_description("a", "b")
    two = ui.mode_labels("phi", "gpt")
    assert "phi" in two["small"] and "gpt" in two["large"] and len(set(two.values())) == 4


def test_metrics_props_name_the_role_that_answered():
    def leg(role, model, outcome):
        return LegMetrics(role=role, alias=role, model=model, outcome=outcome, ttft_ms=1, generation_ms=1,
                          total_ms=2, prompt_tokens=1, completion_tokens=1, tokens_estimated=False,
                          decode_tokens_per_s=10, cost_usd=0)

    metrics = TurnMetrics(answered_by="big", legs=[leg("small", "tiny", "escalated"), leg("large", "big", "answered")])
    assert ui.metrics_props(metrics, 0.0)["answered_role"] == "large"
    assert ui.metrics_props(TurnMetrics(), 0.0)["answered_role"] is None


def test_the_latency_chart_has_no_white_boxes():
    import plotly.graph_objects as go

    figure = ui.follow_theme(go.Figure(go.Bar(x=["#1"], y=[3])))
    layout = figure.to_plotly_json()["layout"]
    assert layout["paper_bgcolor"] == layout["plot_bgcolor"] == "rgba(0,0,0,0)"
    assert re.match(r"#8b95a5", layout["font"]["color"])
