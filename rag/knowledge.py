"""The shared knowledge base: every readable file under a folder, chunked, BM25-indexed, cached on disk.

Cache layout (in ``cache_dir``): one JSON file per knowledge folder with, for each file, its sha256
and either its chunks with their analysed terms or the reason it was skipped; for the ``bm25s``
backend also the saved bm25s index of the whole set. A restart hashes the files, finds them all
unchanged and only rebuilds the BM25 index from the cached terms (or loads the saved bm25s index).
A file whose hash changed, a new file and a deleted file are the only ones processed again. Any
damage to the cache is logged and the cache is rebuilt; it is never fatal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rag.bm25 import DEFAULT_BACKEND, BM25SIndex, build_index
from rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from rag.index import ChunkIndex, check_index_options, index_terms
from rag.loaders import LoadError, SkippedFile, document_chunks, folder_files, load_bytes, relative_source
from rag.types import Chunk, ScoredChunk

log = logging.getLogger(__name__)

# Bump when chunking or analysis changes in a way that makes cached chunks/terms stale.
CACHE_FORMAT = 1


@dataclass
class RefreshReport:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    chunks: int = 0
    seconds: float = 0.0
    cache: str = ""  # "reused", "updated", "created" or "rebuilt (<reason>)"

    @property
    def processed(self) -> list[str]:
        return self.added + self.changed

    def summary(self) -> str:
        text = (
            f"{self.chunks} chunks from {len(self.added) + len(self.changed) + len(self.unchanged)} files "
            f"({len(self.added)} added, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{len(self.unchanged)} unchanged) in {self.seconds:.2f} s; cache {self.cache}"
        )
        if self.skipped:
            text += "; skipped: " + "; ".join(f"{s.source} ({s.reason})" for s in self.skipped)
        return text


@dataclass
class _FileRecord:
    sha256: str
    chunks: list[Chunk] = field(default_factory=list)
    terms: list[list[str]] = field(default_factory=list)
    skipped_reason: str = ""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        try:
            os.unlink(temp_name)
        except OSError:
            pass
        raise


def _chunk_to_json(chunk: Chunk, terms: list[str]) -> dict:
    # Terms contain no spaces (the analyzer splits on non-word characters): one string loads much faster.
    return {**chunk.to_record(), "terms": " ".join(terms)}


def _chunk_from_json(source: str, item: dict) -> tuple[Chunk, list[str]]:
    return Chunk.from_record(source, item), str(item["terms"]).split()


class KnowledgeBase:
    """Search over a folder of documents. Call :meth:`refresh` to (re)load; searches may run meanwhile."""

    def __init__(
        self,
        folder: Path,
        cache_dir: Path,
        *,
        backend: str = DEFAULT_BACKEND,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_overlap: int = DEFAULT_OVERLAP,
    ):
        check_index_options(backend, chunk_tokens, chunk_overlap)
        self.folder = Path(folder)
        self.cache_dir = Path(cache_dir)
        self.backend = backend
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self._index = ChunkIndex.empty(backend)
        self._refresh_lock = threading.Lock()
        folder_key = sha256_bytes(str(self.folder.resolve()).encode())[:12]
        self.cache_file = self.cache_dir / f"knowledge-{folder_key}.json"
        self._bm25s_prefix = f"knowledge-{folder_key}-bm25s-"
        self.last_report: RefreshReport | None = None

    @property
    def chunk_count(self) -> int:
        return len(self._index.chunks)

    @property
    def chunks(self) -> tuple[Chunk, ...]:
        return self._index.chunks

    def search(self, query: str, k: int = 5) -> list[ScoredChunk]:
        return self._index.search(query, k)  # one read of the attribute: a concurrent refresh swaps it whole

    async def asearch(self, query: str, k: int = 5) -> list[ScoredChunk]:
        return await asyncio.to_thread(self.search, query, k)

    async def arefresh(self) -> RefreshReport:
        return await asyncio.to_thread(self.refresh)

    # --- cache -------------------------------------------------------------------------------

    def _params(self) -> dict:
        return {"format": CACHE_FORMAT, "chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap}

    def _read_cache(self) -> tuple[dict[str, _FileRecord], dict, str]:
        """Cached records, the raw cache document, and why it was not usable ("" when it was)."""
        if not self.cache_file.exists():
            return {}, {}, "none"
        try:
            document = json.loads(self.cache_file.read_bytes())
            if document.get("params") != self._params():
                return {}, {}, "settings changed"
            records = {}
            for source, entry in document["files"].items():
                record = _FileRecord(sha256=str(entry["sha256"]), skipped_reason=str(entry.get("skipped", "")))
                for item in entry.get("chunks", []):
                    chunk, terms = _chunk_from_json(source, item)
                    record.chunks.append(chunk)
                    record.terms.append(terms)
                records[source] = record
            return records, document, ""
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("Index cache %s is damaged (%s: %s); rebuilding it.", self.cache_file, type(exc).__name__, exc)
            return {}, {}, f"damaged: {type(exc).__name__}"

    def _write_cache(self, records: dict[str, _FileRecord], index_id: str, bm25s_dir: str) -> None:
        files = {}
        for source, record in records.items():
            entry: dict = {"sha256": record.sha256}
            if record.skipped_reason:
                entry["skipped"] = record.skipped_reason
            else:
                entry["chunks"] = [_chunk_to_json(c, t) for c, t in zip(record.chunks, record.terms)]
            files[source] = entry
        document = {"params": self._params(), "index_id": index_id, "bm25s_dir": bm25s_dir, "files": files}
        write_atomically(self.cache_file, json.dumps(document, ensure_ascii=False).encode("utf-8"))

    def _save_bm25s(self, index: BM25SIndex, index_id: str) -> str:
        name = self._bm25s_prefix + index_id[:16]
        final = self.cache_dir / name
        if not final.exists():
            temp = Path(tempfile.mkdtemp(dir=self.cache_dir, prefix=f".{name}."))
            index.save(temp)
            try:
                os.replace(temp, final)
            except OSError:  # another process saved the same index first
                shutil.rmtree(temp, ignore_errors=True)
        for old in self.cache_dir.glob(self._bm25s_prefix + "*"):
            if old.name != name:
                shutil.rmtree(old, ignore_errors=True)
        return name

    def _load_bm25s(self, document: dict, index_id: str, size: int) -> BM25SIndex | None:
        name = document.get("bm25s_dir") or ""
        if document.get("index_id") != index_id or not name:
            return None
        try:
            index = BM25SIndex.load(self.cache_dir / name, size)
        except Exception as exc:  # bm25s raises whatever numpy/json raise on damaged files
            log.warning("Saved bm25s index %s is damaged (%s); rebuilding it.", name, exc)
            return None
        if index.size != size or index._retriever is None or index._retriever.scores.get("num_docs") != size:
            log.warning("Saved bm25s index %s does not match the cached chunks; rebuilding it.", name)
            return None
        return index

    # --- refresh -----------------------------------------------------------------------------

    def _process(self, source: str, data: bytes, digest: str) -> _FileRecord:
        try:
            document = load_bytes(data, Path(source).name, source)
            chunks = document_chunks(document, source, chunk_tokens=self.chunk_tokens, overlap=self.chunk_overlap)
        except LoadError as exc:
            log.warning("Skipped %s: %s", source, exc)
            return _FileRecord(sha256=digest, skipped_reason=str(exc))
        return _FileRecord(sha256=digest, chunks=chunks, terms=[index_terms(chunk) for chunk in chunks])

    def refresh(self) -> RefreshReport:
        with self._refresh_lock:
            return self._refresh()

    def _refresh(self) -> RefreshReport:
        started = time.perf_counter()
        report = RefreshReport()
        cached, document, cache_problem = self._read_cache()

        current: dict[str, _FileRecord] = {}
        if not self.folder.is_dir():
            log.warning("Knowledge folder %s does not exist; the knowledge base is empty.", self.folder)
            paths = []
        else:
            paths = folder_files(self.folder)
        for path in paths:
            source = relative_source(path, self.folder)
            try:
                data = path.read_bytes()
            except OSError as exc:
                reason = f"{path.name} could not be opened ({exc.strerror or exc})."
                log.warning("Skipped %s: %s", source, reason)
                report.skipped.append(SkippedFile(source, reason))
                continue
            digest = sha256_bytes(data)
            previous = cached.get(source)
            if previous is not None and previous.sha256 == digest:
                record = previous
                report.unchanged.append(source)
            else:
                record = self._process(source, data, digest)
                (report.changed if previous is not None else report.added).append(source)
            if record.skipped_reason:
                report.skipped.append(SkippedFile(source, record.skipped_reason))
            current[source] = record
        report.removed = sorted(set(cached) - set(current))

        chunks: list[Chunk] = []
        terms: list[list[str]] = []
        for source in sorted(current):
            chunks.extend(current[source].chunks)
            terms.extend(current[source].terms)
        index_id = sha256_bytes(
            json.dumps([self._params(), sorted((s, r.sha256) for s, r in current.items())]).encode()
        )
        cache_changed = bool(report.added or report.changed or report.removed) or bool(cache_problem)

        bm25 = None
        if self.backend == "bm25s" and chunks and not cache_changed:
            bm25 = self._load_bm25s(document, index_id, len(chunks))
            if bm25 is None:
                cache_changed = True
        if bm25 is None:
            bm25 = build_index(terms, self.backend)
        self._index = ChunkIndex(tuple(chunks), bm25)

        if cache_changed:
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                bm25s_dir = self._save_bm25s(bm25, index_id) if isinstance(bm25, BM25SIndex) and chunks else ""
                self._write_cache(current, index_id, bm25s_dir)
            except OSError as exc:
                log.warning("Could not write the index cache in %s: %s", self.cache_dir, exc)
        if cache_problem == "none":
            report.cache = "created"
        elif cache_problem:
            report.cache = f"rebuilt ({cache_problem})"
        else:
            report.cache = "updated" if cache_changed else "reused"
        report.chunks = len(chunks)
        report.seconds = time.perf_counter() - started
        self.last_report = report
        log.info("Knowledge base %s: %s", self.folder, report.summary())
        return report
