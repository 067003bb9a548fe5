"""The simplest Chainlit chat in front of a model server, as a baseline for ``benchmarks.chat_latency``.

No retrieval, no routing, no database, no login: the question goes to the model with the OpenAI SDK's
``chat.completions.create(stream=True)`` and each content delta is streamed into one message with
``stream_token``, the streaming pattern of Chainlit's documentation. What this app adds between the model's first
token and the browser is what Chainlit itself costs on the machine; the benchmark subtracts it from the full app's.

Run by the benchmark with ``chainlit run``; it reads BARE_MODEL_ENDPOINT, BARE_MODEL, BARE_MAX_TOKENS and appends
one JSON line per answer to BARE_TTFT_LOG: the model's time to first token, timed as the app's client times it
(from just before the request to the first content delta).
"""

import json
import os
import time

import chainlit as cl
from openai import AsyncOpenAI

client = AsyncOpenAI(base_url=os.environ["BARE_MODEL_ENDPOINT"], api_key="not-needed")


@cl.on_message
async def on_message(message: cl.Message) -> None:
    answer = cl.Message(content="")
    started = time.perf_counter()
    ttft_ms = None
    stream = await client.chat.completions.create(
        model=os.environ["BARE_MODEL"], messages=[{"role": "user", "content": message.content}],
        max_tokens=int(os.environ.get("BARE_MAX_TOKENS", "96")), temperature=0, stream=True,
    )
    async for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            if ttft_ms is None:
                ttft_ms = (time.perf_counter() - started) * 1000
            await answer.stream_token(delta)
    answer.content += f"\n\n*Answered by `{os.environ['BARE_MODEL']}`*"
    await answer.send()
    with open(os.environ["BARE_TTFT_LOG"], "a") as log:
        log.write(json.dumps({"question": message.content, "ttft_ms": ttft_ms}) + "\n")
