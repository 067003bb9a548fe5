"""Chainlit's page, served the way a local, offline app should serve it (an ASGI middleware).

Chainlit's ``index.html`` links a Google Fonts stylesheet and a KaTeX stylesheet from a CDN. Offline they
fail on every load (console errors, and a request to a third party each time the page opens), so they
are left out: the UI falls back to the system font, and LaTeX is off in the config.

In single-user mode (header auth) the page also carries the session cookie. Without it the page's first
``GET /user`` answers 401 before the frontend signs in through ``POST /auth/header``; with it, every load
is signed in from the start. The cookie comes from the same callback and helpers as ``/auth/header``.
"""

from __future__ import annotations

import re

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response

EXTERNAL_LINK = re.compile(rb"<link\b[^>]*\bhref=\"https?://[^\"]*\"[^>]*>", re.IGNORECASE | re.DOTALL)


def without_external_links(html: bytes) -> bytes:
    """The page without ``<link>`` tags that point off-site (stylesheets, preconnects)."""
    return EXTERNAL_LINK.sub(b"", html)


async def sign_in_cookies(request: Request) -> list[bytes]:
    """``Set-Cookie`` values signing the visitor in, when header auth is on, admits them and they have no session."""
    from chainlit.auth import create_jwt, get_token_from_cookies, set_auth_cookie
    from chainlit.config import config
    from chainlit.data import get_data_layer

    callback = config.code.header_auth_callback
    if callback is None or get_token_from_cookies(request.cookies):
        return []
    user = await callback(request.headers)
    if user is None:
        return []
    if data_layer := get_data_layer():
        await data_layer.create_user(user)
    carrier = Response()
    set_auth_cookie(request, carrier, create_jwt(user))
    return [value for name, value in carrier.raw_headers if name == b"set-cookie"]


def _is_page_navigation(scope) -> bool:
    if scope["type"] != "http" or scope["method"] != "GET":
        return False
    accept = dict(scope["headers"]).get(b"accept", b"")
    return b"text/html" in accept


class OfflinePage:
    """Rewrites HTML answers to page navigations; everything else passes through untouched."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if not _is_page_navigation(scope):
            await self.app(scope, receive, send)
            return
        # The page is small: ask for it uncompressed so it can be rewritten.
        scope = dict(scope, headers=[(k, v) for k, v in scope["headers"] if k != b"accept-encoding"])
        start: dict = {}
        body: list[bytes] = []

        async def rewrite(message):
            if message["type"] == "http.response.start":
                start.update(message)
                if not MutableHeaders(raw=start["headers"]).get("content-type", "").startswith("text/html"):
                    start["passthrough"] = True
                    await send(message)
                return
            if start.get("passthrough") or message["type"] != "http.response.body":
                await send(message)
                return
            body.append(message.get("body", b""))
            if message.get("more_body"):
                return
            data = without_external_links(b"".join(body))
            headers = MutableHeaders(raw=list(start["headers"]))
            headers["content-length"] = str(len(data))
            for cookie in await sign_in_cookies(Request(scope)):
                headers.append("set-cookie", cookie.decode("latin-1"))
            await send({"type": "http.response.start", "status": start["status"], "headers": headers.raw})
            await send({"type": "http.response.body", "body": data})

        await self.app(scope, receive, rewrite)
