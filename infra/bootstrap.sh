#!/usr/bin/env bash
# Installs what `make run` / `make test` need on a fresh Debian/Ubuntu machine.
# Idempotent: each step is skipped when its result is already there.
#   bootstrap.sh run   -> system packages for the stack, .venv with the project
#   bootstrap.sh test  -> the above + Chromium for browser tests + SAM CLI venv
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-run}
PY=${PYTHON:-python3}

need_pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
if [ "$want" = test ]; then
  [ -x /usr/lib/chromium/chromium ] || [ -x /usr/bin/chromium ] || need_pkgs+=(chromium)
  command -v ss >/dev/null 2>&1 || need_pkgs+=(iproute2)  # the listener tests check what listens where
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${need_pkgs[*]}. On macOS: brew install mosquitto (and Chromium for tests); see README." >&2
    exit 1
  fi
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing with apt-get: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian's package starts a system-wide broker on 1883; ours runs on its own ports,
# so it is harmless, but keep it from holding 1883 when the user wants the default.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  echo "note: a system mosquitto service is running on 1883; iotbridge picks other ports if 1883 is taken"
fi

stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e '.[test]'
  touch "$stamp"
fi

if [ "$want" = test ]; then
  # SAM CLI pins its own boto3: it lives in its own venv.
  if [ ! -x .venv-sam/bin/sam ]; then
    "$PY" -m venv .venv-sam
    .venv-sam/bin/python -m pip install -q aws-sam-cli
  fi
fi
