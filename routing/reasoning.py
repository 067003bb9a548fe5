"""Separate a model's thinking from its answer when both arrive inline in ``content``.

Servers that do not parse reasoning themselves send it in the text:

* Harmony (gpt-oss): ``<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…``
  (a reply may also open with ``<|start|>assistant``); every channel but ``final`` is thinking.
* Harmony with the markers stripped: ``analysis…assistantfinal…``.
* ``<think>…</think>`` (qwen- and deepseek-style models).
* ``…</think>`` without its opening: chat templates (DeepSeek-R1 and its distills, some Qwen3 ones) put
  ``<think>`` at the end of the prompt, so the reply starts inside the thinking and only its close shows.

:class:`InlineReasoningSplitter` takes the content deltas as they arrive and returns ``(kind, text)``
parts, kind ``"reasoning"`` or ``"answer"``. A marker can be cut anywhere between two deltas, so text
that could be the start of a marker is held back until the next delta (or :meth:`finish`) decides.
The dialect is chosen from the opening of the content; a reply that opens with none of the markers is
answer text, passed through as soon as it cannot be a marker's start. If such a reply then closes a think block
it never opened, what was passed through as answer was thinking: the splitter says so with a ``"was_thinking"``
part (its text: all of that thinking) and goes on with the answer after the close.
"""

from __future__ import annotations

import re

REASONING = "reasoning"
ANSWER = "answer"
# The answer text passed through so far was thinking (an unopened </think> came); the part's text is all of that
# thinking: what was passed through as answer and what followed it up to the close.
WAS_THINKING = "was_thinking"

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
HARMONY_MARKERS = ("<|start|>", "<|channel|>", "<|message|>", "<|end|>", "<|return|>", "<|call|>", "<|constrain|>")
STRIPPED_ANALYSIS, STRIPPED_FINAL = "analysis", "assistantfinal"

# How a reply opens in each inline dialect.
_OPENINGS = {
    THINK_OPEN: "think",
    "<|channel|>": "harmony",
    "<|start|>": "harmony",
    STRIPPED_ANALYSIS: "stripped",
}
_HARMONY_MARKER = re.compile("|".join(re.escape(m) for m in HARMONY_MARKERS))


def _held_tail(text: str, markers) -> int:
    """Length of the longest end of ``text`` that is a proper start of one of ``markers``."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


class InlineReasoningSplitter:
    """Feed content deltas in order; get back reasoning and answer parts (see the module docstring)."""

    def __init__(self) -> None:
        self.dialect: str | None = None  # None until decided; "plain", "think", "harmony" or "stripped"
        self._pending = ""  # received but not yet classified
        self._in_reasoning = False  # think / stripped: inside the thinking part
        self._harmony_state = "header"  # "header" (role and channel names) or "body"
        self._harmony_header = ""
        self._harmony_channel_named = False
        self._harmony_kind = REASONING
        self._answer_started = False
        self._plain_text: str | None = ""  # plain dialect: the answer so far; None once an unopened </think> came

    @property
    def in_reasoning(self) -> bool:
        """True while the text being received is thinking (an unfinished think block counts)."""
        if self.dialect == "harmony":
            return self._harmony_state == "header" or self._harmony_kind == REASONING
        return self._in_reasoning

    def feed(self, delta: str) -> list[tuple[str, str]]:
        self._pending += delta
        if self.dialect is None and not self._decide():
            return []
        return self._trim(self._drain(final=False))

    def finish(self) -> list[tuple[str, str]]:
        """The end of the content: whatever was held back is classified as it stands."""
        if self.dialect is None:
            self.dialect = "plain"
        return self._trim(self._drain(final=True))

    def _trim(self, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """After thinking, the answer starts at its first visible character (not at the blank lines)."""
        if self._answer_started or self.dialect == "plain":
            return parts
        trimmed = []
        for kind, text in parts:
            if kind == ANSWER and not self._answer_started:
                text = text.lstrip()
                self._answer_started = bool(text)
            if text:
                trimmed.append((kind, text))
        return trimmed

    # ------------------------------------------------------------------------------- dialect
    def _decide(self) -> bool:
        opening = self._pending.lstrip()
        if not opening:
            return False
        for marker, dialect in _OPENINGS.items():
            if opening.startswith(marker):
                if dialect == "stripped":
                    rest = opening[len(marker):]
                    if not rest:
                        return False  # "analysis" and nothing after it yet: wait
                    if not (rest[0].isupper() or rest[0] == "\n"):
                        continue  # "analysis shows…" is prose
                self.dialect = dialect
                # The harmony parser reads its own markers; the others drop their opening.
                self._pending = opening if dialect == "harmony" else opening[len(marker):]
                self._in_reasoning = dialect in ("think", "stripped")
                return True
            if marker.startswith(opening):
                return False  # could still become this opening: wait for more
        self.dialect = "plain"
        return True

    # ------------------------------------------------------------------------------- parsing
    def _drain(self, final: bool) -> list[tuple[str, str]]:
        if self.dialect == "plain":
            return self._drain_plain(final)
        if self.dialect == "harmony":
            return self._drain_harmony(final)
        close = THINK_CLOSE if self.dialect == "think" else STRIPPED_FINAL
        parts: list[tuple[str, str]] = []
        if self._in_reasoning:
            at = self._pending.find(close)
            if at >= 0:
                parts.append((REASONING, self._pending[:at]))
                self._pending = self._pending[at + len(close):]
                self._in_reasoning = False
            else:
                keep = 0 if final else _held_tail(self._pending, (close,))
                cut = len(self._pending) - keep
                parts.append((REASONING, self._pending[:cut]))
                self._pending = self._pending[cut:]
        if not self._in_reasoning:
            parts.append((ANSWER, self._pending))
            self._pending = ""
        return [(kind, text) for kind, text in parts if text]

    def _drain_plain(self, final: bool) -> list[tuple[str, str]]:
        if self._plain_text is not None:
            start = 0
            while (at := self._pending.find(THINK_CLOSE, start)) >= 0:
                thinking = self._plain_text + self._pending[:at]
                if THINK_OPEN in thinking:  # opened in the text itself (an answer about the tags): not thinking
                    self._plain_text = None
                    break
                # On a line of its own, as these templates write it; "`</think>`" in a sentence is answer text.
                if thinking.endswith("\n") or not thinking.strip():
                    self._pending = self._pending[at + len(THINK_CLOSE):]
                    self._plain_text = None
                    self.dialect, self._in_reasoning = "think", False  # the rest is answer, trimmed of blank lines
                    return ([(WAS_THINKING, thinking)] if thinking.strip() else []) + self._drain(final)
                start = at + 1
        keep = 0 if final or self._plain_text is None else _held_tail(self._pending, (THINK_CLOSE,))
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        if self._plain_text is not None:
            self._plain_text += text
        return [(ANSWER, text)] if text else []

    def _drain_harmony(self, final: bool) -> list[tuple[str, str]]:
        parts: list[tuple[str, str]] = []
        while self._pending:
            match = _HARMONY_MARKER.search(self._pending)
            if match is None:
                keep = 0 if final else _held_tail(self._pending, HARMONY_MARKERS)
                cut = len(self._pending) - keep
                self._harmony_text(self._pending[:cut], parts)
                self._pending = self._pending[cut:]
                break
            self._harmony_text(self._pending[: match.start()], parts)
            self._pending = self._pending[match.end():]
            self._harmony_marker(match.group(0))
        return [(kind, text) for kind, text in parts if text]

    def _harmony_text(self, text: str, parts: list) -> None:
        if not text:
            return
        if self._harmony_state == "header":
            self._harmony_header += text
        else:
            parts.append((self._harmony_kind, text))

    def _harmony_marker(self, marker: str) -> None:
        if marker == "<|message|>":
            # The header holds the role and the channel: "assistant<|channel|>final" -> "final". A message
            # without a channel is plain assistant text.
            channel = self._harmony_header.strip().split()[0] if self._harmony_header.strip() else ""
            final = channel == "final" or not self._harmony_channel_named
            self._harmony_kind = ANSWER if final else REASONING
            self._harmony_state = "body"
        elif marker in ("<|start|>", "<|end|>", "<|return|>", "<|call|>"):
            self._harmony_state, self._harmony_header = "header", ""
            self._harmony_channel_named = False
        elif marker == "<|channel|>":
            self._harmony_header = ""  # what came before was the role
            self._harmony_channel_named = True
        # <|constrain|> belongs to the header; its text is ignored with the rest of the header.
