"""Latency benchmark of the configured models: models x rounds after warm-up, one streaming call a round.

    python -m assistant.bench [--models small large | ALIAS ...] [--rounds 5] [--warmup 1] [--prompt ...]
                              [--max-tokens 128] [--temperature 0] [--no-logprobs | --logprobs-both]
                              [--json out.json] [--markdown out.md]

Time to first token, total latency and decode rate all come from the same streamed call of each round
(first non-empty content = first token). ``small`` and ``large`` are the configured aliases; any other
name is an alias resolved against the server. A model that cannot be reached or does not resolve is
reported and the others are still measured. The exit code is non-zero only when no model was measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from assistant.compare import ModelRun, fmt_ms, fmt_rate, price_for, render_table, role_aliases, run_one
from assistant.embedded import model_server
from assistant.pipeline import Pipeline
from assistant import wiring
from routing.client import ModelServerError
from routing.metrics import mean, percentile

DEFAULT_PROMPT = "Explain in three short sentences what a search index is and why it makes lookups fast."


@dataclass
class Distribution:
    mean: float | None
    p50: float | None
    p95: float | None

    @classmethod
    def of(cls, values: list[float]) -> "Distribution":
        return cls(mean(values), percentile(values, 50), percentile(values, 95))


@dataclass
class ModelBench:
    """All measured rounds of one model (with or without logprobs requested)."""

    role: str
    alias: str
    logprobs: bool
    model: str | None = None
    error: str | None = None  # set when the model could not be measured at all
    rounds: list[ModelRun] = field(default_factory=list)

    @property
    def measured(self) -> list[ModelRun]:
        return [run for run in self.rounds if run.ok]

    def summary(self) -> dict:
        runs = self.measured
        return {
            "role": self.role,
            "alias": self.alias,
            "model": self.model,
            "logprobs": self.logprobs,
            "error": self.error,
            "rounds_ok": len(runs),
            "rounds_failed": len(self.rounds) - len(runs),
            "round_errors": [run.error for run in self.rounds if not run.ok],
            "ttft_ms": asdict(Distribution.of([r.ttft_ms for r in runs if r.ttft_ms is not None])),
            "total_ms": asdict(Distribution.of([r.total_ms for r in runs if r.total_ms is not None])),
            "generation_ms": asdict(Distribution.of([r.generation_ms for r in runs if r.generation_ms is not None])),
            "decode_tokens_per_s": asdict(
                Distribution.of([r.decode_tokens_per_s for r in runs if r.decode_tokens_per_s is not None])
            ),
            "decode_chunks_per_s": asdict(
                Distribution.of([r.decode_chunks_per_s for r in runs if r.decode_chunks_per_s is not None])
            ),
            "completion_tokens_mean": mean([r.completion_tokens for r in runs if r.completion_tokens is not None]),
            "tokens_estimated": any(r.tokens_estimated for r in runs),
            "cost_usd_mean": mean([r.cost_usd for r in runs if r.cost_usd is not None]),
        }


async def bench_model(
    pipeline: Pipeline, settings, role: str, alias: str, *, logprobs: bool, prompt: str, rounds: int, warmup: int,
    temperature: float, max_tokens: int, progress=None,
) -> ModelBench:
    result = ModelBench(role=role, alias=alias, logprobs=logprobs)
    try:
        result.model = await pipeline.client.resolve(alias)
    except ModelServerError as exc:
        result.error = f"{exc.__class__.__name__}: {exc}"
        return result
    messages = [{"role": "user", "content": prompt}]
    price = price_for(settings, role, alias)
    call = dict(price=price, temperature=temperature, max_tokens=max_tokens, logprobs=logprobs)
    for i in range(warmup):
        run = await run_one(pipeline, role, alias, messages, **call)
        if progress:
            progress(f"{alias} warm-up {i + 1}/{warmup}: " + ("ok" if run.ok else run.error))
        if not run.ok and run.ttft_ms is None:
            # Nothing came back at all (unreachable, rejected): measuring rounds would only repeat the error.
            result.error = run.error
            return result
    for i in range(rounds):
        run = await run_one(pipeline, role, alias, messages, **call)
        result.rounds.append(run)
        if progress:
            detail = (
                f"ttft {fmt_ms(run.ttft_ms)} ms, total {fmt_ms(run.total_ms)} ms, {fmt_rate(run.decode_chunks_per_s)} chunks/s"
                if run.ok else run.error
            )
            progress(f"{alias} round {i + 1}/{rounds}: {detail}")
    if not result.measured:
        result.error = result.rounds[-1].error if result.rounds else "no rounds"
    return result


async def run_bench(
    settings, names: list[str], *, logprobs_modes: list[bool], prompt: str, rounds: int, warmup: int,
    temperature: float, max_tokens: int, progress=None,
) -> list[ModelBench]:
    pipeline = wiring.build(settings, with_knowledge=False).pipeline
    results = []
    try:
        for role, alias in role_aliases(settings, names):
            for logprobs in logprobs_modes:
                result = await bench_model(
                    pipeline, settings, role, alias, logprobs=logprobs, prompt=prompt, rounds=rounds, warmup=warmup,
                    temperature=temperature, max_tokens=max_tokens, progress=progress,
                )
                results.append(result)
                if result.error and not result.rounds:
                    break  # unreachable or unknown: the other logprobs mode would fail the same way
    finally:
        await pipeline.client.close()
    return results


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------

HEADERS = [
    "model", "logprobs", "ok", "ttft mean", "ttft p50", "ttft p95", "total mean", "total p50", "total p95",
    "tok/s mean", "chunks/s mean", "compl tok",
]


def summary_table_rows(summaries: list[dict]) -> list[list[str]]:
    rows = []
    for s in summaries:
        name = s["model"] or s["alias"]
        if s["role"] != s["alias"]:
            name = f"{s['role']}: {name}"
        if s["rounds_ok"] == 0:
            rows.append([name, "on" if s["logprobs"] else "off", "0", "FAILED"] + [""] * (len(HEADERS) - 4))
            continue
        mark = "~" if s["tokens_estimated"] else ""
        compl = s["completion_tokens_mean"]
        rows.append([
            name, "on" if s["logprobs"] else "off", f"{s['rounds_ok']}/{s['rounds_ok'] + s['rounds_failed']}",
            fmt_ms(s["ttft_ms"]["mean"]), fmt_ms(s["ttft_ms"]["p50"]), fmt_ms(s["ttft_ms"]["p95"]),
            fmt_ms(s["total_ms"]["mean"]), fmt_ms(s["total_ms"]["p50"]), fmt_ms(s["total_ms"]["p95"]),
            (mark + fmt_rate(s["decode_tokens_per_s"]["mean"])) if s["decode_tokens_per_s"]["mean"] else "-",
            fmt_rate(s["decode_chunks_per_s"]["mean"]),
            "-" if compl is None else f"{mark}{compl:.0f}",
        ])
    return rows


def failure_lines(summaries: list[dict]) -> list[str]:
    return [f"{s['alias']}: {s['error']}" for s in summaries if s["error"] and s["rounds_ok"] == 0]


def render_markdown(report: dict) -> str:
    rows = summary_table_rows(report["models"])
    lines = [
        f"Benchmark: {report['rounds']} rounds after {report['warmup']} warm-up, max_tokens {report['max_tokens']}, "
        f"temperature {report['temperature']}, endpoint {report['endpoint']}, "
        f"load average {report['load_average_1m']} on {report['cpus']} CPUs. Times in ms.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    lines += [f"\nFAILED {line}" for line in failure_lines(report["models"])]
    lines += [
        "",
        "~ tokens estimated with tiktoken (the server reported no usage). chunks/s counts streamed chunks "
        "(one token each on llama.cpp).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assistant.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["small", "large"], help="small, large or any aliases")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0)
    logprob_group = parser.add_mutually_exclusive_group()
    logprob_group.add_argument("--no-logprobs", action="store_true", help="do not request logprobs")
    logprob_group.add_argument("--logprobs-both", action="store_true", help="measure with and without logprobs")
    parser.add_argument("--json", metavar="PATH", help="write the full report as JSON ('-' for stdout)")
    parser.add_argument("--markdown", metavar="PATH", help="write a Markdown table")
    parser.add_argument("--quiet", action="store_true", help="no per-round progress lines")
    parser.add_argument("--embedded", action="store_true",
                        help="start the bundled SmolLM2 model (llama.cpp) when the endpoint does not answer")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        parser.error("--rounds must be at least 1 and --warmup at least 0")

    settings = wiring.settings_for_command()
    if settings is None:
        return 2
    modes = [True, False] if args.logprobs_both else [not args.no_logprobs]
    json_to_stdout = args.json == "-"
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr if json_to_stdout else sys.stdout, flush=True))

    with model_server(settings, args.embedded) as (settings, _):
        results = asyncio.run(run_bench(
            settings, args.models, logprobs_modes=modes, prompt=args.prompt, rounds=args.rounds, warmup=args.warmup,
            temperature=args.temperature, max_tokens=args.max_tokens, progress=progress,
        ))
    report = {
        "endpoint": settings.model_endpoint,
        "prompt": args.prompt,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "load_average_1m": round(os.getloadavg()[0], 2),  # other work on the CPU skews every number
        "cpus": os.cpu_count(),
        "models": [result.summary() for result in results],
        "raw": [
            {"alias": r.alias, "logprobs": r.logprobs, "rounds": [run.to_dict() for run in r.rounds]} for r in results
        ],
    }
    if json_to_stdout:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nLoad average {report['load_average_1m']} on {report['cpus']} CPUs.")
        print(render_table(HEADERS, summary_table_rows(report["models"])))
        for line in failure_lines(report["models"]):
            print(f"\nFAILED {line}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2), encoding="utf-8")
            print(f"\nJSON report: {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(report), encoding="utf-8")
        if not json_to_stdout:
            print(f"Markdown table: {args.markdown}")
    return 0 if any(result.measured for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
