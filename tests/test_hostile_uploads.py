"""Hostile uploads through the real parser process: each corpus file gets its expected refusal (naming the file)
or a safe acceptance, and 1,000 mutated files end in an answer, never in an uncaught error."""

from __future__ import annotations

import os
import random
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from assistant.ingest import IngestLimits, ParseRefused, UploadParser
from rag.documents import clean_display_name
from tests.fixtures.documents import docx_bytes, pdf_bytes
from benchmarks.hostile_files import hostile_files, pdf_pages_sharing, text_content

# What a parse may end in; anything else ("error": a loader raised something it should not; "signal N": the
# parser crashed; "no answer") is a defect.
EXPECTED_OUTCOMES = {"ok", "refused", "cpu limit", "memory limit"}


@pytest.fixture(scope="module")
def parser():
    upload_parser = UploadParser(IngestLimits())
    upload_parser.start()
    yield upload_parser
    upload_parser.close()


def parse(parser: UploadParser, folder, index: int, name: str, data: bytes):
    path = folder / f"upload-{index}"
    path.write_bytes(data)
    try:
        return parser.parse_blocking(path, name), None
    except ParseRefused as refusal:
        return None, refusal


def test_each_hostile_file_gets_its_expected_answer_within_the_limits(parser, tmp_path):
    corpus = hostile_files()
    assert len(corpus) >= 40
    assert len({hostile.kind for hostile in corpus}) == len(corpus)
    limits = parser.limits
    wrong = []
    for index, hostile in enumerate(corpus):
        name = clean_display_name(hostile.name)  # as the app does before parsing
        parsed, refusal = parse(parser, tmp_path, index, name, hostile.data)
        stats = (parsed or refusal).stats
        # CPU and memory within the parser's limits (the forked parser starts with the server's ~75 MB).
        if stats.cpu_s > limits.cpu_seconds + 2.5 or stats.peak_rss_mb > limits.memory_mb + 150:
            wrong.append(f"{hostile.kind}: cost {stats}")
        if refusal is not None:
            message = str(refusal)
            if not hostile.refusal_matches(message) or name not in message:
                wrong.append(f"{hostile.kind}: refused with {message!r}, expected {hostile.expect!r}")
            if refusal.stats.outcome not in EXPECTED_OUTCOMES:
                wrong.append(f"{hostile.kind}: parser outcome {refusal.stats.outcome!r}")
        else:
            text = "\n".join(chunk.text for chunk in parsed.chunks)
            if not hostile.accepted:
                wrong.append(f"{hostile.kind}: accepted, expected a refusal with {hostile.expect!r}")
            elif hostile.check is not None and not hostile.check(text):
                wrong.append(f"{hostile.kind}: accepted but its text fails the check: {text[:200]!r}")
    assert not wrong, "\n".join(wrong)


def test_chunk_and_token_limits_refuse_with_the_file_name(tmp_path):
    small = UploadParser(IngestLimits(max_tokens=50_000, max_chunks=40))
    try:
        words = " ".join(f"word{index}" for index in range(20_000))
        parsed, refusal = parse(small, tmp_path, 0, "many-words.txt", words.encode())
        assert refusal is not None and "many-words.txt" in str(refusal) and "tokens" in str(refusal)
        sentences = "".join(f"Sentence number {index} is here. " for index in range(3_000))
        parsed, refusal = parse(small, tmp_path, 1, "many-chunks.md", sentences.encode())
        assert refusal is not None and "many-chunks.md" in str(refusal) and "chunks" in str(refusal)
    finally:
        small.close()


# ------------------------------------------------------------------------------------------------ fuzzing


def seed_files() -> list[tuple[str, bytes]]:
    """Small valid files of every supported type (and a few hostile ones) for the mutations to start from."""
    return [
        ("notes.md", b"# Title\n\nSome *markdown* text with [a link](http://x) and a list:\n\n- one\n- two\n"),
        ("plain.txt", "Plain text, caf\u00e9, \u201cquotes\u201d.\n\nSecond paragraph.".encode("cp1252")),
        ("guide.rst", b"=====\nGuide\n=====\n\nSetup\n-----\n\nInstall it.\n"),
        ("page.html", b"<html><head><title>T</title></head><body><h1>H</h1><div><p>Para <b>bold</b></p>"
                      b"<ul><li>a</li><li>b</li></ul><table><tr><td>1</td></tr></table></div></body></html>"),
        ("table.csv", b'name,role,notes\nAda,engineer,"multi\nline"\nBob,designer,plain\n'),
        ("data.json", b'{"service": {"port": 8000, "hosts": ["a", "b"], "nested": {"deep": [1, {"x": "y"}]}}}'),
        ("report.pdf", pdf_bytes(["Page one about routers.", "Page two about models."])),
        ("shared.pdf", pdf_pages_sharing(text_content("shared page text"), 3)),
        ("guide.docx", docx_bytes("Guide", [("Setup", ["Install the app."])], [["k", "v"]])),
        ("utf16.txt", "UTF-16 text without a BOM.\n".encode("utf-16-le")),
    ]


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        operation = rng.choice(("flip", "byte", "insert", "delete", "truncate", "duplicate", "splice", "magic"))
        position = rng.randrange(len(data)) if data else 0
        if operation == "flip" and data:
            data[position] ^= 1 << rng.randrange(8)
        elif operation == "byte" and data:
            data[position] = rng.choice((0, 0xFF, 0x7F, 0x80, ord("<"), ord("["), ord("{"), ord('"'), ord("\r")))
        elif operation == "insert":
            data[position:position] = rng.randbytes(rng.randint(1, 64))
        elif operation == "delete" and data:
            del data[position : position + rng.randint(1, 256)]
        elif operation == "truncate" and data:
            del data[position:]
        elif operation == "duplicate" and data:
            end = min(len(data), position + rng.randint(1, 512))
            data[position:position] = data[position:end] * rng.randint(2, 50)
        elif operation == "splice":
            data[position:position] = rng.choice((b"<div>" * 300, b"[" * 2000, b"{\"a\":" * 300, b"\x00\x00",
                                                  b"stream\n", b"endobj", b"/FlateDecode", b"PK\x03\x04", b'"' * 9))
        elif operation == "magic":
            data[0:0] = rng.choice((b"%PDF-1.7\n", b"PK\x03\x04", b"\xff\xfe", b"\xef\xbb\xbf", b"<html>"))
    return bytes(data)


def test_a_thousand_mutated_files_never_end_in_an_uncaught_error(parser, tmp_path):
    count = int(os.environ.get("ASSISTANT_FUZZ_FILES", "1000"))
    rng = random.Random(20261127)
    seeds = seed_files()
    cases = []
    for index in range(count):
        name, data = seeds[index % len(seeds)]
        cases.append((index, name, mutate(data, rng)))

    def run(case):
        index, name, data = case
        parsed, refusal = parse(parser, tmp_path, index, name, data)
        if refusal is None:
            return "ok", None
        return refusal.stats.outcome, str(refusal)

    started = time.monotonic()
    with ThreadPoolExecutor(parser.limits.max_parallel) as pool:
        results = list(pool.map(run, cases))
    outcomes = {}
    for outcome, _ in results:
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(f"\nfuzz: {count} files in {time.monotonic() - started:.0f} s: {outcomes}")
    defects = [(case[1], outcome, message) for case, (outcome, message) in zip(cases, results)
               if outcome not in EXPECTED_OUTCOMES]
    assert not defects, defects[:10]
    # Every refusal still names its file.
    assert all(case[1] in message for case, (outcome, message) in zip(cases, results) if message)
    assert outcomes.get("ok", 0) > 0 and outcomes.get("refused", 0) > 0
