"""Reading documents into sections of text, one file type at a time.

Every failure is a :class:`LoadError` whose message can be shown to the user as is. Folder loading
(:func:`load_folder`) never stops at a bad file: it records the reason and goes on.

Each format has limits (:class:`LoadLimits`) that refuse a hostile file before it costs much: the
decompressed size and compression ratio of a DOCX's zip members, the size of a PDF's decompressed
streams and of the page content parsed in total (pages may all share one huge stream), the nesting of
JSON and HTML, the size of a CSV field, and the text a file may produce. They are the first line;
uploads are also parsed in a process with CPU and memory limits (``assistant.ingest``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rag.chunking import Section, chunk_sections, split_markdown_sections, split_rst_sections
from rag.tokens import encode
from rag.types import Chunk

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".rst": "rst"}
SUPPORTED_SUFFIXES = sorted(set(TEXT_SUFFIXES) | {".html", ".htm", ".pdf", ".docx", ".csv", ".json"})
_CONTROL_BYTES = set(range(0, 9)) | {11, 12} | set(range(14, 32)) | {127}
_CONTROL_BYTE_STRING = bytes(sorted(_CONTROL_BYTES))


class LoadError(Exception):
    """A file that cannot be turned into text; ``str(error)`` is a message for the user."""


MB = 1024 * 1024


@dataclass(frozen=True)
class LoadLimits:
    max_text_chars: int = 4_000_000  # text extracted from one file (about 1M tokens)
    max_json_depth: int = 100
    # Objects and arrays in one JSON file: Python holds each in ~250 bytes even when empty, so a 20 MB file of
    # "{}," took 1.7 GB to parse; 200,000 take about 50 MB. Counted ("{" and "[" in the text) before parsing.
    max_json_containers: int = 200_000
    max_html_depth: int = 256  # libxml2's own default nesting limit
    max_csv_field_chars: int = 100_000
    max_zip_members: int = 2_000
    max_zip_bytes: int = 64 * MB  # all members of a DOCX, decompressed
    max_zip_ratio: int = 100  # decompressed/compressed, for members larger than 1 MB
    max_zip_xml_bytes: int = 24 * MB  # one XML part (parsed into a tree several times its size)
    max_pdf_pages: int = 2_000
    max_pdf_stream_bytes: int = 16 * MB  # one decompressed stream
    max_pdf_content_bytes: int = 8 * MB  # page content parsed in total, a stream shared by n pages counted n times
    max_pdf_forms_per_page: int = 200  # form XObjects drawn on one page


DEFAULT_LIMITS = LoadLimits()


def _mb(size: int) -> str:
    return f"{size / MB:.0f} MB" if size >= MB else f"{size:,} bytes"


def check_token_count(text: str, name: str, limit: int, holder: str = "a file") -> None:
    """Refuse text of more than ``limit`` tokens. A token is at least one byte of UTF-8, so text of no more bytes
    than that (most files) is not counted."""
    if len(text) <= limit and (text.isascii() or len(text.encode("utf-8", "surrogatepass")) <= limit):
        return
    tokens = len(encode(text))
    if tokens > limit:
        raise LoadError(f"{name} holds {tokens:,} tokens of text; {holder} may have at most {limit:,}. "
                        "Split it into smaller files.")


def check_text_size(text_chars: int, name: str, limits: LoadLimits) -> None:
    if text_chars > limits.max_text_chars:
        raise LoadError(
            f"{name} holds more text than an upload may have (over {limits.max_text_chars:,} characters); "
            "split it into smaller files."
        )


@dataclass
class Document:
    source: str  # relative path or display name
    title: str
    sections: list[Section]
    pages: int | None = None  # PDF page count

    @property
    def text(self) -> str:
        return "\n\n".join(section.text for section in self.sections)


@dataclass
class SkippedFile:
    source: str
    reason: str


@dataclass
class FolderLoad:
    documents: list[tuple[Path, Document]] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)


def decode_text(data: bytes, name: str = "file") -> str:
    """UTF-8 (a BOM is dropped), else cp1252, else Latin-1; binary data is refused."""
    if not data.strip():
        raise LoadError(f"{name} is empty.")
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise LoadError(f"{name} looks like UTF-16 text but cannot be decoded.") from None
    if b"\x00" in data[:8192]:
        text = _decode_utf16_without_bom(data)
        if text is not None:
            return text
    if looks_binary(data):
        raise LoadError(f"{name} is not a text file (it contains binary data).")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    if _looks_misdecoded(text):
        raise LoadError(f"{name} could not be decoded as text (it is neither UTF-8 nor Latin-1/cp1252).")
    return text


_LEGACY_PUNCTUATION = set("\u201c\u201d\u2018\u2019\u2013\u2014\u2026\u20ac\u2022\u00ab\u00bb\u00b0\u00a3\u00a7\u00a9\u00ae\u00b7\u00d7\u00a0")


def _looks_misdecoded(text: str) -> bool:
    """Western 8-bit text is mostly ASCII, and its other characters are mostly letters or common punctuation.

    Text in another encoding (Shift-JIS, GBK, UTF-16 without BOM...) read as cp1252 is not.
    """
    visible = [char for char in text if not char.isspace()]
    high = [char for char in visible if ord(char) > 127]
    if not high:
        return False
    plausible = sum(1 for char in high if char.isalpha() or char in _LEGACY_PUNCTUATION)
    return len(high) > 0.4 * len(visible) or plausible < 0.6 * len(high)


def _decode_utf16_without_bom(data: bytes) -> str | None:
    """UTF-16 text without a byte order mark, recognised by its zero bytes (every other byte, for text that is
    mostly Latin script); None when the data is not that."""
    sample = data[:8192]
    pairs = len(sample) // 2
    if pairs < 2:
        return None
    zeros_even, zeros_odd = sample[0:pairs * 2:2].count(0), sample[1:pairs * 2:2].count(0)
    if zeros_odd >= 0.3 * pairs and zeros_even <= 0.02 * pairs:
        encoding = "utf-16-le"
    elif zeros_even >= 0.3 * pairs and zeros_odd <= 0.02 * pairs:
        encoding = "utf-16-be"
    else:
        return None
    try:
        text = data[: len(data) - len(data) % 2].decode(encoding)
    except UnicodeDecodeError:
        return None
    sample_text = text[:4096]
    readable = sum(1 for char in sample_text if char.isprintable() or char in "\n\r\t")
    return text if readable >= 0.95 * len(sample_text) else None


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = len(sample) - len(sample.translate(None, _CONTROL_BYTE_STRING))
    return control > 0.05 * len(sample)


_HTML_RAW_TEXT_TAGS = frozenset({"script", "style", "textarea", "title", "xmp", "plaintext"})
# Elements that never have content, or whose end tag is optional (a parser closes them at the next sibling).
_HTML_LEAF_TAGS = frozenset(
    "area base br col embed hr img input link meta param source track wbr "
    "p li dt dd tr td th thead tbody tfoot option optgroup rb rt rp colgroup caption".split()
)
# A comment, or a raw-text element from its start tag to the end of its end tag: no tags inside count.
_HTML_SKIPPED = re.compile(
    rb"<!--.*?(?:-->|\Z)|<(?P<raw>" + "|".join(sorted(_HTML_RAW_TEXT_TAGS)).encode()
    + rb")(?![A-Za-z0-9:-])[^<>]*>.*?(?:</(?P=raw)(?:[^<>]*>)?|\Z)",
    re.DOTALL | re.IGNORECASE,
)


def _byte_table(characters: bytes) -> np.ndarray:
    table = np.zeros(256, bool)
    table[list(characters)] = True
    return table


_LETTER = _byte_table(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NAME_CHARACTER = _byte_table(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:-")
_WHITE_SPACE = _byte_table(b" \t\n\r\f\v")
_LOWER_CASE = np.arange(256, dtype=np.uint8)
_LOWER_CASE[65:91] += 32
# Leaf names have at most 8 characters: a name's first 8 bytes, as one integer, tell whether it is one.
_LEAF_KEYS = np.array([name.encode() for name in sorted(_HTML_LEAF_TAGS)], dtype="S8").view("<u8")
_SKIPPED_PREFIXES = np.array([b"!--"] + [name[:3].encode() for name in sorted(_HTML_RAW_TEXT_TAGS)], dtype="S3")
_NAME_WINDOW = 9


def html_nesting_depth(text: str, stop_at: int | None = None) -> int:
    """How deep the elements of an HTML page nest, counted from its tags without building a tree.

    A tag is ``<`` and a name (``</`` for an end tag) with a ``>`` before the next ``<``; comments and
    the text of script/style elements hold no tags. A start tag opens an element unless it is a leaf
    (void, or one whose end tag is optional) or ends in ``/>``; an end tag closes one unless it is a
    leaf's; the depth never goes below zero. Linear in the length of the text and done with numpy over
    the page's bytes (one C pass per step rather than one Python step per tag: about 0.4 s of CPU less
    on the 28 MB of Python's library reference). ``stop_at`` is accepted for callers that compare the
    depth with a limit; the depth is always counted in full.
    """
    data = text.encode("utf-8", "surrogatepass")
    size = len(data)
    page = np.frombuffer(data + b"\0" * _NAME_WINDOW, np.uint8)  # room to read a name past the end
    opens = np.flatnonzero(page[:size] == ord("<"))
    closes = np.flatnonzero(page[:size] == ord(">"))
    if opens.size == 0 or closes.size == 0:
        return 0
    # Comments and raw-text elements, in order, tried only at the "<"s whose next three characters may start one.
    prefixes = np.ascontiguousarray(_LOWER_CASE[page[opens[:, None] + np.arange(1, 4)]]).view("S3").ravel()
    skipped_starts: list[int] = []
    skipped_ends: list[int] = []
    for position in opens[np.isin(prefixes, _SKIPPED_PREFIXES)].tolist():
        if skipped_ends and position < skipped_ends[-1]:
            continue
        match = _HTML_SKIPPED.match(data, position)
        if match:
            skipped_starts.append(position)
            skipped_ends.append(match.end())
    following = np.searchsorted(closes, opens)
    has_end = following < closes.size
    tag_ends = closes[np.minimum(following, closes.size - 1)]
    is_tag = has_end & (tag_ends < np.r_[opens[1:], size])
    if skipped_starts:
        region = np.searchsorted(np.array(skipped_starts), opens, side="right") - 1
        is_tag &= ~((region >= 0) & (opens < np.array(skipped_ends)[np.maximum(region, 0)]))
    closing = page[opens + 1] == ord("/")
    name_starts = opens + 1 + closing
    is_tag &= _LETTER[page[name_starts]]
    tag_ends, closing, name_starts = tag_ends[is_tag], closing[is_tag], name_starts[is_tag]
    if tag_ends.size == 0:
        return 0
    window = page[name_starts[:, None] + np.arange(_NAME_WINDOW)]
    in_name = _NAME_CHARACTER[window]
    name_lengths = np.where(in_name.all(axis=1), _NAME_WINDOW, in_name.argmin(axis=1))
    names = np.where(np.arange(8) < name_lengths[:, None], _LOWER_CASE[window[:, :8]], 0).astype(np.uint8)
    leaf = (name_lengths <= 8) & np.isin(np.ascontiguousarray(names).view("<u8").ravel(), _LEAF_KEYS)
    # Self-closing: the last character before ">" that is not white space is "/".
    last = tag_ends - 1
    for _ in range(4):
        spaces = _WHITE_SPACE[page[last]]
        if not spaces.any():
            break
        last = last - spaces
    self_closing = page[last] == ord("/")
    for index in np.flatnonzero(_WHITE_SPACE[page[last]]).tolist():  # a long run of white space before ">"
        self_closing[index] = data[name_starts[index] : tag_ends[index]].rstrip().endswith(b"/")
    steps = np.where(closing, np.where(leaf, 0, -1), np.where(leaf | self_closing, 0, 1))
    running = np.cumsum(steps)
    # The depth may not go below zero: the running sum, lifted by the lowest point it has reached.
    return int((running - np.minimum(np.minimum.accumulate(running), 0)).max())


def check_html_depth(text: str, name: str, limits: LoadLimits = DEFAULT_LIMITS) -> None:
    """Refuse a page nested deeper than ``limits.max_html_depth``: tree builders get slow (bs4: with the square
    of the depth) or cut it silently (libxml2)."""
    depth = html_nesting_depth(text, stop_at=limits.max_html_depth)
    if depth > limits.max_html_depth:
        raise LoadError(f"{name} nests its HTML elements more than {limits.max_html_depth} deep; it cannot be read safely.")


def _text_sections(text: str, kind: str) -> list[Section]:
    if kind == "rst":
        return split_rst_sections(text)
    if kind == "markdown":
        return split_markdown_sections(text)
    return [Section("", text.strip())] if text.strip() else []


_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)


def _first_heading(sections: list[Section]) -> str:
    """The document's first heading (a heading merged into the section below it still counts)."""
    first = next((section for section in sections if section.heading), None)
    if first is None:
        return ""
    match = _HEADING_LINE.match(first.text)
    if match:
        return match.group(1).strip()
    return next((line.strip() for line in first.text.splitlines() if re.search(r"\w", line)), first.heading)


def load_html(data: bytes, name: str) -> tuple[str, list[Section]]:
    """The page title and its sections (with heading paths and anchors): see :mod:`rag.html`."""
    return _parse_html_text(decode_text(data, name), name)


def _parse_html_text(text: str, name: str) -> tuple[str, list[Section]]:
    from rag.html import parse_html

    try:
        return parse_html(text)
    except ValueError as exc:
        raise LoadError(f"{name} could not be read as HTML ({exc}).") from None


def _pdf_configuration(limits: LoadLimits) -> dict:
    """pypdf's own decompression and parsing limits, tightened to ours."""
    stream = limits.max_pdf_stream_bytes
    return dict(
        maximum_declared_stream_length=stream,
        array_based_stream_maximum_output_length=stream,
        zlib_maximum_output_length=stream,
        lzw_maximum_output_length=stream,
        run_length_maximum_output_length=stream,
        brotli_maximum_output_length=stream,
        jbig2_maximum_output_length=stream,
        image_maximum_buffer_size=stream,
        stream_decoding_work_maximum_length=4 * stream,
        zlib_maximum_recovery_input_length=min(stream, 512 * 1024),  # recovery decodes byte by byte
        xform_maximum_invocations_per_extraction=limits.max_pdf_forms_per_page,
        jbig2dec_binary=None,  # never start an external decoder on an upload
    )


def _page_content_bytes(page) -> int:
    """Decompressed size of a page's content streams (pypdf keeps the decoded data, so this costs one decode)."""
    from pypdf.generic import ArrayObject

    contents = page.get("/Contents")
    if contents is None:
        return 0
    contents = contents.get_object()
    streams = contents if isinstance(contents, ArrayObject) else [contents]
    total = 0
    for stream in streams:
        stream = stream.get_object()
        if hasattr(stream, "get_data"):
            total += len(stream.get_data())
    return total


def load_pdf(data: bytes, name: str, limits: LoadLimits = DEFAULT_LIMITS) -> list[Section]:
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError, PdfReadError

    try:
        with apply_configuration(**_pdf_configuration(limits)):
            reader = PdfReader(io.BytesIO(data))
            if reader.is_encrypted:
                try:
                    unlocked = reader.decrypt("")
                except Exception:
                    unlocked = 0
                if not unlocked:
                    raise LoadError(f"{name} is a password-protected PDF; remove the password and try again.")
            page_count = len(reader.pages)
            if page_count > limits.max_pdf_pages:
                raise LoadError(f"{name} has {page_count:,} pages; an upload may have at most {limits.max_pdf_pages:,}.")
            sections = []
            content_bytes = text_chars = 0
            for number, page in enumerate(reader.pages, start=1):
                content_bytes += _page_content_bytes(page)
                if content_bytes > limits.max_pdf_content_bytes:
                    raise LoadError(
                        f"{name}: its pages' drawing instructions add up to more than "
                        f"{_mb(limits.max_pdf_content_bytes)} (by page {number}; pages may share one huge "
                        "stream); it cannot be read safely."
                    )
                text = (page.extract_text() or "").strip()
                if text:
                    text_chars += len(text)
                    check_text_size(text_chars, name, limits)
                    sections.append(Section("", text, page=number))
    except LoadError:
        raise
    except LimitReachedError as exc:
        raise LoadError(
            f"{name}: reading this PDF hit a safety limit ({exc} A compressed part may expand to at most "
            f"{_mb(limits.max_pdf_stream_bytes)}.) It cannot be read safely."
        ) from None
    except MemoryError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise LoadError(f"{name} could not be read as a PDF (damaged or incomplete file: {exc}).") from None
    except Exception as exc:  # pypdf raises many kinds of errors on damaged input
        raise LoadError(f"{name} could not be read as a PDF ({type(exc).__name__}: {exc}).") from None
    if not sections:
        raise LoadError(f"{name} has no extractable text (a scanned PDF needs OCR first).")
    return sections


def check_zip(data: bytes, name: str, limits: LoadLimits = DEFAULT_LIMITS) -> None:
    """Refuse a zip (a DOCX) whose members would expand too far, before any of them is decompressed.

    Python's zipfile never returns more than a member's declared size, so the declared sizes are the bound.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise LoadError(f"{name} could not be read as a Word document (not a valid zip archive: {exc}).") from None
    if len(members) > limits.max_zip_members:
        raise LoadError(f"{name} holds {len(members):,} files inside; a Word document may hold at most {limits.max_zip_members:,}.")
    total = sum(member.file_size for member in members)
    if total > limits.max_zip_bytes:
        raise LoadError(
            f"{name} would expand to {total / MB:,.0f} MB when unpacked, over the {_mb(limits.max_zip_bytes)} "
            "limit (a zip bomb?)."
        )
    for member in members:
        if member.filename.endswith((".xml", ".rels")) and member.file_size > limits.max_zip_xml_bytes:
            raise LoadError(
                f"{name}: its part {member.filename[:80]!r} is {member.file_size / MB:,.0f} MB unpacked, over the "
                f"{_mb(limits.max_zip_xml_bytes)} a part may have; it cannot be read safely."
            )
        ratio = member.file_size / max(1, member.compress_size)
        if member.file_size > MB and ratio > limits.max_zip_ratio:
            raise LoadError(
                f"{name}: its part {member.filename[:80]!r} is compressed {ratio:,.0f} to 1 (over "
                f"{limits.max_zip_ratio} to 1, a zip bomb?); it cannot be read safely."
            )


def load_docx(data: bytes, name: str, limits: LoadLimits = DEFAULT_LIMITS) -> list[Section]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    check_zip(data, name, limits)
    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise LoadError(f"{name} could not be read as a Word document ({exc}).") from None
    except MemoryError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, lxml errors
        raise LoadError(f"{name} could not be read as a Word document ({type(exc).__name__}).") from None
    lines = []
    for paragraph in document.paragraphs:
        text = paragraph.text.strip()
        if not text:
            continue
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        match = re.match(r"Heading (\d)", style)
        if style == "Title":
            lines.append(f"# {text}")
        elif match:
            lines.append(f"{'#' * min(6, int(match.group(1)) + 1)} {text}")
        else:
            lines.append(text)
    for table in document.tables:
        for row in table.rows:
            cells = [cell.text.strip() for cell in row.cells]
            if any(cells):
                lines.append(" | ".join(cells))
    return split_markdown_sections("\n\n".join(lines))


def load_csv(data: bytes, name: str, limits: LoadLimits = DEFAULT_LIMITS) -> list[Section]:
    text = decode_text(data, name)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    # The limit is process-wide in the csv module; every reader here uses the same value.
    csv.field_size_limit(limits.max_csv_field_chars)
    lines: list[str] = []
    header: list[str] | None = None
    size = 0
    # newline="" hands line endings to the csv module, which accepts \r, \n and \r\n, also inside quotes.
    reader = csv.reader(io.StringIO(text, newline=""), dialect)
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = row
                line = " | ".join(header)
            elif len(row) == len(header):
                line = "; ".join(f"{key}: {value}" for key, value in zip(header, row) if value.strip())
            else:
                line = " | ".join(row)
            size += len(line) + 2
            check_text_size(size, name, limits)
            lines.append(line)
    except csv.Error as exc:
        if "field larger than field limit" in str(exc):
            raise LoadError(
                f"{name} has a field longer than {limits.max_csv_field_chars:,} characters "
                f"(line {reader.line_num}); it cannot be read as a table."
            ) from None
        raise LoadError(f"{name} could not be read as CSV (line {reader.line_num}: {exc}).") from None
    if not lines:
        raise LoadError(f"{name} is empty.")
    # Blank lines let the chunker cut between rows.
    return [Section("", "\n\n".join(lines))]


def load_json(data: bytes, name: str, limits: LoadLimits = DEFAULT_LIMITS) -> list[Section]:
    text = decode_text(data, name)
    if text.count("{") + text.count("[") > limits.max_json_containers:
        raise LoadError(f"{name} holds more than {limits.max_json_containers:,} JSON objects and arrays; reading it would "
                        "take too much memory. Split it into smaller files.")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"{name} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    except RecursionError:
        raise LoadError(f"{name} nests its JSON more than {limits.max_json_depth} levels deep; it cannot be read safely.") from None
    except ValueError as exc:  # e.g. a number with more digits than Python converts
        raise LoadError(f"{name} is not JSON that can be read ({exc}).") from None
    lines = _flatten_json(value, name, limits)
    if not lines:
        raise LoadError(f"{name} contains no text.")
    return [Section("", "\n".join(lines))]


def _flatten_json(value, name: str, limits: LoadLimits) -> list[str]:
    """One ``path: value`` line per leaf, in document order; refuses nesting or output beyond the limits."""
    lines: list[str] = []
    size = 0
    stack = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth >= limits.max_json_depth:
                raise LoadError(f"{name} nests its JSON more than {limits.max_json_depth} levels deep; it cannot be read safely.")
            if isinstance(item, dict):
                children = [(child, f"{path}.{key}" if path else str(key)) for key, child in item.items()]
            else:
                children = [(child, f"{path}[{index}]") for index, child in enumerate(item)]
            stack.extend((child, child_path, depth + 1) for child, child_path in reversed(children))
        elif item is not None and str(item).strip():
            line = f"{path}: {item}" if path else str(item)
            size += len(line) + 1
            check_text_size(size, name, limits)
            lines.append(line)
    return lines


def load_bytes(data: bytes, name: str, source: str | None = None, limits: LoadLimits = DEFAULT_LIMITS) -> Document:
    """A document from file content; ``name`` gives the type (its extension) and appears in messages."""
    source = source or name
    suffix = Path(name).suffix.lower()
    if not data:
        raise LoadError(f"{name} is empty.")
    page_count = None
    page_title = ""
    if suffix in TEXT_SUFFIXES:
        text = decode_text(data, name)
        check_text_size(len(text), name, limits)
        sections = _text_sections(text, TEXT_SUFFIXES[suffix])
    elif suffix in (".html", ".htm"):
        text = decode_text(data, name)
        check_html_depth(text, name, limits)  # before any tree is built
        try:
            page_title, sections = _parse_html_text(text, name)
        except (LoadError, MemoryError):
            raise
        except Exception as exc:  # the HTML parser's own errors (selectolax's, for one, when memory runs out)
            raise LoadError(f"{name} could not be read as HTML ({type(exc).__name__}: {exc}).") from None
    elif suffix == ".pdf":
        sections = load_pdf(data, name, limits)
        page_count = max(section.page or 0 for section in sections)
    elif suffix == ".docx":
        sections = load_docx(data, name, limits)
    elif suffix == ".csv":
        sections = load_csv(data, name, limits)
    elif suffix == ".json":
        sections = load_json(data, name, limits)
    else:
        kind = f"'{suffix}'" if suffix else "without an extension"
        raise LoadError(f"{name}: files {kind} are not supported (supported: {', '.join(SUPPORTED_SUFFIXES)}).")
    if not sections:
        raise LoadError(f"{name} contains no text.")
    check_text_size(sum(len(section.text) for section in sections), name, limits)
    title = page_title or _first_heading(sections) or Path(name).stem
    return Document(source=source, title=title, sections=sections, pages=page_count)


def load_file(path: Path, source: str | None = None) -> Document:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise LoadError(f"{path.name} could not be opened ({exc.strerror or exc}).") from None
    return load_bytes(data, path.name, source or path.name)


def folder_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder``, recursively, in a stable order; hidden files and folders are left out."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for file_name in sorted(files):
            if not file_name.startswith("."):
                found.append(Path(root) / file_name)
    return found


def relative_source(path: Path, folder: Path) -> str:
    return Path(path).relative_to(folder).as_posix()


def load_folder(folder: Path) -> FolderLoad:
    result = FolderLoad()
    for path in folder_files(folder):
        source = relative_source(path, folder)
        try:
            result.documents.append((path, load_file(path, source)))
        except LoadError as exc:
            log.warning("Skipped %s: %s", source, exc)
            result.skipped.append(SkippedFile(source, str(exc)))
    return result


def document_chunks(document: Document, source: str, *, chunk_tokens: int, overlap: int) -> list[Chunk]:
    """The chunks of a loaded document; a document without text is a LoadError."""
    chunks = chunk_sections(
        document.sections, source=source, title=document.title, chunk_tokens=chunk_tokens, overlap=overlap
    )
    if not chunks:
        raise LoadError(f"{Path(source).name} contains no text.")
    return chunks
