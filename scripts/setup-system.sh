#!/usr/bin/env bash
# Install the system packages Lookalike needs, only those that are missing.
# Debian: dataset-fashion-mnist (the sample catalog), redis-server (broker, tests),
# chromium (UI tests), nginx (in front of gunicorn in `make stack`, and its tests).
# PostgreSQL is expected to be installed already.
set -euo pipefail
missing=()
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
command -v redis-server >/dev/null || missing+=(redis-server)
# Debian installs nginx in /usr/sbin, which a normal user's PATH may lack.
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
# docker-compose validates docker-compose.yml in the tests (there is no Docker engine).
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
if [ "${LOOKALIKE_SKIP_BROWSER:-0}" != 1 ]; then
  command -v chromium >/dev/null || missing+=(chromium)
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# Throwaway PostgreSQL clusters for the tests need initdb/postgres on PATH.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "setup: PostgreSQL server binaries (initdb) not found; integration tests will fail" >&2
  exit 1
fi
