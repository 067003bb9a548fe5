"""What the app adds: time to first token seen in the browser next to the model server's own.

    python -m benchmarks.chat_latency [--questions 5] [--model-endpoint URL --small-model ALIAS]

Starts the embedded llama.cpp model (unless an endpoint is given) and the real Chainlit app in a
temporary app root, opens it in headless chromium, and for each question records:

* browser TTFT: from the click on send to the first answer text in the page (``performance.now()``
  in a MutationObserver);
* server TTFT: the model call's own time from request to first token, as the app's client measured
  it (the metrics the app stores for the conversation);
* the difference, split in three: in the browser before the question leaves on the websocket; from
  there to the first token arriving back on the websocket, minus the model's own TTFT (the app
  server: Chainlit, retrieval, prompt, streaming); and from that frame to text in the page (rendering);
* turn 1 vs turn 3 of the conversation: the model's TTFT with the earlier turns reused from its cache.

Then the same questions go through ``benchmarks/bare_chainlit_app.py`` (Chainlit and the OpenAI SDK, nothing
else) in front of the same model server, measured the same way (skip with ``--no-bare``): what Chainlit itself
adds on this machine, and so what this app adds beyond it.

Also prints the app's start time (process start to /health, and to the welcome message in the page).
Routing is pinned to the small model so each answer is one model call.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from assistant.conversations import metrics_from_steps
from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelServer, default_model_path
from routing.metrics import percentile
from benchmarks.harness import ANSWER_MAX_TOKENS, ASSISTANT, CHROMIUM, CHROMIUM_ARGS, SAMPLE_QUESTIONS, AppServer, make_app_root

# An answer that has ended shows one of these footers.
FINISHED_ANSWER = ", ".join(f'{ASSISTANT}:has-text("{footer}")' for footer in ("Answered by", "No model answered", "Cut short"))

QUESTIONS = SAMPLE_QUESTIONS

# Timestamps of the question leaving on the websocket and of the answer's first frame coming back.
WEBSOCKET_CLOCK = """
(() => {
  const Native = window.WebSocket;
  function Clocked(...args) {
    const ws = new Native(...args);
    const send = ws.send.bind(ws);
    ws.send = (data) => {
      if (typeof data === 'string' && data.includes('"client_message"') && window.__wsSentAt === null) {
        window.__wsSentAt = performance.now();
      }
      return send(data);
    };
    ws.addEventListener('message', (event) => {
      if (window.__wsSentAt !== null && window.__wsFirstToken === null && typeof event.data === 'string'
          && event.data.includes('"stream_start"')) {
        window.__wsFirstToken = performance.now();
      }
    });
    return ws;
  }
  Clocked.prototype = Native.prototype;
  for (const key of ['CONNECTING', 'OPEN', 'CLOSING', 'CLOSED']) Clocked[key] = Native[key];
  window.WebSocket = Clocked;
  window.__wsSentAt = null;
  window.__wsFirstToken = null;
})();
"""

OBSERVER = """
(before) => {
  if (window.__observer) window.__observer.disconnect();
  window.__firstText = null;
  window.__sentAt = null;
  window.__wsSentAt = null;
  window.__wsFirstToken = null;
  const obs = new MutationObserver(() => {
    const answers = document.querySelectorAll('[data-step-type="assistant_message"]');
    if (window.__sentAt !== null && window.__firstText === null && answers.length > before) {
      const text = answers[answers.length - 1].innerText.trim();
      if (text.length > 0) window.__firstText = performance.now();
    }
  });
  window.__observer = obs;
  obs.observe(document.body, {childList: true, subtree: true, characterData: true});
  document.querySelector('#chat-submit').addEventListener('click', () => { window.__sentAt = performance.now(); },
                                                           {capture: true, once: true});
}
"""


def stored_turns(db_path: Path, thread: str, expected: int, timeout_s: float = 10.0) -> list[dict]:
    """The thread's measured turns as the app stored them with its answers (Chainlit writes a message in
    the background, so the last one may land a moment after it shows)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with sqlite3.connect(db_path) as db:
            rows = db.execute('SELECT "id", "type", "createdAt", "metadata" FROM steps WHERE "threadId" = ?',
                              (thread,)).fetchall()
        steps = [{"id": i, "type": t, "createdAt": c, "metadata": m} for i, t, c, m in rows]
        turns = [turn.to_dict() for turn in metrics_from_steps(steps).turns]
        if len(turns) >= expected or time.monotonic() > deadline:
            if len(turns) < expected:
                raise RuntimeError(f"the app stored {len(turns)} measured answers in thread {thread}, expected {expected}")
            return turns
        time.sleep(0.1)


def ask(page, question: str) -> dict:
    """Ask one question in the open chat and wait for its answer to end: the browser's time to first text and
    its split at the websocket (None where a mark is missing)."""
    before = page.locator(ASSISTANT).count()
    page.locator("#chat-input").fill(question)
    page.wait_for_function("() => { const b = document.querySelector('#chat-submit'); return b && !b.disabled; }")
    page.evaluate(OBSERVER, before)
    finished_before = page.locator(FINISHED_ANSWER).count()
    page.locator("#chat-submit").click()
    deadline = time.monotonic() + 180
    while page.locator(FINISHED_ANSWER).count() <= finished_before:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer to {question!r}")
        time.sleep(0.05)
    clock = page.evaluate("[window.__sentAt, window.__wsSentAt, window.__wsFirstToken, window.__firstText]")
    split = None not in clock
    return {
        "question": question,
        "browser_ttft_ms": clock[3] - clock[0],
        "before_send_ms": clock[1] - clock[0] if split else None,
        "websocket_round_ms": clock[2] - clock[1] if split else None,
        "render_ms": clock[3] - clock[2] if split else None,
    }


def open_chat(playwright, app: AppServer, ready_text: str | None):
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    page = browser.new_page()
    page.add_init_script(WEBSOCKET_CLOCK)
    page.goto(app.url)
    if ready_text:
        page.get_by_text(ready_text).first.wait_for(timeout=60_000)
    else:
        page.locator("#chat-input").wait_for(timeout=60_000)
    return browser, page


def run(endpoint: str, small: str, large: str, questions: list[str], top_k: int) -> dict:
    from playwright.sync_api import sync_playwright

    root = make_app_root(Path(tempfile.mkdtemp(prefix="chat-latency-")))
    app = AppServer(root, endpoint, small, large, extra_env={"ASSISTANT_ROUTING_MODE": "small", "ASSISTANT_TOP_K": str(top_k)})
    started = time.perf_counter()
    app.start()
    healthy_s = time.perf_counter() - started
    rows = []
    try:
        with sync_playwright() as playwright:
            browser, page = open_chat(playwright, app, "Answers come from your documents")
            welcome_s = time.perf_counter() - started
            for number, question in enumerate(questions):
                print(f"question {number + 1}/{len(questions)}", flush=True)
                row = ask(page, question)
                thread = page.url.rsplit("/", 1)[-1]
                turn = stored_turns(app.data_dir / "chat.db", thread, len(rows) + 1)[-1]
                leg = turn["legs"][0]
                rows.append({**row, "server_ttft_ms": leg["ttft_ms"], "retrieval_ms": turn["retrieval_ms"],
                             "prompt_ms": turn["prompt_ms"], "prompt_tokens": leg["prompt_tokens"]})
            browser.close()
    finally:
        app.stop()
    return {"top_k": top_k, "app_healthy_s": healthy_s, "welcome_visible_s": welcome_s, "rows": rows}


def run_bare(endpoint: str, model: str, questions: list[str]) -> list[dict]:
    """The same questions through benchmarks/bare_chainlit_app.py (Chainlit and the OpenAI SDK, nothing else)
    in front of the same model server: what Chainlit itself adds on this machine."""
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="chat-latency-bare-"))
    ttft_log = root / "ttft.jsonl"
    app = AppServer(root, endpoint, model, model, app_file=Path(__file__).with_name("bare_chainlit_app.py"),
                    extra_env={"BARE_MODEL_ENDPOINT": endpoint, "BARE_MODEL": model, "BARE_TTFT_LOG": str(ttft_log),
                               "BARE_MAX_TOKENS": str(ANSWER_MAX_TOKENS)})
    app.start()
    rows = []
    try:
        with sync_playwright() as playwright:
            browser, page = open_chat(playwright, app, None)
            for number, question in enumerate(questions):
                print(f"bare Chainlit: question {number + 1}/{len(questions)}", flush=True)
                row = ask(page, question)
                logged = [json.loads(line) for line in ttft_log.read_text().splitlines()]
                if len(logged) != len(rows) + 1 or logged[-1]["ttft_ms"] is None:
                    raise RuntimeError(f"the bare app logged no first token for {question!r}: {app.log_tail()}")
                rows.append({**row, "server_ttft_ms": logged[-1]["ttft_ms"]})
            browser.close()
    finally:
        app.stop()
    return rows


def summary(rows: list[dict]) -> dict:
    """Medians and p95s of what the app adds, in total and split at the websocket."""
    added = [r["browser_ttft_ms"] - r["server_ttft_ms"] for r in rows]
    split = [r for r in rows if r["before_send_ms"] is not None]
    parts = {
        "before_send": [r["before_send_ms"] for r in split],
        "server_and_websocket": [r["websocket_round_ms"] - r["server_ttft_ms"] for r in split],
        "render": [r["render_ms"] for r in split],
    }
    out = {"added": (statistics.median(added), percentile(added, 95))}
    for name, values in parts.items():
        out[name] = (statistics.median(values), percentile(values, 95)) if values else None
    return out


def print_split(title: str, split: dict) -> None:
    if split["render"] is None:
        return
    print(f"{title} (median / p95): "
          f"browser before sending {split['before_send'][0]:.0f} / {split['before_send'][1]:.0f} ms; "
          f"app server and websocket {split['server_and_websocket'][0]:.0f} / {split['server_and_websocket'][1]:.0f} ms; "
          f"browser rendering the first token {split['render'][0]:.0f} / {split['render'][1]:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=int, default=5)
    parser.add_argument("--model-endpoint", default="")
    parser.add_argument("--small-model", default="")
    parser.add_argument("--top-k", type=int, default=None,
                        help=f"sources per question (default: {EMBEDDED_TOP_K} on the embedded model, as ./start.sh does; else 5)")
    parser.add_argument("--no-bare", action="store_true",
                        help="skip the baseline run of bare Chainlit (benchmarks/bare_chainlit_app.py) on the same questions")
    args = parser.parse_args(argv)
    questions = (QUESTIONS * 4)[: args.questions]
    bare_rows: list[dict] = []
    if args.model_endpoint:
        result = run(args.model_endpoint, args.small_model, args.small_model, questions, args.top_k or 5)
        if not args.no_bare:
            bare_rows = run_bare(args.model_endpoint, args.small_model, questions)
    else:
        with EmbeddedModelServer(default_model_path()) as model:
            result = run(model.base_url, model.small_name, model.large_name, questions, args.top_k or EMBEDDED_TOP_K)
            if not args.no_bare:
                bare_rows = run_bare(model.base_url, model.small_name, questions)
    print(f"sources per question (top_k): {result['top_k']}")
    print(f"app start: /health after {result['app_healthy_s']:.2f} s, welcome in the browser after "
          f"{result['welcome_visible_s']:.2f} s")
    print(f"{'question':48} {'browser TTFT':>13} {'server TTFT':>12} {'app adds':>9} {'retrieval':>10} {'prompt':>7} {'prompt tok':>10}")
    for row in result["rows"]:
        print(f"{row['question'][:48]:48} {row['browser_ttft_ms']:>10.0f} ms {row['server_ttft_ms']:>9.0f} ms "
              f"{row['browser_ttft_ms'] - row['server_ttft_ms']:>6.0f} ms {row['retrieval_ms']:>7.1f} ms "
              f"{row['prompt_ms']:>4.1f} ms {row['prompt_tokens']:>9}~")
    browser_ms = [r["browser_ttft_ms"] for r in result["rows"]]
    server_ms = [r["server_ttft_ms"] for r in result["rows"]]
    ours = summary(result["rows"])
    print(f"{'median':48} {statistics.median(browser_ms):>10.0f} ms {statistics.median(server_ms):>9.0f} ms "
          f"{ours['added'][0]:>6.0f} ms")
    print(f"{'p95':48} {percentile(browser_ms, 95):>10.0f} ms {percentile(server_ms, 95):>9.0f} ms "
          f"{ours['added'][1]:>6.0f} ms")
    print_split("where the app's time goes", ours)
    if bare_rows:
        floor = summary(bare_rows)
        print(f"bare Chainlit (benchmarks/bare_chainlit_app.py, same model server, same questions): adds "
              f"{floor['added'][0]:.0f} ms median, {floor['added'][1]:.0f} ms p95")
        print_split("where bare Chainlit's time goes", floor)
        print(f"this app beyond bare Chainlit (difference of medians): {ours['added'][0] - floor['added'][0]:+.0f} ms "
              f"(app server and websocket {ours['server_and_websocket'][0] - floor['server_and_websocket'][0]:+.0f} ms, "
              f"rendering {ours['render'][0] - floor['render'][0]:+.0f} ms)")
    rows = result["rows"]
    if len(rows) >= 3:
        print(f"turn 1 vs turn 3 (model TTFT): {rows[0]['server_ttft_ms']:.0f} ms ({rows[0]['prompt_tokens']}~ prompt "
              f"tokens) vs {rows[2]['server_ttft_ms']:.0f} ms ({rows[2]['prompt_tokens']}~ prompt tokens, earlier turns "
              "included); see benchmarks/prompt_cache.py for the cache on/off comparison")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
