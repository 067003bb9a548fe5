"""Names and excerpts from files are shown without markdown: no remote image or link can come from them."""

from __future__ import annotations

import re

import ui
from rag.types import Chunk, ScoredChunk

IMAGE = "![x](http://evil.example/x.png)"
# Markdown that would load or link something: an inline image or link, a reference use, a definition.
ACTIVE = re.compile(r"(?<!\\)\]\(|(?<!\\)\]\[|^\s*(?:[>*+-]\s*)*(?<!\\)\[[^\]\n]*\]:", re.MULTILINE)


def test_md_text_shows_names_literally_on_one_line():
    shown = ui.md_text(f"{IMAGE}.md")
    assert not ACTIVE.search(shown)
    assert shown.replace("\\", "") == f"{IMAGE}.md"
    assert ui.md_text("a|b\n# c") == "a\\|b \\# c"


def test_md_defused_keeps_formatting_but_no_images_or_links():
    text = (f"# Title\n\n**bold** and {IMAGE} and [site](http://evil.example) and [ref][r] and [short]\n\n"
            "[r]: http://evil.example/r.png\n> - [short]: http://evil.example/s.png\n")
    defused = ui.md_defused(text)
    assert not ACTIVE.search(defused), defused
    assert defused.startswith("# Title\n\n**bold**")


def test_source_labels_carry_no_markdown():
    chunk = Chunk(id="c#0", text="x", source=f"{IMAGE}.md", title="t", position=0, page=2)
    label = ui.source_label(1, ScoredChunk(chunk, 2.0))
    # The browser wraps each element name found in the message in [name](...): the name must hold no brackets.
    assert label.startswith("[1] ") and "[" not in label[4:] and "]" not in label[4:]
    assert "evil.example/x.png" in label and label.endswith(", page 2")
