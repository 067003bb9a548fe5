"""Finding the model server: explicit setting, a `foundry` CLI on PATH (a small script standing in for it,
printing what `foundry service status` prints), the default endpoint, Foundry Local's SDK (offline), else none."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from assistant.discovery import (
    FOUNDRY_CLI, SETTING, DiscoveryError, discover, foundry_sdk_available, service_url_from_status, start_foundry_sdk,
)
from assistant.embedded import free_port, served_settings
from assistant.launch import found_environment
from assistant.settings import Settings
from tests.fake_openai_server import FakeOpenAIServer

FOUNDRY_IDS = ["Phi-4-mini-instruct-generic-cpu:5", "gpt-oss-20b-generic-cpu:1"]

# What the real CLI prints (platform-facts: the URL names the dynamic port).
FAKE_FOUNDRY = '''#!{python}
import json, sys
from pathlib import Path
state = Path({state!r})
calls = Path({calls!r})
with calls.open("a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
running = state.exists()
if sys.argv[1:] == ["service", "status"]:
    if running:
        print("\\U0001F7E2 Model management service is running on http://127.0.0.1:{port}/openai/status")
    else:
        print("\\U0001F534 Model management service is not running!")
elif sys.argv[1:] == ["service", "start"]:
    if {can_start}:
        state.write_text("on")
        print("\\U0001F7E2 Service is Started on http://127.0.0.1:{port}/, PID 4242!")
    else:
        print("Failed to start the service: port in use")
        sys.exit(1)
else:
    print("unknown command", sys.argv[1:])
    sys.exit(2)
'''


@pytest.fixture
def no_endpoint_env(monkeypatch, tmp_path):
    for name in list(os.environ):
        if name.startswith("ASSISTANT_") or name == "FOUNDRY_LOCAL_ENDPOINT":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no .env


def write_fake_foundry(tmp_path: Path, port: int, *, running: bool = True, can_start: bool = True) -> tuple[Path, Path]:
    """Write a `foundry` executable into ``tmp_path/bin``; return (that folder, the file its calls are logged to)."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    state, calls = tmp_path / "service-running", tmp_path / "foundry-calls.jsonl"
    if running:
        state.write_text("on")
    script = folder / "foundry"
    script.write_text(FAKE_FOUNDRY.format(python=sys.executable, state=str(state), calls=str(calls), port=port,
                                          can_start=can_start))
    script.chmod(0o755)
    return folder, calls


def fake_foundry(tmp_path: Path, monkeypatch, port: int, **kw) -> Path:
    """A fake `foundry` first on PATH; returns the file its calls are logged to."""
    folder, calls = write_fake_foundry(tmp_path, port, **kw)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    return calls


def calls_of(log: Path) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def unset_settings(**kw) -> Settings:
    """Settings as a fresh machine has them: no endpoint set (the default is only a guess)."""
    return Settings(_env_file=None, **kw)


def test_the_foundry_cli_names_a_port_the_app_was_not_told(tmp_path, monkeypatch, no_endpoint_env):
    with FakeOpenAIServer(FOUNDRY_IDS) as foundry:
        calls = fake_foundry(tmp_path, monkeypatch, foundry.port)
        said = []
        settings = unset_settings()
        assert str(foundry.port) not in settings.model_endpoint
        with served_settings(settings, announce=said.append, use_sdk=False) as (found, embedded):
            assert embedded is None
            assert found.model_endpoint == foundry.base_url
            assert found.discovery.startswith(FOUNDRY_CLI) and f"127.0.0.1:{foundry.port}" in found.discovery
    assert calls_of(calls) == [["service", "status"]]
    assert any(f"serves: {', '.join(FOUNDRY_IDS)}" in line for line in said)


def test_a_stopped_service_is_started_with_a_message(tmp_path, monkeypatch, no_endpoint_env):
    with FakeOpenAIServer(FOUNDRY_IDS) as foundry:
        calls = fake_foundry(tmp_path, monkeypatch, foundry.port, running=False)
        said = []
        found = discover(unset_settings(), announce=said.append, use_sdk=False)
    assert found is not None and found.path == FOUNDRY_CLI and found.endpoint == foundry.base_url
    assert calls_of(calls) == [["service", "status"], ["service", "start"]]
    assert any("not running: starting it (`foundry service start`)" in line for line in said)


def test_a_service_that_will_not_start_is_reported_and_passed_over(tmp_path, monkeypatch, no_endpoint_env):
    fake_foundry(tmp_path, monkeypatch, free_port(), running=False, can_start=False)
    said = []
    settings = unset_settings().model_copy(update={"model_endpoint": f"http://127.0.0.1:{free_port()}/v1"})
    found = discover(settings, announce=said.append, use_sdk=False)
    assert found is None
    assert any("did not start: Failed to start the service: port in use" in line for line in said)


def test_an_explicit_endpoint_comes_first(tmp_path, monkeypatch, no_endpoint_env):
    with FakeOpenAIServer(["phi4-mini:latest", "gpt-oss:20b"]) as ollama, FakeOpenAIServer(FOUNDRY_IDS) as foundry:
        calls = fake_foundry(tmp_path, monkeypatch, foundry.port)
        found = discover(Settings(_env_file=None, model_endpoint=ollama.base_url), announce=lambda _: None,
                         use_sdk=False)
    assert found.path == SETTING and found.endpoint == ollama.base_url and found.served == ["phi4-mini:latest", "gpt-oss:20b"]
    assert calls_of(calls) == []  # the CLI was not even asked


def test_an_explicit_endpoint_that_does_not_answer_falls_through_to_foundry(tmp_path, monkeypatch, no_endpoint_env):
    with FakeOpenAIServer(FOUNDRY_IDS) as foundry:
        fake_foundry(tmp_path, monkeypatch, foundry.port)
        said = []
        dead = f"http://127.0.0.1:{free_port()}/v1"
        found = discover(Settings(_env_file=None, model_endpoint=dead), announce=said.append, use_sdk=False)
    assert found.path == FOUNDRY_CLI and found.endpoint == foundry.base_url
    assert said[0] == f"Nothing answers at the configured endpoint {dead}; looking for Foundry Local."


def test_nothing_found_without_fallback_says_so(tmp_path, monkeypatch, no_endpoint_env):
    monkeypatch.setenv("PATH", str(tmp_path))  # no foundry here
    settings = unset_settings(embedded_fallback=False).model_copy(
        update={"model_endpoint": f"http://127.0.0.1:{free_port()}/v1"})
    said = []
    with served_settings(settings, announce=said.append, use_sdk=False) as (found, embedded):
        assert embedded is None and found.discovery == "nothing found, embedded fallback off"
    assert "embedded fallback is off" in said[-1]


@pytest.mark.parametrize("output, url", [
    ("🟢 Model management service is running on http://127.0.0.1:5273/openai/status", "http://127.0.0.1:5273/v1"),
    ("Service is Started on http://localhost:59092/, PID 11!", "http://localhost:59092/v1"),
    ("🔴 Model management service is not running!", None),
    ("", None),
])
def test_service_status_output(output, url):
    assert service_url_from_status(output) == url


def test_the_launcher_passes_the_found_endpoint_and_how_to_the_app():
    settings = Settings(_env_file=None, model_endpoint="http://127.0.0.1:59092/v1", discovery="foundry CLI — x")
    env = found_environment(settings, {"FOUNDRY_LOCAL_ENDPOINT": "http://old:1", "PATH": "/bin"})
    assert env["ASSISTANT_MODEL_ENDPOINT"] == "http://127.0.0.1:59092/v1"
    assert env["ASSISTANT_DISCOVERY"] == "foundry CLI — x" and "FOUNDRY_LOCAL_ENDPOINT" not in env


@pytest.mark.skipif(not foundry_sdk_available(), reason="the optional `foundry` extra (foundry-local-sdk) is not installed")
def test_foundry_sdk_offline_says_its_catalog_is_empty_and_downloads_nothing():
    said = []
    with pytest.raises(DiscoveryError) as caught:
        start_foundry_sdk(["phi-4-mini", "gpt-oss-20b"], said.append, allow_download=False)
    message = str(caught.value)
    assert "catalog is empty" in message and "phi-4-mini, gpt-oss-20b cannot be downloaded" in message
    assert said == ["Starting Foundry Local in-process (foundry-local-sdk)…"]
