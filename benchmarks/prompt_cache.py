"""Does a follow-up question start answering sooner? Time to first token of turn 1 vs turn 3, prompt cache on and off.

    python -m benchmarks.prompt_cache [--conversations 2]

For each setting (the embedded server with its prompt cache, and without) this starts the embedded
llama.cpp model and plays several three-turn conversations against it, interleaved turn by turn as
chats sharing one server are (A1 B1 A2 B2 A3 B3). Each prompt is the app's own: the knowledge base's
top sources (searched with the follow-up query) and the earlier turns, from Pipeline.prepare. Without a cache,
llama.cpp reuses only what the previous request (another conversation's) shares with this one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelServer
from assistant.pipeline import Pipeline
from assistant.settings import load_settings
from rag.knowledge import KnowledgeBase
from rag.tokens import count_tokens
from routing.client import ModelClient

CONVERSATIONS = [
    ["How does the router decide to escalate?", "What happens to the draft?", "Which threshold can I change?"],
    ["Which BM25 backends are available?", "Which one is faster?", "How do I switch to it?"],
    ["How are uploads kept private?", "Can I share one with everyone?", "How do I remove an upload?"],
    ["What does the metrics bar show?", "How is cost simulated?", "Where are prices set?"],
]


async def play(base_url: str, model: str, knowledge: KnowledgeBase, conversations: int, max_tokens: int) -> dict:
    client = ModelClient(base_url, first_token_timeout_s=600)
    # The app's own stages 1 and 2 (retrieval with the follow-up query, score floor, prompt): Pipeline.prepare.
    settings = load_settings(top_k=EMBEDDED_TOP_K, max_tokens=max_tokens, context_window=2048)
    pipeline = Pipeline(settings, client, knowledge)
    histories: list[list[dict]] = [[] for _ in range(conversations)]
    previous: list[str] = ["" for _ in range(conversations)]
    ttft: dict[int, list[float]] = {1: [], 2: [], 3: []}
    prompt_tokens: dict[int, list[int]] = {1: [], 2: [], 3: []}
    shared_tokens: dict[int, list[int]] = {1: [], 2: [], 3: []}
    try:
        for turn in (1, 2, 3):
            for number in range(conversations):
                question = CONVERSATIONS[number % len(CONVERSATIONS)][turn - 1]
                prepared = await pipeline.prepare(question, history=histories[number])
                response = await client.complete(model, prepared.messages, temperature=0, max_tokens=max_tokens,
                                                 logprobs=False)
                ttft[turn].append(response.timings.ttft_s)
                prompt_tokens[turn].append(prepared.prompt.prompt_tokens)
                flat = "".join(f"{m['role']}\n{m['content']}\n" for m in prepared.messages)
                shared_tokens[turn].append(count_tokens(os.path.commonprefix([flat, previous[number]])))
                previous[number] = flat
                histories[number] += [{"role": "user", "content": question}, {"role": "assistant", "content": response.text}]
    finally:
        await client.close()
    return {"ttft": ttft, "prompt_tokens": prompt_tokens, "shared_tokens": shared_tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args(argv)
    settings = load_settings()
    knowledge = KnowledgeBase(settings.knowledge_dir, Path(tempfile.mkdtemp(prefix="prompt-cache-")) / "index")
    knowledge.refresh()
    results = {}
    for label, cache_mb in (("prompt cache on", settings.embedded_prompt_cache_mb or 512), ("prompt cache off", 0)):
        server = EmbeddedModelServer.from_settings(settings)
        server.prompt_cache_mb = cache_mb
        with server:
            print(f"{label}: {' '.join(server.command()[3:])}", flush=True)
            results[label] = asyncio.run(play(server.base_url, server.small_name, knowledge, args.conversations, args.max_tokens))
    print(f"\n{args.conversations} conversations interleaved turn by turn; time to first token (s), median over them; "
          f"prompt tokens (tiktoken estimate)")
    print(f"{'':18} {'turn 1':>8} {'turn 2':>8} {'turn 3':>8} {'turn 3 / turn 1':>16} {'prompt tok t1 / t3':>19} "
          f"{'t3 shares with t2':>18}")
    for label, result in results.items():
        med = {turn: statistics.median(values) for turn, values in result["ttft"].items()}
        tokens = {turn: statistics.median(values) for turn, values in result["prompt_tokens"].items()}
        shared = statistics.median(result["shared_tokens"][3])
        print(f"{label:18} {med[1]:>8.2f} {med[2]:>8.2f} {med[3]:>8.2f} {med[3] / med[1]:>16.2f} "
              f"{tokens[1]:>9.0f} / {tokens[3]:<7.0f} {shared:>11.0f} tokens")
    print("'t3 shares with t2': the start of turn 3's prompt that is the same as turn 2's of its conversation "
          "(tiktoken), the most a cache of that conversation can reuse.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
