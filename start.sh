#!/usr/bin/env bash
# Starts the chat at http://127.0.0.1:8000 (demo page at /demo). Uses Foundry Local (or the server in
# ASSISTANT_MODEL_ENDPOINT / FOUNDRY_LOCAL_ENDPOINT) when it answers, else the embedded SmolLM2 model.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-env.sh
exec .venv/bin/python -m assistant.launch "$@"
