"""The web security rules as plain functions: hosts, origins, cookies, throttling, accounts, stored files."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
from starlette.datastructures import Headers

from assistant.accounts import Accounts, AccountsError, LoginThrottle, load_users, save_user, verify_password
from assistant.web_security import (
    StartupRefused,
    WebPolicy,
    attachment_headers,
    guarded_data_layer,
    refusal_reason,
    served_type,
    stored_file_response,
    strict_cookie,
    upload_accept,
    upload_allowed,
)

PROJECT = Path(__file__).resolve().parents[1]
LOCAL = WebPolicy.build(bind_host="127.0.0.1", password_login=False)


def refused(policy, headers: dict, *, method="GET", path="/", scope_type="http", client="127.0.0.1"):
    return refusal_reason(policy, scope_type=scope_type, method=method, path=path,
                          headers=Headers(headers), client_host=client)


@pytest.mark.parametrize("host", [
    "attacker.example:8000", "attacker.example", "127.0.0.1.nip.io:8000", "localhost.attacker.example:8000",
    "", "127.0.0.1:8000@evil", "evil/127.0.0.1", "10.0.0.5:8000",
])
def test_a_host_the_app_does_not_serve_is_refused(host):
    assert refused(LOCAL, {"host": host})[0] == 400


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "localhost."])
def test_loopback_hosts_are_served(host):
    assert refused(LOCAL, {"host": host}) is None


def test_configured_hosts_and_a_wildcard_bind():
    policy = WebPolicy.build(bind_host="0.0.0.0", allowed_hosts="chat.example.com", password_login=True)
    assert refused(policy, {"host": "chat.example.com"}) is None
    assert refused(policy, {"host": "192.168.1.20:8000"}) is None  # an IP literal cannot be rebound
    assert refused(policy, {"host": "other.example.com"})[0] == 400


@pytest.mark.parametrize("origin", [
    "http://127.0.0.1:9999",  # another port of the same host: the attacker page
    "http://localhost:8000",  # same port, another name: another origin
    "https://attacker.example",
    "null",
    "http://127.0.0.1:8000.attacker.example",
    "garbage",
])
def test_a_foreign_origin_is_refused_on_every_method_and_the_socket(origin):
    for method in ("GET", "POST", "OPTIONS"):
        assert refused(LOCAL, {"host": "127.0.0.1:8000", "origin": origin}, method=method)[0] == 403
    assert refused(LOCAL, {"host": "127.0.0.1:8000", "origin": origin}, scope_type="websocket",
                   path="/ws/socket.io/")[0] == 403


def test_the_apps_own_origin_and_listed_origins_are_accepted():
    assert refused(LOCAL, {"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, method="POST") is None
    policy = WebPolicy.build(bind_host="127.0.0.1", allowed_origins="https://intranet.example.com/",
                             password_login=False)
    assert refused(policy, {"host": "127.0.0.1:8000", "origin": "https://intranet.example.com"}) is None
    with pytest.raises(StartupRefused):
        WebPolicy.build(bind_host="127.0.0.1", allowed_origins="not an origin", password_login=False)


def test_cross_site_requests_without_an_origin_are_refused_except_page_navigations():
    base = {"host": "127.0.0.1:8000"}
    for site in ("cross-site", "same-site"):
        assert refused(LOCAL, {**base, "sec-fetch-site": site, "sec-fetch-mode": "no-cors"})[0] == 403
        assert refused(LOCAL, {**base, "sec-fetch-site": site, "sec-fetch-mode": "navigate"}) is None
        assert refused(LOCAL, {**base, "sec-fetch-site": site, "sec-fetch-mode": "navigate"}, method="POST")[0] == 403
    assert refused(LOCAL, {**base, "sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"}) is None


def test_header_auth_is_offered_to_loopback_clients_only():
    assert refused(LOCAL, {"host": "127.0.0.1:8000"}, method="POST", path="/auth/header") is None
    assert refused(LOCAL, {"host": "127.0.0.1:8000"}, method="POST", path="/auth/header",
                   client="192.168.1.7")[0] == 403


def test_every_cookie_becomes_samesite_strict():
    assert strict_cookie("access_token=x; HttpOnly; Path=/; SameSite=lax") == "access_token=x; HttpOnly; Path=/; SameSite=strict"
    assert strict_cookie("s=1; SameSite=None; Secure").endswith("Secure; SameSite=strict")
    assert "SameSite=strict" in strict_cookie("plain=1")


def test_forty_wrong_passwords_are_not_all_checked():
    now = [1000.0]
    throttle = LoginThrottle(clock=lambda: now[0])
    checked = 0
    for _ in range(40):
        if throttle.retry_after("account:alice", "address:10.0.0.1") == 0:
            checked += 1
            throttle.failed("account:alice", "address:10.0.0.1")
    assert checked == throttle.free_failures  # the other 35 were refused without a check
    assert throttle.retry_after("account:alice") > 0 and throttle.retry_after("address:10.0.0.1") > 0
    assert throttle.retry_after("account:bob", "address:10.0.0.2") == 0  # others are not affected
    now[0] += 1.01  # the first lock is one second; each further failure doubles it
    assert throttle.retry_after("account:alice") == 0
    throttle.failed("account:alice")
    assert 1.9 < throttle.retry_after("account:alice") <= 2.0
    now[0] += throttle.forget_after_s + 1
    assert throttle.retry_after("account:alice") == 0


def test_users_file_accounts(tmp_path):
    users = tmp_path / "users.txt"
    save_user(users, "alice", "correct horse")
    save_user(users, "bob", "battery staple")
    save_user(users, "alice", "new password")
    text = users.read_text()
    assert "correct horse" not in text and "new password" not in text and text.count("\n") == 2
    assert users.stat().st_mode & 0o077 == 0
    accounts = Accounts(load_users(users))
    assert accounts.check("alice", "new password") and not accounts.check("alice", "correct horse")
    assert accounts.check("bob", "battery staple") and not accounts.check("bob", "new password")
    assert not accounts.check("mallory", "new password")
    assert not verify_password("x", "scrypt$broken")
    users.write_text("alice:plaintext\n")
    with pytest.raises(AccountsError, match="line 1"):
        load_users(users)
    with pytest.raises(AccountsError):
        save_user(tmp_path / "u2.txt", "../evil", "pw")


def test_accounts_from_settings(tmp_path):
    assert Accounts.from_settings(SimpleNamespace(users_file=None, auth_password="", local_user="local")) is None
    single = Accounts.from_settings(SimpleNamespace(users_file=None, auth_password="pw", local_user="me"))
    assert single.check("me", "pw") and not single.check("me", "pw2")


def test_config_toml_accepts_exactly_the_types_the_app_reads():
    config = tomllib.loads((PROJECT / ".chainlit" / "config.toml").read_text())
    assert config["project"]["allow_origins"] == []
    accept = config["features"]["spontaneous_file_upload"]["accept"]
    assert accept == upload_accept()
    assert "*/*" not in accept and all("*" not in mime for mime in accept)
    extensions = {ext for exts in accept.values() for ext in exts}
    assert {".md", ".txt", ".rst", ".html", ".pdf", ".docx", ".csv", ".json"} <= extensions
    assert not extensions & {".exe", ".svg", ".js", ".xml", ".zip"}
    assert "image/svg+xml" not in accept and "application/x-msdownload" not in accept


def test_upload_rules():
    assert upload_allowed("notes.md", 10, 100) is None
    assert "not accepted" in upload_allowed("setup.exe", 10, 100)
    assert "not accepted" in upload_allowed("logo.svg", 10, 100)
    assert "limit" in upload_allowed("big.txt", 101, 100)
    assert "empty" in upload_allowed("empty.txt", 0, 100)


def test_stored_files_are_served_as_inert_attachments():
    for name in ("page.html", "logo.svg", "x.xml", "a.js", "setup.exe"):
        assert served_type(name) == "application/octet-stream"
    assert served_type("report.pdf") == "application/pdf"
    headers = attachment_headers('évil"; x.html')
    assert headers["Content-Disposition"].startswith("attachment; ")
    assert '"; x' not in headers["Content-Disposition"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "default-src 'none'" in headers["Content-Security-Policy"] and "sandbox" in headers["Content-Security-Policy"]
    # PDFs stay previewable in Chainlit's frame (the browser's viewer runs no script on this origin).
    pdf = attachment_headers("report.pdf")
    assert pdf["Content-Disposition"].startswith("inline;") and pdf["X-Content-Type-Options"] == "nosniff"


async def test_a_stored_file_is_served_to_its_owner_only(tmp_path):
    from assistant.storage import LocalFileStorage

    storage = LocalFileStorage(tmp_path / "files")
    stored = await storage.upload_file("unknown/element-1/page.html", b"<script>alert(1)</script>", "text/html")
    owners = {stored["object_key"]: "alice"}  # what the elements and threads tables say

    async def owner_of(key):
        return owners.get(key)

    alice, bob = SimpleNamespace(identifier="alice"), SimpleNamespace(identifier="bob")
    key = stored["object_key"]
    response = await stored_file_response(key, storage, alice, owner_of)
    assert response.status_code == 200 and response.media_type == "application/octet-stream"
    assert (await stored_file_response(key, storage, bob, owner_of)).status_code == 404
    assert (await stored_file_response(key, storage, None, owner_of)).status_code == 401
    assert (await stored_file_response("unknown/../unknown/element-1/page.html", storage, bob, owner_of)).status_code == 404
    await storage.upload_file("unknown/element-2/orphan.md", b"no element row", "text/markdown")
    assert (await stored_file_response("unknown/element-2/orphan.md", storage, alice, owner_of)).status_code == 404


async def test_refused_uploads_are_never_stored(tmp_path):
    stored = []

    class FakeLayer:  # stands in for Chainlit's SQLAlchemyDataLayer: records what would be stored
        async def create_element(self, element):
            stored.append(element.name)

    layer = guarded_data_layer(FakeLayer, limit_bytes=1000)()
    files = {"setup.exe": b"MZ" * 10, "logo.svg": b"<svg onload=alert(1)>", "big.md": b"x" * 1001,
             "empty.txt": b"", "notes.md": b"# fine"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        await layer.create_element(SimpleNamespace(name=name, path=str(tmp_path / name)))
    await layer.create_element(SimpleNamespace(name="[1] source", path=None))  # the app's own text element
    assert stored == ["notes.md", "[1] source"]


def test_password_login_covers_every_demo_route_but_the_page_and_its_files():
    from assistant.web_security import needs_login

    for path in ("/demo/api/info", "/demo/api/stream", "/demo/api/retrieve", "/demo/model/model.gguf", "/demo/x"):
        assert needs_login(path), path
    for path in ("/demo", "/demo/", "/demo/static/demo.js", "/", "/login", "/assets/index.js"):
        assert not needs_login(path), path
