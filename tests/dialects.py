"""How each real server streams a reasoning model, as scripts for the fake OpenAI-compatible server.

Shapes from platform-facts ("Real model servers"): the field the thinking arrives in, the model ids
each server lists, whether logprobs come back as null, and whether the usage chunk carries
``completion_tokens_details.reasoning_tokens``. Inline dialects cut their markers across chunks on
purpose, as a tokenizer does.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from tests.fake_openai_server import Script

THOUGHT = ["The user asks", " about vacation.", " Source [1]", " says 25 days."]
ANSWER = ["Every employee", " gets 25 days", " of paid vacation", " per year [1]."]
THOUGHT_TEXT = "".join(THOUGHT)
ANSWER_TEXT = "".join(ANSWER)


@dataclass(frozen=True)
class Dialect:
    name: str
    small_id: str
    large_id: str
    large: Script  # the reasoning model's answer
    kind: str  # "field" or "inline"
    notes: str = ""
    served: list[str] = field(default_factory=list)

    def models(self) -> list[str]:
        return self.served or [self.small_id, self.large_id]


def _field(reasoning_field: str, **kw) -> Script:
    return Script(tokens=list(ANSWER), reasoning=list(THOUGHT), reasoning_field=reasoning_field, **kw)


def _inline(tokens: list[str], **kw) -> Script:
    return Script(tokens=tokens, **kw)


HARMONY_TOKENS = (
    ["<|chan", "nel|>analysis<|mess", "age|>"] + THOUGHT
    + ["<|end|><|start|>assis", "tant<|channel|>fin", "al<|message|>"] + ANSWER + ["<|return|>"]
)
HARMONY_STRIPPED_TOKENS = ["analysis", "The user asks"] + THOUGHT[1:] + ["assistant", "final"] + ANSWER
THINK_TOKENS = ["<th", "ink>\n"] + THOUGHT + ["\n</th", "ink>\n\n"] + ANSWER
# DeepSeek-R1-style chat templates end the prompt with "<think>\n": a server that does not parse reasoning
# (llama.cpp with --reasoning-format none, vLLM without a reasoning parser) streams only the close.
UNOPENED_THINK_TOKENS = THOUGHT + ["\n</th", "ink>\n\n"] + ANSWER

DIALECTS = [
    Dialect(
        "Foundry Local (delta.reasoning_content)",
        "Phi-4-mini-instruct-generic-cpu:5", "gpt-oss-20b-generic-cpu:1",
        _field("reasoning_content", logprobs_null=True, reasoning_tokens_in_usage=True),
        "field",
        "role-only first chunk, logprobs null, usage with reasoning_tokens",
        served=["Phi-4-mini-instruct-cuda-gpu:5", "Phi-4-mini-instruct-generic-cpu:5",
                "gpt-oss-20b-cuda-gpu:1", "gpt-oss-20b-generic-cpu:1"],
    ),
    Dialect(
        "llama.cpp llama-server (delta.reasoning_content)",
        "phi-4-mini", "gpt-oss-20b",
        _field("reasoning_content"),
        "field",
        "role-only first chunk, logprobs, usage without reasoning_tokens",
        served=["phi-4-mini", "gpt-oss-20b"],
    ),
    Dialect(
        "Ollama (delta.reasoning)",
        "phi4-mini:latest", "gpt-oss:20b",
        _field("reasoning", delta_extra={"role": "assistant", "content": ""}, role_chunk_first=False),
        "field",
        "role and empty content in every delta, no logprobs, usage without reasoning_tokens",
    ),
    Dialect(
        "vLLM (delta.reasoning)",
        "microsoft/Phi-4-mini-instruct", "openai/gpt-oss-20b",
        _field("reasoning"),
        "field",
        "usage without reasoning_tokens",
    ),
    Dialect(
        "vLLM before Nov 2025 (delta.reasoning_content)",
        "microsoft/Phi-4-mini-instruct", "openai/gpt-oss-20b",
        _field("reasoning_content", send_usage=False),
        "field",
        "no usage chunk: every count estimated",
    ),
    Dialect(
        "Harmony inline (older Foundry Local)",
        "Phi-4-mini-instruct-generic-cpu", "gpt-oss-20b-generic-cpu",
        _inline(HARMONY_TOKENS, logprobs_null=True),
        "inline",
        "markers cut across chunks, logprobs null, ids without :N",
    ),
    Dialect(
        "Harmony, markers stripped",
        "phi-4-mini", "gpt-oss-20b",
        _inline(HARMONY_STRIPPED_TOKENS, logprobs_null=True),
        "inline",
        "analysis…assistantfinal…",
    ),
    Dialect(
        "<think>…</think>",
        "phi-4-mini", "qwen3-8b",
        _inline(THINK_TOKENS),
        "inline",
        "tags cut across chunks",
    ),
]
DIALECT_IDS = [d.name for d in DIALECTS]


def by_name(fragment: str) -> Dialect:
    return next(d for d in DIALECTS if fragment in d.name)


def truncated(script: Script) -> Script:
    """The same model out of budget while thinking: no answer, finish_reason "length"."""
    if script.reasoning:
        return replace(script, tokens=[], finish_reason="length")
    cut = next(i for i, t in enumerate(script.tokens) if t in ANSWER) - 1
    return replace(script, tokens=script.tokens[:cut], finish_reason="length")
