"""Start the app on the model server discovery finds (see assistant.discovery), else the embedded llama.cpp model.

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

from assistant.embedded import EMBEDDED_TOP_K, EmbeddedModelError, served_settings, stop_process
from assistant.settings import PROJECT_ROOT
from assistant.wiring import settings_for_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=os.environ.get("ASSISTANT_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("ASSISTANT_PORT", "8000")))
    args = parser.parse_args(argv)

    started = time.perf_counter()
    settings = settings_for_command()
    if settings is None:
        return 2

    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        with served_settings(settings, log_path=data_dir / "embedded-model.log", announce=say) as (settings, embedded):
            env = app_environment(settings, os.environ) if embedded is not None else found_environment(settings, os.environ)
            return run_app(args, env, started)
    except EmbeddedModelError as exc:
        print(f"Could not start the embedded model: {exc}", file=sys.stderr)
        return 1


def found_environment(settings, environ) -> dict:
    """The app's environment for a model server that discovery found: its endpoint and how it was found."""
    env = dict(environ)
    env.pop("FOUNDRY_LOCAL_ENDPOINT", None)
    env.update(ASSISTANT_MODEL_ENDPOINT=settings.model_endpoint, ASSISTANT_DISCOVERY=settings.discovery)
    return env


def app_environment(settings, environ) -> dict:
    """The app's environment when it runs on the embedded model: that server, its real model names."""
    env = dict(environ)
    env.pop("FOUNDRY_LOCAL_ENDPOINT", None)
    env.update(
        ASSISTANT_MODEL_ENDPOINT=settings.model_endpoint,
        ASSISTANT_SMALL_MODEL=settings.small_model,
        ASSISTANT_LARGE_MODEL=settings.large_model,
        ASSISTANT_EMBEDDED_ACTIVE="true",
        ASSISTANT_CONFIGURED_ENDPOINT=settings.configured_endpoint,
        ASSISTANT_DISCOVERY=settings.discovery,
    )
    # The 135M model reads prompts at a few hundred tokens/s on a laptop CPU: three sources instead of
    # five keep its first token near three seconds. An explicit setting wins.
    env.setdefault("ASSISTANT_TOP_K", str(EMBEDDED_TOP_K))
    return env


def say(line: str) -> None:
    print(line, flush=True)


def run_app(args, env: dict, started: float) -> int:
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
        stop_process(app)


if __name__ == "__main__":
    sys.exit(main())
