#!/usr/bin/env bash
# Runs the whole test suite, end-to-end browser tests included. Installs what it needs first:
# the Python packages into .venv and Debian's chromium (for Playwright; never `playwright install`).
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup-env.sh test
if [ ! -x /usr/bin/chromium ]; then
  echo "Installing Debian chromium for the browser tests..."
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y chromium >/dev/null 2>&1 || { $sudo_cmd apt-get update >/dev/null && $sudo_cmd apt-get install -y chromium >/dev/null; }
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "Installing Debian's postgresql for the shared-server tests..."
  sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get install -y postgresql >/dev/null 2>&1 || { $sudo_cmd apt-get update >/dev/null && $sudo_cmd apt-get install -y postgresql >/dev/null; }
fi
exec .venv/bin/python -m pytest "$@"
