#!/usr/bin/env bash
# Installs what `make run` / `make test` need on a fresh Debian/Ubuntu machine.
# Idempotent: each step is skipped when its result is already there.
#   bootstrap.sh run   -> system packages for the stack, .venv with the project
#   bootstrap.sh test  -> the above + Chromium for browser tests + SAM CLI venv
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-run}

# A Python >= 3.11 (pyproject's requires-python): $PYTHON, else python3, else a versioned one.
pick_python() {
  local c
  for c in ${PYTHON:-python3 python3.13 python3.12 python3.11}; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$c"
      return 0
    fi
  done
  return 1
}

need_pkgs=()
PY=$(pick_python || true)
if [ -z "$PY" ]; then
  if command -v python3 >/dev/null 2>&1; then
    echo "iotbridge needs Python 3.11 or newer; python3 here is $(python3 -V 2>&1)." >&2
    echo "Install one (Ubuntu 22.04: sudo apt-get install python3.11 python3.11-venv) and run: PYTHON=python3.11 make $want" >&2
    exit 1
  fi
  need_pkgs+=(python3 python3-venv)  # a minimal image: Debian 12 / Ubuntu 24.04's python3 is new enough
elif ! "$PY" -c 'import ensurepip' >/dev/null 2>&1; then
  venv_pkg="$(basename "$PY")-venv"  # python3-venv, or python3.11-venv for a versioned one
  need_pkgs+=("$venv_pkg")
fi
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
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      echo "missing: ${need_pkgs[*]}. Install them as root (apt-get install ${need_pkgs[*]}), then run make again." >&2
      exit 1
    fi
    SUDO="sudo"
  fi
  echo "installing with apt-get: ${need_pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
# Debian's package starts a system-wide broker on 1883; ours runs on its own ports,
# so it is harmless, but keep it from holding 1883 when the user wants the default.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
  echo "note: a system mosquitto service is running on 1883; iotbridge picks other ports if 1883 is taken"
fi

PY=${PY:-$(pick_python)}
# A venv is usable if its Python is new enough and has pip; one left behind by a failed
# attempt (no python3-venv then, or an older Python) is made again, not trusted.
usable_venv() {
  [ -x "$1/bin/python" ] && "$1/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    && "$1/bin/python" -m pip --version >/dev/null 2>&1
}
if ! usable_venv .venv; then
  rm -rf .venv
  "$PY" -m venv .venv
fi
# `make run` needs the project only; `make test` also its test tools (browsers, linters,
# MicroPython), some of which have no wheel for every platform.
extra=""; [ "$want" = test ] && extra="[test]"
stamp=".venv/.installed-$want"
# The editable install maps the packages it found: a package added since needs it again.
packages=$(ls -d functions/iotbridge_* infra/iotbridge_* device/pi/iotbridge_* 2>/dev/null | tr '\n' ' ')
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$(cat "$stamp")" != "$packages" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".$extra"
  echo "$packages" > "$stamp"
fi

if [ "$want" = test ]; then
  # SAM CLI pins its own boto3: it lives in its own venv.
  if [ ! -x .venv-sam/bin/sam ]; then
    rm -rf .venv-sam
    "$PY" -m venv .venv-sam
    .venv-sam/bin/python -m pip install -q aws-sam-cli
  fi
fi
