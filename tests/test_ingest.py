"""The upload parser process: same result as parsing in-process, bounded CPU, memory and wall time, a bounded
number of parses at once, and an event loop that stays free while parses run."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from assistant.ingest import IngestLimits, ParseRefused, UploadParser
from rag.loaders import document_chunks, load_bytes
from tests.fixtures.documents import pdf_bytes
from benchmarks.hostile_files import pdf_with_contents


@pytest.fixture
def make_parser():
    parsers = []

    def make(**limits) -> UploadParser:
        parser = UploadParser(IngestLimits(**limits), chunk_tokens=64, chunk_overlap=8)
        parsers.append(parser)
        return parser

    yield make
    for parser in parsers:
        parser.close()


def test_chunks_match_an_in_process_parse(make_parser, tmp_path):
    data = pdf_bytes(["Routers pick the small model first. " * 20, "Escalation happens when answers are weak. " * 20])
    path = tmp_path / "upload"
    path.write_bytes(data)
    parsed = make_parser().parse_blocking(path, "guide.pdf")
    expected = document_chunks(load_bytes(data, "guide.pdf"), "guide.pdf", chunk_tokens=64, overlap=8)
    assert [chunk.text for chunk in parsed.chunks] == [chunk.text for chunk in expected]
    assert [chunk.page for chunk in parsed.chunks] == [chunk.page for chunk in expected]
    assert parsed.pages == 2 and parsed.tokens == sum(chunk.tokens for chunk in expected)
    assert len(parsed.sha256) == 64 and parsed.stats.outcome == "ok"


def test_cpu_limit_stops_a_costly_file(make_parser, tmp_path):
    path = tmp_path / "upload"
    path.write_bytes(pdf_with_contents([b"BT /F1 11 Tf " + b"(ab) Tj " * 125_000 + b"ET" for _ in range(4)]))
    with pytest.raises(ParseRefused) as refusal:
        make_parser(cpu_seconds=1).parse_blocking(path, "costly.pdf")
    assert "costly.pdf took more than 1 s of processor time" in str(refusal.value)
    assert refusal.value.stats.outcome == "cpu limit"
    assert refusal.value.stats.cpu_s < 3.5


def test_memory_limit_stops_a_file_that_needs_too_much(make_parser, tmp_path):
    path = tmp_path / "upload"
    path.write_bytes(b"[" + b"0," * 8_000_000 + b"0]")  # 16 MB of JSON: a list of 8M items takes over 64 MB
    with pytest.raises(ParseRefused) as refusal:
        make_parser(memory_mb=48).parse_blocking(path, "numbers.json")
    assert "numbers.json needed more than 48 MB of memory" in str(refusal.value)
    assert refusal.value.stats.outcome == "memory limit"


def test_wall_clock_limit_stops_a_parse_that_waits(make_parser, tmp_path):
    fifo = tmp_path / "never-written"
    os.mkfifo(fifo)  # opening it for reading blocks: a parse that uses no CPU and never ends
    started = time.monotonic()
    with pytest.raises(ParseRefused) as refusal:
        make_parser(wall_seconds=1.5).parse_blocking(fifo, "stuck.txt")
    assert "stuck.txt took longer than 2 s to read" in str(refusal.value)
    assert refusal.value.stats.outcome == "timeout"
    assert time.monotonic() - started < 30


async def test_parses_run_at_most_max_parallel_at_once_and_the_loop_stays_free(make_parser, tmp_path):
    parser = make_parser(wall_seconds=1.5, max_parallel=2)
    await asyncio.to_thread(parser.start)
    fifos = []
    for index in range(4):
        fifos.append(tmp_path / f"stuck-{index}")
        os.mkfifo(fifos[-1])
    gaps = []

    async def ticker():
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    results = await asyncio.gather(*(parser.parse(fifo, f"stuck-{i}.txt") for i, fifo in enumerate(fifos)),
                                   return_exceptions=True)
    elapsed = time.monotonic() - started
    ticking.cancel()
    assert all(isinstance(result, ParseRefused) and result.stats.outcome == "timeout" for result in results)
    # Four parses that each wait out the 1.5 s limit, two at a time: two rounds.
    assert elapsed >= 2 * 1.5
    # The event loop kept running throughout (a blocking parse would stall it for its whole duration).
    assert max(gaps) < 1.4, max(gaps)


async def test_async_parse_and_restart_after_the_server_dies(make_parser, tmp_path):
    parser = make_parser()
    path = tmp_path / "upload"
    path.write_bytes(b"# Notes\n\nThe router escalates weak answers.\n")
    first = await parser.parse(path, "notes.md")
    assert first.title == "Notes" and "escalates" in first.chunks[0].text
    parser._server.kill()
    parser._server.wait()
    second = await parser.parse(path, "notes.md")
    assert [chunk.text for chunk in second.chunks] == [chunk.text for chunk in first.chunks]
