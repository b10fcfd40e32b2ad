#!/usr/bin/env bash
# Prepares what a lent GPU machine (no package registry there) needs to run this pack's scripts:
#   .devcarry/ComfyUI   a slim copy of the ComfyUI checkout (big unused tokenizers, tests, API nodes left out)
#   .devcarry/stubs/av  an import stub for PyAV (comfy_api imports it; these scripts never touch video)
#   .whl/               py3.12 wheels of the ComfyUI dependencies that image lacks
# Both folders are git-ignored (.git/info/exclude); carry them with the run. Then, there:
#   bash scripts/device_env.sh python3 -m attention_edit.toyworld.train ...
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
grep -qx '/.devcarry/' .git/info/exclude 2>/dev/null || echo '/.devcarry/' >> .git/info/exclude
rm -rf .devcarry/ComfyUI && mkdir -p .devcarry/stubs/av/subtitles
cp -r .comfyui/ComfyUI .devcarry/ComfyUI
(cd .devcarry/ComfyUI && rm -rf comfy/text_encoders/{llama,qwen25,t5,hydit_clip,ace_lyrics,t5_pile}_tokenizer \
    tests tests-unit comfy_api_nodes .git && find . -name __pycache__ -prune -exec rm -rf {} +)
cat > .devcarry/stubs/av/__init__.py <<'PY'
"""Import stub for PyAV on the GPU machine only (video inputs are never used by the scripts run there)."""


def __getattr__(name):
    class _Any:
        def __init__(self, *a, **k):
            pass

        def __getattr__(self, n):
            return _Any
    return _Any
PY
for m in container subtitles/__init__ subtitles/stream; do echo 'from av import __getattr__  # noqa: F401' > .devcarry/stubs/av/$m.py; done
. .venv/bin/activate
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
    torchsde==0.2.6 trampoline==0.1.2 pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 \
    typing-inspection==0.4.5
du -sh .devcarry .whl
