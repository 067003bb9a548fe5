"""The compare and bench commands against the scripted server, with known delays."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from assistant import bench, compare
from assistant.settings import PROJECT_ROOT
from tests.fake_openai_server import FakeOpenAIServer, Script, _free_port

SMALL_ID = "Phi-4-mini-instruct-generic-cpu"
LARGE_ID = "gpt-oss-20b-generic-cpu"
TEN = [f" w{i}" for i in range(10)]

# Small: first token at 100 ms, then 9 tokens 20 ms apart: ttft 0.10 s, total ~0.28 s, 9 / 0.18 s = 50 tok/s.
SMALL_SCRIPT = Script(tokens=TEN, first_token_delay=0.10, token_delay=0.02, prompt_tokens=30)
# Large: 200 ms, then 30 ms apart, no usage: ttft 0.20 s, total ~0.47 s, 9 / 0.27 s = 33 chunks/s.
LARGE_SCRIPT = Script(tokens=TEN, first_token_delay=0.20, token_delay=0.03, send_usage=False)
TTFT_TOLERANCE_MS = 60
RATE_TOLERANCE = 0.15


def within_tolerance_once(check, attempts: int = 3):
    """Run a measure-and-assert check up to ``attempts`` times (wall clock on a shared, busy CPU).

    A systematic error (a role chunk timed as the first token, a second call per round) fails every attempt.
    """
    for attempt in range(attempts):
        try:
            return check()
        except AssertionError:
            if attempt == attempts - 1:
                raise


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer([SMALL_ID, LARGE_ID]) as fake:
        yield fake


@pytest.fixture(autouse=True)
def environment(server, monkeypatch, tmp_path):
    server.requests.clear()
    server.script(SMALL_ID, SMALL_SCRIPT)
    server.script(LARGE_ID, LARGE_SCRIPT)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", server.base_url)
    monkeypatch.setenv("ASSISTANT_SMALL_MODEL", "phi-4-mini")
    monkeypatch.setenv("ASSISTANT_LARGE_MODEL", "gpt-oss-20b")
    monkeypatch.setenv("ASSISTANT_SMALL_INPUT_PRICE", "1.0")
    monkeypatch.setenv("ASSISTANT_SMALL_OUTPUT_PRICE", "2.0")
    monkeypatch.setenv("ASSISTANT_LARGE_INPUT_PRICE", "10.0")
    monkeypatch.setenv("ASSISTANT_LARGE_OUTPUT_PRICE", "20.0")


# ----------------------------------------------------------------------------------------- compare


def test_compare_json_reports_both_models_with_measured_numbers(server, capsys):
    within_tolerance_once(lambda: check_compare_json(server, capsys))


def check_compare_json(server, capsys):
    server.requests.clear()
    assert compare.main(["What is BM25?", "--json", "--max-tokens", "64", "--temperature", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    small, large = report["results"]
    assert (small["role"], small["model"], small["ok"]) == ("small", SMALL_ID, True)
    assert (large["role"], large["model"], large["ok"]) == ("large", LARGE_ID, True)
    assert small["text"] == large["text"] == "".join(TEN)

    assert small["ttft_ms"] == pytest.approx(100, abs=TTFT_TOLERANCE_MS)
    assert small["total_ms"] == pytest.approx(280, abs=100)
    assert small["decode_tokens_per_s"] == pytest.approx(50, rel=RATE_TOLERANCE)
    assert (small["prompt_tokens"], small["completion_tokens"], small["tokens_estimated"]) == (30, 10, False)
    assert small["cost_usd"] == pytest.approx((30 * 1.0 + 10 * 2.0) / 1e6)

    assert large["ttft_ms"] == pytest.approx(200, abs=TTFT_TOLERANCE_MS)
    assert large["total_ms"] == pytest.approx(470, abs=100)
    assert large["decode_chunks_per_s"] == pytest.approx(33.3, rel=RATE_TOLERANCE)
    assert large["tokens_estimated"] is True

    # One call per model, the options passed through.
    assert len(server.requests_for(SMALL_ID)) == 1 and len(server.requests_for(LARGE_ID)) == 1
    body = server.requests_for(SMALL_ID)[0].body
    assert body["max_tokens"] == 64 and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": "What is BM25?"}]


def test_compare_text_shows_answers_and_a_table(capsys, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("From a file?\n", encoding="utf-8")
    within_tolerance_once(lambda: check_compare_text(prompt_file, capsys))


def check_compare_text(prompt_file, capsys):
    assert compare.main(["--file", str(prompt_file)]) == 0
    out = capsys.readouterr().out
    assert f"=== small: {SMALL_ID} (alias phi-4-mini) ===" in out
    assert f"=== large: {LARGE_ID} (alias gpt-oss-20b) ===" in out
    table = out[out.index("role  "):].splitlines()
    small_row = next(line for line in table if line.startswith("small"))
    large_row = next(line for line in table if line.startswith("large"))
    small_cells, large_cells = small_row.split(), large_row.split()
    assert small_cells[1] == SMALL_ID and small_cells[5:7] == ["30", "10"]
    assert float(small_cells[2]) == pytest.approx(100, abs=TTFT_TOLERANCE_MS)
    assert large_cells[6].startswith("~")  # estimated completion tokens
    assert "estimated with tiktoken" in out


def test_compare_reports_an_unknown_model_and_still_runs_the_other(server, monkeypatch, capsys):
    monkeypatch.setenv("ASSISTANT_LARGE_MODEL", "llama-70b")
    assert compare.main(["hi", "--json"]) == 0
    small, large = json.loads(capsys.readouterr().out)["results"]
    assert small["ok"] and small["ttft_ms"] >= 95 and small["completion_tokens"] == 10
    assert not large["ok"] and large["alias"] == "llama-70b"
    assert "No served model matches 'llama-70b'" in large["error"] and SMALL_ID in large["error"]
    assert server.requests_for("llama-70b") == []


def test_compare_fails_only_when_every_model_fails(monkeypatch, capsys):
    endpoint = f"http://127.0.0.1:{_free_port()}/v1"
    monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", endpoint)
    assert compare.main(["hi"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED: ServerRefused: Nothing is listening at") == 2  # connection refused: not running
    assert endpoint in out and "ASSISTANT_MODEL_ENDPOINT" in out


def test_compare_runs_as_a_module(server):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "assistant.compare", "hello", "--json"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)["results"]
    assert [r["model"] for r in results] == [SMALL_ID, LARGE_ID] and all(r["ok"] for r in results)


# ----------------------------------------------------------------------------------------- bench


def test_bench_measures_every_round_from_one_streamed_call(server, tmp_path, capsys):
    within_tolerance_once(lambda: check_bench(server, tmp_path, capsys))


def check_bench(server, tmp_path, capsys):
    server.requests.clear()
    out_json, out_md = tmp_path / "bench.json", tmp_path / "bench.md"
    code = bench.main(["--rounds", "3", "--warmup", "1", "--json", str(out_json), "--markdown", str(out_md), "--quiet"])
    assert code == 0
    report = json.loads(out_json.read_text())
    small, large = report["models"]
    assert (small["model"], small["rounds_ok"], small["rounds_failed"]) == (SMALL_ID, 3, 0)
    assert (large["model"], large["rounds_ok"]) == (LARGE_ID, 3)
    # Warm-up + rounds, nothing more: TTFT is not measured by a second call.
    assert len(server.requests_for(SMALL_ID)) == 4 and len(server.requests_for(LARGE_ID)) == 4
    assert all(r.body["stream"] is True for r in server.requests)

    for stat in ("mean", "p50", "p95"):
        assert small["ttft_ms"][stat] == pytest.approx(100, abs=TTFT_TOLERANCE_MS)
        assert large["ttft_ms"][stat] == pytest.approx(200, abs=TTFT_TOLERANCE_MS)
        assert small["total_ms"][stat] == pytest.approx(280, abs=100)
        assert large["total_ms"][stat] == pytest.approx(470, abs=100)
    assert small["decode_tokens_per_s"]["mean"] == pytest.approx(50, rel=RATE_TOLERANCE)
    assert large["decode_chunks_per_s"]["mean"] == pytest.approx(33.3, rel=RATE_TOLERANCE)
    assert large["tokens_estimated"] is True and small["tokens_estimated"] is False
    assert small["ttft_ms"]["p95"] >= small["ttft_ms"]["p50"]
    assert [len(raw["rounds"]) for raw in report["raw"]] == [3, 3]

    markdown = out_md.read_text()
    assert "| model | logprobs | ok | ttft mean |" in markdown
    assert f"| small: {SMALL_ID} | on | 3/3 |" in markdown
    printed = capsys.readouterr().out
    assert SMALL_ID in printed and LARGE_ID in printed


def test_bench_reports_an_unknown_model_and_measures_the_others(server, capsys):
    code = bench.main(["--models", "nonexistent-7b", "large", "--rounds", "2", "--warmup", "0", "--json", "-", "--quiet"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    unknown, large = report["models"]
    assert unknown["rounds_ok"] == 0 and "ModelNotFound" in unknown["error"] and LARGE_ID in unknown["error"]
    assert large["rounds_ok"] == 2 and large["ttft_ms"]["mean"] >= 195
    assert server.requests_for(SMALL_ID) == []


def test_bench_with_the_server_down_exits_non_zero(monkeypatch, capsys):
    monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", f"http://127.0.0.1:{_free_port()}/v1")
    assert bench.main(["--rounds", "1", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED phi-4-mini: ServerRefused") == 1 and "FAILED gpt-oss-20b: ServerRefused" in out


def test_bench_logprobs_both_runs_each_model_with_and_without(server, capsys):
    assert bench.main(["--models", "small", "--rounds", "1", "--warmup", "0", "--logprobs-both", "--json", "-", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(m["model"], m["logprobs"], m["rounds_ok"]) for m in report["models"]] == [(SMALL_ID, True, 1), (SMALL_ID, False, 1)]
    sent = [r.body.get("logprobs") for r in server.requests_for(SMALL_ID)]
    assert sent == [True, None]
