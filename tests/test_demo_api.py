"""The demo page's HTTP API, served by uvicorn, in front of the real Pipeline and a scripted model server."""

from __future__ import annotations

import contextlib
import json
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from assistant.demo import install_demo_routes
from assistant.embedded import free_port
from assistant.pipeline import Pipeline
from assistant.settings import load_settings
from routing.client import ModelClient
from tests.fake_openai_server import FakeOpenAIServer, Script

SMALL_ID = "Phi-4-mini-instruct-generic-cpu"
LARGE_ID = "gpt-oss-20b-generic-cpu"
SECRET_KEY = "sk-demo-secret-do-not-leak"


@contextlib.contextmanager
def serve(app: FastAPI):
    """Run ``app`` under uvicorn on a free loopback port in a thread; yield its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started:
        assert time.time() < deadline, "demo app did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)


def demo_app(endpoint: str, *, with_catch_all: bool = False) -> FastAPI:
    settings = load_settings(
        model_endpoint=endpoint, small_model="phi-4-mini", large_model="gpt-oss-20b", api_key=SECRET_KEY
    )
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), None)
    app = FastAPI()
    if with_catch_all:
        # What Chainlit does: a GET catch-all registered before anyone else's routes.
        @app.get("/{full_path:path}")
        async def catch_all(full_path: str):
            return PlainTextResponse("catch-all page")

    install_demo_routes(app, lambda: pipeline, settings)
    return app


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer([SMALL_ID, LARGE_ID]) as server:
        yield server


@pytest.fixture(scope="module")
def base_url(fake):
    with serve(demo_app(fake.base_url, with_catch_all=True)) as url:
        yield url


@pytest.fixture(autouse=True)
def fresh_fake(fake):
    fake.requests.clear()
    fake.scripts.clear()
    fake.default_script = Script()


def parse_sse(lines) -> list[tuple[str, dict]]:
    events, name, data = [], None, []
    for line in lines:
        if line.startswith("event:"):
            name = line[len("event:"):].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:"):].strip())
        elif line == "" and data:
            events.append((name, json.loads("\n".join(data))))
            name, data = None, []
    return events


def stream_events(url: str, **body) -> tuple[httpx.Response, list[tuple[str, dict]]]:
    payload = {"prompt": "What colour is the sky?", "role": "small", "reference_text": "", "temperature": 0.2, "max_tokens": 64}
    payload.update(body)
    with httpx.stream("POST", url + "/demo/api/stream", json=payload, timeout=10) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        return response, parse_sse(response.iter_lines())


def test_stream_sends_sources_prompt_started_tokens_done_in_order(fake, base_url):
    fake.script(SMALL_ID, Script(tokens=["The", " sky", " is", " blue", "."], prompt_tokens=77))
    response, events = stream_events(base_url, temperature=0.7, max_tokens=33)

    assert response.headers["content-type"].startswith("text/event-stream")
    names = [name for name, _ in events]
    assert names == ["sources", "prompt", "started"] + ["token"] * 5 + ["done"]
    data = dict(events[:3])
    assert data["started"]["model"] == SMALL_ID and data["started"]["role"] == "small"
    assert data["prompt"]["prompt_tokens"] > 0
    assert "".join(d["text"] for n, d in events if n == "token") == "The sky is blue."

    done = events[-1][1]
    assert done["answered_by"] == SMALL_ID and not done["cancelled"] and not done["error"]
    server = done["server"]
    assert server["completion_tokens"] == 5 and server["prompt_tokens"] == 77 and not server["tokens_estimated"]
    assert 0 < server["model_ttft_ms"] <= server["ttft_ms"] <= server["total_ms"]

    (request,) = fake.requests
    assert request.model == SMALL_ID
    assert request.body["temperature"] == 0.7 and request.body["max_tokens"] == 33 and request.body["stream"]


def test_large_role_is_answered_by_the_large_model(fake, base_url):
    fake.script(LARGE_ID, Script(tokens=["Large", " answer", " here", "."]))
    _, events = stream_events(base_url, role="large")

    started = next(d for n, d in events if n == "started")
    assert started == {"role": "large", "alias": "gpt-oss-20b", "model": LARGE_ID, "purpose": "answer"}
    assert [r.model for r in fake.requests] == [LARGE_ID]
    assert events[-1][1]["answered_by"] == LARGE_ID


def test_reference_text_reaches_the_model_prompt(fake, base_url):
    reference = "The Zorbulon reactor is cooled by liquid argon at 87 kelvin."
    _, events = stream_events(base_url, prompt="How is the reactor cooled?", reference_text=reference)

    sources = next(d for n, d in events if n == "sources")
    assert sources["count"] == 1 and sources["sources"][0]["location"] == "reference text"
    user_message = fake.requests[0].body["messages"][-1]["content"]
    assert reference in user_message and "How is the reactor cooled?" in user_message


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"role": "medium"}, "'small' or 'large'"),
        ({"temperature": 3}, "between 0 and 2"),
        ({"max_tokens": 0}, "Max tokens"),
        ({"max_tokens": "lots"}, "must be a number"),
    ],
)
def test_bad_requests_are_400_with_a_message_and_reach_no_model(fake, base_url, body, message):
    response, _ = stream_events(base_url, **body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert fake.requests == []


def test_body_that_is_not_json_is_refused_with_a_message(base_url):
    response = httpx.post(base_url + "/demo/api/stream", content=b"prompt=hi", timeout=5)
    assert response.status_code == 415 and "JSON" in response.json()["error"]  # no JSON content type
    response = httpx.post(base_url + "/demo/api/stream", content=b"prompt=hi", timeout=5,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]


def test_model_server_down_gives_an_error_notice_with_the_hint():
    down_endpoint = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with serve(demo_app(down_endpoint)) as url:
        _, events = stream_events(url)
        info = httpx.get(url + "/demo/api/info", timeout=10).json()

    assert [n for n, _ in events] == ["sources", "prompt", "notice", "done"]
    notice = events[2][1]
    assert notice["level"] == "error"
    assert "Nothing is listening at" in notice["message"] and "ASSISTANT_MODEL_ENDPOINT" in notice["message"]
    assert events[-1][1]["answered_by"] is None
    assert info["roles"]["small"]["model"] is None and "connection refused" in info["roles"]["small"]["error"]


def test_info_names_the_served_models_and_the_host_but_not_the_key(fake, base_url):
    response = httpx.get(base_url + "/demo/api/info", timeout=5)

    info = response.json()
    assert info["roles"]["small"] == {"alias": "phi-4-mini", "model": SMALL_ID, "error": None}
    assert info["roles"]["large"] == {"alias": "gpt-oss-20b", "model": LARGE_ID, "error": None}
    assert info["endpoint_host"] == f"127.0.0.1:{fake.port}"
    assert SECRET_KEY not in response.text and "/v1" not in response.text


def test_page_and_its_two_files_are_served_ahead_of_a_catch_all_route(base_url):
    page = httpx.get(base_url + "/demo", timeout=5)
    assert page.status_code == 200 and "/demo/static/demo.js" in page.text
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert "http://" not in page.text and "https://" not in page.text  # nothing loaded from the web

    css = httpx.get(base_url + "/demo/static/demo.css", timeout=5)
    js = httpx.get(base_url + "/demo/static/demo.js", timeout=5)
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.status_code == 200 and "AbortController" in js.text

    for name in ["index.html", "demo.py", "demo.js.map", "DEMO.JS"]:
        assert httpx.get(f"{base_url}/demo/static/{name}", timeout=5).status_code == 404
    for path in ["..%2Fassistant%2Fdemo.py", "..%2F..%2Fpyproject.toml", "../../pyproject.toml"]:
        response = httpx.get(f"{base_url}/demo/static/{path}", timeout=5)
        assert "install_demo_routes" not in response.text and "[project]" not in response.text
    assert httpx.get(base_url + "/elsewhere", timeout=5).text == "catch-all page"


def test_aborting_the_stream_cancels_the_upstream_request(fake, base_url):
    total_tokens = 200
    fake.script(SMALL_ID, Script(tokens=[f" w{i}" for i in range(total_tokens)], token_delay=0.02))
    payload = {"prompt": "Write a long story.", "role": "small", "max_tokens": 1000}

    received = 0
    with httpx.stream("POST", base_url + "/demo/api/stream", json=payload, timeout=10) as response:
        for line in response.iter_lines():
            if line.startswith("event: token"):
                received += 1
                if received == 3:
                    break
        aborted_at = time.perf_counter()
    # leaving the block closed the connection, as the browser's AbortController does

    (record,) = fake.requests
    deadline = time.time() + 3
    while record.ended is None and time.time() < deadline:
        time.sleep(0.01)
    assert record.client_disconnected and not record.completed
    assert record.tokens_sent < total_tokens // 4
    assert record.ended - aborted_at < 0.5


def test_a_reasoning_models_thinking_streams_as_its_own_events(fake, base_url):
    fake.script(LARGE_ID, Script(reasoning=["Sky", " colour", " question."], reasoning_tokens_in_usage=True,
                                 tokens=["Blue", "."], logprobs_null=True))
    _, events = stream_events(base_url, role="large", max_tokens=700)
    names = [name for name, _ in events]
    assert names == ["sources", "prompt", "started", "thinking", "thinking", "thinking", "thought", "token", "token",
                     "done"]
    assert "".join(d["text"] for n, d in events if n == "thinking") == "Sky colour question."
    assert "".join(d["text"] for n, d in events if n == "token") == "Blue."
    thought = dict(events)["thought"]
    assert thought["answered"] is True and thought["seconds"] >= 0
    server = events[-1][1]["server"]
    assert server["reasoning_tokens"] == 3 and server["reasoning_estimated"] is False
    assert server["first_answer_ms"] >= server["ttft_ms"]
    assert fake.requests[-1].body["max_tokens"] == 700  # the page's limit is the large model's budget
