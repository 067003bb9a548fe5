import json

import pytest

from rag.documents import DocumentSet, DuplicateDocument
from rag.loaders import LoadError
from tests.fixtures.documents import docx_bytes, pdf_bytes, write


@pytest.mark.parametrize("backend", ["rank_bm25", "bm25s"])
def test_add_search_remove(tmp_path, backend):
    documents = DocumentSet(backend=backend)
    pdf = write(tmp_path / "upload-1", pdf_bytes(["Quarterly revenue grew.", "The budget for robots is 40k."]))
    added = documents.add_file(pdf, "report.pdf")
    assert (added.name, added.pages, added.chunks) == ("report.pdf", 2, 2)
    assert added.tokens > 5 and len(added.sha256) == 64
    docx = write(tmp_path / "upload-2", docx_bytes("Plan", [("Goals", ["Ship the robot arm in June."])]))
    documents.add_file(docx, "plan.docx")
    top = documents.search("robot budget", 2)[0].chunk
    assert (top.source, top.page) == ("report.pdf", 2)
    assert documents.remove("report.pdf") is True
    assert documents.remove("report.pdf") is False
    assert [d.name for d in documents.documents()] == ["plan.docx"]
    assert {r.chunk.source for r in documents.search("robot", 5)} == {"plan.docx"}


def test_a_single_short_document_is_found():
    documents = DocumentSet()
    documents.add_bytes(b"The wifi password is hunter2.", "wifi.txt")
    assert documents.search("what is the wifi password", 3)[0].chunk.source == "wifi.txt"


def test_duplicate_content_is_refused_even_under_another_name(tmp_path):
    documents = DocumentSet()
    documents.add_file(write(tmp_path / "a", "Same content."), "a.txt")
    with pytest.raises(DuplicateDocument, match="already in this conversation") as error:
        documents.add_file(write(tmp_path / "b", "Same content."), "b.txt")
    assert isinstance(error.value, LoadError)
    assert len(documents) == 1


def test_same_name_different_content_gets_a_unique_name():
    documents = DocumentSet()
    documents.add_bytes(b"First version.", "notes.md")
    second = documents.add_bytes(b"Second version.", "notes.md")
    assert second.name == "notes (2).md"


def test_bad_files_raise_load_error(tmp_path):
    documents = DocumentSet()
    with pytest.raises(LoadError, match="password-protected|could not be read"):
        documents.add_file(write(tmp_path / "x", pdf_bytes(["t"])[:50]), "cut.pdf")
    with pytest.raises(LoadError, match="not supported"):
        documents.add_bytes(b"MZ\x90\x00", "tool.exe")
    with pytest.raises(LoadError, match="could not be read"):
        documents.add_file(tmp_path / "missing", "missing.txt")
    assert len(documents) == 0


def test_display_name_is_never_used_as_a_path(tmp_path):
    documents = DocumentSet()
    added = documents.add_file(write(tmp_path / "upload", "Harmless text."), "../../etc/passwd.txt")
    assert added.name == "passwd.txt"
    weird = documents.add_bytes(b"Other text.", "..\\..\\evil\x00\x1b.md")
    assert weird.name == "evil.md"


def test_state_round_trip_through_json():
    documents = DocumentSet(chunk_tokens=60, chunk_overlap=10)
    documents.add_bytes(" ".join(f"Point {i} about satellites." for i in range(50)).encode(), "space.txt")
    documents.add_bytes(pdf_bytes(["Moon page.", "Mars page."]), "planets.pdf")
    state = json.loads(json.dumps(documents.to_state()))
    restored = DocumentSet.from_state(state, backend="bm25s")
    assert restored.documents() == documents.documents()
    assert (restored.chunk_tokens, restored.chunk_overlap) == (60, 10)
    for query in ("satellites point 7", "Mars"):
        assert [(r.chunk.id, r.chunk.text, r.score) for r in restored.search(query, 3)] == [
            (r.chunk.id, r.chunk.text, r.score) for r in documents.search(query, 3)]
    with pytest.raises(DuplicateDocument):
        restored.add_bytes(pdf_bytes(["Moon page.", "Mars page."]), "again.pdf")


@pytest.mark.parametrize("state", [{}, {"version": 99}, {"version": 1, "chunk_tokens": 300}, {"version": 1, "chunk_tokens": 300, "chunk_overlap": 50, "documents": [{"name": "x"}]}])
def test_unreadable_state_raises_value_error(state):
    with pytest.raises(ValueError):
        DocumentSet.from_state(state)


async def test_asearch_matches_search():
    documents = DocumentSet()
    documents.add_bytes(b"Tea is served at four.", "tea.txt")
    assert await documents.asearch("when is tea", 2) == documents.search("when is tea", 2)
