"""Who may use the web app, and from where. ``install()`` is called once by app.py.

Every HTTP request and socket handshake passes :class:`WebSecurityMiddleware`, outermost:

* **Host**: only names the app serves (loopback names, the address it is bound to, and
  ``ASSISTANT_ALLOWED_HOSTS``); any other name is refused (DNS rebinding).
* **Origin**: a request that carries an ``Origin`` must come from the app's own origin (the origin
  whose host:port is the request's Host) or from ``ASSISTANT_ALLOWED_ORIGINS``. A request without
  one that the browser marks as coming from another site or port (``Sec-Fetch-Site``) is refused,
  except a plain page navigation. The same list drives CORS (no wildcard, credentials only for the
  listed origins) and the socket.io handshake.
* **Login**: with password login on, ``/demo/*`` (the API, and any route added there later; not the
  page and its static files) answers only a logged-in user (the chat's own cookie); ``/storage/*``
  answers only the file's owner, in every mode. Header auth (the local
  single-user mode) is only offered to loopback clients, and start-up refuses a non-loopback bind
  without password login.
* **Throttling**: failed password logins per account and per address (see ``LoginThrottle``).
* **Cookies**: every cookie the app sets is ``SameSite=Strict``; the session lifetime is
  ``ASSISTANT_SESSION_HOURS``.

Stored files are served by :func:`stored_file_response`: as attachments, ``nosniff``, a CSP that
allows nothing, and only to their owner. :class:`GuardedDataLayer` never stores an upload of a type
or size the app refuses.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import math
import mimetypes
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response

from assistant.accounts import Accounts, LoginThrottle
from assistant.storage import safe_key

log = logging.getLogger("assistant.web_security")

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
# With password login on, everything under /demo/ needs the chat's login (a prefix, so routes added
# there later are covered too) except the page and its static files, which hold nothing private.
# /storage/ always needs a login: its route checks the file's owner.
LOGIN_PREFIX = "/demo/"


def needs_login(path: str) -> bool:
    if not path.startswith(LOGIN_PREFIX) or path == "/demo/":
        return False
    return not path.startswith("/demo/static/")


# What users may upload: extension -> the MIME types browsers give such files. The browser's file
# picker and Chainlit's upload endpoint both use ``upload_accept()``, built from this.
UPLOAD_TYPES: dict[str, tuple[str, ...]] = {
    ".md": ("text/markdown", "text/x-markdown", "text/plain"),
    ".markdown": ("text/markdown", "text/x-markdown", "text/plain"),
    ".txt": ("text/plain",),
    ".rst": ("text/x-rst", "text/prs.fallenstein.rst", "text/plain"),
    ".html": ("text/html",),
    ".htm": ("text/html",),
    ".pdf": ("application/pdf",),
    ".docx": ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",),
    ".csv": ("text/csv", "application/csv", "text/plain", "application/vnd.ms-excel"),
    ".json": ("application/json", "text/json", "text/plain"),
}
# Served with their own type; everything else is served as application/octet-stream.
SAFE_SERVED_TYPES = frozenset({
    "text/plain", "text/markdown", "text/csv", "application/json", "application/pdf",
    "image/png", "image/jpeg", "image/gif", "image/webp",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
})
STORED_FILE_CSP = "default-src 'none'; sandbox; frame-ancestors 'self'"

client_address: contextvars.ContextVar[str] = contextvars.ContextVar("client_address", default="")


class StartupRefused(SystemExit):
    """The server must not start this way; the message says what to set."""


# ------------------------------------------------------------------------------------------------
# Policy: which hosts and origins the app serves
# ------------------------------------------------------------------------------------------------


def _split_list(value: str | list | tuple | None) -> list[str]:
    if not value:
        return []
    if isinstance(value, str):
        value = value.replace(";", ",").split(",")
    return [item.strip() for item in value if item and item.strip()]


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


def is_loopback(name: str) -> bool:
    name = (name or "").strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def split_host(host_header: str) -> tuple[str, int | None] | None:
    """``"127.0.0.1:8000"`` -> ``("127.0.0.1", 8000)``; ``"[::1]:80"`` -> ``("::1", 80)``; None if malformed."""
    host_header = (host_header or "").strip().lower()
    if not host_header or any(c in host_header for c in "/\\@ \t?#"):
        return None
    try:
        parts = urlsplit("//" + host_header)
        name, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not name:
        return None
    return name.rstrip("."), port


def normalise_origin(origin: str) -> str | None:
    """``"HTTP://Example.com:80"`` -> ``"http://example.com:80"``; None for ``null`` or a malformed value."""
    origin = (origin or "").strip().lower().rstrip("/")
    try:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path or parts.query:
            return None
        parts.port  # noqa: B018 - raises for a malformed port
    except ValueError:
        return None
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class WebPolicy:
    allowed_hosts: frozenset[str]
    any_ip_host: bool  # bound to a wildcard address: any IP literal is one of ours (no rebinding via an IP)
    extra_origins: frozenset[str]
    password_login: bool
    bound_to_loopback: bool

    @classmethod
    def build(cls, *, bind_host: str, allowed_hosts=(), allowed_origins=(), password_login: bool) -> "WebPolicy":
        bind = (bind_host or "").strip("[]").lower()
        hosts = set(LOOPBACK_NAMES)
        if bind not in WILDCARD_BINDS:
            hosts.add(bind)
        for item in _split_list(allowed_hosts):
            parsed = split_host(item)
            if parsed is None:
                raise StartupRefused(f"ASSISTANT_ALLOWED_HOSTS: {item!r} is not a host name")
            hosts.add(parsed[0])
        origins = set()
        for item in _split_list(allowed_origins):
            origin = normalise_origin(item)
            if origin is None:
                raise StartupRefused(
                    f"ASSISTANT_ALLOWED_ORIGINS: {item!r} is not an origin like https://chat.example.com"
                )
            origins.add(origin)
        return cls(frozenset(hosts), bind in WILDCARD_BINDS, frozenset(origins), password_login,
                   is_loopback(bind) if bind not in WILDCARD_BINDS else False)

    def host_allowed(self, host_header: str) -> bool:
        parsed = split_host(host_header)
        if parsed is None:
            return False
        name = parsed[0]
        return name in self.allowed_hosts or (self.any_ip_host and is_ip(name))

    def origin_allowed(self, origin: str, host_header: str) -> bool:
        """The app's own origin (same host:port as the request's Host) or a listed one."""
        normalised = normalise_origin(origin)
        if normalised is None:
            return False
        if normalised in self.extra_origins:
            return True
        own = split_host(host_header)
        theirs = split_host(urlsplit(normalised).netloc)
        if own is None or theirs is None:
            return False
        default = 443 if normalised.startswith("https:") else 80
        return own[0] == theirs[0] and (own[1] or default) == (theirs[1] or default) and self.host_allowed(host_header)


def refusal_reason(policy: WebPolicy, *, scope_type: str, method: str, path: str, headers: Headers,
                   client_host: str) -> tuple[int, str] | None:
    """Why this request must be refused, as (HTTP status, message); None when it may go on."""
    host = headers.get("host", "")
    if not policy.host_allowed(host):
        return 400, "This server does not answer to that host name."
    origin = headers.get("origin")
    if origin is not None:
        if not policy.origin_allowed(origin, host):
            return 403, "Requests from other web pages are not accepted."
    else:
        site = headers.get("sec-fetch-site", "").lower()
        navigation = (scope_type == "http" and method in ("GET", "HEAD")
                      and headers.get("sec-fetch-mode", "").lower() == "navigate")
        if site in ("cross-site", "same-site") and not navigation:
            return 403, "Requests from other web pages are not accepted."
    if path == "/auth/header" and not is_loopback(client_host):
        return 403, "Automatic login is only offered on this machine; log in with a password."
    return None


# ------------------------------------------------------------------------------------------------
# The middleware
# ------------------------------------------------------------------------------------------------


CurrentUser = Callable[[Headers], Awaitable[Any]]


class WebSecurityMiddleware:
    def __init__(self, app, policy: WebPolicy, throttle: LoginThrottle, current_user: CurrentUser):
        self.app = app
        self.policy = policy
        self.throttle = throttle
        self.current_user = current_user

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        path = scope.get("path", "")
        method = scope.get("method", "GET")
        client = (scope.get("client") or ("", 0))[0]
        refused = refusal_reason(self.policy, scope_type=scope["type"], method=method, path=path,
                                 headers=headers, client_host=client)
        if refused:
            status, message = refused
            log.warning("refused %s %s from %s (host %r, origin %r): %s", method, path, client,
                        headers.get("host"), headers.get("origin"), message)
            return await _refuse(scope, receive, send, status, message)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)

        if path == "/login" and method == "POST":
            wait = self.throttle.retry_after(address_key(client))
            if wait > 0:
                return await _refuse(scope, receive, send, 429, "Too many failed logins; try again later.",
                                     {"Retry-After": str(math.ceil(wait))})
        if self.policy.password_login and needs_login(path):
            if await self.current_user(headers) is None:
                return await _refuse(scope, receive, send, 401, "Log in to the chat first.")

        token = client_address.set(client)
        try:
            await self.app(scope, receive, _strict_cookies(send))
        finally:
            client_address.reset(token)


def _strict_cookies(send):
    """Every cookie ``SameSite=Strict``; ``nosniff`` and no framing by other sites on every response."""

    async def wrapped(message):
        if message["type"] == "http.response.start":
            headers = MutableHeaders(scope=message)
            cookies = headers.getlist("set-cookie")
            if cookies:
                del headers["set-cookie"]
                for cookie in cookies:
                    headers.append("set-cookie", strict_cookie(cookie))
            headers.setdefault("X-Content-Type-Options", "nosniff")
            headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        await send(message)

    return wrapped


def strict_cookie(cookie: str) -> str:
    parts = [part for part in cookie.split(";") if part.strip().lower().split("=")[0] != "samesite"]
    return "; ".join(part.strip() for part in parts) + "; SameSite=strict"


async def _refuse(scope, receive, send, status: int, message: str, headers: dict | None = None) -> None:
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})  # the server answers 403
        return
    await _drain(receive)
    response = JSONResponse({"error": message, "detail": message}, status_code=status, headers=headers)
    await response(scope, receive, send)


async def _drain(receive, limit: int = 1 << 16) -> None:
    """Read a little of a refused request's body so the connection can be reused; a large one is cut."""
    read = 0
    while read < limit:
        message = await receive()
        if message["type"] != "http.request":
            return
        read += len(message.get("body", b""))
        if not message.get("more_body"):
            return


def address_key(address: str) -> str:
    return f"address:{address}"


def account_key(name: str) -> str:
    return f"account:{name.strip().lower()}"


# ------------------------------------------------------------------------------------------------
# Password login
# ------------------------------------------------------------------------------------------------


async def check_login(accounts: Accounts, throttle: LoginThrottle, name: str, password: str) -> bool:
    """Check a password unless the account or the address is locked; record the outcome."""
    keys = (account_key(name), address_key(client_address.get()))
    if throttle.retry_after(*keys) > 0:
        log.warning("login for %r refused without checking: too many failures", name)
        return False
    ok = await asyncio.to_thread(accounts.check, name, password)
    if ok:
        throttle.succeeded(*keys)
    else:
        throttle.failed(*keys)
    return ok


# ------------------------------------------------------------------------------------------------
# Stored files
# ------------------------------------------------------------------------------------------------


def served_type(name: str) -> str:
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return guessed if guessed in SAFE_SERVED_TYPES else "application/octet-stream"


def attachment_headers(name: str) -> dict[str, str]:
    ascii_name = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name) or "file"
    headers = {
        "Content-Disposition": f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name)}",
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": STORED_FILE_CSP,
        "Cache-Control": "private, no-cache",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
    if served_type(name) == "application/pdf":
        # Chainlit previews PDFs in a frame with the browser's own viewer: as an attachment, or under a
        # sandboxing CSP, the preview cannot load and the chat page stalls (seen in the upload e2e test).
        # A PDF runs no script on this origin in that viewer, so it is served inline.
        headers["Content-Disposition"] = "inline" + headers["Content-Disposition"][len("attachment"):]
        del headers["Content-Security-Policy"]
    return headers


OwnerOf = Callable[[str], Awaitable["str | None"]]


async def stored_file_response(object_key: str, storage, user, owner_of: OwnerOf) -> Response:
    """A stored element file for its owner only: the author of the thread the element belongs to.

    (The key's first part is not proof of ownership: Chainlit writes ``unknown/...`` when the element is
    stored before its thread.)"""
    if user is None:
        return JSONResponse({"error": "Log in to the chat first."}, status_code=401)
    try:
        key = safe_key(object_key)
        path = storage.path_for(key)
    except ValueError:
        return PlainTextResponse("Not found", status_code=404)
    owner = await owner_of(key)
    if owner is None or owner != getattr(user, "identifier", None):
        return PlainTextResponse("Not found", status_code=404)  # someone else's file: do not say it exists
    if not path.is_file():
        return PlainTextResponse("Not found", status_code=404)
    return FileResponse(path, media_type=served_type(path.name), headers=attachment_headers(path.name))


def upload_accept() -> dict[str, list[str]]:
    """Chainlit's ``accept`` setting: MIME type -> the extensions allowed with it. Browsers give
    ``application/octet-stream`` to files whose type they do not know (often .md, .rst)."""
    accept: dict[str, list[str]] = {}
    for ext, types in UPLOAD_TYPES.items():
        for mime in types + ("application/octet-stream",):
            accept.setdefault(mime, [])
            if ext not in accept[mime]:
                accept[mime].append(ext)
    return accept


def upload_allowed(name: str, size: int, limit_bytes: int) -> str | None:
    """Why an uploaded file must not be kept, or None."""
    ext = Path(name or "").suffix.lower()
    if ext not in UPLOAD_TYPES:
        return f"files of type {ext or '(none)'} are not accepted"
    if size <= 0:
        return "the file is empty"
    if size > limit_bytes:
        return f"the file is over the {limit_bytes / 1048576:.0f} MB limit"
    return None


def guarded_data_layer(base_class, limit_bytes: int):
    """A subclass of Chainlit's data layer that never stores an uploaded file the app refuses."""

    class GuardedDataLayer(base_class):
        async def create_element(self, element):
            path = getattr(element, "path", None)
            if path:  # a file from disk: a user's upload
                try:
                    size = Path(path).stat().st_size
                except OSError:
                    size = 0
                reason = upload_allowed(element.name or Path(path).name, size, limit_bytes)
                if reason:
                    log.info("not storing upload %r: %s", element.name, reason)
                    return None
            return await super().create_element(element)

    GuardedDataLayer.__name__ = f"Guarded{base_class.__name__}"
    return GuardedDataLayer


# ------------------------------------------------------------------------------------------------
# Installation on Chainlit's app
# ------------------------------------------------------------------------------------------------


async def element_owner(object_key: str) -> str | None:
    """The user identifier of the thread that holds the element stored under ``object_key``."""
    from chainlit.data import get_data_layer

    layer = get_data_layer()
    if layer is None or not hasattr(layer, "execute_sql"):
        return None
    writes = getattr(layer, "writes", None)
    if writes is not None:  # an element asked for right after its message: its row may still be held
        await writes.settled()
    rows = await layer.execute_sql('SELECT "threadId" FROM elements WHERE "objectKey" = :key', {"key": object_key})
    if not isinstance(rows, list) or not rows or not rows[0].get("threadId"):
        return None
    try:
        return await layer.get_thread_author(rows[0]["threadId"])
    except ValueError:
        return None


async def user_from_headers(headers: Headers):
    """The logged-in user of a request (Chainlit's cookie or bearer token), or None."""
    from chainlit.auth import get_current_user, get_token_from_cookies
    from starlette.requests import cookie_parser

    token = get_token_from_cookies(cookie_parser(headers.get("cookie", "")))
    if not token:
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            token = authorization[7:].strip()
    if not token:
        return None
    try:
        return await get_current_user(token)
    except Exception:  # an expired or forged token is just "not logged in"
        return None


def install(app, sio, settings, *, storage, bind_host: str, accounts: Accounts | None,
            throttle: LoginThrottle) -> WebPolicy:
    """Put the checks in front of Chainlit's app, its CORS and its socket; serve stored files safely."""
    from chainlit.config import config
    from starlette.middleware import Middleware
    from starlette.middleware.cors import CORSMiddleware

    password_login = accounts is not None
    if not password_login and not is_loopback(bind_host):
        raise StartupRefused(
            f"The app is bound to {bind_host or 'every address'}, beyond this machine, and has no password "
            "login: set ASSISTANT_USERS_FILE (or ASSISTANT_AUTH_PASSWORD), or bind to 127.0.0.1."
        )
    chainlit_origins = [o for o in (config.project.allow_origins or []) if o.strip() != "*"]
    policy = WebPolicy.build(
        bind_host=bind_host,
        allowed_hosts=_split_list(getattr(settings, "allowed_hosts", "")),
        allowed_origins=_split_list(getattr(settings, "allowed_origins", "")) + chainlit_origins,
        password_login=password_login,
    )

    # CORS: Chainlit registers CORSMiddleware with allow_origins from config.toml and credentials on,
    # which with "*" echoes any origin. Replace it: only the listed extra origins get CORS headers.
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    app.user_middleware.insert(0, Middleware(
        CORSMiddleware, allow_origins=sorted(policy.extra_origins), allow_credentials=True,
        allow_methods=["GET", "POST", "PUT", "DELETE", "PATCH"], allow_headers=["content-type", "authorization"],
    ))
    app.user_middleware.insert(0, Middleware(WebSecurityMiddleware, policy=policy, throttle=throttle,
                                             current_user=user_from_headers))
    # The socket.io handshake: Chainlit passes cors_allowed_origins=[] (no origin check at all).
    sio.eio.cors_allowed_origins = lambda origin, environ: policy.origin_allowed(origin, environ.get("HTTP_HOST", ""))

    import chainlit.auth.cookie as chainlit_cookie

    chainlit_cookie._cookie_samesite = "strict"  # read at call time by set_auth_cookie; the middleware enforces it too
    config.project.user_session_timeout = int(settings.session_hours * 3600)
    upload = config.features.spontaneous_file_upload
    if upload is not None:
        upload.accept = upload_accept()  # Chainlit's endpoint then refuses other types (HTTP 400)

    first_new = len(app.router.routes)

    async def stored_file_route(object_key: str, request: Request):
        user = await user_from_headers(request.headers)
        return await stored_file_response(object_key, storage, user, element_owner)

    app.add_api_route("/storage/{object_key:path}", stored_file_route, methods=["GET", "HEAD"],
                      include_in_schema=False)
    new_routes = app.router.routes[first_new:]
    del app.router.routes[first_new:]
    app.router.routes[0:0] = new_routes  # ahead of Chainlit's catch-all page route
    log.info("web security: hosts %s, extra origins %s, password login %s",
             sorted(policy.allowed_hosts), sorted(policy.extra_origins) or "none", password_login)
    return policy
