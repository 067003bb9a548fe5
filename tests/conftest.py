"""Browser tests run last: sync Playwright keeps an event loop running on the main thread for as long as
its (session-scoped) browser lives, and pytest-asyncio cannot start its own loop while one runs."""

from __future__ import annotations

from pathlib import Path

import pytest

E2E_DIR = Path(__file__).parent / "e2e"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
    items.sort(key=lambda item: item.get_closest_marker("e2e") is not None)
