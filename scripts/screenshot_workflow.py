#!/usr/bin/env python
"""Loads a UI-format workflow (workflows/<name>.json) into the real ComfyUI frontend, headless, and saves a
screenshot of the graph; also a smoke test that the frontend accepts the workflow.

What it does (tests/support/frontend.py, shared with tests/test_frontend.py): starts a real ComfyUI server with this
pack installed (tests/support/server.py ComfyServer,
CPU, temporary base directory), puts a placeholder checkpoint file and the sample cat photo where the workflow's
combo widgets expect them (so the Load Checkpoint / Load Image widgets show valid values; nothing is executed),
marks the frontend tutorial as completed (POST /settings/Comfy.TutorialCompleted, otherwise a templates dialog
covers the canvas), opens the frontend in headless Chromium (Playwright driving Debian's /usr/bin/chromium) at
1600x900, calls ``app.loadGraphData(workflow)``, fits the whole graph into the canvas, waits for the pack's web
extension to draw the token-alignment line under the Prompt-to-Prompt Edit node, and saves a PNG.

It reports the browser console errors/warnings, page errors, failed requests, node types the frontend does not
know, the frontend's own dialogs/toasts (missing nodes, missing models, load errors) and whether the alignment
text appeared. Exit status 1 if the workflow did not load or the frontend complained about missing node types,
invalid workflow data or widgets.

Usage::

    apt-get install -y chromium && pip install playwright     # no `playwright install` needed
    python scripts/screenshot_workflow.py                      # workflows/p2p_word_swap.json
                                                               #   -> docs/workflow_word_swap.png
    python scripts/screenshot_workflow.py --workflow p2p_reweight --out /tmp/reweight.png
    python scripts/screenshot_workflow.py --workflow p2p_reweight --out ''   # check only, no screenshot
    python scripts/screenshot_workflow.py --all                # check every workflows/*.json (no screenshots
                                                               #   unless --out-dir is given)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / "workflows"
DEFAULT_WORKFLOW = "p2p_word_swap"
DEFAULT_OUT = ROOT / "docs" / "workflow_word_swap.png"

sys.path.insert(0, str(ROOT / "tests"))
from support.frontend import CHROMIUM, FrontendSession, _workflow_path  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="workflows/<NAME>.json (or a path)")
    ap.add_argument("--out", default=None, help=f"PNG to write (default {DEFAULT_OUT.relative_to(ROOT)} for the "
                                                f"default workflow, none otherwise; '' for none)")
    ap.add_argument("--all", action="store_true", help="check every workflows/*.json")
    ap.add_argument("--out-dir", default=None, help="with --all: write <NAME>.png screenshots here")
    ap.add_argument("--chromium", default=CHROMIUM, help="Chromium executable (default %(default)s)")
    ap.add_argument("--settle", type=float, default=3.5, help="seconds to wait after loading (default %(default)s)")
    ap.add_argument("--dpr", type=float, default=2.0,
                    help="device pixel ratio: the PNG is 1600x900 times this (default %(default)s: a 3200x1800 "
                         "picture that stays legible when the graph is zoomed out to fit)")
    ap.add_argument("--verbose", action="store_true", help="also list start-up console errors and failed requests")
    ap.add_argument("--json", default=None, help="also write the reports as JSON here")
    args = ap.parse_args(argv)

    if args.all:
        jobs = [(p, Path(args.out_dir) / f"{p.stem}.png" if args.out_dir else None)
                for p in sorted(WORKFLOWS.glob("*.json"))]
    else:
        p = _workflow_path(args.workflow)
        if args.out is None:
            out = DEFAULT_OUT if p.stem == DEFAULT_WORKFLOW else None
        else:
            out = Path(args.out) if args.out else None
        jobs = [(p, out)]

    reports = []
    with FrontendSession([p for p, _ in jobs], chromium=args.chromium, dpr=args.dpr) as fe:
        print(f"ComfyUI at {fe.server.url} (started in {fe.server.startup_seconds:.1f} s)")
        for p, out in jobs:
            reports.append(fe.check(p, out, settle=args.settle, verbose=args.verbose))
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=2, ensure_ascii=False))
    bad = [r["workflow"] for r in reports if r["problems"]]
    if bad:
        print(f"FAILED: {', '.join(bad)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
