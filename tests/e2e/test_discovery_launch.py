"""The start command finds Foundry Local on a port it was not told: a `foundry` executable on PATH (a script
printing what `foundry service status` prints) names the port of a scripted server with Foundry Local's ids.
The chat's welcome says which path was taken and which variant each alias resolved to."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from assistant.embedded import free_port
from routing.client import gpu_available
from tests.e2e.conftest import PROJECT, make_app_root
from tests.e2e.test_launch import stop, wait_healthy
from tests.fake_openai_server import FakeOpenAIServer
from tests.test_discovery import calls_of, write_fake_foundry

pytestmark = pytest.mark.e2e

FOUNDRY_IDS = ["Phi-4-mini-instruct-cuda-gpu:5", "Phi-4-mini-instruct-generic-cpu:5",
               "gpt-oss-20b-cuda-gpu:1", "gpt-oss-20b-generic-cpu:1"]


def test_the_app_finds_foundry_local_through_its_cli_and_says_so(tmp_path, page):
    with FakeOpenAIServer(FOUNDRY_IDS) as foundry:
        bin_dir, calls = write_fake_foundry(tmp_path, foundry.port, running=False)
        root = make_app_root(tmp_path / "root")
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASSISTANT_") and k != "FOUNDRY_LOCAL_ENDPOINT"}
        env.update(
            PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            CHAINLIT_APP_ROOT=str(root),
            ASSISTANT_DATA_DIR=str(root / "data"),
            ASSISTANT_CACHE_DIR=str(root / "cache"),
            ASSISTANT_KNOWLEDGE_DIR=str(root / "knowledge"),
            PYTHONUNBUFFERED="1",
        )
        process = subprocess.Popen([sys.executable, "-m", "assistant.launch", "--port", str(port)], cwd=tmp_path,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_healthy(port, process)
            page.goto(f"http://127.0.0.1:{port}")
            welcome = page.get_by_text("Answers come from your documents").first
            welcome.wait_for(timeout=30_000)
            page.locator('[id="step-Server details"]').click(timeout=30_000)  # the operator's details, one click away
            page.get_by_text("Model server:").first.wait_for()
            text = page.locator('[data-step-type="run"]').first.inner_text()
        finally:
            output = stop(process)
    assert calls_of(calls) == [["service", "status"], ["service", "start"]]  # stopped, so started
    assert "not running: starting it" in output and "embedded" not in output.lower()
    assert f"Found by: foundry CLI — Foundry Local at http://127.0.0.1:{foundry.port}/v1" in text.replace("`", "")
    # Both aliases found their variant, and the welcome says why that one (CPU unless this machine has a GPU).
    flat = text.replace("`", "")
    device, why = ("cuda-gpu", "a GPU is present") if gpu_available() else ("generic-cpu", "no GPU found on this machine")
    assert f"small: Phi-4-mini-instruct-{device}:5" in flat and f"large: gpt-oss-20b-{device}:1" in flat
    assert why in flat
