"""One index for shared knowledge and uploads: scopes, one set of statistics, isolation (also after restart),
title/section fields, the knowledge folder watched."""

import time

import pytest

from rag.documents import DocumentSet
from rag.index import DEFAULT_WEIGHTS, Collection, Segment, search_segments
from rag.knowledge import KnowledgeBase
from rag.types import Chunk
from tests.fixtures.documents import write


@pytest.fixture
def kb(tmp_path):
    folder = tmp_path / "knowledge"
    write(folder / "pets.md", "# Pets\n\nThe office parrot is called Captain Beaky.\n")
    write(folder / "deploy.md", "# Deploying\n\nDeployments happen every Thursday after the standup.\n")
    write(folder / "lunch.md", "# Lunch\n\nTacos are served on Fridays in the kitchen.\n")
    knowledge = KnowledgeBase(folder, tmp_path / "cache")
    knowledge.refresh()
    return knowledge


def state_of(docs: DocumentSet) -> dict:
    return docs.to_state()


def test_each_conversation_sees_shared_knowledge_and_its_own_uploads_only(kb):
    alice = DocumentSet(collection=kb.collection, scope="alice")
    bob = DocumentSet(collection=kb.collection, scope="bob")
    alice.add_bytes(b"The vault code is 4711 and opens the server room.", "vault.txt")
    bob.add_bytes(b"The garden hose is stored behind the shed.", "garden.txt")

    assert [h.chunk.source for h in alice.search("vault code server room", 5)][0] == "vault.txt"
    assert "vault.txt" not in {h.chunk.source for h in bob.search("vault code server room", 5)}
    assert "garden.txt" not in {h.chunk.source for h in alice.search("garden hose shed", 5)}
    assert {h.chunk.source for h in kb.search("vault code garden hose", 5)} <= {"pets.md", "deploy.md", "lunch.md"}
    assert alice.search("parrot", 1)[0].chunk.source == "pets.md"  # shared knowledge is in every scope
    assert {h.chunk.scope for h in alice.search("vault parrot", 5)} == {"", "alice"}


def test_one_conversations_uploads_do_not_change_anothers_scores(kb):
    alice = DocumentSet(collection=kb.collection, scope="alice")
    bob = DocumentSet(collection=kb.collection, scope="bob")
    before = [(h.chunk.id, h.score) for h in bob.search("parrot Thursday", 5)]
    alice.add_bytes(b"Parrot parrot Thursday parrot. " * 20, "parrots.txt")
    assert [(h.chunk.id, h.score) for h in bob.search("parrot Thursday", 5)] == before


def test_an_upload_scores_as_it_would_in_the_shared_folder(kb, tmp_path):
    chat = DocumentSet(collection=kb.collection, scope="chat")
    chat.add_bytes(b"# Heron\n\nThe Heron release train departs every ninth Thursday.\n", "heron.md")
    uploaded = chat.search("When does the Heron release train depart?", 1)[0]

    write(kb.folder / "heron.md", "# Heron\n\nThe Heron release train departs every ninth Thursday.\n")
    kb.refresh()
    shared = kb.search("When does the Heron release train depart?", 1)[0]
    assert (uploaded.chunk.source, shared.chunk.source) == ("heron.md", "heron.md")
    assert uploaded.score == pytest.approx(shared.score)
    assert uploaded.score > 1.0


def test_isolation_holds_after_a_restart(kb, tmp_path):
    alice = DocumentSet(collection=kb.collection, scope="alice")
    alice.add_bytes(b"The vault code is 4711.", "vault.txt")
    saved = state_of(alice)

    restarted = KnowledgeBase(kb.folder, kb.cache_dir)
    assert restarted.refresh().cache == "reused"
    restored_alice = DocumentSet.from_state(saved, collection=restarted.collection, scope="alice")
    fresh_bob = DocumentSet(collection=restarted.collection, scope="bob")
    assert restored_alice.search("vault code", 1)[0].chunk.source == "vault.txt"
    assert "vault.txt" not in {h.chunk.source for h in fresh_bob.search("vault code", 5)}
    assert "vault.txt" not in {h.chunk.source for h in restarted.search("vault code", 5)}


def test_removing_the_last_upload_leaves_shared_knowledge(kb):
    chat = DocumentSet(collection=kb.collection, scope="chat")
    chat.add_bytes(b"Secret plans for the robot arm.", "plans.txt")
    assert chat.remove("plans.txt")
    assert kb.collection.scope_segment("chat") is None
    assert [h.chunk.source for h in chat.search("robot arm plans tacos", 5)] == ["lunch.md"]


def test_shared_scope_cannot_be_taken_by_a_conversation():
    with pytest.raises(ValueError):
        DocumentSet(scope="")
    with pytest.raises(ValueError):
        Collection().set_scope("", [])


def chunk(source, text, title, section=""):
    return Chunk(id=f"{source}#0", text=text, source=source, title=section or title, position=0,
                 doc_title=title, section=section)


def test_a_title_or_section_match_lifts_a_chunk():
    same_body = "Use a secret key to check that a message was not changed."
    chunks = [
        chunk("plain.html", same_body, "Utilities"),
        chunk("hmac.html", same_body, "hmac — Keyed-Hashing for Message Authentication"),
        chunk("notes.html", same_body, "Notes", "Message authentication"),
        chunk("titled.html", "This module implements RFC 2104.", "Message Authentication Codes"),
    ] + [chunk(f"filler{i}.html", f"Filler text {i} about gardens.", f"Filler {i}") for i in range(20)]
    segment = Segment.build(chunks)
    ranked = [h.chunk.source for h in search_segments([segment], "message authentication key", 10)]
    # Same body: the chunks whose title or section says it come first.
    assert ranked.index("hmac.html") < ranked.index("plain.html")
    assert ranked.index("notes.html") < ranked.index("plain.html")
    # The words only in a title still find the chunk; without the fields it is not found at all.
    assert "titled.html" in ranked
    body_only = [h.chunk.source for h in search_segments([segment], "message authentication", 10,
                                                          DEFAULT_WEIGHTS.without_structure)]
    assert "titled.html" not in body_only


def test_question_words_are_not_searched():
    chunks = [chunk("faq.html", "How do I do it? What do you think?", "How do I...?"),
              chunk("csv.html", "The csv module reads rows.", "csv — CSV File Reading")]
    segment = Segment.build(chunks)
    assert [h.chunk.source for h in search_segments([segment], "How do I read rows?", 5)] == ["csv.html"]


def test_the_watched_folder_is_reindexed_on_change(kb):
    assert kb.start_watching(debounce_ms=100)
    try:
        write(kb.folder / "new.md", "# Bicycles\n\nThe bicycle pump is in the basement.\n")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not kb.search("bicycle pump", 1):
            time.sleep(0.1)
        assert kb.search("bicycle pump", 1)[0].chunk.source == "new.md"
        (kb.folder / "pets.md").unlink()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and kb.search("parrot", 1):
            time.sleep(0.1)
        assert kb.search("parrot", 1) == []
    finally:
        kb.stop_watching()
    assert kb._watch_thread is None


def test_a_missing_folder_is_not_watched(tmp_path):
    assert KnowledgeBase(tmp_path / "nope", tmp_path / "cache").start_watching() is False


def test_progress_is_reported_per_processed_file(tmp_path):
    import io

    from rag.progress import TerminalProgress

    folder = tmp_path / "docs"
    for number in range(12):
        write(folder / f"page{number}.md", f"# Page {number}\n\nText {number}.")
    calls = []
    KnowledgeBase(folder, tmp_path / "cache").refresh(progress=lambda done, total, source: calls.append((done, total)))
    assert calls[0] == (1, 12) and calls[-1] == (12, 12)
    assert KnowledgeBase(folder, tmp_path / "cache").refresh(progress=lambda *a: calls.append(a)).cache == "reused"
    assert len(calls) == 12  # nothing processed from a warm cache

    stream = io.StringIO()
    bar = TerminalProgress(stream=stream)
    for done in range(1, 13):
        bar(done, 12, f"page{done}.md")
    lines = stream.getvalue().splitlines()
    assert lines[0] == "Indexing knowledge: 1/12 files (8 %)" and lines[-1] == "Indexing knowledge: 12/12 files (100 %)"
    assert len(lines) <= 11  # one line per tenth, not per file
