"""The page middleware: off-site links removed from HTML navigations, everything else untouched."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route

from assistant.page import OfflinePage, without_external_links

PAGE = b"""<head><link rel="preconnect" href="https://fonts.googleapis.com" />
<link
  href="https://fonts.googleapis.com/css2?family=Inter&display=swap"
  rel="stylesheet"
/>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/katex@0.16.22/dist/katex.min.css"/>
<link rel="stylesheet" crossorigin href="/assets/index.css"></head>"""


def test_off_site_links_are_removed_and_own_links_kept():
    out = without_external_links(PAGE)
    assert b"https://" not in out
    assert b'href="/assets/index.css"' in out


async def test_middleware_rewrites_only_html_navigations():
    app = Starlette(routes=[
        Route("/", lambda request: HTMLResponse(PAGE)),
        Route("/data", lambda request: PlainTextResponse('<link href="https://x.example/y">')),
    ])
    app.add_middleware(OfflinePage)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        page = await client.get("/", headers={"Accept": "text/html", "Accept-Encoding": "gzip"})
        assert page.status_code == 200 and b"https://" not in page.content
        assert int(page.headers["content-length"]) == len(page.content)
        # Not a navigation (an API call): the body passes through as it is.
        api = await client.get("/", headers={"Accept": "application/json"})
        assert b"https://fonts.googleapis.com" in api.content
        # A navigation to something that is not HTML: untouched too.
        text = await client.get("/data", headers={"Accept": "text/html"})
        assert text.text == '<link href="https://x.example/y">'
