"""Splitting documents into token-sized chunks.

A document arrives as sections (a heading and its text, and the PDF page). Chunks never cross a
section: headings are the strongest boundary. Inside a section, text is cut into sentences (a
sentence longer than a whole chunk is cut at token boundaries); sentences are packed greedily up to
``chunk_tokens``, and a chunk preferably ends at a paragraph break when one lies in its second half.
The next chunk starts with the last sentences of the previous one (at most ``overlap`` tokens), so
every chunk's text is an exact slice of its section and overlapping text is literally shared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rag.tokens import count_tokens, encode, encoding
from rag.types import Chunk

DEFAULT_CHUNK_TOKENS = 300
DEFAULT_OVERLAP = 50


@dataclass(frozen=True)
class Section:
    heading: str  # "" when the text comes before any heading
    text: str  # includes the heading line itself, so the words of a heading are searchable
    page: int | None = None


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    ends_paragraph: bool


_MARKDOWN_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.+?)\s*#*\s*$")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_RST_UNDERLINE = re.compile(r"^([=\-~^\"'`#*+<>:.])\1{2,}\s*$")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# A sentence ends at . ! ? (plus closing quotes/brackets) followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*[ \t]+|\n\s*")


def split_markdown_sections(text: str, page: int | None = None) -> list[Section]:
    """Sections at ATX headings (``# ...``), ignoring ``#`` lines inside fenced code blocks."""
    lines = text.splitlines(keepends=True)
    starts: list[tuple[int, str, int]] = []  # (first line, heading, lines the heading takes)
    in_fence = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _MARKDOWN_HEADING.match(line.rstrip("\n"))
        if match:
            starts.append((index, match.group(2).strip(), 1))
    return _sections_from_starts(lines, starts, page)


def split_rst_sections(text: str, page: int | None = None) -> list[Section]:
    """Sections at reStructuredText titles: a text line underlined by a run of one punctuation character."""
    lines = text.splitlines(keepends=True)
    starts: list[tuple[int, str, int]] = []
    for index in range(1, len(lines)):
        title = lines[index - 1].strip()
        underline = lines[index].strip()
        if title and _RST_UNDERLINE.match(underline) and len(underline) >= len(title) and not _RST_UNDERLINE.match(title):
            first = index - 1
            if first >= 1 and lines[first - 1].strip() == underline:  # overlined title
                first -= 1
            starts.append((first, title, index + 1 - first))
    return _sections_from_starts(lines, starts, page)


def _sections_from_starts(lines: list[str], starts: list[tuple[int, str, int]], page: int | None) -> list[Section]:
    if not starts or starts[0][0] != 0:
        starts = [(0, "", 0)] + starts
    sections: list[Section] = []
    pending = ""  # headings with no text of their own, joined to the next section
    for number, (first_line, heading, heading_lines) in enumerate(starts):
        last_line = starts[number + 1][0] if number + 1 < len(starts) else len(lines)
        body = "".join(lines[first_line:last_line]).strip()
        has_text = "".join(lines[first_line + heading_lines : last_line]).strip()
        if not has_text:
            if heading:
                pending = f"{pending}\n\n{body}" if pending else body
            continue
        if pending:
            body = f"{pending}\n\n{body}"
            pending = ""
        sections.append(Section(heading=heading, text=body, page=page))
    if pending:
        sections.append(Section(heading=starts[-1][1], text=pending, page=page))
    return sections


def _sentence_units(text: str, chunk_tokens: int) -> list[_Unit]:
    units: list[_Unit] = []
    paragraph_ends = {match.start() for match in _PARAGRAPH_BREAK.finditer(text)}
    start = 0
    cuts = [(m.start(), m.end()) for m in _SENTENCE_END.finditer(text)] + [(len(text), len(text))]
    for cut_start, cut_end in cuts:
        if cut_start <= start:
            start = max(start, cut_end)
            continue
        piece_end = cut_start
        ends_paragraph = cut_start in paragraph_ends or piece_end == len(text)
        units.extend(_token_split(text, start, piece_end, chunk_tokens, ends_paragraph))
        start = cut_end
    return units


def _token_split(text: str, start: int, end: int, chunk_tokens: int, ends_paragraph: bool) -> list[_Unit]:
    piece = text[start:end]
    tokens = encode(piece)
    if len(tokens) <= chunk_tokens:
        return [_Unit(start, end, len(tokens), ends_paragraph)]
    _, offsets = encoding().decode_with_offsets(tokens)
    units = []
    for first in range(0, len(tokens), chunk_tokens):
        last = min(first + chunk_tokens, len(tokens))
        unit_start = start + offsets[first]
        unit_end = start + offsets[last] if last < len(tokens) else end
        if unit_end > unit_start:
            units.append(_Unit(unit_start, unit_end, last - first, ends_paragraph and last == len(tokens)))
    return units


def _pack(text: str, units: list[_Unit], chunk_tokens: int, overlap: int) -> list[tuple[int, int]]:
    """Index ranges [first, last] of units forming each chunk."""
    ranges: list[tuple[int, int]] = []
    first = 0
    while first < len(units):
        total = 0
        last = first
        while last < len(units) and total + units[last].tokens <= chunk_tokens:
            total += units[last].tokens
            last += 1
        last = max(last - 1, first)  # a single unit is never larger than chunk_tokens
        if last + 1 < len(units):
            half = chunk_tokens // 2
            running = 0
            best = None
            for index in range(first, last + 1):
                running += units[index].tokens
                if units[index].ends_paragraph and running >= half:
                    best = index
            if best is not None:
                last = best
        # Separators between units (line breaks) cost tokens the unit counts leave out.
        while last > first and count_tokens(text[units[first].start : units[last].end]) > chunk_tokens:
            last -= 1
        ranges.append((first, last))
        if last + 1 >= len(units):
            break
        next_first = last + 1
        shared = 0
        while next_first - 1 > first and shared + units[next_first - 1].tokens <= overlap:
            shared += units[next_first - 1].tokens
            next_first -= 1
        first = next_first
    return ranges


def chunk_sections(
    sections: list[Section],
    *,
    source: str,
    title: str,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
    first_position: int = 0,
) -> list[Chunk]:
    if chunk_tokens < 8:
        raise ValueError("chunk_tokens must be at least 8")
    if not 0 <= overlap < chunk_tokens:
        raise ValueError("overlap must be at least 0 and smaller than chunk_tokens")
    chunks: list[Chunk] = []
    position = first_position
    for section in sections:
        units = _sentence_units(section.text, chunk_tokens)
        for first, last in _pack(section.text, units, chunk_tokens, overlap):
            text = section.text[units[first].start : units[last].end].strip()
            if not text:
                continue
            tokens = count_tokens(text)
            chunks.append(
                Chunk(
                    id=f"{source}#{position}",
                    text=text,
                    source=source,
                    title=section.heading or title,
                    position=position,
                    page=section.page,
                    tokens=tokens,
                )
            )
            position += 1
    return chunks


def chunk_text(
    text: str,
    *,
    source: str,
    title: str = "",
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    overlap: int = DEFAULT_OVERLAP,
) -> list[Chunk]:
    """Chunks of plain or Markdown text (headings are honoured when present)."""
    return chunk_sections(
        split_markdown_sections(text), source=source, title=title or source, chunk_tokens=chunk_tokens, overlap=overlap
    )
