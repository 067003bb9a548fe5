"""The chat page's browser console: nothing the app causes goes wrong on a first visit, a question and a reload."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import ask, open_chat, wait_for_answer

pytestmark = pytest.mark.e2e


# What Chainlit's frontend itself logs, whatever the app does:
CHAINLIT_OWN = (
    # A reload closes the open socket mid-handshake at times; its socket client logs that as a warning.
    "WebSocket is closed before the connection is established",
    # Until the project config arrives, the upload input uses a built-in list of wildcard types
    # ("application/*", ...) that the browser rejects; the app's own accept list has exact types only.
    'Skipped "application/*" because it is not a valid MIME type',
    'Skipped "image/*" because it is not a valid MIME type',
    'Skipped "text/*" because it is not a valid MIME type',
)


def test_console_and_network_are_clean_on_first_visit_answer_and_reload(page, app_server):
    problems: list[str] = []
    page.on("console", lambda m: m.type in ("error", "warning") and problems.append(f"console {m.type}: {m.text[:300]}"))
    # A reload aborts the old page's requests in flight (net::ERR_ABORTED): that is the browser, not a failure.
    page.on("requestfailed", lambda r: "ERR_ABORTED" not in (r.failure or "")
            and problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on("response", lambda r: r.status >= 400 and problems.append(f"HTTP {r.status}: {r.url}"))
    # Off-site requests would fail offline, and a local app should not make them.
    page.on("request", lambda r: not r.url.startswith((app_server.url, "ws://127.0.0.1", "data:", "blob:"))
            and problems.append(f"off-site request: {r.url}"))

    open_chat(page, app_server)
    ask(page, "What does the metrics bar show?")
    wait_for_answer(page, 300)
    page.reload()
    page.locator('[data-step-type="assistant_message"]').first.wait_for(timeout=60_000)
    page.wait_for_timeout(1000)
    problems = [p for p in problems if not any(known in p for known in CHAINLIT_OWN)]
    assert problems == [], "\n".join(problems)
