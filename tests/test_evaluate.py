"""The evaluation command end to end: question file -> pipeline -> scripted server over HTTP -> report."""

import json
import math

import pytest

from assistant.evaluate import (
    load_questions,
    main,
    percentile,
    QuestionFileError,
    routing_report,
    source_recall,
    token_f1,
)
from routing.client import START_HINT
from tests.fake_openai_server import FakeOpenAIServer, Script, _free_port

SMALL = "Phi-4-mini-instruct-generic-cpu"
LARGE = "gpt-oss-20b-generic-cpu"

DOCUMENTS = {
    "handbook.md": "# Vacation\n\nEvery employee gets 25 days of paid vacation per year.\n",
    "expenses.md": "# Expenses\n\nReceipts are required for any expense above 20 euros.\n",
    "security.md": "# Security\n\nLaptops must use full-disk encryption and lock after five minutes.\n",
    "onboarding.md": "# Onboarding\n\nNew hires meet their buddy on the first day and get a laptop.\n",
    "travel.md": "# Travel\n\nTrain is preferred over flights for trips under four hours.\n",
}
QUESTIONS = [
    {
        "question": "How many days of paid vacation does an employee get per year?",
        "reference_answer": "Employees get 25 days of paid vacation per year.",
        "expected_sources": ["handbook.md"],
    },
    {
        "question": "Are receipts required for an expense above 20 euros?",
        "reference_answer": "Receipts are required above 20 euros.",
        "expected_sources": ["expenses.md"],
    },
    {"question": "What is the capital of Mongolia?", "answerable": False, "expected_sources": []},
]
SMALL_ANSWERS = [
    ("Employees get 25 days of vacation, I think [1].", 0.5),  # partial, but not flagged
    ("No.", 0.9),  # short: flagged
    ("The documents do not cover this question.", 0.95),  # right for an unanswerable question
]
LARGE_ANSWERS = [
    "Employees get 25 days of paid vacation per year [1].",
    "Receipts are required above 20 euros [1].",
    "The documents do not cover this question.",
]


def scripted(text: str, probability: float = 0.95) -> Script:
    parts = text.split(" ")
    tokens = [parts[0]] + [" " + p for p in parts[1:]]
    return Script(tokens=tokens, logprobs=[math.log(probability)] * len(tokens))


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    knowledge = tmp_path / "knowledge"
    knowledge.mkdir()
    for name, text in DOCUMENTS.items():
        (knowledge / name).write_text(text)
    questions = tmp_path / "questions.jsonl"
    questions.write_text("\n".join(json.dumps(q) for q in QUESTIONS) + "\n")
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.delenv("FOUNDRY_LOCAL_ENDPOINT", raising=False)
    monkeypatch.setenv("ASSISTANT_KNOWLEDGE_DIR", str(knowledge))
    monkeypatch.setenv("ASSISTANT_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


def test_f1_source_recall_and_percentile():
    assert token_f1("25 days [1].", "25 days") == 1.0
    assert token_f1("The answer is 25", "25") == pytest.approx(2 * (1 / 3) * 1 / (1 / 3 + 1))  # "the" dropped
    assert token_f1("", "25 days") == 0.0
    assert source_recall(["handbook.md", "x.md"], ["policies/handbook.md"]) == 0.5
    assert source_recall(["handbook.md"], ["old-handbook.md"]) == 0.0
    assert source_recall(None, ["a.md"]) is None
    assert source_recall(["settings.md|handbook.md", "x.md"], ["handbook.md"]) == 0.5
    # Interpolated between order statistics, as numpy's default (one definition across the project).
    assert percentile([5, 1, 3, 2, 4], 95) == pytest.approx(4.8) and percentile([5, 1, 3, 2, 4], 40) == pytest.approx(2.6)


def test_question_file_errors_name_the_line(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question": "ok?"}\n{"reference_answer": "no question"}\n')
    with pytest.raises(QuestionFileError, match=r"q.jsonl:2"):
        load_questions(path)
    path.write_text('{"question": "ok?", "expected_sources": "a.md"}\n')
    with pytest.raises(QuestionFileError, match="expected_sources"):
        load_questions(path)


def test_routing_report_without_a_quality_gap_says_so():
    from assistant.evaluate import Result

    def result(mode, score):
        return Result("1", mode, "a", "m", False, None, False, [], True, 1.0, None, 1, 1, False, 0.0, None, score=score)

    report = routing_report({"small": [result("small", 0.5)], "large": [result("large", 0.5)]})
    assert report["pgr"] is None and "no quality gap" in report["note"]


def test_evaluate_end_to_end_against_the_scripted_server(workspace, monkeypatch, capsys):
    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", fake.base_url)
        # small mode, then automatic mode: the same three small answers each time.
        fake.script(SMALL, *[scripted(t, p) for t, p in SMALL_ANSWERS * 2])
        # large mode, then the one escalation in automatic mode (question 2).
        fake.script(LARGE, *[scripted(t) for t in LARGE_ANSWERS], scripted(LARGE_ANSWERS[1]))
        out = workspace / "report.json"
        code = main([str(workspace / "questions.jsonl"), "--modes", "small", "large", "automatic", "--json", str(out)])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        # Every request ran at temperature 0.
        assert {r.body["temperature"] for r in fake.requests} == {0.0}
        assert len(fake.requests_for(SMALL)) == 6 and len(fake.requests_for(LARGE)) == 4

    report = json.loads(out.read_text())
    results = report["results"]
    partial_f1 = token_f1(SMALL_ANSWERS[0][0], QUESTIONS[0]["reference_answer"])
    assert 0 < partial_f1 < 1
    assert [r["score"] for r in results["small"]] == pytest.approx([partial_f1, 0.0, 1.0])
    assert [r["score"] for r in results["large"]] == pytest.approx([1.0, 1.0, 1.0])
    assert [r["escalated"] for r in results["automatic"]] == [False, True, False]
    assert results["automatic"][1]["escalation_reason"] == "answer 3 chars < 40"
    assert [r["score"] for r in results["automatic"]] == pytest.approx([partial_f1, 1.0, 1.0])
    assert [r["source_recall"] for r in results["large"]] == [1.0, 1.0, None]
    assert results["large"][2]["supported"] is False

    summaries = report["summaries"]
    assert summaries["automatic"]["escalated_share"] == pytest.approx(1 / 3)
    assert summaries["small"]["models"] == [SMALL] and summaries["large"]["models"] == [LARGE]
    assert summaries["automatic"]["models"] == sorted([LARGE, SMALL])
    latencies = [r["latency_ms"] for r in results["small"]]
    assert summaries["small"]["latency_mean_ms"] == pytest.approx(sum(latencies) / 3)
    low, middle, high = sorted(latencies)
    assert summaries["small"]["latency_p95_ms"] == pytest.approx(middle + 0.9 * (high - middle))

    q_small, q_large, q_auto = (partial_f1 + 1) / 3, 1.0, (partial_f1 + 2) / 3
    routing = report["routing"]
    assert routing["pgr"] == pytest.approx((q_auto - q_small) / (q_large - q_small))
    # Ranking: question 2 (flagged), then question 1 (confidence 0.5), then question 3 (0.95).
    first = ((partial_f1 + 2) / 3 - q_small) / (q_large - q_small)
    assert routing["pgr_curve"] == pytest.approx([first, 1.0, 1.0])
    assert routing["apgr"] == pytest.approx((first + 2) / 3)

    table = printed.out
    assert "automatic" in table and "PGR (automatic)" in table and "APGR" in table
    assert "33%" in table  # share escalated


def test_unreachable_server_is_a_clear_error(workspace, monkeypatch, capsys):
    monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", f"http://127.0.0.1:{_free_port()}/v1")
    monkeypatch.setenv("ASSISTANT_CONNECT_TIMEOUT_S", "1")
    code = main([str(workspace / "questions.jsonl"), "--modes", "small"])
    assert code == 2
    assert START_HINT in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(workspace, monkeypatch, capsys):
    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", fake.base_url)
        monkeypatch.setenv("ASSISTANT_LARGE_MODEL", "llama-70b")
        code = main([str(workspace / "questions.jsonl"), "--modes", "large"])
    assert code == 2
    err = capsys.readouterr().err
    assert "llama-70b" in err and SMALL in err


def test_failures_during_the_run_give_exit_code_1(workspace, monkeypatch, capsys):
    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", fake.base_url)
        fake.script(SMALL, Script(tokens=["Employees", " get", " 25"], logprobs=[-0.1] * 3, drop_after=1))
        code = main([str(workspace / "questions.jsonl"), "--modes", "small", "--limit", "1"])
    assert code == 1
    assert "closed the connection in the middle of the answer" in capsys.readouterr().err


def test_judge_model_grades_answers(workspace, monkeypatch, capsys):
    with FakeOpenAIServer(models=[SMALL, LARGE, "judge-7b"]) as fake:
        monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", fake.base_url)
        fake.script(SMALL, scripted(LARGE_ANSWERS[0]))
        fake.script("judge-7b", Script(tokens=["4"], logprobs=None))
        out = workspace / "judged.json"
        code = main([str(workspace / "questions.jsonl"), "--modes", "small", "--limit", "1",
                     "--judge-model", "judge", "--json", str(out)])
        assert code == 0, capsys.readouterr().err
        judge_prompt = fake.requests_for("judge-7b")[0].body["messages"][-1]["content"]
    assert QUESTIONS[0]["reference_answer"] in judge_prompt and LARGE_ANSWERS[0] in judge_prompt
    result = json.loads(out.read_text())["results"]["small"][0]
    assert result["judge"] == 4 and result["score"] == pytest.approx(0.75)


def test_without_logprobs_the_report_counts_the_grounding_signals(workspace, monkeypatch, capsys):
    """Foundry Local returns null logprobs: the grounding signals decide, and the report says how often each fired."""
    def null_logprobs(text: str) -> Script:
        parts = text.split(" ")
        return Script(tokens=[parts[0]] + [" " + p for p in parts[1:]], logprobs_null=True)

    small_answers = [
        "Employees receive a generous amount of paid time off every year, as the handbook explains.",  # cites none
        "Receipts are required for any expense above 20 euros [1].",  # grounded
        "The documents do not cover this question.",  # unsupported question: a decline is right
    ]
    with FakeOpenAIServer() as fake:
        monkeypatch.setenv("ASSISTANT_MODEL_ENDPOINT", fake.base_url)
        fake.script(SMALL, *[null_logprobs(t) for t in small_answers])
        fake.script(LARGE, null_logprobs(LARGE_ANSWERS[0]))
        out = workspace / "report.json"
        code = main([str(workspace / "questions.jsonl"), "--modes", "automatic", "--json", str(out)])
        printed = capsys.readouterr()
        assert code == 0, printed.err
        assert all(r.body["logprobs"] for r in fake.requests_for(SMALL))  # asked for, and null came back

    report = json.loads(out.read_text())
    results = report["results"]["automatic"]
    assert [r["escalated"] for r in results] == [True, False, False]
    assert "no logprobs" in results[0]["escalation_reason"] and "cites none" in results[0]["escalation_reason"]
    assert [r["signals"] for r in results] == [["no citation"], [], []]
    summary = report["summaries"]["automatic"]
    assert summary["signals"] == {"no citation": 1, "unknown citation": 0, "low overlap": 0}
    assert summary["signals_decided"] == 2  # the decline does not count: it was judged as a decline
    assert "grounding signals on the small answers (automatic): no citation 1/3" in printed.out
