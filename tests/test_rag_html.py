"""HTML pages into sections: page title, heading paths, anchors, main content only."""

from rag.html import parse_html
from rag.loaders import document_chunks, load_bytes

SPHINX_PAGE = """<!DOCTYPE html><html><head><title>hmac — Keyed-Hashing for Message Authentication &#8212; Python 3.11 documentation</title>
<script>var tracking = "script words";</script><style>.x { color: red }</style></head>
<body>
<div class="related" role="navigation"><ul><li><a href="index.html">index</a></li><li>navigation words</li></ul></div>
<div class="body" role="main">
<section id="module-hmac">
<span id="hmac-keyed"></span><h1><code>hmac</code> — Keyed-Hashing for Message Authentication<a class="headerlink" href="#module-hmac">¶</a></h1>
<p><strong>Source code:</strong> Lib/hmac.py</p><p>This module implements the HMAC algorithm.</p>
<dl class="py function"><dt class="sig" id="hmac.new"><span>hmac.</span><span>new</span>(key, msg=None)<a class="headerlink" href="#hmac.new">¶</a></dt>
<dd><p>Return a new hmac object.</p></dd></dl>
<section id="examples"><h2>Examples<a class="headerlink" href="#examples">¶</a></h2>
<ul><li>first item</li><li>second item</li></ul>
<form><input name="q"><button>Go</button></form>
</section></section></div>
<div class="sphinxsidebar" role="navigation"><h3>Table of Contents</h3><p>sidebar words</p></div>
<div class="footer">footer words</div>
</body></html>"""


def test_title_sections_paths_and_anchors():
    title, sections = parse_html(SPHINX_PAGE)
    assert title == "hmac — Keyed-Hashing for Message Authentication"  # the site suffix is dropped
    assert [(s.heading, s.anchor) for s in sections] == [
        ("hmac — Keyed-Hashing for Message Authentication", "module-hmac"),
        ("hmac.new(key, msg=None)", "hmac.new"),
        ("Examples", "examples"),
    ]
    assert sections[1].path == ("hmac — Keyed-Hashing for Message Authentication", "hmac.new(key, msg=None)")
    assert sections[2].path == ("hmac — Keyed-Hashing for Message Authentication", "Examples")
    assert "This module implements the HMAC algorithm." in sections[0].text
    assert "first item\nsecond item" in sections[2].text  # list items stay apart


def test_only_the_main_content_is_kept():
    text = "\n".join(s.text for s in parse_html(SPHINX_PAGE)[1])
    for left_out in ("script words", "color: red", "navigation words", "sidebar words", "footer words", "¶", "Go"):
        assert left_out not in text


def test_a_page_without_main_keeps_its_body_but_not_its_navigation():
    page = b"<html><body><nav>Menu Home About</nav><h1>Title</h1><p>Body text.</p><aside>Ads</aside></body></html>"
    title, sections = parse_html(page.decode())
    assert title == "Title"
    assert [s.text for s in sections] == ["# Title\n\nBody text."]


def test_chunks_carry_page_title_section_and_anchor_for_citations():
    document = load_bytes(SPHINX_PAGE.encode(), "library/hmac.html", "library/hmac.html")
    chunks = document_chunks(document, "library/hmac.html", chunk_tokens=300, overlap=50)
    new = next(c for c in chunks if c.anchor == "hmac.new")
    assert new.doc_title == "hmac — Keyed-Hashing for Message Authentication"
    assert new.section == "hmac.new(key, msg=None)"
    assert new.citation == "library/hmac.html — hmac — Keyed-Hashing for Message Authentication › hmac.new(key, msg=None)"
    assert new.location == "library/hmac.html"
    assert new.link == "library/hmac.html#hmac.new"


def test_page_title_falls_back_to_the_title_element():
    title, _ = parse_html("<html><head><title> My  page </title></head><body><p>Hello there.</p></body></html>")
    assert title == "My page"


def test_markup_without_text_is_a_load_error():
    import pytest

    from rag.loaders import LoadError

    with pytest.raises(LoadError, match="contains no text"):
        load_bytes(b"<html><body><script>x()</script></body></html>", "empty.html")
