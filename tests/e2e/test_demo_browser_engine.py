"""The demo page's in-browser engine in headless chromium: the real app serves the real GGUF and the wllama
runtime from node_modules; the model runs in the page (WebAssembly). Needs `npm ci` to have run
(scripts/setup-env.sh does it); skipped with the reason otherwise."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from assistant.browser_engine import find_browser_engine
from assistant.settings import load_settings
from tests.e2e.conftest import PROJECT
from tests.e2e.test_demo_page import open_demo

pytestmark = pytest.mark.e2e
SCREENSHOTS = PROJECT / "test-artifacts"

# A busy 2-core machine reads prompts slowly in WebAssembly: generous waits, short prompts and answers.
LOAD_TIMEOUT_MS = 240_000
ANSWER_TIMEOUT_MS = 240_000


@pytest.fixture(scope="module", autouse=True)
def engine_installed():
    engine = find_browser_engine(load_settings())
    if not engine.available:
        pytest.skip(" ".join(engine.problems))


def seconds(text: str) -> float:
    """'812 ms' / '1.25 s' / '1.25 s (cached)' -> seconds."""
    match = re.match(r"([\d.]+) (ms|s)\b", text)
    assert match, text
    return float(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def summary_medians(text: str) -> tuple[float, float]:
    match = re.search(r"median first token (.+?) · median total (.+?) ·", text)
    assert match, text
    return seconds(match.group(1)), seconds(match.group(2))


def wait_for_engine(page):
    page.wait_for_selector("#engine-panel[data-state='ready']", timeout=LOAD_TIMEOUT_MS)
    return page.inner_text("#engine-note")


def test_model_loads_in_the_page_answers_with_metrics_stops_and_comes_back_from_cache(app_server, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})  # its own storage: a first visit
    page = context.new_page()
    page.set_default_timeout(30_000)
    console_errors = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    page.on("pageerror", lambda error: console_errors.append(str(error)))
    elsewhere = []  # nothing may come from anywhere but the app (blob: workers are the page's own)
    page.on("request", lambda r: r.url.startswith((app_server.url, "blob:", "data:")) or elsewhere.append(r.url))
    try:
        open_demo(page, app_server)
        assert page.is_enabled("#role-browser")
        assert page.inner_text("#model-browser").startswith("SmolLM2-135M-Instruct")

        # 1. choosing the engine loads the model, with a progress bar, and says where it runs
        page.check("#role-browser")
        expect(page.locator("#inference-note .note-browser")).to_be_visible()
        expect(page.locator("#engine-progress")).to_be_visible(timeout=10_000)
        note = wait_for_engine(page)
        assert "first visit: downloaded 98.4 MB" in note
        # the page is cross-origin isolated (COOP/COEP), so the runtime may use threads (half the cores; one on
        # two cores); chromium here has no GPU adapter
        assert re.search(r"runs here on WebAssembly, \d threads? \(the page is cross-origin isolated", note), note
        assert "ready" in page.inner_text("#engine-status")
        assert not page.is_visible("#engine-progress")

        # 2. a question with a pasted reference text, answered in the page
        page.fill("#prompt", "What colour is the sky on Zorg?")
        page.fill("#reference", "On the planet Zorg the sky is bright green all day long.")
        page.fill("#max-tokens", "12")
        page.click("#send")
        expect(page.locator("#status")).to_have_text("Waiting for the first token", timeout=30_000)
        assert "answering in this browser (WebAssembly, " in page.inner_text("#answer-meta")
        expect(page.locator("#status")).to_have_text("Streaming", timeout=ANSWER_TIMEOUT_MS)
        page.wait_for_selector("#status[data-state='done']", timeout=ANSWER_TIMEOUT_MS)
        assert page.inner_text("#output").strip()
        assert "answered from 1 source (reference text)" in page.inner_text("#answer-meta")
        ttft, total = seconds(page.inner_text("#m-ttft")), seconds(page.inner_text("#m-total"))
        assert 0 < ttft <= total
        assert 0 < int(page.inner_text("#m-tokens").lstrip("~")) <= 12
        assert float(page.inner_text("#m-rate")) > 0
        assert seconds(page.inner_text("#m-load")) > 0
        assert int(page.inner_text("#m-prompt")) > 50  # the server's grounded prompt, counted by the model
        assert page.locator("#chart-browser .run").count() == 1
        assert page.locator("#chart-small .run").count() == 0
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "demo-browser-engine-answer.png"), full_page=True)

        # 3. the same question on the server's small model: a row next to it, the same question label
        page.check("#role-small")
        expect(page.locator("#inference-note .note-server")).to_be_visible()
        page.click("#send")
        page.wait_for_selector("#status[data-state='done']", timeout=ANSWER_TIMEOUT_MS)
        assert page.locator("#chart-small .run").count() == 1
        page.click("#runs-table >> xpath=ancestor::details/summary")
        rows = page.locator("#runs-table tbody tr")
        assert rows.count() == 2
        assert rows.nth(0).locator("td").nth(1).inner_text().startswith("Q1 ")  # newest first: the server run
        assert rows.nth(1).locator("td").nth(1).inner_text().startswith("Q1 ")
        assert rows.nth(1).locator("td").nth(2).inner_text().startswith("in this browser · SmolLM2")

        # 4. a long answer in the page, stopped mid-way: the page stops at once, the engine right after
        page.check("#role-browser")
        page.fill("#reference", "Ember is a young dragon who lives above a bakery and wants to learn to bake bread.")
        page.fill("#prompt", "Write a very long story about Ember.")
        page.fill("#max-tokens", "400")
        page.click("#send")
        expect(page.locator("#status")).to_have_text("Streaming", timeout=ANSWER_TIMEOUT_MS)
        expect(page.locator("#m-tokens")).not_to_have_text(re.compile(r"^[–12]$"), timeout=60_000)  # a few tokens in
        clicked = time.monotonic()
        page.click("#stop")
        page.wait_for_selector("#status[data-state='stopped']", timeout=5_000)
        # at once, not when the engine would have finished: ~390 more tokens take minutes here
        stopped_after_s = time.monotonic() - clicked
        assert stopped_after_s < 5, stopped_after_s
        tokens_at_stop = int(page.inner_text("#m-tokens"))
        assert 3 <= tokens_at_stop < 400
        assert page.is_enabled("#send") and not page.is_enabled("#stop")
        page.wait_for_selector(".notice[data-released='yes']", timeout=60_000)
        notice = page.inner_text("#notices")
        assert re.search(r"Stopped after \d+ tokens .* stopped generating .* after Stop\.", notice), notice
        time.sleep(1)
        assert int(page.inner_text("#m-tokens")) == tokens_at_stop  # nothing more was written after Stop
        assert page.locator("#chart-browser .run.stopped").count() == 1
        summary = page.inner_text("#summary-browser")
        assert "1 finished · 1 stopped (not counted)" in summary
        median_ttft, median_total = summary_medians(summary)
        assert median_ttft <= median_total
        page.screenshot(path=str(SCREENSHOTS / "demo-browser-engine-stopped.png"), full_page=True)

        # 5. the engine answers again after a stop
        page.fill("#max-tokens", "6")
        page.click("#send")
        page.wait_for_selector("#status[data-state='done']", timeout=ANSWER_TIMEOUT_MS)
        assert page.locator("#chart-browser .run").count() == 3
        median_ttft, median_total = summary_medians(page.inner_text("#summary-browser"))
        assert median_ttft <= median_total

        # 6. the next visit loads the model from the browser's cache, here into two WebAssembly threads
        page.goto(app_server.url + "/demo?threads=2")
        expect(page.locator("#model-small")).not_to_have_text("…", timeout=10_000)
        page.check("#role-browser")
        note = wait_for_engine(page)
        assert "from this browser's cache" in note, note
        assert "WebAssembly, 2 threads (the page is cross-origin isolated)" in note, note
        assert page.get_attribute("#engine-panel", "data-cached") == "true"
        assert elsewhere == []
        assert console_errors == []
    finally:
        context.close()


def test_a_browser_without_jspi_runs_the_compatibility_build_served_by_the_app(app_server, browser):
    """Safari and older browsers lack WebAssembly JSPI: the runtime then needs its compatibility build, which
    it would fetch from a CDN; the page uses the copy this app serves. Simulated here by hiding JSPI."""
    if find_browser_engine(load_settings()).info(2048)["runtime"]["compat_worker_url"] is None:
        pytest.skip("the compatibility build (@wllama/wllama-compat) is not installed")
    context = browser.new_context()
    context.add_init_script("delete WebAssembly.Suspending;")
    page = context.new_page()
    elsewhere = []
    page.on("request", lambda r: r.url.startswith((app_server.url, "blob:", "data:")) or elsewhere.append(r.url))
    compat_files = []
    page.on("request", lambda r: "/compat/" in r.url and compat_files.append(r.url.rsplit("/", 2)[-2:]))
    try:
        open_demo(page, app_server)
        page.check("#role-browser")
        note = wait_for_engine(page)
        assert "compatibility build" in note, note
        assert ["compat", "wllama.js"] in compat_files and ["compat", "wllama.wasm"] in compat_files
        page.fill("#prompt", "Say yes.")
        page.fill("#reference", "The answer is yes.")
        page.fill("#max-tokens", "2")
        page.click("#send")
        page.wait_for_selector("#status[data-state='done']", timeout=ANSWER_TIMEOUT_MS)
        assert page.inner_text("#output").strip()
        assert elsewhere == []
    finally:
        context.close()
