import logging

import pytest

from rag.loaders import LoadError, decode_text, load_bytes, load_file, load_folder
from tests.fixtures.documents import docx_bytes, encrypted_pdf_bytes, pdf_bytes, write


def test_markdown_sections_follow_headings():
    document = load_bytes(b"# Guide\n\nIntro text.\n\n## Install\n\nRun the installer.\n", "guide.md")
    assert document.title == "Guide"
    assert [s.heading for s in document.sections] == ["Guide", "Install"]
    assert "Run the installer." in document.sections[1].text


def test_markdown_heading_inside_code_fence_is_not_a_heading():
    document = load_bytes(b"# Real\n\ntext\n\n```\n# not a heading\n```\n", "code.md")
    assert [s.heading for s in document.sections] == ["Real"]


def test_restructuredtext_titles():
    text = b"========\nHandbook\n========\n\nSetup\n-----\n\nInstall it.\n\nUsage\n-----\n\nAsk questions.\n"
    document = load_bytes(text, "handbook.rst")
    assert document.title == "Handbook"
    assert [s.heading for s in document.sections] == ["Setup", "Usage"]
    assert document.sections[1].text.endswith("Ask questions.")


def test_html_keeps_visible_text_only():
    html = (
        b"<html><head><title>Ops page</title><style>body{color:red}</style>"
        b"<script>var token='hidden-script-text';</script></head><body><h1>Runbook</h1>"
        b"<p>Restart the service.</p><noscript>enable js</noscript><script>alert('x')</script>"
        b"<ul><li>First step</li><li>Second step</li></ul></body></html>"
    )
    document = load_bytes(html, "ops.html")
    assert document.title == "Ops page"
    assert "Restart the service." in document.text
    assert "First step\nSecond step" in document.text
    assert "hidden-script-text" not in document.text
    assert "color:red" not in document.text and "alert" not in document.text
    assert document.sections[0].heading == "Runbook"


def test_pdf_text_per_page():
    document = load_bytes(pdf_bytes(["Page one talks about (alpha).", "Page two\nabout beta."]), "report.pdf")
    assert document.pages == 2
    assert [s.page for s in document.sections] == [1, 2]
    assert "alpha" in document.sections[0].text
    assert "beta" in document.sections[1].text


def test_docx_headings_paragraphs_and_tables():
    data = docx_bytes(
        "Team guide", [("Setup", ["Install the app.", "Start it."]), ("Usage", ["Ask a question."])], [["key", "value"], ["port", "8000"]]
    )
    document = load_bytes(data, "guide.docx")
    assert document.title == "Team guide"
    assert [s.heading for s in document.sections] == ["Setup", "Usage"]
    assert "Install the app." in document.sections[0].text
    assert "port | 8000" in document.text


def test_csv_rows_become_text():
    document = load_bytes(b"name,role\nAda,engineer\nBob,designer\n", "people.csv")
    assert "name: Ada; role: engineer" in document.text
    assert "name: Bob; role: designer" in document.text


def test_json_values_keep_their_keys():
    document = load_bytes(b'{"service": {"port": 8000, "hosts": ["a.local", "b.local"]}}', "config.json")
    assert "service.port: 8000" in document.text
    assert "service.hosts[1]: b.local" in document.text


def test_latin1_and_cp1252_text_is_decoded():
    data = "Caf\u00e9 na\u00efve \u201cquoted\u201d".encode("cp1252")
    assert load_bytes(data, "notes.txt").text == "Caf\u00e9 na\u00efve \u201cquoted\u201d"
    assert decode_text("r\u00e9sum\u00e9".encode("latin-1")) == "r\u00e9sum\u00e9"


def test_utf8_bom_is_dropped():
    assert load_bytes("hello w\u00f6rld".encode("utf-8-sig"), "a.txt").text == "hello w\u00f6rld"


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.txt", b"", "empty"),
        ("blank.md", b"  \n\n ", "empty"),
        ("image.txt", bytes(range(256)) * 4, "binary"),
        ("archive.zip", b"PK\x03\x04data", "not supported"),
        ("noext", b"hello", "not supported"),
        ("japanese.txt", "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002".encode("shift_jis") * 20, "could not be decoded"),
        ("control.txt", bytes([0x81, 0x8D, 0x8F, 0x90, 0x9D, 0x41]) * 40, "could not be decoded"),
        ("broken.json", b'{"a": ', "not valid JSON"),
        ("fake.docx", b"this is not a zip file", "Word document"),
        ("fake.pdf", b"%PDF-1.4 nonsense", "PDF"),
    ],
)
def test_unreadable_files_raise_a_clear_reason(name, data, reason):
    with pytest.raises(LoadError) as error:
        load_bytes(data, name)
    assert reason in str(error.value)
    assert name in str(error.value)


def test_truncated_pdf_is_refused():
    data = pdf_bytes(["Some text on a page."])
    with pytest.raises(LoadError, match="could not be read as a PDF"):
        load_bytes(data[: len(data) // 2], "cut.pdf")


def test_encrypted_pdf_is_refused():
    with pytest.raises(LoadError, match="password-protected"):
        load_bytes(encrypted_pdf_bytes(["Secret text."]), "locked.pdf")


def test_folder_loading_skips_bad_files_and_goes_on(tmp_path, caplog):
    write(tmp_path / "good.md", "# Good\n\nUseful text.")
    write(tmp_path / "nested" / "deeper" / "page.html", "<p>Nested page.</p>")
    write(tmp_path / "nested" / "broken.pdf", pdf_bytes(["x"])[:40])
    write(tmp_path / "empty.txt", b"")
    write(tmp_path / "photo.png", b"\x89PNG\r\n\x1a\n\x00\x00")
    write(tmp_path / ".hidden.md", "ignored")
    with caplog.at_level(logging.WARNING, logger="rag.loaders"):
        result = load_folder(tmp_path)
    assert sorted(doc.source for _, doc in result.documents) == ["good.md", "nested/deeper/page.html"]
    assert sorted(s.source for s in result.skipped) == ["empty.txt", "nested/broken.pdf", "photo.png"]
    assert all(s.reason for s in result.skipped)
    assert "nested/broken.pdf" in caplog.text


def test_load_file_reports_missing_file(tmp_path):
    with pytest.raises(LoadError, match="could not be opened"):
        load_file(tmp_path / "missing.md")
