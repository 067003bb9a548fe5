import pytest

from rag.chunking import Section, chunk_sections, chunk_text, split_markdown_sections
from rag.loaders import load_bytes
from rag.tokens import count_tokens
from tests.fixtures.documents import pdf_bytes


def numbered_sentences(count: int, topic: str = "retrieval") -> str:
    return " ".join(f"Sentence {i} explains part {i} of {topic} in plain words." for i in range(count))


def test_headings_start_new_chunks_and_name_them():
    text = "# Setup\n\nInstall the package.\n\n# Usage\n\nAsk a question.\n"
    chunks = chunk_text(text, source="guide.md", title="Guide")
    assert [c.title for c in chunks] == ["Setup", "Usage"]
    assert chunks[0].text == "# Setup\n\nInstall the package."
    assert chunks[1].text == "# Usage\n\nAsk a question."
    assert [c.position for c in chunks] == [0, 1]
    assert [c.id for c in chunks] == ["guide.md#0", "guide.md#1"]


def test_text_before_any_heading_uses_the_document_title():
    chunks = chunk_text("Opening words.\n\n## Later\n\nMore.", source="a.md", title="Doc title")
    assert [c.title for c in chunks] == ["Doc title", "Later"]


def test_chunks_respect_the_size_limit_and_overlap():
    text = numbered_sentences(120)
    chunks = chunk_text(text, source="long.txt", chunk_tokens=100, overlap=30)
    assert len(chunks) > 5
    for chunk in chunks:
        assert chunk.tokens == count_tokens(chunk.text) <= 100
        assert chunk.text in text  # every chunk is an exact slice of the document
    for previous, following in zip(chunks, chunks[1:]):
        shared = next(previous.text[i:] for i in range(len(previous.text)) if following.text.startswith(previous.text[i:]))
        assert shared.startswith("Sentence") and shared.endswith("plain words.")  # whole sentences are repeated
        assert 0 < count_tokens(shared) <= 30


def test_zero_overlap_partitions_the_text():
    text = numbered_sentences(60)
    chunks = chunk_text(text, source="t.txt", chunk_tokens=80, overlap=0)
    assert " ".join(c.text for c in chunks) == text


def test_chunks_prefer_paragraph_breaks():
    paragraph_a = numbered_sentences(5, "alpha")  # ~70 tokens
    paragraph_b = numbered_sentences(5, "beta")
    text = f"{paragraph_a}\n\n{paragraph_b}"
    chunks = chunk_text(text, source="p.txt", chunk_tokens=120, overlap=0)
    assert chunks[0].text == paragraph_a  # not filled up with the start of the next paragraph
    assert chunks[1].text == paragraph_b


def test_a_sentence_longer_than_a_chunk_is_cut_at_token_boundaries():
    text = " ".join(f"word{i}" for i in range(400))  # one "sentence", no punctuation
    chunks = chunk_text(text, source="w.txt", chunk_tokens=50, overlap=0)
    assert len(chunks) >= 8
    assert all(c.tokens <= 50 for c in chunks)
    assert "".join(c.text for c in chunks).replace(" ", "") == text.replace(" ", "")


def test_pdf_pages_are_kept_on_chunks():
    document = load_bytes(pdf_bytes(["First page about apples.", "Second page about pears."]), "fruit.pdf")
    chunks = chunk_sections(document.sections, source="fruit.pdf", title=document.title)
    assert [(c.page, c.text) for c in chunks] == [(1, "First page about apples."), (2, "Second page about pears.")]
    assert chunks[1].location == "fruit.pdf, page 2"


def test_sections_never_share_a_chunk():
    sections = [Section("A", "Alpha text."), Section("B", "Beta text.")]
    chunks = chunk_sections(sections, source="s", title="S", chunk_tokens=300, overlap=50)
    assert [c.text for c in chunks] == ["Alpha text.", "Beta text."]


def test_bare_heading_joins_the_section_below():
    sections = split_markdown_sections("# Book\n## Chapter\n\nText of the chapter.")
    assert len(sections) == 1
    assert sections[0].heading == "Chapter"
    assert sections[0].text.startswith("# Book")


@pytest.mark.parametrize(("size", "overlap"), [(4, 0), (100, 100), (100, -1)])
def test_invalid_sizes_are_refused(size, overlap):
    with pytest.raises(ValueError):
        chunk_text("text", source="x", chunk_tokens=size, overlap=overlap)
