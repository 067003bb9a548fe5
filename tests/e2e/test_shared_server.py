"""Shared-server mode end to end: password login for several users on PostgreSQL (Debian's postgresql,
a throwaway cluster started here), each user seeing only their own threads, uploads and stored files."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from assistant.accounts import save_user
from assistant.embedded import free_port
from tests.e2e.conftest import (
    AppServer, ask, make_app_root, wait_for_answer, wait_for_answer_with_sources, wait_for_new_chat, watch,
)
from tests.fake_openai_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.e2e

SMALL, LARGE = "small-model", "large-model"
USERS = {"alice": "alice-password", "bob": "bob-password"}
FACTS = {
    "alice": ("alice-plans.md", "# Osprey plan\n\nThe Osprey budget is exactly 41 thousand euros, approved by Alice.\n"),
    "bob": ("bob-plans.md", "# Kestrel plan\n\nThe Kestrel launch window opens on the third Monday, set by Bob.\n"),
}
QUESTIONS = {"alice": "What is the Osprey budget?", "bob": "When does the Kestrel launch window open?"}


def postgres_bin() -> Path:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    if not found:
        pytest.fail("PostgreSQL is not installed: ./test.sh installs Debian's postgresql (apt-get install postgresql)")
    return Path(os.path.realpath(found)).parent


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL cluster on a free loopback port; as root it runs as the postgres user."""
    bindir = postgres_bin()
    root = Path(tempfile.mkdtemp(prefix="assistant-pg-"))
    as_user: list[str] = []
    if os.getuid() == 0:  # initdb refuses to run as root
        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()
    subprocess.run(as_user + [str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8"],
                   check=True, capture_output=True)
    subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "postgres.log"), "-w",
                              "-o", f"-p {port} -h 127.0.0.1 -k {data}", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer([SMALL, LARGE]) as server:
        server.default_script = Script(tokens=["According", " to", " [1]", ",", " yes", "."])
        yield server


@pytest.fixture(scope="module")
def shared_app(fake, postgres_url, tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    users = root / "users.txt"
    for name, password in USERS.items():
        save_user(users, name, password)
    server = AppServer(make_app_root(root / "root"), fake.base_url, SMALL, LARGE,
                       extra_env={"ASSISTANT_DATABASE_URL": postgres_url, "ASSISTANT_USERS_FILE": str(users)})
    server.start(timeout_s=120)
    yield server
    server.stop()


def log_in(page, server: AppServer, name: str) -> None:
    welcomed = watch(page).count("new_message")  # the e2e helpers follow the chat's socket events from the start
    page.goto(server.url)
    page.locator("#email").fill(name)
    page.locator("#password").fill(USERS[name])
    page.locator("#password").press("Enter")
    wait_for_new_chat(page, welcomed)


def chat_with_an_upload(browser, server: AppServer, name: str) -> dict:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    log_in(page, server, name)
    file_name, text = FACTS[name]
    page.locator("#upload-button-input").set_input_files(
        [{"name": file_name, "mimeType": "text/markdown", "buffer": text.encode()}])
    ask(page, QUESTIONS[name])
    answer = wait_for_answer_with_sources(page, 120)  # the upload's name is in the Sources element
    page.get_by_text(f"{file_name} is ready for this conversation").first.wait_for()
    cookies = {c["name"]: c["value"] for c in context.cookies(server.url)}
    return {"context": context, "page": page, "answer": answer, "thread_url": page.url, "cookies": cookies,
            "thread_id": page.url.rstrip("/").rsplit("/", 1)[-1]}


def threads_of(server: AppServer, cookies: dict) -> list[dict]:
    response = httpx.post(server.url + "/project/threads", cookies=cookies, timeout=30,
                          json={"pagination": {"first": 50}, "filter": {}})
    assert response.status_code == 200, response.text
    return response.json()["data"]


def test_each_user_sees_only_their_own_threads_uploads_and_files(browser, shared_app):
    sessions = {name: chat_with_an_upload(browser, shared_app, name) for name in USERS}
    try:
        for name, session in sessions.items():
            assert FACTS[name][0] in session["answer"].lower()  # their upload answered their question
            assert "/thread/" in session["thread_url"]

        assert not (shared_app.data_dir / "chat.db").exists()  # the history is in PostgreSQL, not SQLite
        # Threads: each lists exactly their own.
        alice, bob = sessions["alice"], sessions["bob"]
        alice_threads = threads_of(shared_app, alice["cookies"])
        bob_threads = threads_of(shared_app, bob["cookies"])
        assert [t["id"] for t in alice_threads] == [alice["thread_id"]]
        assert [t["id"] for t in bob_threads] == [bob["thread_id"]]

        # Another user's thread, by id: not served over HTTP...
        own = httpx.get(f"{shared_app.url}/project/thread/{alice['thread_id']}", cookies=alice["cookies"], timeout=30)
        assert own.status_code == 200 and QUESTIONS["alice"] in own.text
        other = httpx.get(f"{shared_app.url}/project/thread/{alice['thread_id']}", cookies=bob["cookies"], timeout=30)
        assert other.status_code in (401, 403, 404) and QUESTIONS["alice"] not in other.text
        # ...nor in the browser.
        bob["page"].goto(alice["thread_url"])
        bob["page"].wait_for_timeout(3000)
        assert QUESTIONS["alice"] not in bob["page"].locator("body").inner_text()

        # Stored files: the upload's element file goes to its owner only.
        urls = [e["url"] for e in own.json().get("elements") or [] if e.get("url") and FACTS["alice"][0] in e["url"]]
        assert urls, f"alice's upload was not stored as an element: {own.json().get('elements')}"
        served = httpx.get(shared_app.url + urls[0], cookies=alice["cookies"], timeout=30)
        assert served.status_code == 200 and served.text == FACTS["alice"][1]
        assert served.headers["content-disposition"].startswith("attachment;")
        assert served.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in served.headers["content-security-policy"]
        assert httpx.get(shared_app.url + urls[0], cookies=bob["cookies"], timeout=30).status_code == 404
        assert httpx.get(shared_app.url + urls[0], timeout=30).status_code == 401

        # Uploads: bob's question about alice's document does not find it.
        bob["page"].goto(shared_app.url)
        bob["page"].get_by_text("Answers come from your documents").first.wait_for(timeout=60_000)
        ask(bob["page"], QUESTIONS["alice"])
        assert FACTS["alice"][0] not in wait_for_answer(bob["page"], 120).lower()
    finally:
        for session in sessions.values():
            session["context"].close()
