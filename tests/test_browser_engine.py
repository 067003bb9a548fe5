"""The server's part of the demo page's in-browser engine, over real HTTP (uvicorn): the prompt request, the
GGUF and runtime files with their caching and same-origin rules, and what the info endpoint says when npm
or the model file is missing. The engine itself runs in chromium: tests/e2e/test_demo_browser_engine.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.middleware.gzip import GZipMiddleware

from assistant.demo import install_demo_routes
from assistant.pipeline import Pipeline
from assistant.settings import load_settings
from routing.client import ModelClient
from tests.fake_openai_server import FakeOpenAIServer, Script
from tests.test_demo_api import serve

SMALL_ID = "SmolLM2-135M-Instruct"
RUNTIME_VERSION = "3.13.0"
REFERENCE = "The Zorbulon reactor is cooled by liquid argon at 87 kelvin."


def fake_package(node_modules: Path, package: str, files: dict[str, bytes], version: str = RUNTIME_VERSION) -> None:
    root = node_modules / package
    root.mkdir(parents=True)
    (root / "package.json").write_text(json.dumps({"name": package, "version": version}))
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer([SMALL_ID]) as server:
        yield server


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "Tiny-Model.Q4_1.gguf"
    path.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    return path


@pytest.fixture(scope="module")
def node_modules(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("node_modules")
    fake_package(root, "@wllama/wllama", {
        "esm/index.js": b"export class Wllama {}\n",
        "esm/wasm/wllama.wasm": b"\0asm\1\0\0\0",
        "esm/index.d.ts": b"export {};\n",
    })
    return root


def make_app(endpoint: str, node_modules: Path, model_path: Path | str) -> tuple[FastAPI, Pipeline]:
    settings = load_settings(
        model_endpoint=endpoint, small_model=SMALL_ID, large_model=SMALL_ID, embedded_model_path=str(model_path)
    )
    pipeline = Pipeline(settings, ModelClient.from_settings(settings), None)
    app = FastAPI()
    app.add_middleware(GZipMiddleware)  # as Chainlit's server has
    install_demo_routes(app, lambda: pipeline, settings, node_modules=node_modules)
    return app, pipeline


@pytest.fixture(scope="module")
def base_url(fake, node_modules, model_file):
    app, _ = make_app(fake.base_url, node_modules, model_file)
    with serve(app) as url:
        yield url


def engine_info(url: str) -> dict:
    response = httpx.get(url + "/demo/api/info", timeout=10)
    assert response.status_code == 200
    return response.json()["browser_engine"]


# ------------------------------------------------------------------------------------------ prompt
def test_prompt_request_builds_the_servers_grounded_prompt_without_calling_a_model(fake, base_url):
    fake.requests.clear()
    response = httpx.post(
        base_url + "/demo/api/prompt",
        json={"prompt": "How is the reactor cooled?", "reference_text": REFERENCE, "temperature": 0, "max_tokens": 64},
        timeout=10,
    )
    assert response.status_code == 200
    data = response.json()
    assert fake.requests == []  # retrieval and the prompt only: no model call
    assert data["sources"]["count"] == 1 and data["sources"]["supported"]
    assert data["prompt"]["prompt_tokens"] > 0
    assert [s["location"] for s in data["prompt"]["sources_used"]] == ["reference text"]
    roles = [m["role"] for m in data["messages"]]
    assert roles == ["system", "user"]
    assert REFERENCE in data["messages"][1]["content"] and "How is the reactor cooled?" in data["messages"][1]["content"]


def test_prompt_request_is_the_prompt_the_server_sends_its_model(fake, base_url):
    fake.requests.clear()
    fake.default_script = Script(tokens=["Argon", "."])
    body = {"prompt": "How is the reactor cooled?", "reference_text": REFERENCE, "temperature": 0, "max_tokens": 64}
    prepared = httpx.post(base_url + "/demo/api/prompt", json=body, timeout=10).json()
    with httpx.stream("POST", base_url + "/demo/api/stream", json={**body, "role": "small"}, timeout=10) as response:
        response.read()
    (request,) = fake.requests
    assert request.body["messages"] == prepared["messages"]


@pytest.mark.parametrize(
    "body, message",
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "Hi", "max_tokens": 0}, "Max tokens"),
        (["not", "an", "object"], "JSON object"),
    ],
)
def test_bad_prompt_requests_say_what_is_wrong(fake, base_url, body, message):
    fake.requests.clear()
    response = httpx.post(base_url + "/demo/api/prompt", json=body, timeout=10)
    assert response.status_code == 400
    assert message in response.json()["error"]
    assert fake.requests == []


def test_prompt_request_that_is_not_json_is_refused(base_url):
    response = httpx.post(base_url + "/demo/api/prompt", content=b"{oops", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "JSON" in response.json()["error"]


# ------------------------------------------------------------------------------------------ info
def test_info_offers_the_engine_with_its_model_and_runtime(base_url, model_file):
    info = engine_info(base_url)
    assert info["available"] and info["problems"] == []
    assert info["model"]["file"] == model_file.name and info["model"]["name"] == "Tiny-Model"
    assert info["model"]["bytes"] == model_file.stat().st_size
    assert info["model"]["url"].startswith("/demo/engine/model/") and info["model"]["url"].endswith(model_file.name)
    assert info["runtime"]["version"] == RUNTIME_VERSION
    assert info["runtime"]["module_url"] == f"/demo/engine/runtime/{RUNTIME_VERSION}/wllama.js"
    assert info["runtime"]["compat_worker_url"] is None  # the compat package is not installed here
    assert info["context_window"] > 0


def test_info_explains_a_missing_runtime_and_names_npm(fake, tmp_path, model_file, monkeypatch):
    app, _ = make_app(fake.base_url, tmp_path / "empty-node-modules", model_file)
    with serve(app) as url:
        with_npm = engine_info(url)
        monkeypatch.setenv("PATH", str(tmp_path))  # no npm on the PATH
        without_npm = engine_info(url)
    assert not with_npm["available"] and with_npm["runtime"] is None
    (problem,) = with_npm["problems"]
    assert "In-browser mode is unavailable" in problem and "npm ci" in problem and "setup-env.sh" in problem
    (problem,) = without_npm["problems"]
    assert "npm is not installed" in problem


def test_info_explains_a_missing_model_file(fake, tmp_path, node_modules):
    app, _ = make_app(fake.base_url, node_modules, tmp_path / "gone.gguf")
    with serve(app) as url:
        info = engine_info(url)
        assert not info["available"] and info["model"] is None
        assert any("In-browser mode is unavailable" in p and "gone.gguf" in p for p in info["problems"])
        # the other engines are unaffected
        assert httpx.get(url + "/demo/api/info").json()["roles"]["small"]["model"] == SMALL_ID


def test_a_model_too_large_for_the_browser_is_explained(fake, tmp_path, node_modules):
    big = tmp_path / "Big.gguf"
    with open(big, "wb") as f:
        f.truncate(2 * 1024**3)  # sparse: no disk used
    app, _ = make_app(fake.base_url, node_modules, big)
    with serve(app) as url:
        info = engine_info(url)
    assert not info["available"] and "2 GB" in info["problems"][0]


# ------------------------------------------------------------------------------------------ files
def test_model_file_is_served_with_caching_headers(base_url, model_file):
    url = base_url + engine_info(base_url)["model"]["url"]
    response = httpx.get(url, headers={"Sec-Fetch-Site": "same-origin", "Accept-Encoding": "gzip"})
    assert response.status_code == 200
    assert response.content == model_file.read_bytes()
    assert response.headers["content-encoding"] == "identity"  # not recompressed by the gzip middleware
    assert "immutable" in response.headers["cache-control"] and "max-age=31536000" in response.headers["cache-control"]
    assert response.headers["cross-origin-resource-policy"] == "same-origin"
    assert response.headers["etag"].strip('"') in url
    assert int(response.headers["content-length"]) == model_file.stat().st_size
    head = httpx.head(url)
    assert head.status_code == 200 and int(head.headers["content-length"]) == model_file.stat().st_size


def test_model_url_changes_when_the_file_changes(fake, tmp_path, node_modules):
    path = tmp_path / "Changing.gguf"
    path.write_bytes(b"GGUF one")
    app, _ = make_app(fake.base_url, node_modules, path)
    with serve(app) as url:
        first = engine_info(url)["model"]["url"]
        path.write_bytes(b"GGUF two, longer")
        os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
        second = engine_info(url)["model"]["url"]
        assert first != second
        assert httpx.get(url + first).status_code == 404  # a stale URL never serves the new bytes under the old name
        assert httpx.get(url + second).content == b"GGUF two, longer"


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
)
def test_model_and_runtime_are_refused_to_other_sites(base_url, headers):
    info = engine_info(base_url)
    for path in (info["model"]["url"], info["runtime"]["wasm_url"]):
        response = httpx.get(base_url + path, headers=headers)
        assert response.status_code == 403, path
        assert "only to this app's own pages" in response.json()["error"]


def test_same_origin_requests_and_typed_urls_are_served(base_url):
    info = engine_info(base_url)
    host = base_url.split("://", 1)[1]
    for headers in ({"Sec-Fetch-Site": "same-origin", "Origin": base_url}, {"Sec-Fetch-Site": "none"}, {"Host": host}):
        assert httpx.get(base_url + info["runtime"]["module_url"], headers=headers).status_code == 200


def test_runtime_files_are_served_with_their_media_types(base_url, node_modules):
    info = engine_info(base_url)
    module = httpx.get(base_url + info["runtime"]["module_url"])
    assert module.status_code == 200 and module.headers["content-type"].startswith("text/javascript")
    assert module.content == (node_modules / "@wllama/wllama/esm/index.js").read_bytes()
    wasm = httpx.get(base_url + info["runtime"]["wasm_url"], headers={"Accept-Encoding": "gzip"})
    assert wasm.status_code == 200 and wasm.headers["content-type"] == "application/wasm"  # instantiateStreaming needs it
    assert wasm.headers["content-encoding"] == "identity"
    assert "immutable" in wasm.headers["cache-control"]


@pytest.mark.parametrize(
    "path",
    [
        f"/demo/engine/runtime/{RUNTIME_VERSION}/esm/index.d.ts",  # in the package, but not a served file
        f"/demo/engine/runtime/{RUNTIME_VERSION}/../../package.json",
        f"/demo/engine/runtime/{RUNTIME_VERSION}/%2e%2e/%2e%2e/package.json",
        "/demo/engine/runtime/9.9.9/wllama.js",  # another version
        f"/demo/engine/runtime/{RUNTIME_VERSION}/compat/wllama.js",  # compat package not installed
        "/demo/engine/model/0000000000000000/Tiny-Model.Q4_1.gguf",
    ],
)
def test_nothing_else_is_served(base_url, path):
    assert httpx.get(base_url + path).status_code == 404


def test_compat_build_is_offered_when_installed(fake, tmp_path, model_file):
    root = tmp_path / "node_modules"
    fake_package(root, "@wllama/wllama", {"esm/index.js": b"export {};", "esm/wasm/wllama.wasm": b"\0asm"})
    fake_package(root, "@wllama/wllama-compat", {"wasm/wllama.js": b"var Module;", "wasm/wllama.wasm": b"\0asm"})
    app, _ = make_app(fake.base_url, root, model_file)
    with serve(app) as url:
        runtime = engine_info(url)["runtime"]
        assert runtime["compat_worker_url"] == f"/demo/engine/runtime/{RUNTIME_VERSION}/compat/wllama.js"
        assert httpx.get(url + runtime["compat_wasm_url"]).headers["content-type"] == "application/wasm"


def test_page_is_cross_origin_isolated_and_allows_wasm_but_not_eval(base_url):
    response = httpx.get(base_url + "/demo")
    assert response.headers["cross-origin-opener-policy"] == "same-origin"
    assert response.headers["cross-origin-embedder-policy"] == "require-corp"
    csp = response.headers["content-security-policy"]
    assert "'wasm-unsafe-eval'" in csp and "'unsafe-eval'" not in csp.replace("'wasm-unsafe-eval'", "")
    assert "worker-src 'self' blob:" in csp and "connect-src 'self'" in csp
    engine = httpx.get(base_url + "/demo/static/engine.js")
    assert engine.status_code == 200 and engine.headers["content-type"].startswith("text/javascript")
