#!/usr/bin/env bash
# One command: sets up what it needs (scripts/setup_env.sh: venv, torch 2.13.0 CPU, a real ComfyUI 0.3.75, this
# package; idempotent) and runs the headless runner with the embedded default model (ToyWorld, a 64x64 model of
# coloured shapes, not Stable Diffusion) on a rendered ToyWorld scene: "a red circle on the left" is inverted and
# edited to "a blue circle on the left"; out/ gets the PNGs and p2p_word_swap_side_by_side.png
# (source | reconstruction | edit), and the judge's reading of each is printed.
#
#   bash scripts/main_job.sh                                  # p2p_word_swap_null_text on the ToyWorld scene
#   bash scripts/main_job.sh --scene "a big yellow square on the right" --edited-prompt "a big blue square on the right"
#   bash scripts/main_job.sh --photo                          # scikit-image's cat photo instead of the scene
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
