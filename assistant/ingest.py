"""Parsing uploads in child processes with limits on CPU time, memory, wall time and output.

A hostile file (a zip bomb, a PDF whose pages share one huge stream, JSON nested 100k deep) must cost a
few seconds of CPU and a few hundred MB at most, and never the event loop or the threads that serve
other users' searches. So an upload is never parsed in the app's process:

- A small *fork server* (``python -m assistant.ingest --serve SOCKET``) is started once. It imports the
  parsers, then only accepts connections on a Unix socket in a private folder; it parses nothing itself.
- For each request it forks a *supervisor*, which forks the *parser*. The parser lowers its priority,
  caps its address space (RLIMIT_AS), CPU time (RLIMIT_CPU) and file writes (RLIMIT_FSIZE), reads the
  stored upload, loads and chunks it (the format limits of :mod:`rag.loaders` apply), and writes the
  chunks as JSON to a pipe. The supervisor reads at most ``max_output_bytes`` from it, kills the parser
  when ``wall_seconds`` pass, collects its exit status and resource use (``wait4``) and answers on the
  connection with one JSON object.
- The app awaits that answer on the socket (no thread is held), at most ``max_parallel`` at a time.

Every refusal is a :class:`rag.loaders.LoadError` whose message names the file and the reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.loaders import DEFAULT_LIMITS, LoadError, LoadLimits
from rag.types import Chunk

log = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class IngestLimits:
    cpu_seconds: int = 5  # CPU time of one parse
    memory_mb: int = 384  # address space a parse may add to what the parser process starts with
    # CPU time is the bound; wall time only catches a parser that waits on something. It is generous because on a
    # busy machine a lowered-priority parser gets a small share of the processors.
    wall_seconds: float = 120.0
    max_parallel: int = 2  # parses running at once; more wait their turn
    max_tokens: int = 1_000_000  # tokens of text in one upload
    max_chunks: int = 5_000
    max_output_bytes: int = 64 * MB  # the parser's answer (chunks as JSON)
    loader: LoadLimits = field(default_factory=lambda: DEFAULT_LIMITS)


@dataclass
class ParseStats:
    wall_s: float = 0.0
    cpu_s: float = 0.0  # parser process, user + system
    peak_rss_mb: float = 0.0  # parser process (a forked process: includes the pages it shares with the server)
    outcome: str = ""  # "ok", "refused", "cpu limit", "memory limit", "timeout", "crashed"


@dataclass
class ParsedUpload:
    name: str
    sha256: str
    title: str
    pages: int | None
    chunks: list[Chunk]
    tokens: int
    stats: ParseStats


class ParseRefused(LoadError):
    """A file the parser refused or could not finish; carries the resource figures of the attempt."""

    def __init__(self, message: str, stats: ParseStats):
        super().__init__(message)
        self.stats = stats


# ------------------------------------------------------------------------------------------------
# The parser process (runs in the forked child)
# ------------------------------------------------------------------------------------------------


def _vm_size_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _limit_self(limits: IngestLimits) -> None:
    os.nice(5)  # searches and the chat come first
    address_space = _vm_size_bytes() + limits.memory_mb * MB
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = int(used.ru_utime + used.ru_stime) + limits.cpu_seconds
    # At the soft limit the kernel sends SIGXCPU (which ends the process); the hard limit is SIGKILL.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 2))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))


def parse_file(path: Path, name: str, chunk_tokens: int, chunk_overlap: int, limits: IngestLimits) -> dict:
    """Load and chunk one file; the answer the parser process sends (also callable in-process, for tests)."""
    from rag.loaders import check_token_count, document_chunks, load_bytes

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise LoadError(f"{name} could not be read ({exc.strerror or exc}).") from None
    document = load_bytes(data, name, limits=limits.loader)
    check_token_count(document.text, name, limits.max_tokens, "an upload")
    chunks = document_chunks(document, name, chunk_tokens=chunk_tokens, overlap=chunk_overlap)
    if len(chunks) > limits.max_chunks:
        raise LoadError(
            f"{name} makes {len(chunks):,} chunks; an upload may make at most {limits.max_chunks:,}. "
            "Split it into smaller files."
        )
    return {
        "status": "ok",
        "sha256": hashlib.sha256(data).hexdigest(),
        "title": document.title,
        "pages": document.pages,
        "chunks": [chunk.to_record() for chunk in chunks],
    }


def _parser_main(request: dict, out_fd: int) -> None:
    """Body of the parser process: never returns."""
    limits = _limits_from_dict(request["limits"])
    name = request["name"]
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about damaged files would fill the app's log
    try:
        _limit_self(limits)
        answer = parse_file(Path(request["path"]), name, request["chunk_tokens"], request["chunk_overlap"], limits)
    except LoadError as exc:
        answer = {"status": "refused", "reason": str(exc)}
    except MemoryError:
        answer = {"status": "memory limit"}
    except RecursionError:
        answer = {"status": "refused", "reason": f"{name} is nested too deeply to be read safely."}
    except Exception as exc:  # a parser bug on strange input: say so, and keep the trace for the log
        answer = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500], "trace": traceback.format_exc()[-4000:]}
    try:
        payload = json.dumps(answer).encode()
    except MemoryError:
        payload = b'{"status": "memory limit"}'
    view = memoryview(payload)
    try:
        while view:
            written = os.write(out_fd, view[: 1 << 16])
            view = view[written:]
    except OSError:
        pass  # the supervisor stopped reading: the answer was too large
    os._exit(0)


def _supervise(request: dict, connection: socket.socket) -> None:
    """Body of the supervisor process: run one parser, answer on ``connection``, never return."""
    limits = _limits_from_dict(request["limits"])
    started = time.monotonic()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        connection.close()
        _parser_main(request, write_fd)
    os.close(write_fd)
    received = bytearray()
    outcome = None
    deadline = started + limits.wall_seconds
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            outcome = "timeout"
            break
        ready, _, _ = select.select([read_fd], [], [], remaining)
        if not ready:
            continue
        block = os.read(read_fd, 1 << 16)
        if not block:
            break
        received += block
        if len(received) > limits.max_output_bytes:
            outcome = "output limit"
            break
    if outcome is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    os.close(read_fd)
    _, status, usage = os.wait4(pid, 0)
    stats = {
        "wall_s": time.monotonic() - started,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }
    if outcome is None:
        if os.WIFSIGNALED(status):
            signal_number = os.WTERMSIG(status)
            outcome = "cpu limit" if signal_number in (signal.SIGXCPU, signal.SIGKILL) else f"signal {signal_number}"
            answer = {"status": outcome}
        else:
            try:
                answer = json.loads(received)
            except ValueError:
                answer = {"status": "error", "error": "the parser's answer was incomplete"}
    else:
        answer = {"status": outcome}
    answer["stats"] = stats
    try:
        connection.sendall(json.dumps(answer).encode())
        connection.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    os._exit(0)


def _limits_from_dict(data: dict) -> IngestLimits:
    loader = LoadLimits(**data.get("loader", {}))
    return IngestLimits(**{**{k: v for k, v in data.items() if k != "loader"}, "loader": loader})


def _read_request(connection: socket.socket, limit: int = 1 << 20) -> dict:
    data = bytearray()
    while not data.endswith(b"\n"):
        block = connection.recv(1 << 16)
        if not block or len(data) > limit:
            raise ValueError("incomplete request")
        data += block
    return json.loads(data)


def serve(socket_path: str) -> None:
    """The fork server: import the parsers once, then fork a supervisor per connection until stdin closes."""
    import rag.chunking  # noqa: F401  (imported here so every forked parser starts with them)
    import rag.loaders  # noqa: F401
    from rag.tokens import encoding

    for module in ("pypdf", "docx", "bs4", "lxml.etree"):
        try:
            __import__(module)
        except ImportError:
            pass
    encoding()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # supervisors are reaped by the kernel
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    os.chmod(socket_path, 0o600)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    stdin_fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([listener, stdin_fd], [], [])
        if stdin_fd in ready and not os.read(stdin_fd, 4096):
            break  # the app is gone
        if listener not in ready:
            continue
        connection, _ = listener.accept()
        pid = os.fork()
        if pid == 0:
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # the supervisor waits for its parser itself
            try:
                connection.settimeout(10)
                request = _read_request(connection)
                connection.settimeout(None)
                _supervise(request, connection)
            except BaseException:
                traceback.print_exc()
            os._exit(1)
        connection.close()
    listener.close()


# ------------------------------------------------------------------------------------------------
# The app's side
# ------------------------------------------------------------------------------------------------


class UploadParser:
    """Parses uploads through the fork server, which it starts on first use and restarts if it died."""

    def __init__(self, limits: IngestLimits | None = None, *, chunk_tokens: int = 300, chunk_overlap: int = 50):
        self.limits = limits or IngestLimits()
        self.chunk_tokens = chunk_tokens
        self.chunk_overlap = chunk_overlap
        self._server: subprocess.Popen | None = None
        self._folder: str | None = None
        self._start_lock = threading.Lock()
        self._semaphore: asyncio.Semaphore | None = None
        self._thread_slots = threading.BoundedSemaphore(self.limits.max_parallel)

    @property
    def socket_path(self) -> str:
        return os.path.join(self._folder, "ingest.sock")

    def _ensure_server(self) -> None:
        with self._start_lock:
            if self._server is not None and self._server.poll() is None:
                return
            if self._server is not None:  # it died (killed by a limit, or by hand): let go of its pipes
                self._server.stdin.close()
                self._server.stdout.close()
            if self._folder is None:
                self._folder = tempfile.mkdtemp(prefix="assistant-ingest-")
            Path(self.socket_path).unlink(missing_ok=True)
            root = str(Path(__file__).resolve().parent.parent)
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
            self._server = subprocess.Popen(
                [sys.executable, "-m", "assistant.ingest", "--serve", self.socket_path],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                cwd=root,
                env=env,
            )
            line = self._server.stdout.readline()
            if line.strip() != b"ready":
                self._server.kill()
                self._server.wait()
                self._server = None
                raise RuntimeError("the upload parser process did not start")

    def start(self) -> None:
        """Start the fork server now rather than at the first upload (it takes a second to import the parsers)."""
        self._ensure_server()

    def close(self) -> None:
        with self._start_lock:
            if self._server is not None:
                self._server.stdin.close()  # the server exits when its stdin closes
                try:
                    self._server.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self._server.kill()
                    self._server.wait()
                self._server.stdout.close()
                self._server = None
            if self._folder is not None:
                Path(self.socket_path).unlink(missing_ok=True)
                try:
                    os.rmdir(self._folder)
                except OSError:
                    pass
                self._folder = None

    def _request(self, path: Path, name: str) -> bytes:
        limits = asdict(self.limits)
        request = {"path": str(Path(path).resolve()), "name": name, "chunk_tokens": self.chunk_tokens,
                   "chunk_overlap": self.chunk_overlap, "limits": limits}
        return json.dumps(request).encode() + b"\n"

    def _answer_timeout(self) -> float:
        return self.limits.wall_seconds + 15  # the supervisor answers by itself after wall_seconds

    def parse_blocking(self, path: Path, name: str) -> ParsedUpload:
        """Parse one file; blocks the calling thread (tools, tests, benchmarks). Raises LoadError."""
        with self._thread_slots:
            started = time.monotonic()
            self._ensure_server()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(self._answer_timeout())
                connection.connect(self.socket_path)
                connection.sendall(self._request(path, name))
                received = bytearray()
                try:
                    while True:
                        block = connection.recv(1 << 16)
                        if not block:
                            break
                        received += block
                except socket.timeout:
                    received = bytearray()
            return self._result(bytes(received), name, time.monotonic() - started)

    async def _connect(self, name: str):
        """A connection to the fork server, (re)starting it if needed."""
        for attempt in range(2):
            try:
                if self._server is None or self._server.poll() is not None:
                    await asyncio.to_thread(self._ensure_server)
                return await asyncio.open_unix_connection(self.socket_path, limit=1 << 20)
            except (OSError, RuntimeError) as exc:
                log.warning("upload parser unavailable (%s)%s", exc, "; restarting it" if attempt == 0 else "")
                if self._server is not None and self._server.poll() is None:
                    self._server.kill()
        raise ParseRefused(f"{name} could not be read: the document reader is not available (see the server log).",
                           ParseStats(outcome="unavailable"))

    async def parse(self, path: Path, name: str) -> ParsedUpload:
        """Parse one file without holding the event loop or a thread. Raises LoadError."""
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limits.max_parallel)
        async with self._semaphore:
            started = time.monotonic()
            reader, writer = await self._connect(name)
            try:
                writer.write(self._request(path, name))
                await writer.drain()
                try:
                    received = await asyncio.wait_for(reader.read(), self._answer_timeout())
                except asyncio.TimeoutError:
                    received = b""
            finally:
                writer.close()
            return self._result(received, name, time.monotonic() - started)

    def _result(self, received: bytes, name: str, wall_s: float) -> ParsedUpload:
        limits = self.limits
        try:
            answer = json.loads(received)
        except ValueError:
            answer = {"status": "no answer"}
        stats = ParseStats(wall_s=wall_s, **{k: float(v) for k, v in (answer.get("stats") or {}).items() if k != "wall_s"})
        status = answer.get("status")
        stats.outcome = status if status in ("ok", "refused") else str(status)
        if status == "ok":
            chunks = [Chunk.from_record(name, record) for record in answer["chunks"]]
            return ParsedUpload(
                name=name,
                sha256=str(answer["sha256"]),
                title=str(answer.get("title") or name),
                pages=answer.get("pages"),
                chunks=chunks,
                tokens=sum(chunk.tokens for chunk in chunks),
                stats=stats,
            )
        if status == "refused":
            message = answer.get("reason") or f"{name} could not be read."
        elif status == "cpu limit":
            message = (f"{name} took more than {limits.cpu_seconds} s of processor time to read, so reading it "
                       "was stopped. It may be damaged or built to be costly; try a simpler or smaller file.")
        elif status == "memory limit":
            message = (f"{name} needed more than {limits.memory_mb} MB of memory to read, so reading it was "
                       "stopped. Try a smaller file.")
        elif status == "timeout":
            message = f"{name} took longer than {limits.wall_seconds:.0f} s to read, so reading it was stopped."
        elif status == "output limit":
            message = f"{name} produced more than {limits.max_output_bytes // MB} MB of text; split it into smaller files."
        elif status == "error":
            log.error("parser failed on %s: %s\n%s", name, answer.get("error"), answer.get("trace", ""))
            message = f"{name} could not be read (the reader failed on it: {answer.get('error')})."
        else:
            log.error("parser gave no usable answer for %s: %r", name, answer)
            message = f"{name} could not be read (the reader stopped unexpectedly: {status})."
        raise ParseRefused(message, stats)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--serve":
        serve(argv[1])
        return
    print("usage: python -m assistant.ingest --serve SOCKET_PATH (started by the app)", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
