#!/usr/bin/env bash
# On the GPU machine: installs the carried wheels, makes the checkout importable as `attention_edit`, runs "$@".
# (See scripts/device_prep.sh; run there with carry [.devcarry, .whl].)
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
mkdir -p /tmp/pk && ln -sfn "$PWD" /tmp/pk/attention_edit
export PYTHONPATH=/tmp/site:/tmp/pk:$PWD/.devcarry/stubs:$PWD/.devcarry/ComfyUI${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
exec "$@"
