"""Citations: only real citation syntax counts, each [n] is linked to source n, dangling ones are listed apart,
and uncited sentences a source clearly supports get that source, marked as the app's."""

from rag.citations import citation_numbers, replace_citations, resolve_citations, split_sentences, strip_citations
from rag.types import Chunk, ScoredChunk

VACATION = ScoredChunk(
    Chunk(id="handbook.md#0", source="handbook.md", title="Vacation", position=0,
          text="Vacation: every employee gets 25 days of paid vacation per year. Up to 5 unused days carry over."),
    3.0,
)
EXPENSES = ScoredChunk(
    Chunk(id="expenses.md#0", source="expenses.md", title="Expenses", position=0,
          text="Expenses: receipts are required for any expense above 20 euros, submitted within 30 days."),
    2.0,
)
SOURCES = [VACATION, EXPENSES]


def test_only_citation_syntax_counts():
    assert citation_numbers("See [1], [2, 3] and [4-6].") == [1, 2, 3, 4, 5, 6]
    assert citation_numbers("[Source 2] and [sources 1 and 3]") == [2, 1, 3]
    assert citation_numbers("In [2024] the [100] rules [x] changed.") == []
    assert citation_numbers("a [link](https://example.org) and [3](#anchor)") == []


def test_each_citation_links_to_its_numbered_source_and_dangling_ones_are_apart():
    resolved = resolve_citations("Receipts are needed above 20 euros [2]. It changed in [2024] [7].", SOURCES)
    model = [c for c in resolved.citations if c.by == "model"]
    assert [(c.number, c.source.chunk.source, c.sentence) for c in model] == [(2, "expenses.md", 0)]
    assert resolved.dangling == [7]
    assert resolved.numbers() == [2]


def test_an_uncited_sentence_a_source_supports_is_attributed_by_the_app():
    text = "Every employee gets 25 days of paid vacation each year. The weather is nice today."
    resolved = resolve_citations(text, SOURCES)
    (citation,) = resolved.citations
    assert citation.by == "app" and citation.number == 1 and citation.sentence == 0
    assert citation.coverage >= 0.6


def test_weak_overlap_short_sentences_and_skipped_sentences_get_nothing():
    assert resolve_citations("Employees like days off and good weather in summer.", SOURCES).citations == []
    assert resolve_citations("25 days.", SOURCES).citations == []  # too few content words to judge
    decline = "The documents do not say how many vacation days employees get per year."
    assert resolve_citations(decline, SOURCES, skip_sentence=lambda s: "do not" in s).citations == []
    assert resolve_citations("Every employee gets 25 days of paid vacation.", SOURCES, attribute=False).citations == []


def test_a_citation_after_the_full_stop_belongs_to_the_sentence_before():
    sentences = split_sentences("Up to 5 unused days carry over. [1]\nReceipts are required. [2]")
    assert [s.text for s in sentences] == ["Up to 5 unused days carry over. [1]", "Receipts are required. [2]"]
    resolved = resolve_citations("Up to 5 unused days carry over. [1]", SOURCES)
    assert [(c.number, c.by, c.sentence) for c in resolved.citations] == [(1, "model", 0)]


def test_markers_are_stripped_or_replaced_by_labels():
    assert strip_citations("25 days [1]. Receipts [2, 3].") == "25 days. Receipts."
    labels = {1: "handbook.md", 2: "expenses.md"}
    assert replace_citations("25 days [1]. Receipts [2, 9]. Over [9].", labels.get) == (
        "25 days (handbook.md). Receipts (expenses.md). Over."
    )
