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
from pathlib import Path

HASH_PREFIX_CHARS = 16
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
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
            shutil.copyfileobj(src, out)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_upload(source: Path, folder: Path, limit_bytes: int, display_name: str | None = None) -> Path:
    """Copy an uploaded file out of Chainlit's per-session folder (deleted when the session ends)."""
    try:
        size = source.stat().st_size
    except OSError as exc:
        raise UploadError(f"the uploaded file could not be read ({exc.strerror or exc})") from exc
    if size == 0:
        raise UploadError("the file is empty")
    if size > limit_bytes:
        raise UploadError(
            f"the file is {size / 1048576:.1f} MB, over the {limit_bytes / 1048576:.0f} MB limit "
            "(ASSISTANT_UPLOAD_MAX_MB)"
        )
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
