"""Start the app: use the configured model server if it answers, else the embedded llama.cpp model.

    python -m assistant.launch [--host 127.0.0.1] [--port 8000]

The embedded server (if started) stops when the app stops.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from assistant.embedded import EmbeddedModelError, EmbeddedModelServer, endpoint_answers
from assistant.settings import PROJECT_ROOT, SettingsError, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("ASSISTANT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ASSISTANT_PORT", "8000")))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        return 2

    env = os.environ.copy()
    embedded: EmbeddedModelServer | None = None
    served = endpoint_answers(settings.model_endpoint, settings.api_key)
    if served is not None:
        print(f"Model server at {settings.model_endpoint} serves: {', '.join(served) or '(nothing)'}", flush=True)
    elif not settings.embedded_fallback:
        print(
            f"No model server answers at {settings.model_endpoint} and the embedded fallback is off "
            "(ASSISTANT_EMBEDDED_FALLBACK=false). The app starts and says so in the chat.",
            flush=True,
        )
    else:
        print(f"No model server answers at {settings.model_endpoint}; starting the embedded model.", flush=True)
        try:
            log_dir = settings.data_dir
            log_dir.mkdir(parents=True, exist_ok=True)
            embedded = EmbeddedModelServer.from_settings(settings)
            embedded.log_path = log_dir / "embedded-model.log"
            embedded.start()
        except EmbeddedModelError as exc:
            print(f"Could not start the embedded model: {exc}", file=sys.stderr)
            return 1
        print(
            f"Embedded llama.cpp server at {embedded.base_url}: small = {embedded.small_name}, "
            f"large = {embedded.large_name}",
            flush=True,
        )
        env.update(
            ASSISTANT_MODEL_ENDPOINT=embedded.base_url,
            ASSISTANT_SMALL_MODEL=embedded.small_name,
            ASSISTANT_LARGE_MODEL=embedded.large_name,
            ASSISTANT_EMBEDDED_ACTIVE="true",
            ASSISTANT_CONFIGURED_ENDPOINT=settings.model_endpoint,
        )
        env.pop("FOUNDRY_LOCAL_ENDPOINT", None)

    command = [
        sys.executable, "-m", "chainlit", "run", str(PROJECT_ROOT / "app.py"),
        "--headless", "--host", args.host, "--port", str(args.port),
    ]
    app = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env)
    print(f"Chat: http://{args.host}:{args.port}   Demo page: http://{args.host}:{args.port}/demo", flush=True)
    print(f"(launcher ready in {time.perf_counter() - started:.1f} s; Chainlit is starting)", flush=True)

    def forward(signum, _frame):
        if app.poll() is None:
            app.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    try:
        return app.wait()
    finally:
        if app.poll() is None:
            app.terminate()
            try:
                app.wait(timeout=10)
            except subprocess.TimeoutExpired:
                app.kill()
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    sys.exit(main())
