"""The loaders' own limits, which also protect the shared knowledge folder (read in the app's process)."""

from __future__ import annotations

import pytest

from rag.loaders import LoadError, LoadLimits, check_zip, decode_text, html_nesting_depth, load_bytes
from tests.fixtures.documents import docx_bytes
from benchmarks.hostile_files import pdf_pages_sharing, text_content, zip_bytes, zip_with_large_member


def refusal(data: bytes, name: str, limits: LoadLimits = LoadLimits()) -> str:
    with pytest.raises(LoadError) as error:
        load_bytes(data, name, limits=limits)
    assert name in str(error.value)
    return str(error.value)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_without_a_byte_order_mark_is_text(encoding):
    text = "Release notes: the router escalates weak answers.\nSecond line, caf\u00e9.\n"
    assert decode_text(text.encode(encoding), "notes.txt") == text
    assert load_bytes(text.encode(encoding), "notes.txt").text.startswith("Release notes")


def test_binary_with_zero_bytes_is_still_binary():
    assert "binary" in refusal(bytes(range(256)) * 8, "blob.txt")
    assert "binary" in refusal(b"\x00\x01\x02\x03" * 500, "zeros.txt")


def test_csv_bare_carriage_returns_and_quoted_line_breaks():
    document = load_bytes(b'name,role\rAda,engineer\rBob,"two\rlines"\r', "team.csv")
    assert "name: Ada; role: engineer" in document.text
    assert "two\rlines" in document.text or "two\nlines" in document.text


def test_csv_field_limit_names_the_line():
    message = refusal(b"a,b\n1,2\nx," + b"y" * 300 + b"\n", "wide.csv", LoadLimits(max_csv_field_chars=100))
    assert "longer than 100 characters" in message and "line 3" in message


def test_json_depth_limit_and_expansion_limit():
    assert "levels deep" in refusal(b"[" * 30 + b"1" + b"]" * 30, "deep.json", LoadLimits(max_json_depth=20))
    assert load_bytes(b"[" * 20 + b'"ok"' + b"]" * 20, "fine.json", limits=LoadLimits(max_json_depth=20)).text
    assert "more text" in refusal(b'{"' + b"k" * 50 + b'": [' + b'"v",' * 999 + b'"v"]}', "wide.json",
                                  LoadLimits(max_text_chars=10_000))
    assert "levels deep" in refusal(b"[" * 100_000 + b"]" * 100_000, "very-deep.json")


def test_json_keeps_document_order():
    document = load_bytes(b'{"b": {"x": 1, "y": [2, 3]}, "a": "last"}', "order.json")
    assert document.text.splitlines() == ["b.x: 1", "b.y[0]: 2", "b.y[1]: 3", "a: last"]


@pytest.mark.parametrize(
    ("html", "depth"),
    [
        ("<div><div><span>x</span></div></div>", 3),
        ("<ul><li>a<li>b<li>c</ul><p>one<p>two<br><img src=x>", 1),  # optional end tags and void elements
        ("<div><script>'<div><div><div>'</script><!-- <div><div> --></div>", 1),  # script text and comments
        ("<div/><div/><div/>", 0),
        ("</div></div><b>x</b>", 1),  # stray end tags never go below zero
        ("<div>" * 500, 500),
        ("<div><script>x</script>" * 300, 300),  # a script's end tag closes the script, not the div around it
        ("<DIV><BR><Img src=x><div /   \n  ><div" + " " * 20 + "/>é", 1),  # case, white space before />
        ("<div>text without an end <b", 1),  # "<b" is not a tag: no ">" before the end
        ("<!-- never closed <div><div>", 0),
    ],
)
def test_html_nesting_depth(html, depth):
    assert html_nesting_depth(html) == depth


def test_html_nested_too_deep_is_refused_before_parsing():
    assert "more than 256 deep" in refusal(b"<div>" * 300 + b"text" + b"</div>" * 300, "deep.html")
    assert "Nested text" in load_bytes(b"<div>" * 200 + b"Nested text" + b"</div>" * 200, "ok.html").text


def test_zip_limits_are_checked_before_anything_is_decompressed():
    base = docx_bytes("Guide", [("Setup", ["Install the app."])])
    check_zip(base, "guide.docx")  # a real document passes
    with pytest.raises(LoadError, match="zip bomb"):
        check_zip(zip_with_large_member(base, "word/media/big.bin", 5 * 2**20), "bomb.docx", LoadLimits(max_zip_bytes=4 * 2**20))
    with pytest.raises(LoadError, match="compressed"):
        check_zip(zip_with_large_member(base, "word/media/zeros.bin", 2 * 2**20), "ratio.docx")
    with pytest.raises(LoadError, match="files inside"):
        check_zip(zip_bytes([(f"f{index}", b"") for index in range(30)]), "many.docx", LoadLimits(max_zip_members=20))
    with pytest.raises(LoadError, match="not a valid zip"):
        check_zip(b"PK\x03\x04 not really", "broken.docx")


def test_pdf_pages_sharing_one_stream_count_once_per_page():
    content = text_content("shared") + b"\n" + b"0 0 m 1 1 l S\n" * 10_000  # ~140 KB drawn by every page
    assert load_bytes(pdf_pages_sharing(content, 3), "few.pdf").pages == 3
    message = refusal(pdf_pages_sharing(content, 40), "many.pdf", LoadLimits(max_pdf_content_bytes=2 * 2**20))
    assert "drawing instructions" in message


def test_pdf_stream_larger_than_the_limit_is_refused():
    message = refusal(pdf_pages_sharing(b"0 0 m 1 1 l S\n" * 200_000, 1), "big.pdf", LoadLimits(max_pdf_stream_bytes=2**20))
    assert "safety limit" in message


def test_text_limit_counts_characters():
    assert "more text" in refusal(b"word " * 3000, "long.txt", LoadLimits(max_text_chars=10_000))


def test_json_with_too_many_objects_is_refused_before_parsing():
    limits = LoadLimits(max_json_containers=1_000)
    message = refusal(b"[" + b"{}," * 1_000 + b"{}]", "many.json", limits)
    assert "holds more than 1,000 JSON objects and arrays" in message
    document = load_bytes(b'[{"a": "kept"}, ["also kept"]]', "few.json", limits=limits)
    assert "a: kept" in document.text and "also kept" in document.text


def test_token_limit_counts_text_with_fewer_characters_than_tokens(monkeypatch):
    from rag import loaders
    from rag.loaders import check_token_count

    # 600 emoji: 600 characters, 2,400 bytes, 1,200 tokens. A character bound alone would let it through.
    with pytest.raises(LoadError, match=r"smiles\.txt holds 1,200 tokens of text; an upload may have at most 1,000\."):
        check_token_count("😀" * 600, "smiles.txt", 1_000, "an upload")

    def never(text):
        raise AssertionError("text of fewer bytes than the limit was tokenized")

    monkeypatch.setattr(loaders, "encode", never)
    check_token_count("word " * 199, "short.txt", 1_000)
