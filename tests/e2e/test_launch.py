"""The start command itself: embedded model when nothing answers, none when a server answers; stops together."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from assistant.embedded import free_port
from tests.e2e.conftest import PROJECT, make_app_root
from tests.fake_openai_server import FakeOpenAIServer

pytestmark = pytest.mark.e2e


def launch(tmp_path, endpoint: str) -> tuple[subprocess.Popen, int]:
    root = make_app_root(tmp_path / "root")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_") and k != "FOUNDRY_LOCAL_ENDPOINT"}
    env.update(
        CHAINLIT_APP_ROOT=str(root),
        ASSISTANT_MODEL_ENDPOINT=endpoint,
        ASSISTANT_DATA_DIR=str(root / "data"),
        ASSISTANT_CACHE_DIR=str(root / "cache"),
        ASSISTANT_KNOWLEDGE_DIR=str(root / "knowledge"),
        PYTHONUNBUFFERED="1",
    )
    process = subprocess.Popen([sys.executable, "-m", "assistant.launch", "--port", str(port)], cwd=PROJECT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return process, port


def wait_healthy(port: int, process: subprocess.Popen, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the app did not become healthy")


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    return output


def test_start_command_runs_the_embedded_model_when_nothing_answers_and_stops_it(tmp_path):
    process, port = launch(tmp_path, f"http://127.0.0.1:{free_port()}/v1")
    try:
        wait_healthy(port, process)
        info = httpx.get(f"http://127.0.0.1:{port}/demo/api/info", timeout=30).json()
        assert info["embedded"] is True
        assert info["roles"]["small"]["model"] == info["roles"]["large"]["model"] == "SmolLM2-135M-Instruct"
    finally:
        output = stop(process)
    assert "starting the embedded model" in output
    line = next(l for l in output.splitlines() if l.startswith("Embedded llama.cpp server at "))
    model_url = line.split()[4].rstrip(":")
    with pytest.raises(httpx.HTTPError):  # the embedded server stopped with the app
        httpx.get(model_url + "/models", timeout=2)


def test_start_command_starts_nothing_when_the_configured_server_answers(tmp_path):
    with FakeOpenAIServer(["Phi-4-mini-instruct-generic-cpu", "gpt-oss-20b-generic-cpu"]) as fake:
        process, port = launch(tmp_path, fake.base_url)
        try:
            wait_healthy(port, process)
        finally:
            output = stop(process)
    assert "serves: Phi-4-mini-instruct-generic-cpu, gpt-oss-20b-generic-cpu" in output
    assert "embedded" not in output.lower()


def test_bench_with_embedded_flag_measures_the_bundled_model_when_nothing_answers():
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_") and k != "FOUNDRY_LOCAL_ENDPOINT"}
    env["ASSISTANT_MODEL_ENDPOINT"] = f"http://127.0.0.1:{free_port()}/v1"
    result = subprocess.run(
        [sys.executable, "-m", "assistant.bench", "--embedded", "--models", "small", "--rounds", "2", "--warmup", "0",
         "--max-tokens", "8", "--json", "-", "--quiet"],
        cwd=PROJECT, env=env, capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert "starting the embedded model" in result.stderr
    report = json.loads(result.stdout)
    (model,) = report["models"]
    assert model["model"] == "SmolLM2-135M-Instruct" and model["rounds_ok"] == 2
    assert 0 < model["ttft_ms"]["mean"] < model["total_ms"]["mean"]
