"""How many CPU threads should the embedded model use, for reading the prompt and for decoding?

    python -m benchmarks.embedded_threads [--repeats 3] [--configs 1/1,1/2,2/2]

For each configuration (decode threads / prompt-reading threads) this starts the embedded llama.cpp
server (prompt cache off) and sends the app's own grounded prompt (about 800 tokens: the system
prompt, three knowledge-base sources, a question) a few times, each starting with a different word
so nothing is reused. Time to first token measures prompt reading; chunks per second after the first
measure decoding (llama.cpp streams one token a chunk). The best configuration gives the shortest time
for a typical answer: TTFT plus 100 tokens at its decode rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelServer
from assistant.settings import load_settings
from rag.knowledge import KnowledgeBase
from rag.prompt import build_grounded_messages
from routing.client import ModelClient

TYPICAL_ANSWER_TOKENS = 100
QUESTIONS = ["How does the router decide to escalate?", "Which BM25 backends are available?",
             "How are uploads kept private?", "What does the metrics bar show?"]


async def measure(base_url: str, model: str, prompts: list[list[dict]], max_tokens: int) -> tuple[list[float], list[float]]:
    client = ModelClient(base_url, first_token_timeout_s=600)
    ttfts, rates = [], []
    try:
        for messages in prompts:
            response = await client.complete(model, messages, temperature=0, max_tokens=max_tokens, logprobs=False)
            ttfts.append(response.timings.ttft_s)
            if response.decode_chunks_per_s:
                rates.append(response.decode_chunks_per_s)
    finally:
        await client.close()
    return ttfts, rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--configs", default="1/1,1/2,2/2", help="decode/prompt threads, comma separated")
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args(argv)
    settings = load_settings()
    knowledge = KnowledgeBase(settings.knowledge_dir, Path(tempfile.mkdtemp(prefix="threads-")) / "index")
    knowledge.refresh()
    prompts = []
    for n in range(args.repeats):
        question = QUESTIONS[n % len(QUESTIONS)]
        messages = build_grounded_messages(question, knowledge.search(question, EMBEDDED_TOP_K), max_answer_tokens=args.max_tokens).messages
        messages[0] = {**messages[0], "content": f"Request {n}. " + messages[0]["content"]}  # no shared prefix
        prompts.append(messages)
    print(f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f} at start (other work on the machine skews these)")
    rows = []
    for config in args.configs.split(","):
        decode, batch = (int(part) for part in config.split("/"))
        server = EmbeddedModelServer.from_settings(settings)
        server.threads, server.batch_threads, server.prompt_cache_mb = decode, batch, 0
        with server:
            asyncio.run(measure(server.base_url, server.small_name, [[{"role": "user", "content": "Hi"}]], 4))  # warm-up
            ttfts, rates = asyncio.run(measure(server.base_url, server.small_name, prompts, args.max_tokens))
        rows.append((decode, batch, statistics.median(ttfts), statistics.median(rates) if rates else 0.0))
        print(f"threads {decode} decode / {batch} prompt: TTFT median {rows[-1][2]:.2f} s, decode {rows[-1][3]:.1f} tok/s",
              flush=True)
    def answer_time(row) -> float:
        return row[2] + (TYPICAL_ANSWER_TOKENS / row[3] if row[3] else float("inf"))

    choice = min(rows, key=answer_time)
    print(f"\n{'decode threads':>14} {'prompt threads':>15} {'TTFT (s)':>9} {'decode tok/s':>13} {'answer (s)':>11}")
    for row in rows:
        decode, batch, ttft, rate = row
        mark = "  <- shortest typical answer" if row is choice else ""
        print(f"{decode:>14} {batch:>15} {ttft:>9.2f} {rate:>13.1f} {answer_time(row):>11.1f}{mark}")
    print(f"app default: ASSISTANT_EMBEDDED_THREADS={settings.embedded_threads}, "
          f"ASSISTANT_EMBEDDED_BATCH_THREADS={settings.embedded_batch_threads}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
