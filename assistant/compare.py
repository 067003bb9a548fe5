"""Send one prompt to the small and the large model through the same client and compare them.

    python -m assistant.compare "What is BM25?" [--file prompt.txt] [--json] [--max-tokens N] [--temperature T]

Prints both answers, then one row per model: served id, time to first token, generation and total time,
prompt/completion tokens ("~" when estimated because the server reported no usage), decode rate and the
simulated cloud cost. The models run one after the other so that neither slows the other down. A model
that cannot be reached or does not resolve is reported in its row; the exit code is non-zero only when
every model failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from assistant.embedded import model_server
from assistant import wiring
from assistant.events import TurnFinished
from assistant.pipeline import Pipeline
from assistant.record import TurnRecord
from routing.metrics import Price, prices_from_settings
from routing.options import RoutingOptions

ROLES = ("small", "large")


@dataclass
class ModelRun:
    """One prompt sent to one model: the answer and its measurements, or the error that stopped it."""

    role: str  # "small", "large", or the alias itself when it is neither
    alias: str
    model: str | None = None  # served id, once resolved
    text: str = ""
    error: str | None = None
    ttft_ms: float | None = None
    generation_ms: float | None = None
    total_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_estimated: bool = False
    decode_tokens_per_s: float | None = None
    content_chunks: int = 0
    decode_chunks_per_s: float | None = None
    cost_usd: float | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def role_aliases(settings, names: list[str]) -> list[tuple[str, str]]:
    """``small``/``large`` become the configured aliases; anything else is an alias as given."""
    configured = {"small": settings.small_model, "large": settings.large_model}
    return [(name, configured[name]) if name in configured else (name, name) for name in names]


def price_for(settings, role: str, alias: str) -> Price | None:
    prices = prices_from_settings(settings)
    if role in prices:
        return prices[role]
    for known_role, known_alias in (("small", settings.small_model), ("large", settings.large_model)):
        if alias == known_alias:
            return prices[known_role]
    return None


def run_from_record(role: str, record: TurnRecord, price: Price | None) -> ModelRun:
    """A model run as the turn's record gives it: its text, the answering leg's figures, its error if any."""
    summary = record.summary
    response = record.responses[0] if record.responses else None
    failed = [f"{n.kind}: {n.message}" if n.kind else n.message for n in record.notices if n.level == "error"]
    return ModelRun(
        role=role,
        alias=response.alias if response else role,
        model=response.model if response and (response.text or not failed) else (response.model if response else None),
        text=record.text,
        error=failed[0] if failed else None,
        ttft_ms=summary.model_ttft_ms,
        generation_ms=summary.generation_ms,
        total_ms=record.metrics.legs[0].total_ms if record.metrics.legs else None,
        prompt_tokens=summary.prompt_tokens if record.metrics.legs else None,
        completion_tokens=summary.completion_tokens if record.metrics.legs else None,
        tokens_estimated=summary.tokens_estimated,
        decode_tokens_per_s=summary.decode_tokens_per_s,
        content_chunks=response.content_chunks if response else 0,
        decode_chunks_per_s=response.decode_chunks_per_s if response else None,
        cost_usd=summary.cost_usd if price is not None else None,
    )


async def run_one(
    pipeline: Pipeline,
    role: str,
    alias: str,
    messages: list[dict],
    *,
    price: Price | None,
    temperature: float,
    max_tokens: int,
    logprobs: bool = True,
) -> ModelRun:
    """One streaming call through the pipeline; every failure becomes the run's ``error`` (with whatever
    arrived before it)."""
    options = RoutingOptions.from_settings(pipeline.settings).with_overrides(
        {"temperature": temperature, "max_tokens": max_tokens, "large_max_tokens": max_tokens}
    )
    record = None
    async for event in pipeline.run_messages(messages, role=role, alias=alias, options=options, price=price,
                                              logprobs=logprobs):
        if isinstance(event, TurnFinished):
            record = event.record
    return run_from_record(role, record, price)


async def compare(settings, prompt: str, *, temperature: float, max_tokens: int, logprobs: bool = True) -> list[ModelRun]:
    pipeline = wiring.build(settings, with_knowledge=False).pipeline
    messages = [{"role": "user", "content": prompt}]
    runs = []
    try:
        for role, alias in role_aliases(settings, list(ROLES)):
            runs.append(
                await run_one(
                    pipeline, role, alias, messages, price=price_for(settings, role, alias),
                    temperature=temperature, max_tokens=max_tokens, logprobs=logprobs,
                )
            )
    finally:
        await pipeline.client.close()
    return runs


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def fmt_tokens(value: int | None, estimated: bool) -> str:
    return "-" if value is None else ("~" if estimated else "") + str(value)


def fmt_rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def fmt_cost(value: float | None) -> str:
    return "-" if value is None else f"${value:.6f}"


def render_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(headers[i]), *(len(row[i]) for row in rows)) if rows else len(headers[i]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


TABLE_HEADERS = [
    "role", "model", "ttft ms", "gen ms", "total ms", "prompt tok", "compl tok", "tok/s", "chunks/s", "sim. cost"
]


def table_rows(runs: list[ModelRun]) -> list[list[str]]:
    rows = []
    for run in runs:
        if run.ok:
            rows.append([
                run.role, run.model or run.alias, fmt_ms(run.ttft_ms), fmt_ms(run.generation_ms), fmt_ms(run.total_ms),
                fmt_tokens(run.prompt_tokens, run.tokens_estimated),
                fmt_tokens(run.completion_tokens, run.tokens_estimated),
                fmt_rate(run.decode_tokens_per_s), fmt_rate(run.decode_chunks_per_s), fmt_cost(run.cost_usd),
            ])
        else:
            rows.append([run.role, run.model or run.alias, "FAILED"] + [""] * (len(TABLE_HEADERS) - 3))
    return rows


def render_text(runs: list[ModelRun]) -> str:
    parts = []
    for run in runs:
        title = f"=== {run.role}: {run.model or run.alias}" + ("" if run.model in (None, run.alias) else f" (alias {run.alias})")
        parts.append(title + " ===")
        if run.ok:
            parts.append(run.text.strip() or "(empty answer)")
        else:
            parts.append(f"FAILED: {run.error}")
            if run.text:
                parts.append(f"(partial answer) {run.text.strip()}")
        parts.append("")
    parts.append(render_table(TABLE_HEADERS, table_rows(runs)))
    if any(run.ok and run.tokens_estimated for run in runs):
        parts.append("~ estimated with tiktoken (cl100k): the server reported no token usage.")
    parts.append(
        "tok/s: completion tokens after the first, over first-to-last token time; chunks/s: the same with streamed "
        "chunks (one token each on llama.cpp). Cost: simulated cloud prices."
    )
    return "\n".join(parts)


def read_prompt(args) -> str:
    if args.file:
        return Path(args.file).read_text(encoding="utf-8").strip()
    return (args.prompt or "").strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assistant.compare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", help="the prompt (or use --file)")
    parser.add_argument("--file", help="read the prompt from this file")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")
    parser.add_argument("--max-tokens", type=int, default=None, help="largest answer (default: ASSISTANT_MAX_TOKENS)")
    parser.add_argument("--temperature", type=float, default=None, help="default: ASSISTANT_TEMPERATURE")
    parser.add_argument("--no-logprobs", action="store_true", help="do not request token logprobs")
    parser.add_argument("--embedded", action="store_true",
                        help="start the bundled SmolLM2 model (llama.cpp) when the endpoint does not answer")
    args = parser.parse_args(argv)

    settings = wiring.settings_for_command()
    if settings is None:
        return 2
    prompt = read_prompt(args)
    if not prompt:
        parser.error("give a prompt or --file")
    temperature = settings.temperature if args.temperature is None else args.temperature
    max_tokens = settings.max_tokens if args.max_tokens is None else args.max_tokens

    with model_server(settings, args.embedded) as (settings, _):
        runs = asyncio.run(
            compare(settings, prompt, temperature=temperature, max_tokens=max_tokens, logprobs=not args.no_logprobs)
        )
    if args.json:
        print(json.dumps({
            "endpoint": settings.model_endpoint,
            "prompt": prompt,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "logprobs": not args.no_logprobs,
            "results": [run.to_dict() for run in runs],
        }, indent=2))
    else:
        print(f"Endpoint: {settings.model_endpoint}\n")
        print(render_text(runs))
    return 0 if any(run.ok for run in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
