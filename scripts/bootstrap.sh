#!/usr/bin/env bash
# Create (or reuse) the project venv in .venv and install Quanta into it with the
# given extras. Sourced by scripts/up and scripts/test; prints nothing on reuse.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QUANTA_VENV:-$ROOT/.venv}"
EXTRAS="${1:-etcd}"
PYTHON="${PYTHON:-python3}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "Quanta needs Python >= 3.11 (found: $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
  exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "creating venv in $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
# Reinstall when pyproject.toml changed since the last install or extras are missing;
# keep the extras installed before (scripts/up and scripts/test then share one install).
STAMP="$VENV/.quanta-installed"
HASH="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
HAVE_HASH="" HAVE_EXTRAS=""
if [ -f "$STAMP" ]; then read -r HAVE_HASH HAVE_EXTRAS < "$STAMP" || true; fi
ALL="$(printf '%s\n' ${EXTRAS//,/ } ${HAVE_EXTRAS//,/ } | sort -u | paste -sd, -)"
if [ "$HAVE_HASH" != "$HASH" ] || [ "$ALL" != "$HAVE_EXTRAS" ]; then
  echo "installing quanta[$ALL] into $VENV" >&2
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$ALL]" >&2
  echo "$HASH $ALL" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
