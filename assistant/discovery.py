"""Find the model server, in this order:

1. an explicit endpoint setting (``ASSISTANT_MODEL_ENDPOINT`` or ``FOUNDRY_LOCAL_ENDPOINT``) that answers;
2. the ``foundry`` CLI on PATH: ``foundry service status`` names the service's URL (its port changes each
   time the service starts); a service that is installed but stopped is started (``foundry service start``);
3. the default endpoint, when nothing was set and a server answers there;
4. Foundry Local's Python SDK (``pip install '.[foundry]'``: ``foundry-local-sdk`` 2.x), which runs the
   runtime in-process, downloads and loads both models (progress in the terminal) and serves them on a
   local port;
5. nothing: the caller starts the embedded model.

Each step says what it found or why it was passed over; the result names the path taken so the chat's
welcome can say it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Callable

import httpx

SETTING, FOUNDRY_CLI, DEFAULT_ENDPOINT, FOUNDRY_SDK = "setting", "foundry CLI", "default endpoint", "foundry SDK"
STATUS_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+:\d+")
CLI_TIMEOUT_S = 30.0
SERVICE_START_TIMEOUT_S = 120.0


@dataclass
class Discovered:
    """A model server that answers, and how it was found."""

    endpoint: str  # OpenAI-compatible base URL, ending in /v1
    path: str  # SETTING, FOUNDRY_CLI, DEFAULT_ENDPOINT or FOUNDRY_SDK
    served: list[str] = field(default_factory=list)
    detail: str = ""
    runtime: object | None = None  # the SDK's in-process manager, kept alive while the app runs

    @property
    def description(self) -> str:
        """One line for the welcome message."""
        return f"{self.path} — {self.detail}" if self.detail else self.path


class DiscoveryError(RuntimeError):
    """A discovery step that was tried and failed in a way the user must hear about."""


# --------------------------------------------------------------------------------------------------
# Probing an endpoint
# --------------------------------------------------------------------------------------------------


def endpoint_answers(endpoint: str, api_key: str = "", timeout_s: float = 2.0) -> list[str] | None:
    """The served model ids when ``GET {endpoint}/models`` answers, else None."""
    try:
        reply = httpx.get(
            endpoint.rstrip("/") + "/models",
            headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
            timeout=timeout_s,
        )
        if reply.status_code != 200:
            return None
        return [m["id"] for m in reply.json().get("data", [])]
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def openai_base(url: str) -> str:
    """``http://127.0.0.1:5273/openai/status`` -> ``http://127.0.0.1:5273/v1``."""
    match = STATUS_URL.search(url)
    if match is None:
        raise ValueError(f"no http URL with a port in {url!r}")
    return match.group(0).rstrip("/") + "/v1"


# --------------------------------------------------------------------------------------------------
# Foundry Local's CLI
# --------------------------------------------------------------------------------------------------


def _run(command: list[str], timeout_s: float) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)
    return (done.stdout or "") + (done.stderr or "")


def service_url_from_status(output: str) -> str | None:
    """The service URL in ``foundry service status`` output, or None when it says the service is not running."""
    if re.search(r"not running|is stopped|not started", output, re.IGNORECASE):
        return None
    match = STATUS_URL.search(output)
    return openai_base(match.group(0)) if match else None


def foundry_cli_endpoint(announce: Callable[[str], None], *, which=shutil.which) -> str | None:
    """The base URL of the Foundry Local service found through its CLI, starting the service if it is
    stopped; None when the CLI is not installed. A service that cannot be started raises DiscoveryError."""
    executable = which("foundry")
    if executable is None:
        return None
    try:
        status = _run([executable, "service", "status"], CLI_TIMEOUT_S)
        url = service_url_from_status(status)
        if url is not None:
            return url
        announce("Foundry Local is installed but its service is not running: starting it (`foundry service start`)…")
        started = _run([executable, "service", "start"], SERVICE_START_TIMEOUT_S)
        url = service_url_from_status(started) or service_url_from_status(_run([executable, "service", "status"],
                                                                               CLI_TIMEOUT_S))
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DiscoveryError(f"`foundry service` did not answer ({exc.__class__.__name__}: {exc}).") from exc
    if url is None:
        last_line = (started.strip().splitlines() or ["(no output)"])[-1]
        raise DiscoveryError(f"Foundry Local's service did not start: {last_line}")
    return url


# --------------------------------------------------------------------------------------------------
# Foundry Local's Python SDK (optional extra)
# --------------------------------------------------------------------------------------------------


def foundry_sdk_available() -> bool:
    try:
        import foundry_local_sdk  # noqa: F401
    except ImportError:
        return False
    return True


def start_foundry_sdk(
    aliases: list[str], announce: Callable[[str], None], *, allow_download: bool = True
) -> tuple[str, dict[str, str], object]:
    """Run Foundry Local in-process: find each alias in its catalog, download it (progress announced), load
    it and start the SDK's web service. Returns (base URL, alias -> model id, manager).

    Offline, the catalog comes back empty (after a few seconds of retries): that is a DiscoveryError saying
    so, raised before anything is downloaded. ``allow_download=False`` (tests) stops before any download.
    """
    from foundry_local_sdk import Configuration, FoundryLocalManager

    announce("Starting Foundry Local in-process (foundry-local-sdk)…")
    FoundryLocalManager.initialize(Configuration(app_name="local-knowledge-assistant"))
    manager = FoundryLocalManager.instance
    catalog = manager.catalog
    models = {}
    for alias in aliases:
        model = catalog.get_model(alias)
        if model is None:
            if not catalog.list_models():
                raise DiscoveryError(
                    "Foundry Local's model catalog is empty: it could not be reached (no internet?), so "
                    f"{', '.join(aliases)} cannot be downloaded. Download them once while online, or run "
                    "another server."
                )
            raise DiscoveryError(f"Foundry Local's catalog has no model '{alias}'.")
        models[alias] = model
    ids = {}
    for alias, model in models.items():
        last = {"shown": -10.0}

        def progress(percent, alias=alias, last=last):
            if percent - last["shown"] >= 10 or percent >= 100:
                last["shown"] = percent
                announce(f"Downloading {alias}: {percent:.0f} %")

        if not allow_download:
            raise DiscoveryError(f"{alias} would have to be downloaded, and downloading is off.")
        model.download(progress_callback=progress)
        announce(f"Loading {alias}…")
        model.load()
        ids[alias] = model.id
    manager.start_web_service()
    return manager.urls[0].rstrip("/") + "/v1", ids, manager


# --------------------------------------------------------------------------------------------------
# The order
# --------------------------------------------------------------------------------------------------


def discover(
    settings,
    *,
    announce: Callable[[str], None] = print,
    which=shutil.which,
    use_sdk: bool | None = None,
) -> Discovered | None:
    """The first model server that answers, in the order of the module docstring; None when none does."""
    explicit = "model_endpoint" in settings.model_fields_set
    if explicit:
        served = endpoint_answers(settings.model_endpoint, settings.api_key)
        if served is not None:
            return Discovered(settings.model_endpoint, SETTING, served, f"`{settings.model_endpoint}` as configured")
        announce(f"Nothing answers at the configured endpoint {settings.model_endpoint}; looking for Foundry Local.")

    try:
        url = foundry_cli_endpoint(announce, which=which)
    except DiscoveryError as exc:
        announce(str(exc))
        url = None
    if url is not None:
        served = endpoint_answers(url, settings.api_key)
        if served is not None:
            return Discovered(url, FOUNDRY_CLI, served, f"Foundry Local at `{url}`, named by `foundry service status`")
        announce(f"`foundry service status` names {url}, but nothing answers there.")

    if not explicit:
        served = endpoint_answers(settings.model_endpoint, settings.api_key)
        if served is not None:
            return Discovered(settings.model_endpoint, DEFAULT_ENDPOINT, served, f"`{settings.model_endpoint}`")

    if use_sdk is None:
        use_sdk = foundry_sdk_available()
    if use_sdk:
        try:
            url, ids, manager = start_foundry_sdk([settings.small_model, settings.large_model], announce)
        except DiscoveryError as exc:
            announce(str(exc))
        except Exception as exc:  # the native runtime failing must not stop the app: the embedded model remains
            announce(f"Foundry Local's SDK failed: {exc.__class__.__name__}: {exc}")
        else:
            return Discovered(url, FOUNDRY_SDK, list(ids.values()),
                              f"Foundry Local run in-process by its Python SDK at `{url}`", runtime=manager)
    return None
