"""Reading documents into sections of text, one file type at a time.

Every failure is a :class:`LoadError` whose message can be shown to the user as is. Folder loading
(:func:`load_folder`) never stops at a bad file: it records the reason and goes on.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from rag.chunking import Section, chunk_sections, split_markdown_sections, split_rst_sections
from rag.types import Chunk

log = logging.getLogger(__name__)

TEXT_SUFFIXES = {".md": "markdown", ".markdown": "markdown", ".txt": "text", ".text": "text", ".rst": "rst"}
SUPPORTED_SUFFIXES = sorted(set(TEXT_SUFFIXES) | {".html", ".htm", ".pdf", ".docx", ".csv", ".json"})
_CONTROL_BYTES = set(range(0, 9)) | {11, 12} | set(range(14, 32)) | {127}


class LoadError(Exception):
    """A file that cannot be turned into text; ``str(error)`` is a message for the user."""


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


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    control = sum(1 for byte in sample if byte in _CONTROL_BYTES)
    return control > 0.05 * len(sample)


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
    from rag.html import parse_html

    try:
        return parse_html(decode_text(data, name))
    except ValueError as exc:
        raise LoadError(f"{name} could not be read as HTML ({exc}).") from None


def load_pdf(data: bytes, name: str) -> list[Section]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                unlocked = reader.decrypt("")
            except Exception:
                unlocked = 0
            if not unlocked:
                raise LoadError(f"{name} is a password-protected PDF; remove the password and try again.")
        sections = []
        for number, page in enumerate(reader.pages, start=1):
            text = (page.extract_text() or "").strip()
            if text:
                sections.append(Section("", text, page=number))
    except LoadError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, RecursionError) as exc:
        raise LoadError(f"{name} could not be read as a PDF (damaged or incomplete file: {exc}).") from None
    except Exception as exc:  # pypdf raises many kinds of errors on damaged input
        raise LoadError(f"{name} could not be read as a PDF ({type(exc).__name__}: {exc}).") from None
    if not sections:
        raise LoadError(f"{name} has no extractable text (a scanned PDF needs OCR first).")
    return sections


def load_docx(data: bytes, name: str) -> list[Section]:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(io.BytesIO(data))
    except (PackageNotFoundError, KeyError, ValueError, OSError) as exc:
        raise LoadError(f"{name} could not be read as a Word document ({exc}).") from None
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


def load_csv(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    if not rows:
        raise LoadError(f"{name} is empty.")
    header = rows[0]
    lines = [" | ".join(header)]
    for row in rows[1:]:
        if len(row) == len(header):
            lines.append("; ".join(f"{key}: {value}" for key, value in zip(header, row) if value.strip()))
        else:
            lines.append(" | ".join(row))
    # Blank lines let the chunker cut between rows.
    return [Section("", "\n\n".join(lines))]


def load_json(data: bytes, name: str) -> list[Section]:
    text = decode_text(data, name)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise LoadError(f"{name} is not valid JSON (line {exc.lineno}: {exc.msg}).") from None
    lines: list[str] = []
    _flatten_json(value, "", lines)
    if not lines:
        raise LoadError(f"{name} contains no text.")
    return [Section("", "\n".join(lines))]


def _flatten_json(value, path: str, lines: list[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_json(item, f"{path}.{key}" if path else str(key), lines)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _flatten_json(item, f"{path}[{index}]", lines)
    elif value is not None and str(value).strip():
        lines.append(f"{path}: {value}" if path else str(value))


def load_bytes(data: bytes, name: str, source: str | None = None) -> Document:
    """A document from file content; ``name`` gives the type (its extension) and appears in messages."""
    source = source or name
    suffix = Path(name).suffix.lower()
    if not data:
        raise LoadError(f"{name} is empty.")
    page_count = None
    page_title = ""
    if suffix in TEXT_SUFFIXES:
        sections = _text_sections(decode_text(data, name), TEXT_SUFFIXES[suffix])
    elif suffix in (".html", ".htm"):
        page_title, sections = load_html(data, name)
    elif suffix == ".pdf":
        sections = load_pdf(data, name)
        page_count = max(section.page or 0 for section in sections)
    elif suffix == ".docx":
        sections = load_docx(data, name)
    elif suffix == ".csv":
        sections = load_csv(data, name)
    elif suffix == ".json":
        sections = load_json(data, name)
    else:
        kind = f"'{suffix}'" if suffix else "without an extension"
        raise LoadError(f"{name}: files {kind} are not supported (supported: {', '.join(SUPPORTED_SUFFIXES)}).")
    if not sections:
        raise LoadError(f"{name} contains no text.")
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
