"""Evaluate the assistant on a question set, per routing mode, through the same pipeline as the chat.

    python -m assistant.evaluate QUESTIONS.jsonl [--modes small large automatic] [--json out.json]
                                 [--judge-model ALIAS] [--limit N]

Each line of QUESTIONS.jsonl is a JSON object: ``question`` (required), ``reference_answer``
(optional), ``expected_sources`` (optional, knowledge-folder paths or file names; ``a.md|b.md`` when either
file holds the answer) and
``answerable`` (optional, default true; false marks a question the documents do not cover).
Every question runs at temperature 0 with the model server and knowledge folder of
``load_settings()`` (ASSISTANT_MODEL_ENDPOINT, ASSISTANT_KNOWLEDGE_DIR, ...).

Scores (offline by default):

* **F1**: token-overlap F1 between the answer and the reference answer (lower case, punctuation,
  articles and [n] citations removed), as in SQuAD.
* **source recall**: the share of the expected sources among the sources the answer cites.
* **citation precision / recall**, for the questions that name expected sources, pooled over them:
  precision = cited sources that are expected ones / cited sources; recall = expected sources cited /
  expected sources. Reported for the citations the model wrote, for those the app attributed to uncited
  sentences (:mod:`rag.citations`), and for both together. ``[n]`` that point at no source are counted apart.
* **answer score**: the F1, or for an unanswerable question 1 if the answer declines, else 0; with
  ``--judge-model`` the judge's 1-5 grade mapped to 0-1 as (grade - 1) / 4 instead.

Routing (RouteLLM's measures; needs the small and large modes, and automatic for PGR):

* **PGR** (performance gap recovered) of the automatic router:
  ``(score_automatic - score_small) / (score_large - score_small)``: 0 means routing gained nothing
  over the small model, 1 means it matched the large model; read it against the share of questions
  it escalated (what it spent).
* **APGR** (average PGR): the router's own ranking of questions, from the small model's answers
  (flagged by ``assess`` first, then lowest confidence first), is swept over every budget: escalate
  the k most doubtful of n questions (taking the large model's score for those), for k = 1..n, and
  average PGR(k). It is the area under the PGR-versus-share-escalated curve; a random router
  scores about 0.5, a perfect one close to 1.

Unreachable model server or unknown model: a message that says what to start or set, exit code 2.
Some answers failed or were degraded during the run (an error or warning notice): exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import string
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from assistant.events import TurnFinished
from assistant.pipeline import Pipeline
from assistant.record import TurnRecord
from assistant.embedded import model_server
from assistant import wiring
from assistant.settings import RoutingMode
from rag.citations import strip_citations
from routing.client import ModelClient, ModelServerError
from routing.metrics import mean, percentile
from routing.policy import GROUNDING_SIGNALS, RoutingOptions, looks_declined

DEFAULT_MODES = ("small", "large", "automatic")
JUDGE_PROMPT = (
    "You grade answers of a document assistant. Given a question, a reference answer (may be empty) and "
    "the assistant's answer, grade the answer from 1 (wrong or useless) to 5 (correct and complete). "
    "If the question is marked unanswerable, a clear statement that the documents do not cover it is a 5. "
    "Reply with the digit only."
)


# --------------------------------------------------------------------------------------------------
# Questions and scores
# --------------------------------------------------------------------------------------------------


@dataclass
class Question:
    question: str
    reference_answer: str | None = None
    expected_sources: list[str] | None = None
    answerable: bool = True
    id: str = ""


class QuestionFileError(ValueError):
    pass


def load_questions(path: Path) -> list[Question]:
    questions: list[Question] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise QuestionFileError(f"Cannot read {path}: {exc.strerror or exc}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.lstrip().startswith("//"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QuestionFileError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
        if not isinstance(item, dict) or not isinstance(item.get("question"), str) or not item["question"].strip():
            raise QuestionFileError(f"{path}:{number}: needs a non-empty \"question\" string")
        sources = item.get("expected_sources")
        if sources is not None and (not isinstance(sources, list) or not all(isinstance(s, str) for s in sources)):
            raise QuestionFileError(f"{path}:{number}: \"expected_sources\" must be a list of strings")
        questions.append(
            Question(
                question=item["question"].strip(),
                reference_answer=item.get("reference_answer") or None,
                expected_sources=sources,
                answerable=bool(item.get("answerable", True)),
                id=str(item.get("id") or number),
            )
        )
    if not questions:
        raise QuestionFileError(f"{path}: no questions")
    return questions


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans({c: " " for c in string.punctuation})


def answer_tokens(text: str) -> list[str]:
    text = strip_citations(text).lower().translate(_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def token_f1(answer: str, reference: str) -> float:
    """SQuAD-style token-overlap F1."""
    predicted, gold = answer_tokens(answer), answer_tokens(reference)
    if not predicted or not gold:
        return float(predicted == gold)
    common = sum((Counter(predicted) & Counter(gold)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def source_matches(expected: str, source: str) -> bool:
    """``handbook.md`` matches ``policies/handbook.md``; ``a.md|b.md`` means either file will do."""
    source = source.strip("/").lower()
    for option in expected.split("|"):
        option = option.strip().strip("/").lower()
        if option and (source == option or source.endswith("/" + option)):
            return True
    return False


def source_recall(expected: Sequence[str] | None, cited_sources: Sequence[str]) -> float | None:
    if not expected:
        return None
    found = sum(any(source_matches(e, s) for s in cited_sources) for e in expected)
    return found / len(expected)


# --------------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------------


@dataclass
class Result:
    question_id: str
    mode: str
    answer: str
    answered_by: str | None
    escalated: bool
    escalation_reason: str | None
    early: bool
    cited_sources: list[str]
    supported: bool
    latency_ms: float
    ttft_ms: float | None
    prompt_tokens: int
    completion_tokens: int
    tokens_estimated: bool
    cost_usd: float
    confidence: float | None
    # The router's view of the small model's answer (small mode only): used to rank for APGR.
    small_flagged: bool | None = None
    small_confidence: float | None = None
    attributed_sources: list[str] = field(default_factory=list)  # attached by the app, not cited by the model
    dangling_citations: int = 0  # [n] written by the model that point at no source
    routing_action: str | None = None
    citations: dict | None = None  # per "model"/"app"/"all": citation_counts (questions with expected sources)
    # Grounding signals (routing.policy.grounding_signals) that fired on the small model's answer, and
    # whether they decided (the server sent no logprobs, as Foundry Local does).
    signals: list[str] = field(default_factory=list)
    signals_decided: bool = False
    f1: float | None = None
    source_recall: float | None = None
    judge: int | None = None
    score: float | None = None
    errors: list[str] = field(default_factory=list)


async def run_question(pipeline: Pipeline, question: Question, mode: str, options: RoutingOptions) -> Result:
    errors: list[str] = []
    record: TurnRecord | None = None
    async for event in pipeline.run(question.question, options=options.with_overrides({"mode": mode})):
        if isinstance(event, TurnFinished):
            record = event.record
    assert record is not None
    # A warning is a degraded answer (large model down, search failed): it counts as a failure here.
    errors = [f"{n.level}: {n.message}" for n in record.notices if n.level in ("warning", "error")]
    summary = record.summary
    cited = _distinct([record.sources[n - 1].chunk.source for n in record.cited])
    attributed = _distinct([record.sources[n - 1].chunk.source for n in record.attributed])
    result = Result(
        question_id=question.id,
        mode=mode,
        answer=record.text,
        answered_by=record.answered_by,
        escalated=record.routing.escalated,
        escalation_reason=summary.escalation_reason,
        early=record.routing.early,
        cited_sources=cited,
        supported=record.supported,
        latency_ms=summary.total_ms,
        ttft_ms=summary.ttft_ms,
        prompt_tokens=summary.prompt_tokens,
        completion_tokens=summary.completion_tokens,
        tokens_estimated=summary.tokens_estimated,
        cost_usd=summary.cost_usd,
        confidence=summary.confidence,
        attributed_sources=[s for s in attributed if s not in cited],
        dangling_citations=len(record.dangling),
        routing_action=record.routing.action,
        errors=errors,
    )
    if mode == RoutingMode.SMALL_ONLY.value:
        result.small_flagged, result.small_confidence = record.routing.would_escalate, record.routing.confidence
    if mode != RoutingMode.LARGE_ONLY.value:
        # The router's signals on the first (small) answer, as the record has them.
        result.signals = sorted(s.name for s in record.routing.signals if s.name in GROUNDING_SIGNALS)
        result.signals_decided = record.routing.grounding_decided
    if question.reference_answer:
        result.f1 = token_f1(record.text, question.reference_answer)
    result.source_recall = source_recall(question.expected_sources, cited)
    if question.expected_sources:
        result.citations = {
            by: citation_counts(question.expected_sources, sources)
            for by, sources in (("model", cited), ("app", result.attributed_sources),
                                ("all", cited + result.attributed_sources))
        }
    if not question.answerable:
        result.score = 1.0 if looks_declined(record.text) else 0.0
    else:
        result.score = result.f1
    return result


def _distinct(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def citation_counts(expected: Sequence[str], cited_sources: Sequence[str]) -> dict:
    """For one answer: sources cited, how many of them are expected, expected sources, how many were cited."""
    return {
        "cited": len(cited_sources),
        "correct": sum(any(source_matches(e, s) for e in expected) for s in cited_sources),
        "expected": len(expected),
        "found": sum(any(source_matches(e, s) for s in cited_sources) for e in expected),
    }


def citation_scores(results: list[Result], by: str) -> dict:
    """Citation precision (cited sources that are expected ones) and recall (expected sources cited), pooled
    over the questions that name expected sources; ``by`` is "model", "app" or "all"."""
    counts = [r.citations[by] for r in results if r.citations]
    cited = sum(c["cited"] for c in counts)
    expected = sum(c["expected"] for c in counts)
    return {
        "precision": sum(c["correct"] for c in counts) / cited if cited else None,
        "recall": sum(c["found"] for c in counts) / expected if expected else None,
        "cited": cited,
        "questions": len(counts),
    }


async def judge_answer(client: ModelClient, alias: str, question: Question, answer: str) -> int | None:
    content = (
        f"Question: {question.question}\n"
        f"Answerable from the documents: {'yes' if question.answerable else 'no'}\n"
        f"Reference answer: {question.reference_answer or '(none)'}\n"
        f"Assistant's answer: {answer or '(empty)'}\n\nGrade (1-5):"
    )
    messages = [{"role": "system", "content": JUDGE_PROMPT}, {"role": "user", "content": content}]
    response = await client.complete(alias, messages, temperature=0.0, max_tokens=8, logprobs=False)
    match = re.search(r"[1-5]", response.text)
    return int(match.group()) if match else None


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def summarize(results: list[Result]) -> dict:
    latencies = [r.latency_ms for r in results]
    return {
        "questions": len(results),
        "score": mean([r.score for r in results]),
        "f1": mean([r.f1 for r in results]),
        "source_recall": mean([r.source_recall for r in results]),
        "judge": mean([r.judge for r in results]),
        "latency_mean_ms": mean(latencies),
        "latency_p95_ms": percentile(latencies, 95),
        "ttft_mean_ms": mean([r.ttft_ms for r in results]),
        "tokens_per_question": mean([r.prompt_tokens + r.completion_tokens for r in results]),
        "completion_tokens_per_question": mean([r.completion_tokens for r in results]),
        "tokens_estimated": any(r.tokens_estimated for r in results),
        "cost_usd_total": sum(r.cost_usd for r in results),
        "escalated_share": sum(r.escalated for r in results) / len(results) if results else None,
        "citations": {by: citation_scores(results, by) for by in ("model", "app", "all")},
        "dangling_citations": sum(r.dangling_citations for r in results),
        "errors": sum(bool(r.errors) for r in results),
        "models": sorted({r.answered_by for r in results if r.answered_by}),
        # How often each grounding signal fired on the small model's answers, and how often they decided.
        "signals": {name: sum(name in r.signals for r in results) for name in GROUNDING_SIGNALS},
        "signals_decided": sum(r.signals_decided for r in results),
    }


def pgr(score: float, small: float, large: float) -> float | None:
    gap = large - small
    if abs(gap) < 1e-9:
        return None
    return (score - small) / gap


def routing_report(by_mode: dict[str, list[Result]]) -> dict:
    """PGR of the automatic router and APGR of its ranking (see the module docstring)."""
    report: dict = {"pgr": None, "apgr": None, "note": ""}
    small, large = by_mode.get("small"), by_mode.get("large")
    if not small or not large:
        report["note"] = "PGR/APGR need the small and large modes."
        return report
    small_scores = [r.score or 0.0 for r in small]
    large_scores = [r.score or 0.0 for r in large]
    q_small, q_large = sum(small_scores) / len(small), sum(large_scores) / len(large)
    report.update(small_score=q_small, large_score=q_large, gap=q_large - q_small)
    if abs(q_large - q_small) < 1e-9:
        report["note"] = "no quality gap between the small and large modes on this set: PGR is undefined."
        return report
    automatic = by_mode.get("automatic")
    if automatic:
        q_auto = sum(r.score or 0.0 for r in automatic) / len(automatic)
        report["automatic_score"] = q_auto
        report["automatic_escalated_share"] = sum(r.escalated for r in automatic) / len(automatic)
        report["pgr"] = pgr(q_auto, q_small, q_large)
    # Most doubtful first: flagged by assess(), then lowest confidence (unknown confidence last in its group).
    order = sorted(
        range(len(small)),
        key=lambda i: (
            0 if small[i].small_flagged else 1,
            small[i].small_confidence if small[i].small_confidence is not None else 2.0,
            i,
        ),
    )
    n = len(small)
    curve = []
    mixed = list(small_scores)
    for index in order:
        mixed[index] = large_scores[index]
        curve.append(pgr(sum(mixed) / n, q_small, q_large))
    report["apgr"] = sum(curve) / n
    report["pgr_curve"] = curve
    return report


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:{spec}}{suffix}"


def format_report(summaries: dict[str, dict], routing: dict, judged: bool) -> str:
    header = (
        f"{'mode':<13}{'n':>3} {'score':>6} {'F1':>6} {'src rec':>8} "
        + (f"{'judge':>6} " if judged else "")
        + f"{'lat mean':>9} {'lat p95':>8} {'TTFT':>7} {'tok/q':>7} {'cost $':>10} {'escal.':>7} {'err':>4}  answered by"
    )
    lines = [header, "-" * len(header)]
    for mode, s in summaries.items():
        tokens = _fmt(s["tokens_per_question"], ".0f") + ("~" if s["tokens_estimated"] else "")
        lines.append(
            f"{mode:<13}{s['questions']:>3} {_fmt(s['score']):>6} {_fmt(s['f1']):>6} {_fmt(s['source_recall']):>8} "
            + (f"{_fmt(s['judge'], '.1f'):>6} " if judged else "")
            + f"{_fmt(s['latency_mean_ms'], '.0f', ' ms'):>9} {_fmt(s['latency_p95_ms'], '.0f', ' ms'):>8} "
            f"{_fmt(s['ttft_mean_ms'], '.0f', ' ms'):>7} {tokens:>7} {s['cost_usd_total']:>10.6f} "
            f"{_fmt(s['escalated_share'], '.0%'):>7} {s['errors']:>4}  {', '.join(s['models']) or '-'}"
        )
    lines.append("")
    lines.append("Citations (sources cited vs the question's expected sources; questions that name them):")
    for mode, s in summaries.items():
        cells = []
        for by, label in (("model", "written by the model"), ("app", "attributed by the app"), ("all", "both")):
            c = s["citations"][by]
            cells.append(f"{label}: P {_fmt(c['precision'])} R {_fmt(c['recall'])} ({c['cited']} cited)")
        lines.append(f"  {mode:<13}" + " | ".join(cells) + f" | dangling [n]: {s['dangling_citations']}")
    lines.append("")
    lines.append("score: F1 vs reference (1/0 for declining an unanswerable question)"
                 + ("; judge 1-5 mapped to 0-1 replaces it" if judged else "")
                 + ". src rec: expected sources among cited ones. ~: token counts estimated (server sent no usage).")
    for mode, s in summaries.items():
        if mode == RoutingMode.LARGE_ONLY.value or not s["questions"]:
            continue
        fired = ", ".join(f"{name} {count}/{s['questions']}" for name, count in s["signals"].items())
        lines.append(
            f"grounding signals on the small answers ({mode}): {fired}; they decided (no logprobs) on "
            f"{s['signals_decided']}/{s['questions']}."
        )
    if routing.get("note"):
        lines.append(f"PGR/APGR: {routing['note']}")
    if routing.get("pgr") is not None:
        lines.append(
            f"PGR (automatic) = (score_auto - score_small) / (score_large - score_small) = "
            f"({routing['automatic_score']:.3f} - {routing['small_score']:.3f}) / "
            f"({routing['large_score']:.3f} - {routing['small_score']:.3f}) = {routing['pgr']:.2f} "
            f"at {routing['automatic_escalated_share']:.0%} escalated"
        )
    if routing.get("apgr") is not None:
        lines.append(
            f"APGR = {routing['apgr']:.2f}: mean PGR when escalating the k most doubtful questions (router's ranking "
            f"of the small answers), k = 1..n; random routing ~0.5, perfect ~1."
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command
# --------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m assistant.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("questions", type=Path, help="JSONL question file")
    parser.add_argument(
        "--modes", nargs="+", default=list(DEFAULT_MODES), choices=[m.value for m in RoutingMode],
        help="routing modes to run (default: small large automatic)",
    )
    parser.add_argument("--json", type=Path, help="also write every answer and the summaries to this file")
    parser.add_argument("--judge-model", metavar="ALIAS", help="grade each answer 1-5 with this model (same endpoint)")
    parser.add_argument("--limit", type=int, help="only the first N questions")
    parser.add_argument("--embedded", action="store_true",
                        help="start the bundled SmolLM2 model (llama.cpp) when the endpoint does not answer")
    return parser.parse_args(argv)


async def _check_server(client: ModelClient, aliases: set[str]) -> dict[str, str]:
    return {alias: await client.resolve(alias) for alias in sorted(aliases)}


async def evaluate(args: argparse.Namespace, settings) -> int:
    questions = load_questions(args.questions)
    if args.limit:
        questions = questions[: args.limit]
    objects = wiring.build(settings)
    client, pipeline = objects.client, objects.pipeline
    try:
        needed = set()
        for mode in args.modes:
            if mode != RoutingMode.LARGE_ONLY.value:
                needed.add(settings.small_model)
            if mode != RoutingMode.SMALL_ONLY.value:
                needed.add(settings.large_model)
        if args.judge_model:
            needed.add(args.judge_model)
        try:
            served = await _check_server(client, needed)
        except ModelServerError as exc:
            print(f"evaluate: {exc}", file=sys.stderr)
            return 2
        print(
            f"Model server {settings.model_endpoint}: "
            + ", ".join(f"{alias} -> {model}" for alias, model in served.items()),
            file=sys.stderr,
        )

        _knowledge_base_report(objects.knowledge, settings)
        options = RoutingOptions.from_settings(settings).with_overrides({"temperature": 0.0})

        by_mode: dict[str, list[Result]] = {}
        for mode in args.modes:
            results = by_mode[mode] = []
            for number, question in enumerate(questions, start=1):
                result = await run_question(pipeline, question, mode, options)
                if args.judge_model:
                    try:
                        result.judge = await judge_answer(client, args.judge_model, question, result.answer)
                    except ModelServerError as exc:
                        result.errors.append(f"judge: {exc}")
                    result.score = (result.judge - 1) / 4 if result.judge is not None else None
                results.append(result)
                flag = f" escalated ({result.escalation_reason})" if result.escalated else ""
                error = f" ERROR {result.errors[0][:120]}" if result.errors else ""
                print(
                    f"[{mode} {number}/{len(questions)}] {result.latency_ms:.0f} ms, score {_fmt(result.score)}{flag}{error}",
                    file=sys.stderr,
                )

        summaries = {mode: summarize(results) for mode, results in by_mode.items()}
        routing = routing_report(by_mode)
        print(format_report(summaries, routing, judged=bool(args.judge_model)))
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(
                json.dumps(
                    {
                        "questions_file": str(args.questions),
                        "endpoint": settings.model_endpoint,
                        "models": served,
                        "knowledge_dir": str(settings.knowledge_dir),
                        "temperature": 0.0,
                        "summaries": summaries,
                        "routing": routing,
                        "results": {mode: [asdict(r) for r in results] for mode, results in by_mode.items()},
                        "questions": [asdict(q) for q in questions],
                        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
                    },
                    indent=2,
                ),
                encoding="utf-8",
            )
        failed = sum(summary["errors"] for summary in summaries.values())
        if failed:
            print(f"evaluate: {failed} answer(s) failed; see the errors above.", file=sys.stderr)
            return 1
        return 0
    finally:
        await client.close()


def _knowledge_base_report(knowledge, settings) -> None:
    report = knowledge.refresh()
    print(f"Knowledge base {settings.knowledge_dir}: {report.summary()}", file=sys.stderr)
    if not knowledge.chunk_count:
        print("evaluate: warning: the knowledge base is empty; every answer will be unsupported.", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = wiring.settings_for_command()
    if settings is None:
        return 2
    try:
        with model_server(settings, args.embedded) as (settings, _):
            return asyncio.run(evaluate(args, settings))
    except QuestionFileError as exc:
        print(f"evaluate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
