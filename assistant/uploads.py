"""Keeping what users upload: a private copy per conversation, and atomic promotion to shared knowledge.

Nothing from the user's file name is used as a path: stored names are built from the content hash and
a sanitised stem; only the extension survives, and only as letters and digits.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

HASH_PREFIX_CHARS = 16
INCOMING_PREFIX = ".incoming-"
# A copy in progress that is this old was left by a process that was killed: it is removed.
STALE_INCOMING_S = 600
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


class UploadError(Exception):
    """A user-facing reason why an upload was not kept."""


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_name(display_name: str, sha256: str) -> str:
    """``<hash prefix>-<sanitised stem>.<ext>``: e.g. ``../../etc/passwd.md`` -> ``1a2b...-passwd.md``."""
    base = display_name.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    stem = _UNSAFE.sub("_", stem).strip("_.")[:60] or "document"
    ext = re.sub(r"[^A-Za-z0-9]", "", ext)[:10].lower()
    return f"{sha256[:HASH_PREFIX_CHARS]}-{stem}" + (f".{ext}" if ext else "")


def _atomic_copy(source: Path, target: Path) -> None:
    """``target`` appears whole or not at all (a hidden temporary name until it is on disk), even if the
    process is killed meanwhile; readers of the folder skip hidden files."""
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_incoming(target.parent)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=INCOMING_PREFIX)
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_incoming(folder: Path, max_age_s: float = STALE_INCOMING_S) -> None:
    """Remove the partial copies a killed process left in ``folder`` (younger ones may be in progress)."""
    now = time.time()
    for path in folder.glob(INCOMING_PREFIX + "*"):
        try:
            if now - path.stat().st_mtime > max_age_s:
                path.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: it is hidden and harmless


def size_problem(size: int | None, limit_bytes: int) -> str | None:
    """Why a file of ``size`` bytes cannot be an upload, or None."""
    if size == 0:
        return "the file is empty (0 bytes): there is nothing to read"
    if size is not None and size > limit_bytes:
        return (f"the file is {size / 1048576:.1f} MB, over the {limit_bytes / 1048576:.0f} MB limit "
                "(ASSISTANT_UPLOAD_MAX_MB)")
    return None


def check_upload(source: Path, limit_bytes: int) -> None:
    """Refuse a file that cannot be an upload (unreadable, empty, too large) before anything reads it."""
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise UploadError(f"the uploaded file could not be read ({exc.strerror or exc})") from exc
    problem = size_problem(size, limit_bytes)
    if problem:
        raise UploadError(problem)


def save_upload(source: Path, folder: Path, limit_bytes: int, display_name: str | None = None) -> Path:
    """Copy an uploaded file out of Chainlit's per-session folder (deleted when the session ends)."""
    check_upload(source, limit_bytes)
    sha = file_sha256(source)
    target = folder / safe_name(display_name or source.name, sha)
    if not target.exists():
        _atomic_copy(source, target)
    return target


def share_document(source: Path, display_name: str, shared_folder: Path) -> tuple[Path, bool]:
    """Copy a kept upload into the shared knowledge folder. Returns (path, created); an identical
    document already there (same content hash) is not copied again."""
    sha = file_sha256(source)
    if shared_folder.is_dir():
        for existing in shared_folder.iterdir():
            if existing.name.startswith(sha[:HASH_PREFIX_CHARS] + "-") and file_sha256(existing) == sha:
                return existing, False
    target = shared_folder / safe_name(display_name, sha)
    _atomic_copy(source, target)
    return target, True


def install_upload_checks(app, limit_bytes: int, display_name=lambda name: name) -> None:
    """Answer Chainlit's upload endpoint (``POST /project/file``) with our own reasons, naming the file.

    Chainlit's endpoint fails on a zero-byte file with an unhandled error (the browser then shows a bare
    "Upload failed") and refuses other files with terse reasons. This route, placed ahead of it, refuses
    empty and over-size files itself, passes the rest to Chainlit's endpoint, and rewrites its refusals.
    """
    import logging
    from typing import Optional

    from chainlit.server import UserParam, upload_file
    from fastapi import HTTPException, UploadFile
    from fastapi.responses import JSONResponse

    log = logging.getLogger(__name__)

    def refuse(status: int, name: str, reason: str) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": f"{name} was not uploaded: {reason}."})

    async def checked_upload(current_user: UserParam, session_id: str, file: UploadFile, ask_parent_id: str | None = None):
        name = display_name(file.filename or "the file")
        problem = size_problem(file.size, limit_bytes)
        if problem:
            return refuse(400, name, problem)
        try:
            return await upload_file(current_user=current_user, session_id=session_id, file=file,
                                     ask_parent_id=ask_parent_id)
        except HTTPException as exc:
            reason = {"File type not allowed": f"files of type {file.content_type or 'unknown'} are not accepted",
                      "File size too large": "the file is larger than uploads may be"}.get(str(exc.detail), str(exc.detail))
            return refuse(exc.status_code, name, reason)
        except Exception as exc:  # Chainlit's endpoint raises more than HTTPException on odd files
            log.exception("upload of %r failed", file.filename)
            return refuse(400, name, f"the server could not store it ({type(exc).__name__})")

    # This module's annotations are strings (``from __future__ import annotations``) that FastAPI would resolve in
    # the module's globals, where these locally imported types are not: give it the objects.
    checked_upload.__annotations__ = {"current_user": UserParam, "session_id": str, "file": UploadFile,
                                      "ask_parent_id": Optional[str]}
    first_new = len(app.router.routes)
    app.add_api_route("/project/file", checked_upload, methods=["POST"])
    new_routes = app.router.routes[first_new:]
    del app.router.routes[first_new:]
    app.router.routes[0:0] = new_routes
