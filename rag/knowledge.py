"""The shared knowledge base: every readable file under a folder, chunked, indexed, cached on disk, watched.

One :class:`KnowledgeBase` per process: it loads its cache once, keeps the shared segment of its
:class:`rag.index.Collection` current by watching the folder (``watchfiles``), and every chat searches
the same collection (conversations' uploads are scopes of it, see :mod:`rag.documents`).

Cache layout (a folder per knowledge folder in ``cache_dir``), built for a fast start:

- ``manifest.json``: settings, and per file its size, modification time, sha256, title, its range of
  chunks, where its text block is, or why it was skipped; the two fields' vocabularies; the table of
  distinct titles/sections/anchors;
- ``arrays.npz``: numpy arrays, compressed: the postings of both fields (chunk numbers delta-coded
  per term) and each chunk's metadata as columns;
- ``texts.bin``: each file's chunk texts as one zlib block; a chunk's text is read and decompressed only
  when a search returns it.

The two data files carry a generation in their names (``texts-<gen>.bin``, ``arrays-<gen>.npz``) and the
manifest names them: a write puts new data files beside the old ones, flushes them to disk, then replaces
the manifest atomically. That replacement is the one moment the cache changes, so a process killed at any
point leaves the previous cache or the new one, whole. Data files no manifest names (a killed write's, or
the generation just replaced) are removed by later writes.

A restart loads these (no text analysis, no index build) and checks the folder by size and
modification time, hashing only files whose stat changed. Changed, new and deleted files are the only
ones processed again; the postings of the others are carried over. Any damage to the cache is
logged and the cache is rebuilt; it is never fatal.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shutil
import tempfile
import threading
import time
import zipfile
import zlib
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from rag.bm25 import DEFAULT_BACKEND
from rag.chunking import DEFAULT_CHUNK_TOKENS, DEFAULT_OVERLAP
from rag.index import FIELD_TERMS, FIELDS, Collection, FieldPostings, Segment, check_index_options
from rag.loaders import (
    LoadError, SkippedFile, check_token_count, document_chunks, folder_files, load_bytes, relative_source,
)
from rag.tokens import encoding
from rag.types import SHARED_SCOPE, Chunk, ScoredChunk

log = logging.getLogger(__name__)

# Bump when chunking, analysis or the cache layout changes in a way that makes cached data stale.
CACHE_FORMAT = 2

# Tokens of text in one file, as for an upload (assistant.ingest.IngestLimits.max_tokens): text made of tiny
# sentences within the character limit (4 MB of "a. ") otherwise took 6 s and 470 MB of the app's memory to chunk.
MAX_FILE_TOKENS = 1_000_000
TEXT_COMPRESSION = 1  # zlib level: level 6 takes 3x the time for ~10 % less space on documentation text
# A cache file no manifest names is removed once this old: younger, it may be another process's write in progress.
STALE_AFTER_S = 600
Progress = Callable[[int, int, str], None]  # (files processed, files to process, current source)


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
class IndexingProgress:
    """What a front end shows while the folder is being indexed."""

    running: bool = False
    done: int = 0
    total: int = 0
    current: str = ""


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


# --- the stored form ---------------------------------------------------------------------------------


@dataclass
class _File:
    """One file of the folder as the cache knows it."""

    source: str
    sha256: str
    size: int
    mtime_ns: int
    skipped: str = ""
    title: str = ""
    first_chunk: int = 0
    chunk_count: int = 0
    block: bytes = b""  # zlib-compressed chunk texts, joined in order


_CHUNK_COLUMNS = ("file", "position", "page", "tokens", "text_start", "text_end", "title", "section", "anchor")


class ChunkStore(Sequence[Chunk]):
    """The shared chunks as columns; a Chunk is built (and its file's text block decompressed) on access."""

    def __init__(self, files: list[_File], columns: dict[str, np.ndarray], strings: list[str]):
        self.files = files
        self.columns = columns
        self.strings = strings
        self._texts = lru_cache(maxsize=64)(self._file_text)

    def __len__(self) -> int:
        return int(self.columns["file"].shape[0])

    def _file_text(self, file_number: int) -> bytes:
        return zlib.decompress(self.files[file_number].block)

    def __getitem__(self, index):  # noqa: D105 - Sequence protocol
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        c = self.columns
        file = self.files[int(c["file"][index])]
        text = self._texts(int(c["file"][index]))[int(c["text_start"][index]) : int(c["text_end"][index])]
        position = int(c["position"][index])
        page = int(c["page"][index])
        return Chunk(
            id=f"{file.source}#{position}",
            text=text.decode("utf-8"),
            source=file.source,
            title=self.strings[int(c["title"][index])],
            position=position,
            page=None if page < 0 else page,
            tokens=int(c["tokens"][index]),
            doc_title=file.title,
            section=self.strings[int(c["section"][index])],
            anchor=self.strings[int(c["anchor"][index])],
            scope=SHARED_SCOPE,
        )


@dataclass
class FileTerms:
    """One field's terms in a file's chunks: the file's own vocabulary (in order of first use), the number of
    every term of every chunk in order, and how many terms each chunk has. Compact to send between processes."""

    vocabulary: list[str]
    ids: np.ndarray  # int32, into vocabulary
    lengths: np.ndarray  # int64, per chunk

    @classmethod
    def of(cls, term_lists: Sequence[Sequence[str]]) -> "FileTerms":
        numbers: dict[str, int] = {}
        intern = numbers.setdefault
        lengths = np.fromiter((len(terms) for terms in term_lists), np.int64, len(term_lists))
        ids = np.fromiter((intern(term, len(numbers)) for terms in term_lists for term in terms), np.int32,
                          int(lengths.sum()))
        return cls(list(numbers), ids, lengths)


@dataclass
class ProcessedFile:
    """What reading, chunking and analysing one file gives (computed in a worker process for large folders).

    The chunks come as their cache columns (their texts are in ``block``), which is what the index keeps
    and much less to send back from a worker than Chunk objects."""

    title: str = ""
    skipped: str = ""  # why the file was skipped, "" when it was not
    block: bytes = b""  # zlib-compressed chunk texts, joined in order
    columns: dict[str, list] = field(default_factory=dict)  # per name in _NEW_CHUNK_COLUMNS, per chunk
    terms: dict[str, FileTerms] = field(default_factory=dict)  # per field

    @property
    def chunk_count(self) -> int:
        return len(self.columns.get("position", ()))


_NEW_CHUNK_COLUMNS = ("position", "page", "tokens", "text_bytes", "title", "section", "anchor")


def _chunk_columns(chunks: list[Chunk]) -> dict[str, list]:
    return {
        "position": [chunk.position for chunk in chunks],
        "page": [-1 if chunk.page is None else chunk.page for chunk in chunks],
        "tokens": [chunk.tokens for chunk in chunks],
        "text_bytes": [len(chunk.text.encode("utf-8")) for chunk in chunks],
        "title": [chunk.title for chunk in chunks],
        "section": [chunk.section for chunk in chunks],
        "anchor": [chunk.anchor for chunk in chunks],
    }


def process_file(source: str, data: bytes, chunk_tokens: int, chunk_overlap: int) -> ProcessedFile:
    """Load, chunk and analyse one file of the knowledge folder; a file that cannot be read is skipped."""
    try:
        document = load_bytes(data, Path(source).name, source)
        check_token_count(document.text, Path(source).name, MAX_FILE_TOKENS)
        chunks = document_chunks(document, source, chunk_tokens=chunk_tokens, overlap=chunk_overlap)
    except LoadError as exc:
        log.warning("Skipped %s: %s", source, exc)
        return ProcessedFile(skipped=str(exc), columns=_chunk_columns([]),
                             terms={name: FileTerms.of([]) for name in FIELDS})
    block = zlib.compress("".join(chunk.text for chunk in chunks).encode("utf-8"), TEXT_COMPRESSION)
    terms = {name: FileTerms.of([field_terms(c) for c in chunks]) for name, field_terms in FIELD_TERMS.items()}
    return ProcessedFile(document.title, "", block, _chunk_columns(chunks), terms)


# Processes for a cold start of a large folder: worker processes take the files from the front of the list
# while the calling thread takes them from the back. Starting a worker costs up to ~0.7 s (a fork server
# importing numpy, tiktoken and the parsers) before it reads a file, so small refreshes stay in-process.
PARALLEL_MIN_BYTES = 4 * 1024 * 1024
PARALLEL_MIN_FILES = 8
MAX_WORKERS = 4


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork when this process runs one thread (a command line); a fork server when it runs several (the app:
    forking a process whose other threads may hold locks can deadlock the child). A fork server's workers
    import the main module as Python's multiprocessing does (a script needs its ``if __name__ == "__main__"``
    guard; ``python -m package`` entry points such as chainlit's are not imported); a worker that cannot
    start leaves the files to the calling thread."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["rag.knowledge"])
        return context
    return multiprocessing.get_context("spawn")


def _exit_with_process(pid: int, every_s: float = 1.0) -> None:
    """In a worker: exit once the process that asked for the indexing has gone. Killed in the middle (Ctrl+C
    twice, kill -9), it cannot stop its pool, whose workers would otherwise wait for work for ever (with a
    fork server, they are not even its children)."""

    def watch() -> None:
        while _process_alive(pid):
            time.sleep(every_s)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-indexer", daemon=True).start()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a process that has exited but is not yet reaped is a zombie: gone all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@dataclass
class _NewFile:
    """A file processed in this refresh: its cache entry and what processing it gave."""

    entry: _File
    result: ProcessedFile


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An .npz that np.load reads, deflated at level 1 (np.savez_compressed's level 6 is 3x slower here),
    on disk when this returns."""
    with open(path, "wb") as file:
        with zipfile.ZipFile(file, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=TEXT_COMPRESSION) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as handle:
                    np.lib.format.write_array(handle, np.ascontiguousarray(array), allow_pickle=False)
        file.flush()
        os.fsync(file.fileno())


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def _data_file_name(manifest: dict, key: str, legacy: str) -> str:
    """A data file the manifest names (a plain name in the cache folder); format-2 caches before
    generations used fixed names."""
    name = manifest.get(key, legacy)
    if not isinstance(name, str) or not name or name != Path(name).name or name.startswith("."):
        raise ValueError(f"the manifest names an odd {key} file: {name!r}")
    return name


def _delta_encode(postings: FieldPostings) -> np.ndarray:
    docs = postings.docs.astype(np.int64)
    deltas = docs.copy()
    deltas[1:] -= docs[:-1]
    starts = postings.indptr[:-1][np.diff(postings.indptr) > 0]
    deltas[starts] = docs[starts]
    return deltas.astype(np.int32)


def _delta_decode(deltas: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    if deltas.size == 0:
        return deltas.astype(np.int32)
    running = np.cumsum(deltas, dtype=np.int64)
    counts = np.diff(indptr)
    starts = indptr[:-1][counts > 0]
    bases = running[starts] - deltas[starts]
    return (running - np.repeat(bases, counts[counts > 0])).astype(np.int32)


class KnowledgeBase:
    """Search over a folder of documents. :meth:`refresh` (re)loads; searches may run meanwhile."""

    def __init__(
        self,
        folder: Path,
        cache_dir: Path,
        *,
        backend: str = DEFAULT_BACKEND,
        chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
        chunk_overlap: int = DEFAULT_OVERLAP,
        collection: Collection | None = None,
        workers: int | None = None,
    ):
        """``workers``: processes that read files besides the calling thread on a large refresh; None picks
        one fewer than the usable CPUs (at most ``MAX_WORKERS``) when the files to read are large enough."""
        check_index_options(backend, chunk_tokens, chunk_overlap)
        self.workers = workers
        self.folder = Path(folder)
        self.cache_dir = Path(cache_dir)
        self.backend = backend  # validated for compatibility; every search uses rag.index's field index
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self.collection = collection if collection is not None else Collection()
        self._refresh_lock = threading.Lock()
        folder_key = sha256_bytes(str(self.folder.resolve()).encode())[:12]
        self.cache_path = self.cache_dir / f"knowledge-{folder_key}"
        self.cache_file = self.cache_path / "manifest.json"
        self._files: dict[str, _File] = {}
        self._data_files: tuple[str, ...] = ()  # the data files the manifest on disk names, once read or written
        self._watch_stop: threading.Event | None = None
        self._watch_thread: threading.Thread | None = None
        self.progress = IndexingProgress()
        self.last_report: RefreshReport | None = None

    # --- reading ---------------------------------------------------------------------------------

    @property
    def chunk_count(self) -> int:
        return len(self.collection.shared)

    @property
    def chunks(self) -> Sequence[Chunk]:
        return self.collection.shared.chunks

    def sources(self) -> list[str]:
        """Files with at least one chunk, sorted."""
        return sorted(source for source, entry in self._files.items() if entry.chunk_count)

    def search(self, query: str, k: int = 5, scope: str = SHARED_SCOPE) -> list[ScoredChunk]:
        return self.collection.search(query, k, scope)

    async def asearch(self, query: str, k: int = 5, scope: str = SHARED_SCOPE) -> list[ScoredChunk]:
        return await asyncio.to_thread(self.search, query, k, scope)

    async def arefresh(self) -> RefreshReport:
        return await asyncio.to_thread(self.refresh)

    # --- cache -------------------------------------------------------------------------------------

    def _params(self) -> dict:
        return {"format": CACHE_FORMAT, "chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap}

    def _read_cache(self) -> tuple[dict[str, _File], Segment | None, str]:
        """Cached files, the shared segment, and why the cache was not usable ("" when it was)."""
        if not self.cache_file.exists():
            return {}, None, "none"
        try:
            manifest = json.loads(self.cache_file.read_bytes())
            if not isinstance(manifest, dict):
                raise ValueError("the manifest is not a JSON object")
            if manifest.get("params") != self._params():
                self._data_files = tuple(n for n in (manifest.get("texts"), manifest.get("arrays")) if isinstance(n, str))
                return {}, None, "settings changed"
            texts_name = _data_file_name(manifest, "texts", "texts.bin")
            arrays_name = _data_file_name(manifest, "arrays", "arrays.npz")
            blob = (self.cache_path / texts_name).read_bytes()
            # Our own handle: np.load leaves the file open when it is not a readable .npz (a damaged cache).
            with open(self.cache_path / arrays_name, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
            files = []
            for item in manifest["files"]:
                offset, length = item["block"]
                if offset + length > len(blob):
                    raise ValueError("texts.bin is shorter than the manifest says")
                files.append(_File(item["source"], item["sha256"], int(item["size"]), int(item["mtime_ns"]),
                                   item.get("skipped", ""), item.get("title", ""), int(item["first_chunk"]),
                                   int(item["chunk_count"]), blob[offset : offset + length]))
            fields = {}
            for name in FIELDS:
                terms = manifest["vocabulary"][name]
                vocabulary = {term: number for number, term in enumerate(terms.split("\n") if terms else [])}
                indptr = arrays[f"{name}_indptr"].astype(np.int64)
                if len(indptr) != len(vocabulary) + 1:
                    raise ValueError(f"{name} postings do not match the vocabulary")
                fields[name] = FieldPostings(vocabulary, indptr, _delta_decode(arrays[f"{name}_docs"], indptr),
                                             arrays[f"{name}_freqs"].astype(np.float32),
                                             arrays[f"{name}_lengths"].astype(np.float32))
            columns = {name: arrays[f"chunk_{name}"] for name in _CHUNK_COLUMNS}
            size = len(columns["file"])
            if any(len(column) != size for column in columns.values()) or any(f.size != size for f in fields.values()):
                raise ValueError("chunk columns and postings disagree on the number of chunks")
            store = ChunkStore(files, columns, list(manifest["strings"]))
            self._data_files = (texts_name, arrays_name)
            return {f.source: f for f in files}, Segment(store, fields, store.columns["file"].astype(np.int64)), ""
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, zlib.error, zipfile.BadZipFile) as exc:
            log.warning("Index cache %s is damaged (%s: %s); rebuilding it.", self.cache_path, type(exc).__name__, exc)
            return {}, None, f"damaged: {type(exc).__name__}"

    def _write_cache(self, files: list[_File], segment: Segment, strings: list[str]) -> None:
        store = segment.chunks
        assert isinstance(store, ChunkStore)
        blob = io.BytesIO()
        items = []
        for entry in files:
            offset = blob.tell()
            blob.write(entry.block)
            item = {"source": entry.source, "sha256": entry.sha256, "size": entry.size, "mtime_ns": entry.mtime_ns,
                    "first_chunk": entry.first_chunk, "chunk_count": entry.chunk_count, "block": [offset, len(entry.block)]}
            if entry.skipped:
                item["skipped"] = entry.skipped
            if entry.title:
                item["title"] = entry.title
            items.append(item)
        arrays: dict[str, np.ndarray] = {f"chunk_{name}": store.columns[name] for name in _CHUNK_COLUMNS}
        vocabulary = {}
        for name in FIELDS:
            postings: FieldPostings = segment.fields[name]
            vocabulary[name] = "\n".join(postings.vocabulary)
            arrays[f"{name}_indptr"] = postings.indptr
            arrays[f"{name}_docs"] = _delta_encode(postings)
            arrays[f"{name}_freqs"] = np.minimum(postings.freqs, 65535).astype(np.uint16)
            arrays[f"{name}_lengths"] = np.minimum(postings.lengths, 65535).astype(np.uint16)
        generation = f"{os.getpid()}-{time.time_ns()}"
        data_files = {"texts": f"texts-{generation}.bin", "arrays": f"arrays-{generation}.npz"}
        manifest = {"params": self._params(), **data_files, "files": items, "vocabulary": vocabulary,
                    "strings": strings}
        self.cache_path.mkdir(parents=True, exist_ok=True)
        texts, arrays_file = (self.cache_path / data_files["texts"], self.cache_path / data_files["arrays"])
        try:
            _write_synced(texts, blob.getvalue())
            _save_arrays(arrays_file, arrays)
            write_atomically(self.cache_file, json.dumps(manifest, ensure_ascii=False).encode("utf-8"))  # the commit
        except BaseException:
            texts.unlink(missing_ok=True)
            arrays_file.unlink(missing_ok=True)
            raise
        replaced, self._data_files = self._data_files, tuple(data_files.values())
        self._remove_unnamed_files(replaced)
        self._remove_legacy_cache()

    def _remove_unnamed_files(self, replaced: Sequence[str]) -> None:
        """Data files the manifest does not name: the generation just replaced, the fixed-name files of
        older caches, and any other (a killed write's) once it is stale."""
        keep = {self.cache_file.name, *self._data_files}
        now = time.time()
        for path in self.cache_path.iterdir():
            if path.name in keep:
                continue
            try:
                if (path.name in replaced or path.name in ("texts.bin", "arrays.npz")
                        or now - path.stat().st_mtime > STALE_AFTER_S):
                    path.unlink()
            except OSError as exc:
                log.warning("Could not remove %s from the index cache: %s", path, exc)

    def _remove_legacy_cache(self) -> None:
        """The JSON cache (and saved bm25s index) of format 1, replaced by this folder; the temporary and
        replaced folders that cache writes before generations left behind when killed."""
        legacy = self.cache_path.name
        (self.cache_dir / f"{legacy}.json").unlink(missing_ok=True)
        for old in self.cache_dir.glob(f"{legacy}-bm25s-*"):
            shutil.rmtree(old, ignore_errors=True)
        now = time.time()
        for old in self.cache_dir.glob(f".{legacy}.*"):
            try:
                stale = old.is_dir() and now - old.stat().st_mtime > STALE_AFTER_S
            except OSError:
                continue
            if stale:
                shutil.rmtree(old, ignore_errors=True)

    # --- refresh -----------------------------------------------------------------------------------

    def _new_file(self, entry: _File, result: ProcessedFile) -> _NewFile:
        entry.skipped, entry.title, entry.block = result.skipped, result.title, result.block
        return _NewFile(entry, result)

    def _worker_count(self, jobs: list[tuple[str, bytes, _File]]) -> int:
        if self.workers is not None:
            return max(0, min(self.workers, len(jobs) - 1))
        if len(jobs) < PARALLEL_MIN_FILES or sum(len(data) for _, data, _ in jobs) < PARALLEL_MIN_BYTES:
            return 0
        return max(0, min(usable_cpus() - 1, MAX_WORKERS))

    def _process_all(self, jobs: list[tuple[str, bytes, _File]], progress: Progress | None) -> list[_NewFile]:
        """Every job's _NewFile, in order; with worker processes when the jobs are large enough to pay for them."""
        results: list[_NewFile | None] = [None] * len(jobs)

        def finished(number: int, result: ProcessedFile) -> None:
            source, _, entry = jobs[number]
            results[number] = self._new_file(entry, result)
            self.progress.done += 1
            self.progress.current = source
            if progress is not None:
                progress(self.progress.done, len(jobs), source)

        def run_here(number: int) -> None:
            source, data, _ = jobs[number]
            self.progress.current = source
            finished(number, process_file(source, data, self.chunk_tokens, self.chunk_overlap))

        workers = self._worker_count(jobs)
        if workers:
            try:
                self._process_in_pool(jobs, workers, run_here, finished)
            except (BrokenProcessPool, OSError) as exc:  # a worker died or could not start: finish here
                log.warning("Indexing in worker processes failed (%s); going on in this process.", exc)
        for number, result in enumerate(results):
            if result is None:
                run_here(number)
        return results  # type: ignore[return-value]

    def _process_in_pool(self, jobs, workers: int, run_here, finished) -> None:
        """Workers take the files from the front of the list, two each ahead; this thread from the back."""
        encoding()  # loaded before forking, so that forked workers do not each load it again
        front, back = 0, len(jobs)  # jobs[front:back] are not started yet
        running: dict[Future, int] = {}

        def collect(future: Future) -> None:
            finished(running.pop(future), future.result())  # a worker's error is raised here

        with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_exit_with_process,
                                 initargs=(os.getpid(),)) as pool:
            while front < back:
                while front < back and len(running) < 2 * workers:
                    source, data, _ = jobs[front]
                    running[pool.submit(process_file, source, data, self.chunk_tokens, self.chunk_overlap)] = front
                    front += 1
                if front < back:
                    back -= 1
                    run_here(back)
                for future in [future for future in running if future.done()]:
                    collect(future)
            for future in as_completed(list(running)):
                collect(future)

    def refresh(self, progress: Progress | None = None) -> RefreshReport:
        with self._refresh_lock:
            self.progress = IndexingProgress(running=True)
            try:
                return self._refresh(progress)
            finally:
                self.progress.running = False

    def _scan(self, cached: dict[str, _File], report: RefreshReport) -> tuple[list, int, int]:
        """Every file in order (a cached _File when unchanged, else (source, data, new entry) to process),
        how many to process, and how many are unchanged but have a new modification time."""
        found: list = []
        to_process = touched = 0
        paths = folder_files(self.folder) if self.folder.is_dir() else []
        if not self.folder.is_dir():
            log.warning("Knowledge folder %s does not exist; the knowledge base is empty.", self.folder)
        for path in paths:
            source = relative_source(path, self.folder)
            previous = cached.get(source)
            try:
                stat = path.stat()
                if previous is not None and (previous.size, previous.mtime_ns) == (stat.st_size, stat.st_mtime_ns):
                    found.append(previous)
                    report.unchanged.append(source)
                    continue
                data = path.read_bytes()
            except OSError as exc:
                reason = f"{path.name} could not be opened ({exc.strerror or exc})."
                log.warning("Skipped %s: %s", source, reason)
                report.skipped.append(SkippedFile(source, reason))
                continue
            digest = sha256_bytes(data)
            if previous is not None and previous.sha256 == digest:  # touched, not changed
                previous.size, previous.mtime_ns = stat.st_size, stat.st_mtime_ns
                touched += 1
                found.append(previous)
                report.unchanged.append(source)
                continue
            (report.changed if previous is not None else report.added).append(source)
            found.append((source, data, _File(source, digest, stat.st_size, stat.st_mtime_ns)))
            to_process += 1
        return found, to_process, touched

    def _refresh(self, progress: Progress | None) -> RefreshReport:
        started = time.perf_counter()
        report = RefreshReport()
        if self._files:  # loaded in this process already: the live segment is the cache's content
            cached, old, cache_problem = dict(self._files), self.collection.shared, ""
        else:
            cached, old, cache_problem = self._read_cache()
        found, to_process, touched = self._scan(cached, report)
        current_sources = {item.source if isinstance(item, _File) else item[0] for item in found}
        report.removed = sorted(set(cached) - current_sources)
        changed = bool(to_process or report.removed or cache_problem)

        self.progress.total = to_process
        new_files = iter(self._process_all([item for item in found if not isinstance(item, _File)], progress))
        processed: list[_File | _NewFile] = [item if isinstance(item, _File) else next(new_files) for item in found]
        for item in processed:
            entry = item.entry if isinstance(item, _NewFile) else item
            if entry.skipped:
                report.skipped.append(SkippedFile(entry.source, entry.skipped))

        if changed or old is None:
            files, segment, strings = self._merge(processed, old)
            try:
                self._write_cache(files, segment, strings)
            except OSError as exc:
                log.warning("Could not write the index cache in %s: %s", self.cache_dir, exc)
        else:
            files, segment = [item for item in processed if isinstance(item, _File)], old
            if touched:  # same content, new modification time: remember the new stat
                try:
                    self._write_cache(files, segment, old.chunks.strings)
                except OSError as exc:
                    log.warning("Could not write the index cache in %s: %s", self.cache_dir, exc)
        self._files = {entry.source: entry for entry in files}
        self.collection.set_shared(segment)

        if cache_problem == "none":
            report.cache = "created"
        elif cache_problem:
            report.cache = f"rebuilt ({cache_problem})"
        else:
            report.cache = "updated" if changed else "reused"
        report.chunks = len(segment)
        report.seconds = time.perf_counter() - started
        self.last_report = report
        log.info("Knowledge base %s: %s", self.folder, report.summary())
        return report

    def _merge(self, processed: list[_File | _NewFile], old: Segment | None) -> tuple[list[_File], Segment, list[str]]:
        """The new shared segment: cached files' postings carried over, processed files' terms added."""
        old_store = old.chunks if old is not None and isinstance(old.chunks, ChunkStore) else None
        strings: list[str] = list(old_store.strings) if old_store is not None else [""]
        string_ids = {text: number for number, text in enumerate(strings)}
        intern = string_ids.setdefault

        files: list[_File] = []
        columns: dict[str, list[np.ndarray]] = {name: [] for name in _CHUNK_COLUMNS}
        old_numbers: list[np.ndarray] = []  # old chunk numbers carried over, in new order
        new_at: list[tuple[int, _NewFile]] = []  # (first new chunk number, file)
        vocabularies = {name: dict(old.fields[name].vocabulary) if old is not None else {} for name in FIELDS}
        next_chunk = 0
        for file_number, item in enumerate(sorted(processed, key=lambda i: (i.entry if isinstance(i, _NewFile) else i).source)):
            if isinstance(item, _File):
                entry = item
                count = entry.chunk_count
                if count:
                    numbers = np.arange(entry.first_chunk, entry.first_chunk + count)
                    old_numbers.append(numbers)
                    for name in _CHUNK_COLUMNS:
                        column = old_store.columns[name][numbers]
                        columns[name].append(np.full(count, file_number, np.int32) if name == "file" else column)
                entry = _File(entry.source, entry.sha256, entry.size, entry.mtime_ns, entry.skipped, entry.title,
                              next_chunk, count, entry.block)
            else:
                entry = item.entry
                count = item.result.chunk_count
                entry.first_chunk, entry.chunk_count = next_chunk, count
                if count:
                    old_numbers.append(np.full(count, -1, np.int64))
                    new_at.append((next_chunk, item))
                    new_columns = item.result.columns
                    ends = np.cumsum(new_columns["text_bytes"], dtype=np.int64)
                    values = {
                        "file": [file_number] * count,
                        "position": new_columns["position"],
                        "page": new_columns["page"],
                        "tokens": new_columns["tokens"],
                        "text_start": ends - np.asarray(new_columns["text_bytes"], np.int64),
                        "text_end": ends,
                        "title": [intern(text, len(string_ids)) for text in new_columns["title"]],
                        "section": [intern(text, len(string_ids)) for text in new_columns["section"]],
                        "anchor": [intern(text, len(string_ids)) for text in new_columns["anchor"]],
                    }
                    for name in _CHUNK_COLUMNS:
                        dtype = np.int64 if name.startswith("text_") else np.int32
                        columns[name].append(np.asarray(values[name], dtype=dtype))
            files.append(entry)
            next_chunk += count

        strings = list(string_ids)  # insertion order: each string at its id
        total = next_chunk
        merged_columns = {
            name: (np.concatenate(parts) if parts else np.zeros(0, np.int64 if name.startswith("text_") else np.int32))
            for name, parts in columns.items()
        }
        carried = np.concatenate(old_numbers) if old_numbers else np.zeros(0, np.int64)
        fields = {}
        for name in FIELDS:
            vocabulary = vocabularies[name]
            term_parts, doc_parts, freq_parts = [], [], []
            lengths = np.zeros(total, np.float32)
            if old is not None and (carried >= 0).any():
                previous: FieldPostings = old.fields[name]
                remap = np.full(previous.size, -1, np.int64)
                kept_new = np.flatnonzero(carried >= 0)
                remap[carried[kept_new]] = kept_new
                term_ids, docs, freqs = previous.entries()
                new_docs = remap[docs]
                keep = new_docs >= 0
                term_parts.append(term_ids[keep])
                doc_parts.append(new_docs[keep])
                freq_parts.append(freqs[keep])
                lengths[kept_new] = previous.lengths[carried[kept_new]]
            intern = vocabulary.setdefault
            for first, item in new_at:
                terms: FileTerms = item.result.terms[name]
                numbers = np.fromiter((intern(term, len(vocabulary)) for term in terms.vocabulary), np.int64,
                                      len(terms.vocabulary))
                term_parts.append(numbers[terms.ids])
                doc_parts.append(np.repeat(np.arange(first, first + len(terms.lengths), dtype=np.int64), terms.lengths))
                freq_parts.append(np.ones(len(terms.ids), np.float32))
                lengths[first : first + len(terms.lengths)] = terms.lengths
            if term_parts:
                fields[name] = FieldPostings.from_entries(
                    vocabulary, np.concatenate(term_parts), np.concatenate(doc_parts),
                    np.concatenate(freq_parts).astype(np.float32), lengths,
                )
            else:
                fields[name] = FieldPostings(vocabulary, np.zeros(len(vocabulary) + 1, np.int64),
                                             np.zeros(0, np.int32), np.zeros(0, np.float32), lengths)
        store = ChunkStore(files, merged_columns, strings)
        return files, Segment(store, fields, store.columns["file"].astype(np.int64)), strings

    # --- watching ------------------------------------------------------------------------------------

    def start_watching(self, debounce_ms: int = 800) -> bool:
        """Refresh whenever files under the folder change (a background thread). False if it cannot watch."""
        if self._watch_thread is not None:
            return True
        if not self.folder.is_dir():
            log.warning("Knowledge folder %s does not exist; not watching it.", self.folder)
            return False
        from watchfiles import watch

        stop = threading.Event()

        def run() -> None:
            try:
                for changes in watch(self.folder, stop_event=stop, debounce=debounce_ms, raise_interrupt=False):
                    if stop.is_set():
                        break
                    names = sorted({Path(path).name for _, path in changes})
                    log.info("Knowledge folder changed (%s); refreshing.", ", ".join(names[:5]))
                    try:
                        self.refresh()
                    except Exception:  # a failed refresh keeps the previous index; the next change retries
                        log.exception("Refreshing the knowledge base failed")
            except Exception:
                log.exception("Watching %s stopped", self.folder)

        self._watch_stop = stop
        self._watch_thread = threading.Thread(target=run, name="knowledge-watch", daemon=True)
        self._watch_thread.start()
        return True

    def stop_watching(self) -> None:
        if self._watch_stop is not None:
            self._watch_stop.set()
        if self._watch_thread is not None:
            self._watch_thread.join(timeout=5)
        self._watch_stop = self._watch_thread = None
