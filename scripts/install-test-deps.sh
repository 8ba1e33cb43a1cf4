#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, only when missing:
# redis-server, Node.js/npm, Python venv support (Debian packages), the official Dapr SDKs
# (npm @dapr/dapr; PyPI dapr, dapr-ext-fastapi, flask, requests) and a running PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
command -v pg_ctlcluster >/dev/null || command -v psql >/dev/null || missing+=(postgresql)
# pubsub.kafka builds the bundled librdkafka (configure + make) and, from source, zlib and (for
# its TLS/SCRAM) OpenSSL (perl runs OpenSSL's Configure).
dpkg -s perl >/dev/null 2>&1 || missing+=(perl)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v make >/dev/null || missing+=(make)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

# The PostgreSQL the state tests create their own databases in (127.0.0.1:5432, trust auth).
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    version=$(ls /etc/postgresql 2>/dev/null | head -n1)
    [ -n "$version" ] && pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
fi

(cd tests/sdk/js && npm ci --no-audit --no-fund --loglevel=error)

venv=tests/sdk/python/.venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/sdk/python/requirements.txt
