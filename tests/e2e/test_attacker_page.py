"""A hostile page on another loopback port, in chromium, while the user is logged in to the app: it must
read nothing and send nothing. The same script run from the app's own page succeeds, so these tests
fail if the attack goes through rather than passing because everything is broken."""

from __future__ import annotations

import functools
import http.server
import threading

import pytest

from assistant.embedded import free_port
from tests.e2e.conftest import CHROMIUM, CHROMIUM_ARGS, AppServer, make_app_root, open_chat
from tests.fake_openai_server import FakeOpenAIServer, Script

pytestmark = pytest.mark.e2e

SMALL, LARGE = "small-model", "large-model"

# Everything a page can try against the app with the user's cookies. Returns what it could read.
ATTACK = """
async (target) => {
  const results = {};
  const body = JSON.stringify({prompt: "What does the router do?", role: "small"});
  async function attempt(name, path, init) {
    try {
      const response = await fetch(target + path, {credentials: "include", ...init});
      let text = "";
      try { text = await response.text(); } catch (e) {}
      results[name] = {read: response.type !== "opaque", status: response.status, text: text.slice(0, 20000)};
    } catch (error) {
      results[name] = {read: false, error: String(error)};
    }
  }
  await attempt("user", "/user");
  await attempt("threads", "/project/threads", {method: "POST", headers: {"Content-Type": "application/json"},
                body: JSON.stringify({pagination: {first: 20}, filter: {}})});
  await attempt("demo_info", "/demo/api/info");
  await attempt("demo_stream_json", "/demo/api/stream", {method: "POST",
                headers: {"Content-Type": "application/json"}, body});
  await attempt("demo_stream_text_plain", "/demo/api/stream", {method: "POST",
                headers: {"Content-Type": "text/plain"}, body});
  await attempt("demo_stream_no_cors", "/demo/api/stream", {method: "POST", mode: "no-cors",
                headers: {"Content-Type": "text/plain"}, body});
  await attempt("header_login", "/auth/header", {method: "POST"});
  await attempt("socket_polling", "/ws/socket.io/?EIO=4&transport=polling");
  results.websocket = await new Promise((resolve) => {
    const got = [];
    let opened = false;
    const ws = new WebSocket(target.replace("http", "ws") + "/ws/socket.io/?EIO=4&transport=websocket");
    ws.onopen = () => { opened = true; };
    ws.onmessage = (event) => {
      const data = String(event.data);
      got.push(data.slice(0, 100));
      if (data.startsWith("0")) {  // engine.io open: ask for a socket.io session, as Chainlit's client does
        ws.send("40" + JSON.stringify({sessionId: crypto.randomUUID(), clientType: "webapp", threadId: null,
                                        userEnv: "{}", chatProfile: null}));
      } else if (data.startsWith("40")) {
        ws.close();
      }
    };
    ws.onclose = () => resolve({opened, got});
    setTimeout(() => resolve({opened, got}), 8000);
  });
  return results;
}
"""
READS = ["user", "threads", "demo_info", "demo_stream_json", "demo_stream_text_plain", "header_login",
         "socket_polling"]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIServer([SMALL, LARGE]) as server:
        server.default_script = Script(tokens=["The", " router", " routes", "."])
        yield server


@pytest.fixture(scope="module")
def app(fake, tmp_path_factory):
    server = AppServer(make_app_root(tmp_path_factory.mktemp("app") / "root"), fake.base_url, SMALL, LARGE)
    server.start(timeout_s=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def attacker_site(tmp_path_factory):
    """A plain web server on another loopback port: the attacker's page."""
    root = tmp_path_factory.mktemp("attacker")
    (root / "index.html").write_text("<!doctype html><title>Free prizes</title><p>Nothing to see here.</p>")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_page_on_another_port_reads_nothing_and_sends_nothing(page, app, fake, attacker_site):
    open_chat(page, app)  # the user is logged in: the app's cookie is in the browser
    assert any(c["name"] == "access_token" for c in page.context.cookies(app.url))

    # The same script from the app's own page: every read works and the model runs.
    fake.requests.clear()
    own = page.evaluate(ATTACK, app.url)
    assert own["user"]["read"] and '"identifier":"local"' in own["user"]["text"].replace(" ", "")
    assert own["threads"]["read"] and own["threads"]["status"] == 200
    assert own["demo_info"]["read"] and SMALL in own["demo_info"]["text"]
    assert own["demo_stream_json"]["status"] == 200 and "event: token" in own["demo_stream_json"]["text"]
    assert own["websocket"]["opened"] and any(m.startswith("40") for m in own["websocket"]["got"])
    assert len(fake.requests) >= 1

    # From the attacker's page, with the same cookies in the same browser.
    page.goto(attacker_site)
    fake.requests.clear()
    stolen = page.evaluate(ATTACK, app.url)
    for name in READS:
        assert not stolen[name]["read"], f"the attacker page read {name}: {stolen[name]}"
    assert not stolen["websocket"]["opened"] and stolen["websocket"]["got"] == [], stolen["websocket"]
    page.wait_for_timeout(1000)  # let any request that slipped through reach the model server
    assert fake.requests == [], "the attacker page made the app run a model"
    # The refusals were the app's, not only the browser's: the server logged them.
    log = app.log_tail(20_000)
    assert "refused POST /demo/api/stream" in log and "refused GET /ws/socket.io/" in log


def test_a_rebinding_dns_name_reaches_nothing(browser, app):
    # chromium resolves attacker.test to 127.0.0.1, as a rebinding DNS server would after its first answer.
    rebinding = browser.browser_type.launch(
        executable_path=CHROMIUM, args=CHROMIUM_ARGS + ["--host-resolver-rules=MAP attacker.test 127.0.0.1"])
    try:
        context = rebinding.new_context()
        page = context.new_page()
        response = page.goto(f"http://attacker.test:{app.port}/")
        assert response.status == 400  # the page itself
        results = page.evaluate(ATTACK, f"http://attacker.test:{app.port}")  # same-origin for the attacker
        for name in READS:
            assert results[name].get("status") in (400, None), f"{name}: {results[name]}"
            assert "identifier" not in results[name].get("text", "")
        assert not results["websocket"]["opened"]
        # The control: the loopback name works in the same browser.
        assert page.goto(f"http://127.0.0.1:{app.port}/").status == 200
        context.close()
    finally:
        rebinding.close()
