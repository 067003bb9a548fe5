"""The demo API answers hostile or broken requests with a 4xx and a message, never a 500, and runs no model."""

from __future__ import annotations

import socket

import httpx
import pytest

from starlette.requests import Request

from assistant.demo import MAX_BODY_BYTES, DemoRequestError, read_json_body
from tests.test_demo_api import demo_app, fake, serve  # noqa: F401 - fixtures

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def url(fake):  # noqa: F811
    with serve(demo_app(fake.base_url, with_catch_all=True)) as base:
        yield base


@pytest.fixture(autouse=True)
def no_requests_yet(fake):  # noqa: F811
    fake.requests.clear()
    yield
    assert fake.requests == [], "a bad request reached the model server"


def post(url: str, content: bytes | str, headers=JSON) -> httpx.Response:
    return httpx.post(url + "/demo/api/stream", content=content, headers=headers, timeout=30)


@pytest.mark.parametrize(
    "content",
    [
        '{"prompt": "hi", "role": []}',
        '{"prompt": "hi", "role": {}}',
        '{"prompt": "hi", "role": null}',
        '{"prompt": "hi", "max_tokens": ' + "9" * 5000 + "}",  # over Python's int-conversion limit
        '{"prompt": "hi", "max_tokens": ' + "9" * 1000 + "}",  # an int too large for a float
        '{"prompt": "hi", "max_tokens": 1e999}',
        '{"prompt": "hi", "max_tokens": NaN}',
        '{"prompt": "hi", "temperature": Infinity}',
        '{"prompt": "hi", "temperature": "nan"}',
        '{"prompt": ["hi"]}',
        '{"prompt": "hi", "reference_text": {"a": 1}}',
        "[" * 100_000 + "]" * 100_000,  # deep JSON
        '{"a":' * 50_000 + "1" + "}" * 50_000,
        "\xff\xfe not utf-8",
        "",
        "null",
    ],
    ids=["role-list", "role-object", "role-null", "max-tokens-5000-digits", "max-tokens-1000-digits",
         "max-tokens-1e999", "max-tokens-nan", "temperature-inf", "temperature-nan-string", "prompt-list",
         "reference-object", "deep-array", "deep-object", "bad-utf8", "empty", "null"],
)
def test_bad_body_is_400_with_a_message(url, content):
    response = post(url, content.encode("latin-1") if content.startswith("\xff") else content)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]


def test_a_text_plain_post_is_refused_before_anything_runs(url):
    response = post(url, '{"prompt": "hi"}', headers={"Content-Type": "text/plain"})
    assert response.status_code == 415


def test_a_100_mb_body_is_refused_without_reading_it_whole(url):
    # A declared 100 MB body is refused from its Content-Length, after sending only 1 MB of it.
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(b"POST /demo/api/stream HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
        conn.sendall(b"{" + b" " * (1 << 20))
        reply = conn.recv(4096).decode("latin-1")
    assert reply.startswith("HTTP/1.1 413"), reply[:200]


async def test_a_100_mb_body_without_a_length_is_read_only_up_to_the_limit():
    pulled = 0

    async def receive():
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": b" " * (1 << 20), "more_body": pulled < 100}

    scope = {"type": "http", "method": "POST", "path": "/demo/api/stream",
             "headers": [(b"content-type", b"application/json")]}
    with pytest.raises(DemoRequestError) as refused:
        await read_json_body(Request(scope, receive), MAX_BODY_BYTES)
    assert refused.value.status == 413
    assert pulled <= MAX_BODY_BYTES // (1 << 20) + 1, f"{pulled} MB read for a {MAX_BODY_BYTES >> 20} MB limit"
