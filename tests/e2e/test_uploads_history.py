"""Uploads and history in the browser: hostile files, a cited upload, and a thread that survives a restart."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import AppServer, ask, make_app_root, open_chat, wait_for_answer, wait_for_answer_with_sources
from tests.fixtures.documents import encrypted_pdf_bytes, pdf_bytes
from benchmarks.hostile_files import hostile_files

pytestmark = pytest.mark.e2e

UPLOAD_FACT = (
    "# Falcon rollout\n\nThe Falcon rollout checklist has exactly seventeen steps. "
    "Step eleven is the canary review, owned by the platform team. Falcon launches on a Tuesday.\n"
)


@pytest.fixture
def own_app(embedded_model, tmp_path):
    server = AppServer(make_app_root(tmp_path / "root"), embedded_model.base_url,
                       embedded_model.small_name, embedded_model.large_name,
                       extra_env={"ASSISTANT_UPLOAD_MAX_MB": "1"})
    server.start()
    yield server
    server.stop()


def upload(page, files: list[dict]) -> None:
    page.locator("#upload-button-input").set_input_files(files)


def test_hostile_and_broken_files_each_get_a_message_and_the_rest_goes_through(page, own_app):
    open_chat(page, own_app)
    hostile = {item.name: item.data for item in hostile_files() if item.name in ("deep.json", "bomb.docx")}
    good = pdf_bytes(["Quarterly numbers page one", "The margin target is nine percent"])
    upload(page, [
        {"name": "truncated.pdf", "mimeType": "application/pdf", "buffer": good[: len(good) // 2]},
        {"name": "locked.pdf", "mimeType": "application/pdf", "buffer": encrypted_pdf_bytes(["secret text"])},
        {"name": "empty.txt", "mimeType": "text/plain", "buffer": b""},
        {"name": "binary.txt", "mimeType": "text/plain", "buffer": bytes(range(256)) * 40},
        {"name": "latin1.txt", "mimeType": "text/plain", "buffer": "Café crème brûlée, façade naïve.".encode("latin-1")},
        {"name": "../../etc/passwd.md", "mimeType": "text/markdown", "buffer": b"# Not a path\nroot fact"},
        {"name": "huge.txt", "mimeType": "text/plain", "buffer": b"word " * 300_000},
        {"name": "deep.json", "mimeType": "application/json", "buffer": hostile["deep.json"]},
        {"name": "bomb.docx", "buffer": hostile["bomb.docx"],
         "mimeType": "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
        {"name": "report.pdf", "mimeType": "application/pdf", "buffer": good},
    ])
    # Empty and over-size files are refused by the upload endpoint (the app's route ahead of Chainlit's), with
    # the app's reason naming the file, which the browser shows in a toast (read it before it fades).
    toasts = {}
    for text in ("empty.txt was not uploaded: the file is empty", "huge.txt was not uploaded: the file is"):
        toast = page.get_by_text(text).first
        toast.wait_for(timeout=30_000)
        toasts[text] = toast.inner_text()
    assert "MB limit" in toasts["huge.txt was not uploaded: the file is"]
    ask(page, "/docs")
    page.get_by_text("This conversation's uploads").first.wait_for(timeout=30_000)
    body = page.locator("body").inner_text()
    for name in ("truncated.pdf", "locked.pdf", "binary.txt", "deep.json", "bomb.docx"):
        assert f"{name} was not added" in body, f"no refusal message for {name}"
    assert "password-protected" in body and "binary data" in body and "levels deep" in body and "zip bomb" in body
    # Refused files are not previewed (an encrypted PDF's preview asked for its password over and over): of the
    # three PDFs, only the accepted one keeps its inline preview.
    assert page.locator(".inline-pdf").count() == 1
    # Refused files are not kept.
    kept = [path.name for path in (own_app.data_dir / "uploads").rglob("*") if path.is_file()]
    assert not [name for name in kept if any(bad in name for bad in ("locked", "truncated", "binary", "deep", "bomb"))]
    for name in ("latin1.txt", "report.pdf"):
        assert f"{name} is ready for this conversation" in body, f"{name} was not accepted"
    assert "2 pages" in body  # the good PDF's confirmation names its pages
    assert "passwd.md is ready" in body
    # The app still answers after the batch.
    ask(page, "What is the margin target?")
    assert "report.pdf" in wait_for_answer_with_sources(page).lower()  # source links render in capitals
    stored = list((own_app.data_dir / "uploads").rglob("*passwd*"))
    assert stored and all(own_app.data_dir in p.parents for p in stored)
    assert not (own_app.root / "etc").exists()


def test_upload_is_cited_and_survives_a_restart_with_its_history(page, own_app):
    open_chat(page, own_app)
    upload(page, [{"name": "falcon.md", "mimeType": "text/markdown", "buffer": UPLOAD_FACT.encode()}])
    ask(page, "How many steps does the Falcon rollout checklist have?")
    first = wait_for_answer_with_sources(page)
    assert "falcon.md" in first.lower()
    page.get_by_text("falcon.md is ready for this conversation").first.wait_for()
    thread_url = page.url
    assert "/thread/" in thread_url

    own_app.restart()

    page.goto(thread_url)
    page.get_by_text("How many steps does the Falcon rollout checklist have?").first.wait_for(timeout=30_000)
    bar = page.locator('[data-testid="metrics-bar"]').first
    bar.wait_for()
    assert own_app.small_model in bar.inner_text()  # the metrics element came back with its numbers
    ask(page, "Who owns the canary review step of the Falcon rollout?")
    follow_up = wait_for_answer_with_sources(page)
    assert "falcon.md" in follow_up.lower()  # the restored upload is still searched


def test_an_upload_in_one_conversation_is_not_retrieved_in_another(page, own_app):
    open_chat(page, own_app)
    upload(page, [{"name": "falcon.md", "mimeType": "text/markdown", "buffer": UPLOAD_FACT.encode()}])
    ask(page, "How many steps does the Falcon rollout checklist have?")
    assert "falcon.md" in wait_for_answer_with_sources(page).lower()

    open_chat(page, own_app)  # a new conversation
    ask(page, "How many steps does the Falcon rollout checklist have?")
    assert "falcon.md" not in wait_for_answer(page).lower()
    # What was searched and found, in the retrieval step's own text (no custom element to wait for).
    page.locator('[id="step-Retrieval"]').last.click()
    step = page.locator('[data-step-type="retrieval"]').last
    step.get_by_text("Searched for").wait_for()
    assert "falcon.md" not in step.inner_text().lower()  # (the query itself says "Falcon")
