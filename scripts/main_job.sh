#!/usr/bin/env bash
# One command: sets up what it needs (scripts/setup_env.sh: venv, torch 2.13.0 CPU, a real ComfyUI 0.3.75, this
# package; idempotent) and runs the headless runner on a real sample photo (scikit-image's cat, "chelsea") with
# the embedded default model (a tiny test model, not Stable Diffusion), writing the PNGs into out/.
#
#   bash scripts/main_job.sh                                  # p2p_word_swap_null_text
#   bash scripts/main_job.sh p2p_reweight --steps 10          # another workflow / runner options
#   bash scripts/main_job.sh p2p_word_swap_null_text --ckpt /models/v1-5-pruned-emaonly-fp16.safetensors
#
# Environment: AE_VENV (default .venv), AE_OUT (default out/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup_env.sh" 2>&1 | sed '/^WARNING: Location/d'
VENV="${AE_VENV:-$ROOT/.venv}"
OUT="${AE_OUT:-$ROOT/out}"
WORKFLOW="p2p_word_swap_null_text"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then WORKFLOW="$1"; shift; fi
cd "$ROOT"
exec "$VENV/bin/python" -m attention_edit.runner "$WORKFLOW" --out "$OUT" "$@"
