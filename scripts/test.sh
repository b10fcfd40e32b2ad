#!/usr/bin/env bash
# The test command: sets up everything it needs on a fresh machine (scripts/setup_env.sh: venv, torch 2.13.0
# CPU, a real ComfyUI 0.3.75, this package with its test extras), then runs the whole test suite on the CPU.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -k p2p`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" 2>&1 | sed '/^WARNING: Location/d'
VENV="${AE_VENV:-$ROOT/.venv}"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
