"""Does the model answer a follow-up question, or repeat its previous answer? One command:

    python -m benchmarks.followups [--pairs N] [--max-tokens 96] [--styles none,full,summary]
                                   [--model-endpoint URL --model ALIAS] [--context-window 2048]

For each pair of questions (first question, follow-up) over the bundled knowledge folder it asks the
first question with no history, then the follow-up once per history style, with the same retrieval
and prompt builder the app uses (:func:`rag.prompt.build_grounded_messages`):

* ``none``: no history at all: how much two answers over the same documents overlap by themselves;
* ``full``: the earlier question and the whole earlier answer (what the app sent before);
* ``summary``: the earlier question and a one-sentence summary of the answer (:func:`rag.prompt.summarise_answer`);
* ``questions``: only the earlier questions, in front of the new one (no earlier answer to copy).

A follow-up answer counts as a repeat when it is mostly the first answer again: difflib's similarity
ratio of the two (whitespace-normalised, citations removed) is at least 0.6, or the follow-up answer
starts with the same 40 characters. Prints the repeat rate and mean similarity per style.

Starts the embedded SmolLM2 llama.cpp server unless an endpoint is given. Temperature 0 so that runs
can be compared; timings depend on the machine's load.
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import re
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelServer, default_model_path
from rag.knowledge import KnowledgeBase
from rag.prompt import HISTORY_FULL, HISTORY_QUESTIONS, HISTORY_SUMMARY, build_grounded_messages
from routing.client import ModelClient

PROJECT = Path(__file__).resolve().parents[1]
REPEAT_RATIO = 0.6
SAME_START_CHARS = 40
MIN_SOURCE_SCORE = 1.0

PAIRS = [
    ("What is the internal code name of the assistant?", "Which models does it use?"),
    ("How does the router decide to escalate?", "What happens in draft then refine mode?"),
    ("Which BM25 backends are available?", "When should I choose bm25s?"),
    ("How are uploads kept private?", "How do I share an upload with everyone?"),
    ("What does the metrics bar show?", "How is the cloud cost computed?"),
    ("What is the embedded fallback model?", "How good are its answers?"),
    ("How do I point the app at Foundry Local?", "What if the alias does not match a served model?"),
    ("Which file types can I upload?", "What is the largest upload allowed?"),
    ("What does the latency chart show?", "What does TTFT mean?"),
    ("Where is the chat history stored?", "Can several users share one server?"),
    ("What is the confidence threshold?", "And the minimum answer length?"),
    ("What does /docs do?", "How do I remove an upload?"),
]

STYLES = {"none": None, "full": HISTORY_FULL, "summary": HISTORY_SUMMARY, "questions": HISTORY_QUESTIONS}
_CITATION = re.compile(r"\[[\d,;\s]+\]")


def normalise(text: str) -> str:
    return " ".join(_CITATION.sub("", text).lower().split())


def similarity(first: str, second: str) -> float:
    return difflib.SequenceMatcher(None, normalise(first), normalise(second), autojunk=False).ratio()


def is_repeat(first: str, second: str) -> bool:
    a, b = normalise(first), normalise(second)
    if not a or not b:
        return False
    same_start = len(a) >= SAME_START_CHARS and a[:SAME_START_CHARS] == b[:SAME_START_CHARS]
    return same_start or similarity(first, second) >= REPEAT_RATIO


@dataclass
class StyleResult:
    similarities: list[float] = field(default_factory=list)
    repeats: int = 0
    seconds: list[float] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)


async def answer(client, model, knowledge, question, history, style, args) -> tuple[str, float, int]:
    sources = [s for s in knowledge.search(question, args.top_k) if s.score >= MIN_SOURCE_SCORE]
    prompt = build_grounded_messages(
        question,
        sources,
        history=history,
        context_window=args.context_window,
        max_answer_tokens=args.max_tokens,
        history_style=style,
    )
    start = time.perf_counter()
    response = await client.complete(model, prompt.messages, temperature=0.0, max_tokens=args.max_tokens,
                                      logprobs=False)
    return response.text, time.perf_counter() - start, prompt.prompt_tokens


async def run(args, endpoint: str, model: str) -> dict[str, StyleResult]:
    client = ModelClient(endpoint, first_token_timeout_s=300)
    with tempfile.TemporaryDirectory() as cache:
        knowledge = KnowledgeBase(PROJECT / "knowledge", Path(cache))
        knowledge.refresh()
        results = {name: StyleResult() for name in args.styles}
        try:
            for i, (first_q, follow_q) in enumerate(PAIRS[: args.pairs], start=1):
                first_a, _, _ = await answer(client, model, knowledge, first_q, [], None, args)
                history = [{"role": "user", "content": first_q}, {"role": "assistant", "content": first_a}]
                print(f"\n[{i}] {first_q}\n    A1: {first_a[:160]!r}")
                for name in args.styles:
                    style = STYLES[name]
                    follow_a, seconds, tokens = await answer(
                        client, model, knowledge, follow_q, history if style else [], style or HISTORY_FULL, args)
                    result = results[name]
                    result.similarities.append(similarity(first_a, follow_a))
                    result.repeats += is_repeat(first_a, follow_a)
                    result.seconds.append(seconds)
                    result.prompt_tokens.append(tokens)
                    mark = "REPEAT" if is_repeat(first_a, follow_a) else "new"
                    print(f"    {name:8s} {mark:6s} sim {result.similarities[-1]:.2f}  {follow_q} -> {follow_a[:120]!r}")
        finally:
            await client.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=len(PAIRS))
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--top-k", type=int, default=EMBEDDED_TOP_K)
    parser.add_argument("--context-window", type=int, default=2048)
    parser.add_argument("--styles", default="none,full,summary,questions")
    parser.add_argument("--model-endpoint")
    parser.add_argument("--model", help="model alias at --model-endpoint")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    args.styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    unknown = [s for s in args.styles if s not in STYLES]
    if unknown:
        parser.error(f"unknown style(s) {unknown}; choose from {list(STYLES)}")

    if args.model_endpoint:
        results = asyncio.run(run(args, args.model_endpoint, args.model or "phi-4-mini"))
        model = args.model
    else:
        with EmbeddedModelServer(default_model_path(), threads=args.threads, context=args.context_window) as server:
            model = server.small_name
            results = asyncio.run(run(args, server.base_url, model))

    pairs = min(args.pairs, len(PAIRS))
    print(f"\nFollow-up answers that repeat the first answer ({model}, {pairs} pairs, max {args.max_tokens} tokens, "
          f"context {args.context_window}; repeat = similarity >= {REPEAT_RATIO} or same first {SAME_START_CHARS} chars)")
    print(f"{'history':10s} {'repeats':>9s} {'rate':>6s} {'mean sim':>9s} {'prompt tok':>11s} {'mean s':>7s}")
    for name, result in results.items():
        n = len(result.similarities)
        print(f"{name:10s} {result.repeats:>4d}/{n:<4d} {result.repeats / n:>6.0%} {statistics.mean(result.similarities):>9.2f} "
              f"{statistics.mean(result.prompt_tokens):>11.0f} {statistics.mean(result.seconds):>7.1f}")


if __name__ == "__main__":
    main()
