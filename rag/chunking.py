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
from functools import lru_cache

import numpy as np

from rag.tokens import count_tokens, encode, encoding
from rag.types import Chunk

DEFAULT_CHUNK_TOKENS = 300
DEFAULT_OVERLAP = 50


@dataclass(frozen=True)
class Section:
    heading: str  # "" when the text comes before any heading
    text: str  # includes the heading line itself, so the words of a heading are searchable
    page: int | None = None
    path: tuple[str, ...] = ()  # the headings above this text, outermost first, ending with ``heading``
    anchor: str = ""  # HTML id to link to (page.html#anchor), "" when unknown


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
    starts: list[tuple[int, str, int, int]] = []  # (first line, heading, lines the heading takes, level)
    in_fence = False
    for index, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else _MARKDOWN_HEADING.match(line.rstrip("\n"))
        if match:
            starts.append((index, match.group(2).strip(), 1, len(match.group(1))))
    return _sections_from_starts(lines, starts, page)


def split_rst_sections(text: str, page: int | None = None) -> list[Section]:
    """Sections at reStructuredText titles: a text line underlined by a run of one punctuation character."""
    lines = text.splitlines(keepends=True)
    starts: list[tuple[int, str, int, int]] = []
    styles: list[tuple[bool, str]] = []  # title styles in order of first use: the first is level 1
    for index in range(1, len(lines)):
        title = lines[index - 1].strip()
        underline = lines[index].strip()
        if title and _RST_UNDERLINE.match(underline) and len(underline) >= len(title) and not _RST_UNDERLINE.match(title):
            first = index - 1
            if first >= 1 and lines[first - 1].strip() == underline:  # overlined title
                first -= 1
            style = (first < index - 1, underline[0])
            if style not in styles:
                styles.append(style)
            starts.append((first, title, index + 1 - first, styles.index(style) + 1))
    return _sections_from_starts(lines, starts, page)


def _sections_from_starts(
    lines: list[str], starts: list[tuple[int, str, int, int]], page: int | None
) -> list[Section]:
    if not starts or starts[0][0] != 0:
        starts = [(0, "", 0, 0)] + starts
    sections: list[Section] = []
    pending = ""  # headings with no text of their own, joined to the next section
    path: list[tuple[int, str]] = []
    for number, (first_line, heading, heading_lines, level) in enumerate(starts):
        if heading:
            while path and path[-1][0] >= level:
                path.pop()
            path.append((level, heading))
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
        sections.append(Section(heading=heading, text=body, page=page, path=tuple(h for _, h in path)))
    if pending:
        sections.append(Section(heading=starts[-1][1], text=pending, page=page, path=tuple(h for _, h in path)))
    return sections


@lru_cache(maxsize=1)
def _token_byte_lengths() -> np.ndarray:
    enc = encoding()
    lengths = np.zeros(enc.n_vocab, dtype=np.int64)
    for token in range(enc.n_vocab):
        try:
            lengths[token] = len(enc.decode_single_token_bytes(token))
        except KeyError:  # gaps in the vocabulary
            pass
    return lengths


def _token_ends(text: str, tokens: list[int] | None = None) -> np.ndarray:
    """Character offset where each token of ``text`` ends, from one encoding of the whole text (``tokens``,
    when the caller has it already)."""
    if tokens is None:
        tokens = encode(text)
    if not tokens:
        return np.zeros(0, dtype=np.int64)
    byte_ends = np.cumsum(_token_byte_lengths()[np.asarray(tokens, dtype=np.int64)])
    if text.isascii():
        return byte_ends
    code_points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    char_bytes = 1 + (code_points >= 0x80) + (code_points >= 0x800) + (code_points >= 0x10000)
    char_byte_ends = np.cumsum(char_bytes, dtype=np.int64)
    # A token ending inside a multi-byte character counts as ending after that character.
    return np.searchsorted(char_byte_ends, byte_ends, side="left") + 1


def _sentence_units(text: str, chunk_tokens: int, ends: np.ndarray) -> list[_Unit]:
    """Sentences (or token-cut pieces of over-long ones) with their token counts, from one encoding of ``text``
    (``ends``: :func:`_token_ends`).

    A sentence's count is the number of the text's tokens ending inside it: within a token or two of
    encoding the sentence alone. Chunk sizes are checked with an exact count in :func:`_pack`.
    """
    paragraph_ends = {match.start() for match in _PARAGRAPH_BREAK.finditer(text)}
    pieces: list[tuple[int, int, bool]] = []  # (start, end, ends a paragraph)
    start = 0
    cuts = [(m.start(), m.end()) for m in _SENTENCE_END.finditer(text)] + [(len(text), len(text))]
    for cut_start, cut_end in cuts:
        if cut_start <= start:
            start = max(start, cut_end)
            continue
        pieces.append((start, cut_start, cut_start in paragraph_ends or cut_start == len(text)))
        start = cut_end
    if not pieces:
        return []
    firsts = np.searchsorted(ends, [piece[0] for piece in pieces], side="right").tolist()
    lasts = np.searchsorted(ends, [piece[1] for piece in pieces], side="right").tolist()
    units: list[_Unit] = []
    for (start, piece_end, ends_paragraph), first, last in zip(pieces, firsts, lasts):
        count = max(1, last - first)
        if count <= chunk_tokens:
            units.append(_Unit(start, piece_end, count, ends_paragraph))
        else:
            for index in range(first, last, chunk_tokens):
                stop = min(index + chunk_tokens, last)
                unit_start = start if index == first else int(ends[index - 1])
                unit_end = piece_end if stop == last else int(ends[stop - 1])
                if unit_end > unit_start:
                    units.append(_Unit(unit_start, unit_end, stop - index, ends_paragraph and stop == last))
    return units


def _pack(text: str, units: list[_Unit], chunk_tokens: int, overlap: int, ends: np.ndarray) -> list[tuple[int, int, int]]:
    """Index ranges [first, last] of units forming each chunk, with the chunk's exact token count."""
    ranges: list[tuple[int, int, int]] = []
    # Tokens of the whole text ending up to each unit's start and end: a chunk's tokens, to a token or two.
    ended_before = np.searchsorted(ends, [unit.start for unit in units], side="right").tolist()
    ended_by = np.searchsorted(ends, [unit.end for unit in units], side="right").tolist()
    # Packing to a little under the limit leaves room for the estimates' error, so the exact count rarely
    # has to drop a sentence and count again.
    budget = chunk_tokens - max(2, chunk_tokens // 50)
    first = 0
    while first < len(units):
        total = 0
        last = first
        while last < len(units) and total + units[last].tokens <= budget:
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
        # Unit counts are estimates: the chunk's own count decides, the most units whose text fits.
        last, tokens = _last_fitting(text, units, first, last, chunk_tokens, ended_before[first], ended_by)
        ranges.append((first, last, tokens))
        if last + 1 >= len(units):
            break
        next_first = last + 1
        shared = 0
        while next_first - 1 > first and shared + units[next_first - 1].tokens <= overlap:
            shared += units[next_first - 1].tokens
            next_first -= 1
        first = next_first
    return ranges


def _last_fitting(text: str, units: list[_Unit], first: int, last: int, limit: int, ended_before: int,
                  ended_by: list[int]) -> tuple[int, int]:
    """The largest ``end`` in [first, last] whose chunk ``units[first..end]`` counts at most ``limit`` tokens
    (``first`` when none does), with that count.

    The same as counting from ``last`` down until a chunk fits, with fewer counts: a chunk's exact count
    grows with the units it takes, and the whole text's tokens ending inside it say within a token or two
    where the limit falls; the exact counts on both sides of that guess decide.
    """

    def exact(end: int) -> int:
        return count_tokens(text[units[first].start : units[end].end].strip())

    guess = last
    while guess > first and ended_by[guess] - ended_before + 1 > limit:
        guess -= 1
    tokens = exact(guess)
    if tokens > limit:  # the guess takes too much: one unit fewer at a time
        while guess > first:
            guess -= 1
            tokens = exact(guess)
            if tokens <= limit:
                break
        return guess, tokens
    while guess < last:  # it fits: one unit more while the next still fits
        more = exact(guess + 1)
        if more > limit:
            break
        guess, tokens = guess + 1, more
    return guess, tokens


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
        path = section.path[1:] if section.path and section.path[0] == title else section.path
        section_label = " › ".join(path)
        whole = section.text.strip()
        # More than 12 characters a token never happens in prose: such a section is long, skip counting it whole.
        whole_encoded = encode(whole) if len(whole) <= 12 * chunk_tokens else None
        whole_tokens = len(whole_encoded) if whole_encoded is not None else chunk_tokens + 1
        if whole_tokens <= chunk_tokens:  # most sections of reference documentation: one chunk, one count
            pieces = [(whole, whole_tokens)] if whole else []
        else:
            ends = _token_ends(section.text, whole_encoded if whole == section.text else None)
            units = _sentence_units(section.text, chunk_tokens, ends)
            pieces = []
            for first, last, tokens in _pack(section.text, units, chunk_tokens, overlap, ends):
                text = section.text[units[first].start : units[last].end].strip()
                if text:
                    pieces.append((text, tokens))
        for text, tokens in pieces:
            chunks.append(
                Chunk(
                    id=f"{source}#{position}",
                    text=text,
                    source=source,
                    title=section.heading or title,
                    position=position,
                    page=section.page,
                    tokens=tokens,
                    doc_title=title,
                    section=section_label,
                    anchor=section.anchor,
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
