"""Ranking of rag.index: BM25F fields (a title or heading word counts more than a body word), evidence from the
rest of a page, and at most a few chunks of one page in a result list."""

from dataclasses import replace

from rag.index import DEFAULT_WEIGHTS, Segment, search_segments, with_page_evidence
from rag.knowledge import KnowledgeBase
from rag.types import Chunk
from tests.fixtures.documents import write

import numpy as np
import pytest


def chunk(source, text, title, section="", position=0):
    return Chunk(id=f"{source}#{position}", text=text, source=source, title=section or title, position=position,
                 doc_title=title, section=section)


FILLER = [chunk(f"filler{i}.html", f"Notes {i} about gardens, weather and the office kitchen.", f"Filler {i}")
          for i in range(30)]
NEUTRAL = "This part of the manual lists the functions of the module with examples."


def ranked(chunks, query, k=10, weights=DEFAULT_WEIGHTS):
    return [hit.chunk.source for hit in search_segments([Segment.build(chunks)], query, k, weights)]


def test_a_title_match_outranks_the_same_words_in_a_body():
    # The same words, once in a page title and once in another page's body (bodies otherwise identical).
    chunks = [
        chunk("in_body.html", f"Message authentication. {NEUTRAL}", "Utilities"),
        chunk("in_title.html", f"Utilities. {NEUTRAL}", "Message authentication"),
    ] + FILLER
    assert ranked(chunks, "message authentication")[:2] == ["in_title.html", "in_body.html"]


def test_a_section_heading_match_outranks_the_same_words_in_a_body():
    # A chunk further down a section: its heading is not in its text, only in its section field.
    chunks = [
        chunk("in_body.html", f"Temporary directories. {NEUTRAL}", "Files", "Overview"),
        chunk("in_heading.html", f"Overview. {NEUTRAL}", "Files", "Temporary directories"),
    ] + FILLER
    assert ranked(chunks, "temporary directories")[:2] == ["in_heading.html", "in_body.html"]


def test_without_the_fields_the_body_match_wins():
    chunks = [
        chunk("in_body.html", f"Message authentication. {NEUTRAL}", "Utilities"),
        chunk("in_title.html", f"Utilities. {NEUTRAL}", "Message authentication"),
    ] + FILLER
    assert ranked(chunks, "message authentication", weights=DEFAULT_WEIGHTS.without_structure) == ["in_body.html"]


def test_a_word_in_title_and_body_saturates_once():
    # BM25F: title and body frequencies are added before saturation, so a chunk matching both query words
    # (each in one field) beats a chunk repeating one word in every field.
    chunks = [
        chunk("both_words.html", f"Keyed hashing. {NEUTRAL}", "Message digests"),
        chunk("one_word.html", f"Hashing, hashing and more hashing. {NEUTRAL}", "Hashing", "Hashing"),
    ] + FILLER
    assert ranked(chunks, "keyed hashing")[0] == "both_words.html"


def test_a_page_with_several_passages_beats_one_stray_passage():
    page = [chunk("tempfile.html", text, "tempfile — Generate temporary files", position=n)
            for n, text in enumerate(["Create a temporary file that is deleted when closed.",
                                      "A temporary directory is removed with its contents.",
                                      "The temporary file name can be given a prefix."])]
    # One chunk elsewhere that matches a little better than any single tempfile chunk.
    stray = chunk("misc.html", "Temporary file, temporary file: a temporary file example.", "Miscellaneous")
    chunks = page + [stray] + FILLER
    alone = ranked(chunks, "temporary file", weights=replace(DEFAULT_WEIGHTS, page=0.0))
    assert alone[0] == "misc.html"
    assert ranked(chunks, "temporary file")[0] == "tempfile.html"


def test_page_evidence_counts_strong_chunks_only_with_decay():
    scores = np.array([10.0, 8.0, 6.0, 4.0, 9.0, 1.0])
    documents = np.array([0, 0, 0, 0, 1, 1])
    weights = replace(DEFAULT_WEIGHTS, page=0.5, page_decay=0.8, page_floor=0.5)
    boosted = with_page_evidence(scores, documents, weights)
    # Strong (>= 5): chunks 0, 1, 2 of document 0 and chunk 4 of document 1.
    assert boosted[0] == pytest.approx(10.0 + 0.5 * (0.8 * 8.0 + 0.64 * 6.0))
    assert boosted[1] == pytest.approx(8.0 + 0.5 * (0.8 * 10.0 + 0.64 * 6.0))
    assert boosted[2] == pytest.approx(6.0 + 0.5 * (0.8 * 10.0 + 0.64 * 8.0))
    assert boosted[3] == 4.0 and boosted[4] == 9.0 and boosted[5] == 1.0  # weak, or alone on its page
    assert np.array_equal(with_page_evidence(np.zeros(3), np.zeros(3, np.int64), weights), np.zeros(3))


def test_one_long_page_leaves_room_for_other_pages():
    long_page = [chunk("logging.config.html", f"Configure logging from a file, part {n}.", "logging.config", position=n)
                 for n in range(8)]
    others = [chunk("logging.html", "Logging messages to a file with a handler.", "logging"),
              chunk("handlers.html", "A handler that writes log records to a file.", "logging.handlers")]
    hits = search_segments([Segment.build(long_page + others + FILLER)], "configure logging file", 5)
    sources = [hit.chunk.source for hit in hits]
    assert sources.count("logging.config.html") == DEFAULT_WEIGHTS.per_document
    assert {"logging.html", "handlers.html"} <= set(sources)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    # Without the limit the long page fills the list.
    unlimited = search_segments([Segment.build(long_page + others + FILLER)], "configure logging file", 5,
                                replace(DEFAULT_WEIGHTS, per_document=0))
    assert [hit.chunk.source for hit in unlimited] == ["logging.config.html"] * 5


def test_a_single_matching_document_still_fills_the_list():
    page = [chunk("manual.html", f"Descaling the machine, step {n}.", "Manual", position=n) for n in range(6)]
    hits = search_segments([Segment.build(page + FILLER)], "descaling", 5)
    assert [hit.chunk.source for hit in hits] == ["manual.html"] * 5
    # A weak match elsewhere takes a place once the page has its three; the page fills the rest; best first.
    weak = chunk("other.html", "Descaling is mentioned once in this long text about unrelated gardens and "
                 "weather and kitchens and the office and more.", "Other")
    hits = search_segments([Segment.build(page + [weak] + FILLER)], "descaling", 5)
    assert [hit.chunk.source for hit in hits] == ["manual.html"] * 4 + ["other.html"]


def test_a_markdown_heading_lifts_its_section_in_a_knowledge_folder(tmp_path):
    # Through the loaders: the question's words are a heading in one file and body text in another.
    write(tmp_path / "kb" / "a.md", "# Guide\n\n## Rotating the API keys\n\nOpen the console and follow the steps.\n")
    write(tmp_path / "kb" / "b.md", "# Notes\n\n## Console\n\nRotating the API keys: open the console and follow the steps.\n")
    for n in range(10):
        write(tmp_path / "kb" / f"f{n}.md", f"# Filler {n}\n\nGardens and weather, note {n}.\n")
    kb = KnowledgeBase(tmp_path / "kb", tmp_path / "cache")
    kb.refresh()
    assert [hit.chunk.source for hit in kb.search("rotating API keys", 2)] == ["a.md", "b.md"]
