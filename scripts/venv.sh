#!/usr/bin/env bash
# Print the path of the project's virtual environment, creating it if needed.
# It lives in a cache keyed by requirements.lock, so repeated runs (and other
# clones) reuse the 5 GB torch install instead of reinstalling it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
key=$(sha256sum "$here/requirements.lock" | cut -c1-16)
venv="${LOOKALIKE_VENV_CACHE:-$HOME/.cache/lookalike}/venv-$key"
if [ ! -f "$venv/.complete" ]; then
  echo "setup: creating $venv (first run only; torch is large)" >&2
  rm -rf "$venv"
  python3.11 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$here/requirements.lock" >&2
  touch "$venv/.complete"
fi
echo "$venv"
