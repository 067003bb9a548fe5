"""The demo page's in-browser engine next to the embedded server, on the same grounded prompts.

    python -m benchmarks.browser_engine [--rounds 3] [--max-tokens 32] [--threads 2,1]

Starts the embedded llama.cpp model (SmolLM2-135M-Instruct, one thread, as ./start.sh runs it) and the
real app, and opens /demo in headless chromium (Debian's, flags as in the e2e tests). Prints:

* model load time in the page: first visit (download from the app + start) and next visit (from the
  browser's cache), for each thread count (``?threads=N``; the page is cross-origin isolated);
* per engine, medians over the rounds: TTFT and total from Send (measured in the page), decode tokens/s
  and completion tokens (the runtime's own counts):
    - "browser": SmolLM2 in the page (wllama, WebAssembly), N threads;
    - "server via page": the same questions on the server's small role, measured in the same page;
    - "server at model": the same grounded messages sent straight to the llama.cpp server (no app).

Every round asks the same question over a slightly different reference text, so no engine answers from
a cached prompt (each keeps the system prompt's prefix, as in real use). Timings on a shared 2-core
machine are noisy: run it when the machine is quiet, and read them as such.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from assistant.embedded import EmbeddedModelServer, default_model_path
from benchmarks.harness import CHROMIUM, CHROMIUM_ARGS, AppServer, make_app_root

QUESTION = "What colour is the sky on Zorg, and why?"
REFERENCE = (
    "Field notes, round {n}. On the planet Zorg the sky is bright green all day long, because the air holds "
    "a fine dust of copper salts. At night the sky turns violet. Visitors are advised to bring dark glasses."
)
TIMEOUT_MS = 600_000


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def native_round(model: EmbeddedModelServer, app_url: str, n: int, max_tokens: int) -> dict:
    """One answer straight from the llama.cpp server, on the grounded prompt the app builds."""
    body = {"prompt": QUESTION, "reference_text": REFERENCE.format(n=n), "max_tokens": max_tokens, "temperature": 0}
    messages = httpx.post(app_url + "/demo/api/prompt", json=body, timeout=60).json()["messages"]
    request = {"model": model.small_name, "messages": messages, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    started = time.perf_counter()
    first = last = None
    pieces = 0
    with httpx.stream("POST", model.base_url + "/chat/completions", json=request, timeout=600) as response:
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {})
            if delta.get("content"):
                last = time.perf_counter()
                first = first or last
                pieces += 1
    total = time.perf_counter() - started
    return {
        "ttft_ms": (first - started) * 1000 if first else None,
        "total_ms": total * 1000,
        "tokens": pieces,
        "rate": (pieces - 1) / (last - first) if pieces > 1 and last > first else None,
    }


def page_round(page, role: str, n: int, max_tokens: int) -> dict:
    page.check(f"#role-{role}")
    page.fill("#prompt", QUESTION)
    page.fill("#reference", REFERENCE.format(n=n))
    page.fill("#max-tokens", str(max_tokens))
    rows_before = page.locator("#runs-table tbody tr").count()
    page.click("#send")
    page.wait_for_selector("#status[data-state='done'], #status[data-state='error']", timeout=TIMEOUT_MS)
    if page.get_attribute("#status", "data-state") != "done":
        raise RuntimeError(f"{role} round {n} failed: {page.inner_text('#notices')}")
    assert page.locator("#runs-table tbody tr").count() == rows_before + 1
    row = page.locator("#runs-table tbody tr").first
    number = lambda name: float(row.get_attribute(f"data-{name}") or "nan")  # noqa: E731
    return {"ttft_ms": number("ttft-ms"), "total_ms": number("total-ms"), "tokens": number("tokens"), "rate": number("rate")}


def stop_round(page) -> dict:
    """A long answer in the page, stopped after a few tokens: how long until the page, then the engine, stop."""
    page.check("#role-browser")
    page.fill("#prompt", "Write a very long story about Ember.")
    page.fill("#reference", "Ember is a young dragon who lives above a bakery and wants to learn to bake bread.")
    page.fill("#max-tokens", "400")
    page.click("#send")
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while not page.inner_text("#m-tokens").isdigit() or int(page.inner_text("#m-tokens")) < 5:
        if time.monotonic() > deadline:
            raise TimeoutError("no tokens to stop")
        time.sleep(0.05)
    clicked = time.perf_counter()
    page.click("#stop")
    page.wait_for_selector("#status[data-state='stopped']", timeout=TIMEOUT_MS)
    page_stop_ms = (time.perf_counter() - clicked) * 1000
    notice = page.locator(".notice[data-released='yes']")
    notice.wait_for(timeout=TIMEOUT_MS)
    return {"page_stop_ms": page_stop_ms, "engine_release_ms": float(notice.get_attribute("data-release-ms"))}


def load_in_page(page, url: str) -> dict:
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator("#model-small")).not_to_have_text("…", timeout=60_000)
    page.check("#role-browser")
    page.wait_for_selector("#engine-panel[data-state='ready'], #engine-panel[data-state='error']", timeout=TIMEOUT_MS)
    panel = page.locator("#engine-panel")
    if panel.get_attribute("data-state") != "ready":
        raise RuntimeError(page.inner_text("#engine-note"))
    return {
        "load_ms": float(panel.get_attribute("data-load-ms")),
        "cached": panel.get_attribute("data-cached") == "true",
        "threads": int(panel.get_attribute("data-threads")),
        "note": page.inner_text("#engine-note"),
    }


def run(rounds: int, max_tokens: int, thread_counts: list[int]) -> dict:
    from playwright.sync_api import sync_playwright

    results: dict = {"loads": [], "engines": {}}
    with EmbeddedModelServer(default_model_path()) as model:
        root = make_app_root(Path(tempfile.mkdtemp(prefix="browser-engine-")))
        app = AppServer(root, model.base_url, model.small_name, model.large_name, extra_env={"ASSISTANT_TEMPERATURE": "0"})
        app.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1280, "height": 900})  # one storage: a first visit
                page = context.new_page()
                for index, threads in enumerate(thread_counts):
                    url = f"{app.url}/demo?threads={threads}"
                    if index == 0:
                        first = load_in_page(page, url)
                        results["loads"].append({"visit": "first", **first})
                        print(f"first visit, {threads} thread(s): {first['load_ms'] / 1000:.2f} s", flush=True)
                    cached = load_in_page(page, url)  # a new page load: the runtime starts again, the model from cache
                    results["loads"].append({"visit": "cached", **cached})
                    print(f"next visit, {threads} thread(s): {cached['load_ms'] / 1000:.2f} s", flush=True)
                    name = f"browser, wasm {cached['threads']} thread{'s' if cached['threads'] > 1 else ''}"
                    results["engines"][name] = []
                    for n in range(rounds):
                        results["engines"][name].append(page_round(page, "browser", n, max_tokens))
                        print(f"  {name} round {n + 1}/{rounds}: {results['engines'][name][-1]}", flush=True)
                    if index == 0:
                        results["stop"] = {"engine": name, **stop_round(page)}
                        print(f"  stop: {results['stop']}", flush=True)
                name = f"server via page ({model.threads} thread)"
                results["engines"][name] = []
                for n in range(rounds):
                    results["engines"][name].append(page_round(page, "small", n, max_tokens))
                    print(f"  {name} round {n + 1}/{rounds}: {results['engines'][name][-1]}", flush=True)
                browser.close()
            name = f"server at model ({model.threads} thread)"
            results["engines"][name] = [native_round(model, app.url, n, max_tokens) for n in range(rounds)]
        finally:
            app.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--threads", default="2,1", help="thread counts to try in the page, comma-separated")
    args = parser.parse_args(argv)
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]
    started = time.perf_counter()
    results = run(args.rounds, args.max_tokens, thread_counts)

    print()
    print("Model load in the page (SmolLM2-135M-Instruct Q4_1, 98 MB):")
    for load in results["loads"]:
        where = "from the browser's cache" if load["cached"] else "downloaded from the app"
        print(f"  {load['visit']:>6} visit, {load['threads']} thread(s): {load['load_ms'] / 1000:6.2f} s  ({where})")
    print()
    print(f"Same grounded prompts, {args.rounds} rounds, up to {args.max_tokens} tokens, medians:")
    print(f"  {'engine':34} {'TTFT':>9} {'total':>9} {'tok/s':>7} {'tokens':>7}")
    for name, rows in results["engines"].items():
        ttft, total = median(r["ttft_ms"] for r in rows), median(r["total_ms"] for r in rows)
        rate, tokens = median(r["rate"] for r in rows), median(r["tokens"] for r in rows)
        print(f"  {name:34} {ttft / 1000:7.2f} s {total / 1000:7.2f} s {rate or float('nan'):7.1f} {tokens:7.0f}")
    stop = results.get("stop")
    if stop:
        print()
        print(f"Stop after 5 tokens ({stop['engine']}): the page shows it stopped after {stop['page_stop_ms']:.0f} ms; "
              f"the engine stopped generating {stop['engine_release_ms']:.0f} ms after Stop")
    print()
    print(f"(one run, {time.perf_counter() - started:.0f} s; a shared 2-core machine: noisy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
