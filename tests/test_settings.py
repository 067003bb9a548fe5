import subprocess
import sys

import pytest

from assistant.settings import PROJECT_ROOT, RoutingMode, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    import os

    for name in list(os.environ):
        if name.startswith("ASSISTANT_") or name in ("FOUNDRY_LOCAL_ENDPOINT", "DATABASE_URL"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_defaults_work_without_any_configuration():
    settings = load_settings()
    assert settings.model_endpoint == "http://localhost:5272/v1"
    assert (settings.small_model, settings.large_model) == ("phi-4-mini", "gpt-oss-20b")
    assert settings.routing_mode is RoutingMode.AUTOMATIC
    assert settings.sqlalchemy_url.startswith("sqlite+aiosqlite:///")


def test_foundry_local_endpoint_is_honoured_and_normalised(monkeypatch):
    monkeypatch.setenv("FOUNDRY_LOCAL_ENDPOINT", "http://127.0.0.1:61234/")
    assert load_settings().model_endpoint == "http://127.0.0.1:61234/v1"
    monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", "http://127.0.0.1:8080/v1")
    assert load_settings().model_endpoint == "http://127.0.0.1:8080/v1"  # the app-specific name wins


def test_dotenv_file_is_read(tmp_path):
    (tmp_path / ".env").write_text("ASSISTANT_SMALL_MODEL=qwen2.5-0.5b\nASSISTANT_TOP_K=7\n")
    settings = load_settings()
    assert settings.small_model == "qwen2.5-0.5b" and settings.top_k == 7


@pytest.mark.parametrize(
    "name, value",
    [
        ("ASSISTANT_TOP_K", "many"),
        ("ASSISTANT_MODEL_ENDPOINT", "localhost:5272"),
        ("ASSISTANT_ROUTING_MODE", "sometimes"),
        ("ASSISTANT_CONFIDENCE_THRESHOLD", "1.5"),
        ("ASSISTANT_CONNECT_TIMEOUT_S", "0"),
    ],
)
def test_an_invalid_value_stops_with_a_message_naming_the_setting(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert name in str(caught.value)
    assert repr(value) in str(caught.value)


def test_launcher_refuses_an_invalid_setting_before_starting_anything(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "ASSISTANT_MAX_TOKENS": "-5", "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "assistant.launch", "--port", "1"], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "ASSISTANT_MAX_TOKENS" in result.stderr


def test_app_environment_on_the_embedded_model_names_its_server_and_model_and_reads_fewer_sources():
    from assistant.launch import app_environment

    settings = load_settings().model_copy(update={
        "model_endpoint": "http://127.0.0.1:40000/v1", "small_model": "SmolLM2-135M-Instruct",
        "large_model": "SmolLM2-135M-Instruct", "configured_endpoint": "http://localhost:5272/v1",
    })
    env = app_environment(settings, {"FOUNDRY_LOCAL_ENDPOINT": "http://localhost:5272/v1", "PATH": "/bin"})
    assert "FOUNDRY_LOCAL_ENDPOINT" not in env and env["PATH"] == "/bin"
    assert env["ASSISTANT_MODEL_ENDPOINT"] == "http://127.0.0.1:40000/v1"
    assert env["ASSISTANT_SMALL_MODEL"] == env["ASSISTANT_LARGE_MODEL"] == "SmolLM2-135M-Instruct"
    assert env["ASSISTANT_TOP_K"] == "3"
    assert app_environment(settings, {"ASSISTANT_TOP_K": "8"})["ASSISTANT_TOP_K"] == "8"  # the user's choice wins


def test_reasoning_effort_and_large_budget(monkeypatch):
    settings = load_settings()
    assert (settings.reasoning_effort, settings.large_max_tokens) == ("low", 2048)
    monkeypatch.setenv("ASSISTANT_REASONING_EFFORT", " High ")
    monkeypatch.setenv("ASSISTANT_LARGE_MAX_TOKENS", "4096")
    settings = load_settings()
    assert (settings.reasoning_effort, settings.large_max_tokens) == ("high", 4096)
    monkeypatch.setenv("ASSISTANT_REASONING_EFFORT", "extreme")
    with pytest.raises(SettingsError, match="ASSISTANT_REASONING_EFFORT: .*low, medium, high or empty"):
        load_settings()


def test_the_embedded_model_reads_the_prompt_on_every_usable_cpu_and_decodes_on_one(monkeypatch):
    import os

    from assistant.settings import Settings

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2})
    settings = Settings(_env_file=None)
    assert (settings.embedded_threads, settings.embedded_batch_threads) == (1, 3)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert Settings(_env_file=None).embedded_batch_threads == 8
    monkeypatch.setenv("ASSISTANT_EMBEDDED_BATCH_THREADS", "1")
    assert Settings(_env_file=None).embedded_batch_threads == 1
