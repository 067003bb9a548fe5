"""Cost arithmetic, per-answer and per-session metrics, the latency chart and the saved form."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from routing.client import Response, Timings, Usage
from routing.metrics import (
    LegMetrics,
    Price,
    SessionMetrics,
    TurnMetrics,
    format_metrics_line,
    latency_figure,
    latency_segments,
    percentile,
    summary_rows,
)

SMALL = "Phi-4-mini-instruct-generic-cpu"
LARGE = "gpt-oss-20b-generic-cpu"


def leg(model, outcome="answered", ttft=100.0, gen=900.0, tps=40.0, prompt=200, completion=50, estimated=False,
        cost=0.0001, role="small"):
    return LegMetrics(
        role=role, alias=model.lower(), model=model, outcome=outcome, ttft_ms=ttft, generation_ms=gen,
        total_ms=None if ttft is None else ttft + gen + 5.0, prompt_tokens=prompt, completion_tokens=completion,
        tokens_estimated=estimated, decode_tokens_per_s=tps, cost_usd=cost,
    )


def turn(model, total, legs=None, retrieval=20.0, prompt=5.0, reason=None):
    return TurnMetrics(
        retrieval_ms=retrieval, prompt_ms=prompt, total_ms=total, legs=legs or [leg(model)], answered_by=model,
        escalation_reason=reason,
    )


# ----------------------------------------------------------------------------------------- cost


def test_price_is_per_million_tokens_input_and_output_apart():
    price = Price(input_per_m=0.10, output_per_m=0.40)
    assert price.cost(Usage(1000, 500)) == pytest.approx((1000 * 0.10 + 500 * 0.40) / 1e6)
    assert price.cost(Usage(1_000_000, 0)) == pytest.approx(0.10)
    assert price.cost(Usage(0, 1_000_000)) == pytest.approx(0.40)
    assert price.cost(None) == 0.0


def test_leg_metrics_from_a_response():
    response = Response(alias="phi-4-mini", model=SMALL, text="x" * 10)
    response.timings = Timings(request_sent=10.0, first_token=10.25, last_token=11.25, finished=11.3)
    response.usage = Usage(prompt_tokens=300, completion_tokens=41, estimated=True)
    leg_metrics = LegMetrics.from_response("small", response, Price(1.0, 2.0), "answered")
    assert leg_metrics.model == SMALL and leg_metrics.alias == "phi-4-mini"
    assert leg_metrics.ttft_ms == pytest.approx(250.0)
    assert leg_metrics.generation_ms == pytest.approx(1000.0)
    assert leg_metrics.total_ms == pytest.approx(1300.0)
    assert leg_metrics.decode_tokens_per_s == pytest.approx(40.0)  # 40 tokens after the first, in 1 s
    assert leg_metrics.cost_usd == pytest.approx((300 * 1.0 + 41 * 2.0) / 1e6)
    assert leg_metrics.tokens_estimated is True


def test_turn_sums_its_legs():
    escalated = TurnMetrics(
        retrieval_ms=30, prompt_ms=2, total_ms=3000,
        legs=[leg(SMALL, outcome="escalated", cost=0.001, prompt=100, completion=20),
              leg(LARGE, cost=0.004, prompt=120, completion=80, estimated=True, role="large")],
        answered_by=LARGE,
    )
    assert escalated.cost_usd == pytest.approx(0.005)
    assert (escalated.prompt_tokens, escalated.completion_tokens) == (220, 100)
    assert escalated.tokens_estimated is True
    assert escalated.ttft_ms == pytest.approx(30 + 2 + 100)  # the first token the user saw: the small draft's
    assert escalated.answering_leg.model == LARGE


# ----------------------------------------------------------------------------------------- session statistics


def test_percentile_matches_numpy_linear():
    rng = random.Random(7)
    for size in (1, 2, 5, 20, 101):
        values = [rng.uniform(0, 5000) for _ in range(size)]
        for q in (50, 95, 99):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 95) is None


def test_session_stats_per_model_on_known_inputs():
    session = SessionMetrics()
    small_totals = [100.0 * i for i in range(1, 21)]  # 100 .. 2000 ms
    for i, total in enumerate(small_totals):
        session.add(turn(SMALL, total, legs=[leg(SMALL, ttft=10.0 * (i + 1), tps=30.0 + i, cost=0.001)]))
    session.add(turn(LARGE, 5000.0, legs=[leg(SMALL, outcome="escalated", cost=0.002), leg(LARGE, ttft=700.0, tps=12.0, cost=0.01)]))
    session.add(turn(LARGE, 7000.0, legs=[leg(LARGE, ttft=900.0, tps=10.0, cost=0.01)]))

    assert session.total_cost_usd == pytest.approx(20 * 0.001 + 0.002 + 0.01 + 0.01)
    stats = session.model_stats()
    assert list(stats) == [SMALL, LARGE]
    small, large = stats[SMALL], stats[LARGE]
    assert (small.count, small.calls) == (20, 21)  # the escalated draft is a call, not an answer
    assert small.mean_total_ms == pytest.approx(1050.0)
    assert small.p95_total_ms == pytest.approx(1905.0)  # rank 0.95 * 19 = 18.05 between 1900 and 2000
    assert small.mean_ttft_ms == pytest.approx(105.0)
    assert small.p95_ttft_ms == pytest.approx(190.5)
    assert small.mean_tokens_per_s == pytest.approx(39.5)
    assert small.cost_usd == pytest.approx(0.022)
    assert (large.count, large.calls) == (2, 2)
    assert large.mean_total_ms == pytest.approx(6000.0)
    assert large.p95_total_ms == pytest.approx(6900.0)
    assert large.mean_ttft_ms == pytest.approx(800.0)  # the large call's own TTFT, not the draft's
    assert large.mean_tokens_per_s == pytest.approx(11.0)

    rows = summary_rows(session)
    assert [row["model"] for row in rows] == [SMALL, LARGE]
    assert rows[0]["p95_total_ms"] == pytest.approx(1905.0) and rows[1]["count"] == 2
    for key in ("count", "mean_total_ms", "p95_total_ms", "mean_ttft_ms", "p95_ttft_ms", "mean_tokens_per_s"):
        assert key in rows[0]


def test_model_that_only_failed_has_no_summary_row():
    session = SessionMetrics()
    session.add(turn(SMALL, 800.0))
    failed = TurnMetrics(total_ms=50.0, legs=[leg(LARGE, outcome="failed", ttft=None, tps=None, cost=0.0)])
    session.add(failed)
    assert [row["model"] for row in summary_rows(session)] == [SMALL]
    assert session.model_stats()[LARGE].calls == 1


# ----------------------------------------------------------------------------------------- chart


def test_latency_segments_put_an_escalated_draft_into_the_wait():
    escalated = TurnMetrics(
        retrieval_ms=40.0, prompt_ms=10.0, total_ms=2900.0, answered_by=LARGE,
        legs=[leg(SMALL, outcome="escalated", ttft=100.0, gen=400.0), leg(LARGE, ttft=600.0, gen=1700.0)],
    )
    parts = latency_segments(escalated)
    assert parts.model == LARGE
    assert parts.retrieval_ms == pytest.approx(50.0)
    assert parts.wait_ms == pytest.approx(505.0 + 600.0)  # the whole small call, then the large TTFT
    assert parts.generation_ms == pytest.approx(1700.0)
    assert parts.retrieval_ms + parts.wait_ms + parts.generation_ms == pytest.approx(escalated.total_ms, abs=50)


def test_latency_figure_stacks_three_parts_per_message_by_model():
    session = SessionMetrics()
    session.add(turn(SMALL, 1030.0, legs=[leg(SMALL, ttft=100.0, gen=900.0)]))
    session.add(turn(LARGE, 3030.0, legs=[leg(LARGE, ttft=1000.0, gen=2000.0)]))
    session.add(turn(SMALL, 530.0, legs=[leg(SMALL, ttft=200.0, gen=300.0)]))
    figure = latency_figure(session)

    assert figure.layout.barmode == "stack"
    names = [trace.name for trace in figure.data]
    assert names == [
        "retrieval + prompt",
        f"{SMALL} · first token", f"{LARGE} · first token",
        f"{SMALL} · generation", f"{LARGE} · generation",
    ]
    assert all(trace.type == "bar" for trace in figure.data)
    by_name = {trace.name: trace for trace in figure.data}
    assert list(by_name["retrieval + prompt"].x) == ["#1", "#2", "#3"]
    assert list(by_name["retrieval + prompt"].y) == [25.0, 25.0, 25.0]
    assert list(by_name[f"{SMALL} · first token"].x) == ["#1", "#3"]
    assert list(by_name[f"{SMALL} · first token"].y) == [100.0, 200.0]
    assert list(by_name[f"{LARGE} · generation"].x) == ["#2"]
    assert list(by_name[f"{LARGE} · generation"].y) == [2000.0]
    # A model's parts share its colour and legend group; the two models differ.
    assert by_name[f"{SMALL} · first token"].marker.color == by_name[f"{SMALL} · generation"].marker.color
    assert by_name[f"{SMALL} · generation"].marker.color != by_name[f"{LARGE} · generation"].marker.color
    assert by_name[f"{LARGE} · first token"].legendgroup == LARGE
    # Each bar adds up to about the message's total.
    stacked = {}
    for trace in figure.data:
        for x, y in zip(trace.x, trace.y):
            stacked[x] = stacked.get(x, 0.0) + y
    assert stacked == pytest.approx({"#1": 1025.0, "#2": 3025.0, "#3": 525.0})
    json.loads(figure.to_json())  # serialisable for the browser, with nothing fetched


# ----------------------------------------------------------------------------------------- text and saved form


def test_metrics_line_marks_estimated_tokens():
    measured = turn(SMALL, 1234.0, legs=[leg(SMALL, ttft=150.0, tps=47.25, prompt=210, completion=64, cost=0.0000466)])
    line = format_metrics_line(measured)
    assert SMALL in line and "TTFT 175 ms" in line and "47.2 tok/s" in line  # TTFT counts retrieval + prompt
    assert "210 in / 64 out tokens" in line and "~" not in line
    assert "$0.000047" in line and "1.23 s" in line
    estimated = turn(SMALL, 900.0, legs=[leg(SMALL, estimated=True, prompt=210, completion=64)])
    assert "~210 in / ~64 out tokens" in format_metrics_line(estimated)


def test_session_round_trips_through_json():
    session = SessionMetrics()
    session.add(turn(SMALL, 1000.0))
    session.add(TurnMetrics(
        retrieval_ms=12.5, prompt_ms=1.5, total_ms=4000.0, answered_by=LARGE, escalation_reason="low confidence",
        confidence=0.12, legs=[leg(SMALL, outcome="escalated", estimated=True), leg(LARGE, role="large")],
    ))
    restored = SessionMetrics.from_dict(json.loads(json.dumps(session.to_dict())))
    assert restored == session
    assert restored.total_cost_usd == pytest.approx(session.total_cost_usd)
    assert summary_rows(restored) == summary_rows(session)
    assert SessionMetrics.from_dict(None).turns == [] and SessionMetrics.from_dict({}).turns == []
