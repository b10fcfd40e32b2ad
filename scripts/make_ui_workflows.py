#!/usr/bin/env python
"""Generates the UI-format workflows (workflows/<name>.json, what the ComfyUI frontend loads) from the API-format
ones (workflows/api/<name>.json, what POST /prompt takes and the runner executes), so the two never drift.

The widget order, widget values and output slots come from the real /object_info of an in-process ComfyUI with
this pack loaded (attention_edit.headless.ui_format). Usage::

    python scripts/make_ui_workflows.py            # (re)writes workflows/*.json
    python scripts/make_ui_workflows.py --check    # exits 1 if a committed UI workflow is out of date
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
API_DIR = ROOT / "workflows" / "api"
UI_DIR = ROOT / "workflows"


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """{file name: UI JSON text} for every API workflow."""
    from attention_edit.headless import host as comfy_env

    comfy_env.configure_cpu()
    comfy_env.init_comfy(threads=1)
    from attention_edit.headless.ui_format import api_to_ui, object_info_for

    apis = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in sorted(API_DIR.glob("*.json"))}
    infos = object_info_for(list(apis.values()))
    return {f"{name}.json": dumps(api_to_ui(name, api, infos)) for name, api in apis.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only check that workflows/*.json are up to date")
    args = ap.parse_args(argv)
    out = generate()
    stale = []
    for fname, text in out.items():
        path = UI_DIR / fname
        current = path.read_text(encoding="utf-8") if path.is_file() else None
        if current != text:
            stale.append(fname)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    if args.check:
        if stale:
            print(f"out of date: {', '.join(stale)}; run python scripts/make_ui_workflows.py", file=sys.stderr)
            return 1
        print(f"{len(out)} UI workflows up to date")
        return 0
    print(f"wrote {len(stale)} of {len(out)} UI workflows into {UI_DIR}" + (f": {', '.join(stale)}" if stale else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
