"""Where the shared datasets live: ``ASSISTANT_SHARED_DIR``, else ``../shared`` beside the project root."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def shared_dir() -> Path:
    configured = os.environ.get("ASSISTANT_SHARED_DIR")
    return Path(configured) if configured else PROJECT_ROOT.parent / "shared"


def scifact_dir() -> Path:
    return shared_dir() / "datasets" / "scifact"
