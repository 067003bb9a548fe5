"""Where the shared datasets live: ``ASSISTANT_SHARED_DIR``, else ``../shared`` beside the project root."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    configured = os.environ.get("ASSISTANT_SHARED_DIR")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared"


def scifact_dir() -> Path:
    return shared_dir() / "datasets" / "scifact"


def export_at_revision(revision: str, folder: str, into: Path) -> Path:
    """The project's ``folder`` as it was at git ``revision``, extracted under ``into`` (for --before runs)."""
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(PROJECT_ROOT), "archive", revision, folder], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into
