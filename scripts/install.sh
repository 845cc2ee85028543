#!/usr/bin/env bash
# Create .venv (if missing) and install textguide with a CPU-only torch. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${TEXTGUIDE_VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip >/dev/null 2>&1 || true
# torch first, CPU build: a bare `torch` requirement would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
    $PIP install -q --find-links /opt/wheels "torch==2.13.0"
  else
    $PIP install -q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
$PIP install -q -e ".[multilingual,test,bench,fast,privacy,ray]"   # ray: the distributed build and its tests (~20 s)
$PIP install -q -e ".[serve,serve-test]"   # textguide serve + its tests (HTTP client, browser driver)
# headless Debian chromium + chromedriver for the page test (tests/test_page.py); skipped when present or without apt
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver) >/dev/null 2>&1 \
      || echo "warning: could not install chromium + chromium-driver with apt; the page test will be skipped" >&2
  else
    echo "warning: chromium/chromedriver missing and apt-get unavailable (or not root); the page test will be skipped" >&2
  fi
fi
if $PIP list 2>/dev/null | grep -qi '^nvidia-'; then
  echo "error: CUDA packages (nvidia-*) found in $VENV; remove them and install torch==2.13.0 (CPU) first" >&2
  exit 1
fi
echo "textguide installed in $VENV ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
