"""The /demo page in headless chromium, served by the real Chainlit app in front of the real llama.cpp model."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

pytestmark = pytest.mark.e2e


def open_demo(page, app_server):
    page.goto(app_server.url + "/demo")
    # The page's Content-Security-Policy forbids eval, so waits use locators, not wait_for_function.
    expect(page.locator("#model-small")).not_to_have_text("…", timeout=10_000)


def send_and_wait(page, state: str = "done"):
    page.click("#send")
    # generous: on a busy 2-core machine one thread of llama.cpp reads prompts slowly
    page.wait_for_selector(f"#status[data-state='{state}']", timeout=90_000)


def test_demo_streams_both_models_charts_them_and_stops(app_server, page):
    console_errors = []
    page.on("console", lambda message: message.type == "error" and console_errors.append(message.text))
    offline_requests = []
    page.on("request", lambda request: request.url.startswith(app_server.url) or offline_requests.append(request.url))
    open_demo(page, app_server)

    assert page.inner_text("#model-small") == app_server.small_model
    assert page.inner_text("#model-large") == app_server.large_model
    assert "not in this browser" in page.inner_text("#inference-note")
    expect(page.locator("#webgpu-status")).not_to_have_text("checking…", timeout=5_000)
    assert re.search(r"not exposed|no GPU adapter|available", page.inner_text("#webgpu-status"))

    # 1. the small model, from the team's documents (a question few of them match keeps the prompt short)
    page.fill("#prompt", "Say hello to Zorblax.")
    page.fill("#max-tokens", "24")
    send_and_wait(page)
    assert app_server.small_model in page.inner_text("#answer-meta")
    assert page.inner_text("#output").strip()
    assert page.inner_text("#m-ttft").endswith(("ms", " s"))
    assert page.locator("#chart-small .run").count() == 1
    assert page.locator("#chart-large .run").count() == 0

    # 2. the large model, answering from pasted reference text
    page.check("#role-large")
    page.fill("#prompt", "What colour is the sky on Zorg?")
    page.fill("#reference", "On the planet Zorg the sky is bright green all day long.")
    send_and_wait(page)
    assert "reference text" in page.inner_text("#answer-meta")
    assert app_server.large_model in page.inner_text("#answer-meta")
    assert page.locator("#chart-large .run").count() == 1
    assert page.locator("#chart-small .run").count() == 1
    assert "median first token" in page.inner_text("#summary-large")

    # 3. a long answer, stopped right after its first token
    page.check("#role-small")
    page.fill("#reference", "Ember is a young dragon who lives above a bakery and wants to learn to bake bread.")
    page.fill("#prompt", "Write a very long story about Ember.")
    page.fill("#max-tokens", "1500")
    page.click("#send")
    expect(page.locator("#m-ttft")).not_to_have_text("–", timeout=90_000)
    page.click("#stop")
    page.wait_for_selector("#status[data-state='stopped']")
    assert "Stopped after" in page.inner_text("#notices")
    assert page.locator("#chart-small .run.stopped").count() == 1
    assert page.is_enabled("#send") and not page.is_enabled("#stop")

    # 4. the model server is free again at once: the stopped generation was cancelled upstream. The same
    # prompt again is already in llama.cpp's cache, so its first token takes one decode step; had the
    # stopped answer kept generating (--interrupt_requests False queues this request behind it), this one
    # would wait for the rest of a ~500-token story: 10 s at best, a minute on a busy machine.
    page.fill("#max-tokens", "8")
    send_and_wait(page)
    ttft_text = page.inner_text("#m-ttft")
    ttft_s = float(ttft_text[:-3]) / 1000 if ttft_text.endswith("ms") else float(ttft_text[:-2])
    assert ttft_s < 3
    assert page.locator("#chart-small .run").count() == 3
    assert page.locator("#runs-table tbody tr").count() == 4

    assert offline_requests == []
    assert console_errors == []


def test_empty_prompt_shows_the_servers_message(app_server, page):
    open_demo(page, app_server)
    page.fill("#prompt", "   ")
    send_and_wait(page, state="error")
    assert "prompt is empty" in page.inner_text("#notices")
    assert page.locator("#chart-small .run").count() == 0


def test_demo_fits_a_phone_screen(app_server, browser):
    context = browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True, bypass_csp=True
    )
    page = context.new_page()
    try:
        open_demo(page, app_server)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
        assert page.is_visible("#send") and page.is_visible("#chart-small") and page.is_visible("#chart-large")
    finally:
        context.close()


def test_page_explains_when_in_browser_mode_is_unavailable(browser, tmp_path):
    """No npm package and no model file: the third engine cannot be chosen and the page says why, plainly."""
    from fastapi import FastAPI

    from assistant.demo import install_demo_routes
    from assistant.pipeline import Pipeline
    from assistant.settings import load_settings
    from routing.client import ModelClient
    from tests.fake_openai_server import FakeOpenAIServer
    from tests.test_demo_api import serve

    with FakeOpenAIServer(["small-model", "large-model"]) as fake:
        settings = load_settings(
            model_endpoint=fake.base_url, small_model="small-model", large_model="large-model",
            embedded_model_path=str(tmp_path / "missing.gguf"),
        )
        pipeline = Pipeline(settings, ModelClient.from_settings(settings), None)
        app = FastAPI()
        install_demo_routes(app, lambda: pipeline, settings, node_modules=tmp_path / "node_modules")
        with serve(app) as url:
            context = browser.new_context()
            page = context.new_page()
            try:
                page.goto(url + "/demo")
                expect(page.locator("#engine-status")).to_have_text("unavailable", timeout=10_000)
                assert page.is_disabled("#role-browser")
                assert page.inner_text("#model-browser") == "unavailable"
                note = page.inner_text("#engine-note")
                assert "In-browser mode is unavailable" in note
                assert "@wllama/wllama" in note and "missing.gguf" in note
                # the server engines still work
                assert page.is_enabled("#role-small") and page.inner_text("#model-small") == "small-model"
            finally:
                context.close()
