"""The demo page's third engine: the embedded GGUF model run inside the browser by llama.cpp compiled to
WebAssembly (npm ``@wllama/wllama``, installed into ``node_modules/`` by ``scripts/setup-env.sh``).

The server's part is small and stays under ``/demo/`` (so app-wide middleware covers it):

* ``GET /demo/engine/model/{fingerprint}/{file}.gguf``  the same GGUF file the embedded server loads. The
  fingerprint (file size and modification time) is in the URL, so the response may be cached for good; the
  page keeps it in the browser's own storage (wllama's cache, the origin-private file system) as well.
* ``GET /demo/engine/runtime/{version}/{name}``  the runtime's ES module and its ``.wasm``, straight from
  the installed npm package (``compat/…``: the build for browsers without JSPI or Memory64, when installed).
* :func:`engine_info`, part of ``/demo/api/info``: whether the engine can run here and, if not, why, in
  plain words the page shows as they are.

Both file routes answer only this app's own pages: a request another site's page makes is refused
(browsers say where a request comes from in ``Sec-Fetch-Site`` and ``Origin``).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from assistant.embedded import EmbeddedModelError, default_model_path, model_name
from assistant.settings import PROJECT_ROOT

NODE_MODULES = PROJECT_ROOT / "node_modules"
RUNTIME_PACKAGE = "@wllama/wllama"
COMPAT_PACKAGE = "@wllama/wllama-compat"
# URL name -> (package, path inside it, media type). Nothing else from node_modules is served.
RUNTIME_FILES = {
    "wllama.js": (RUNTIME_PACKAGE, "esm/index.js", "text/javascript; charset=utf-8"),
    "wllama.wasm": (RUNTIME_PACKAGE, "esm/wasm/wllama.wasm", "application/wasm"),
    "compat/wllama.js": (COMPAT_PACKAGE, "wasm/wllama.js", "text/javascript; charset=utf-8"),
    "compat/wllama.wasm": (COMPAT_PACKAGE, "wasm/wllama.wasm", "application/wasm"),
}
# The URLs carry a version or a fingerprint: what they name never changes. "identity" keeps the app's gzip
# middleware (Chainlit's, level 9) off these files: it would spend the server's CPU recompressing 98 MB of
# quantized weights, which hardly shrink, on every first visit, and drop Content-Length (the progress bar's total).
IMMUTABLE_HEADERS = {
    "Cache-Control": "private, max-age=31536000, immutable",
    "Content-Encoding": "identity",
    "Cross-Origin-Resource-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}
BROWSER_LIMIT_BYTES = 2 * 1024**3  # wllama reads one GGUF file into one ArrayBuffer: at most 2 GB


@dataclass
class BrowserEngine:
    """What the page needs to run the model itself, or the reasons it cannot."""

    problems: list[str] = field(default_factory=list)
    model_path: Path | None = None
    model_fingerprint: str = ""
    runtime_version: str | None = None
    compat_installed: bool = False

    @property
    def available(self) -> bool:
        return not self.problems

    @property
    def model_url(self) -> str | None:
        if self.model_path is None:
            return None
        return f"/demo/engine/model/{self.model_fingerprint}/{self.model_path.name}"

    def runtime_url(self, name: str) -> str | None:
        if self.runtime_version is None:
            return None
        return f"/demo/engine/runtime/{self.runtime_version}/{name}"

    def info(self, context_window: int) -> dict:
        model = None
        if self.model_path is not None:
            model = {
                "name": model_name(self.model_path),
                "file": self.model_path.name,
                "url": self.model_url,
                "bytes": self.model_path.stat().st_size,
            }
        runtime = None
        if self.runtime_version is not None:
            runtime = {
                "package": RUNTIME_PACKAGE,
                "version": self.runtime_version,
                "module_url": self.runtime_url("wllama.js"),
                "wasm_url": self.runtime_url("wllama.wasm"),
                "compat_worker_url": self.runtime_url("compat/wllama.js") if self.compat_installed else None,
                "compat_wasm_url": self.runtime_url("compat/wllama.wasm") if self.compat_installed else None,
            }
        return {
            "available": self.available,
            "problems": list(self.problems),
            "model": model,
            "runtime": runtime,
            "context_window": context_window,
        }


def find_browser_engine(settings, node_modules: Path = NODE_MODULES) -> BrowserEngine:
    """Look for the npm runtime and the model file (a few stat calls: cheap enough for every request)."""
    engine = BrowserEngine()
    package_dir = node_modules / RUNTIME_PACKAGE
    version = _package_version(package_dir)
    missing = [path for _, path, _ in _files_of(RUNTIME_PACKAGE) if not (package_dir / path).is_file()]
    if version is None or missing:
        if shutil.which("npm") is None:
            engine.problems.append(
                "In-browser mode is unavailable: npm is not installed on the machine running this app, so the "
                f"browser runtime ({RUNTIME_PACKAGE}) could not be installed. Install Node.js with npm "
                "(e.g. `apt-get install npm`), then run ./start.sh again."
            )
        else:
            engine.problems.append(
                f"In-browser mode is unavailable: the browser runtime ({RUNTIME_PACKAGE}) is not installed in "
                f"{node_modules}. Run scripts/setup-env.sh (./start.sh runs it), which installs it with `npm ci`."
            )
    else:
        engine.runtime_version = version
        compat_dir = node_modules / COMPAT_PACKAGE
        engine.compat_installed = _package_version(compat_dir) is not None and all(
            (compat_dir / path).is_file() for _, path, _ in _files_of(COMPAT_PACKAGE)
        )

    try:
        path = Path(settings.embedded_model_path) if settings.embedded_model_path else default_model_path()
        if not path.is_file():
            raise EmbeddedModelError(f"The model file is missing: {path}")
    except EmbeddedModelError as exc:
        engine.problems.append(f"In-browser mode is unavailable: {exc}")
        return engine
    if path.suffix.lower() != ".gguf":
        engine.problems.append(f"In-browser mode is unavailable: {path.name} is not a .gguf file.")
        return engine
    stat = path.stat()
    if stat.st_size >= BROWSER_LIMIT_BYTES:
        engine.problems.append(
            f"In-browser mode is unavailable: {path.name} is {stat.st_size / 1024**3:.1f} GB; the browser "
            "runtime reads one file of at most 2 GB."
        )
        return engine
    engine.model_path = path
    engine.model_fingerprint = hashlib.sha256(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return engine


def _files_of(package: str):
    return [entry for entry in RUNTIME_FILES.values() if entry[0] == package]


def _package_version(package_dir: Path) -> str | None:
    try:
        version = json.loads((package_dir / "package.json").read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None
    return version if isinstance(version, str) and version else None


def cross_site_problem(request: Request) -> str | None:
    """Why this request does not come from this app's own pages, or None when it does.

    A browser names the requesting site in ``Sec-Fetch-Site`` (and, for most fetches, ``Origin``);
    "none" is a user typing the URL. Clients that send neither (curl, the benchmark) are not pages.
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"This file is served only to this app's own pages (the request came from a {site} page)."
    origin = request.headers.get("origin")
    if origin is not None:
        host = request.headers.get("host", "")
        if origin == "null" or origin.split("://", 1)[-1].rstrip("/") != host:
            return "This file is served only to this app's own pages."
    return None


def install_browser_engine_routes(app: FastAPI, settings, node_modules: Path = NODE_MODULES) -> None:
    """Add the model-file and runtime routes (the caller moves them ahead of Chainlit's catch-all)."""

    async def model_file(request: Request, fingerprint: str, file_name: str) -> Response:
        problem = cross_site_problem(request)
        if problem:
            return JSONResponse({"error": problem}, status_code=403)
        engine = find_browser_engine(settings, node_modules)
        if engine.model_path is None or fingerprint != engine.model_fingerprint or file_name != engine.model_path.name:
            return JSONResponse({"error": "No such model file (reload the page)."}, status_code=404)
        headers = dict(IMMUTABLE_HEADERS, ETag=f'"{engine.model_fingerprint}"')
        return FileResponse(engine.model_path, media_type="application/octet-stream", headers=headers)

    async def runtime_file(request: Request, version: str, name: str) -> Response:
        problem = cross_site_problem(request)
        if problem:
            return JSONResponse({"error": problem}, status_code=403)
        entry = RUNTIME_FILES.get(name)
        engine = find_browser_engine(settings, node_modules)
        if entry is None or engine.runtime_version is None or version != engine.runtime_version:
            return JSONResponse({"error": "No such runtime file."}, status_code=404)
        package, relative, media_type = entry
        path = node_modules / package / relative
        if not path.is_file():
            return JSONResponse({"error": "No such runtime file."}, status_code=404)
        return FileResponse(path, media_type=media_type, headers=dict(IMMUTABLE_HEADERS))

    app.add_api_route(
        "/demo/engine/model/{fingerprint}/{file_name}", model_file, methods=["GET", "HEAD"], include_in_schema=False
    )
    app.add_api_route(
        "/demo/engine/runtime/{version}/{name:path}", runtime_file, methods=["GET", "HEAD"], include_in_schema=False
    )
