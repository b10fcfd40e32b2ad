"""The real ComfyUI frontend in headless Chromium (Playwright driving Debian's /usr/bin/chromium), for the tests and
scripts/screenshot_workflow.py: start a ComfyUI server with this pack, open the frontend, load a UI-format workflow,
read back what the frontend made of it (nodes, links, widget values, dialogs, console errors) and what the pack's
web extension displays under each Prompt-to-Prompt Edit node (its text, and every string drawn on the canvas).

Placeholder model files and the sample photo are put where the workflows' combo widgets expect them (nothing is
executed); the frontend tutorial is marked as completed first (POST /settings/Comfy.TutorialCompleted), otherwise a
templates dialog covers the canvas.
"""
from __future__ import annotations

import io
import json
import re
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
WORKFLOWS = ROOT / "workflows"
DEFAULT_WORKFLOW = "p2p_word_swap_null_text"
DEFAULT_OUT = ROOT / "docs" / "workflow_word_swap.png"
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1600, "height": 900}

# Browser console lines (logged while the workflow loads) that mean the frontend rejected (part of) it. Other
# errors are reported but not fatal: the 404s for optional user files (user.css, workflow lists, templates), the
# Content-Security-Policy blocks of the frontend's look-ups on api.comfy.org (ComfyUI blocks external requests
# under --disable-api-nodes; this machine is offline anyway) and a TypeError the frontend itself logs at start-up
# (useRenderModeSetting setting LiteGraph.Canvas.MinFontSizeForLOD before its definition is registered), which
# happen before any workflow is loaded and with or without this pack.
FATAL_PATTERNS = re.compile(
    r"missing node|node type|unknown node|not registered|invalid workflow|validat|schema|zod|unable to load|"
    r"failed to load workflow|loadWorkflowError|widget|TypeError|ReferenceError|RangeError|SyntaxError",
    re.IGNORECASE,
)

# The frontend's node-registry look-ups (https://api.comfy.org/...), blocked by ComfyUI's Content-Security-Policy.
BLOCKED_EXTERNAL = re.compile(r"Connecting to 'https://api\.comfy\.org/.*Content Security Policy")


def _workflow_path(name: str) -> Path:
    p = Path(name)
    if p.suffix != ".json":
        p = p.with_suffix(".json")
    if not p.is_absolute() and not p.exists():
        p = WORKFLOWS / p.name
    return p


def _prepare_base_dir(base: Path, workflows: list[dict]) -> None:
    """Placeholder model files and input images named by the workflows' combo widgets, so that the frontend
    shows them as valid selections (nothing is executed, so empty model files are enough)."""
    from attention_edit.headless.photos import photo_pil

    for sub in ("custom_nodes", "input", "output", "temp", "user", "models/checkpoints"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for wf in workflows:
        for node in wf.get("nodes", []):
            vals = node.get("widgets_values") or []
            if node.get("type") in ("CheckpointLoaderSimple", "CheckpointLoader") and vals:
                (base / "models" / "checkpoints" / str(vals[0])).touch()
            elif node.get("type") == "LoadImage" and vals:
                target = base / "input" / str(vals[0])
                if not target.exists():
                    photo_pil("cat", 512).save(target, format="PNG")


# JavaScript evaluated in the page ------------------------------------------------------------------------------

JS_APP_READY = """() => {
  const app = window.comfyAPI?.app?.app;
  return !!(app && app.graph && app.canvas && window.LiteGraph && app.extensionManager);
}"""

# Display settings for a clean picture (set in the page, after start-up): no minimap over the graph, no canvas
# statistics, and full-detail node rendering at any zoom (the default switches to simplified "LOD" boxes without
# text when the font gets smaller than 8 px on screen, which it does when a wide graph is fitted to 1600 px).
DISPLAY_SETTINGS = {
    "Comfy.Minimap.Visible": False,
    "Comfy.Graph.CanvasInfo": False,
    "LiteGraph.Canvas.MinFontSizeForLOD": 0,
}
# Stored on the server before the page opens (read at start-up): without it a templates dialog covers the canvas.
SERVER_SETTINGS = {"Comfy.TutorialCompleted": True}
# The "Introducing Nodes 2.0" banner remembers its dismissal in localStorage.
# and every string drawn on a canvas is recorded (window.__aeDrawn), so a test can check what was displayed.
INIT_SCRIPT = """
try { localStorage.setItem('vueNodesBannerDismissed', 'true'); } catch (e) {}
(() => {
  const seen = new Set();
  window.__aeDrawn = seen;
  const plain = CanvasRenderingContext2D.prototype.fillText;
  CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
    if (typeof text === 'string' && seen.size < 20000) seen.add(text);
    return plain.call(this, text, ...rest);
  };
})();
"""

JS_SETTINGS = """async (settings) => {
  const app = window.comfyAPI.app.app;
  for (const [id, value] of Object.entries(settings)) {
    try { await app.extensionManager.setting.set(id, value); } catch (e) { console.warn('setting ' + id + ': ' + e); }
  }
  if ('LiteGraph.Canvas.MinFontSizeForLOD' in settings) app.canvas.min_font_size_for_lod = settings['LiteGraph.Canvas.MinFontSizeForLOD'];
}"""

JS_LOAD = """async ({ wf, name }) => {
  const app = window.comfyAPI.app.app;
  const registered = window.LiteGraph.registered_node_types;
  const unknown = [...new Set((wf.nodes || []).map((n) => n.type).filter((t) => !(t in registered)))];
  let error = null;
  try {
    await app.loadGraphData(wf, true, true, name);
  } catch (e) {
    error = String(e && e.stack || e);
  }
  // Close the start-up "Unsaved Workflow" tab so that only the loaded workflow's tab shows.
  const store = app.extensionManager.workflow;
  for (const w of [...store.openWorkflows]) {
    if (w !== store.activeWorkflow) { try { await store.closeWorkflow(w); } catch (e) {} }
  }
  const nodes = app.graph.nodes.map((n) => ({
    id: n.id, type: n.type, title: n.title, has_errors: !!n.has_errors,
    widgets: (n.widgets || []).map((w) => [w.name, w.value]),
  }));
  // The workflow as the frontend saves it again: widget values it could not place, or filled in, show up here.
  const saved = Object.fromEntries(app.graph.serialize().nodes.map((n) => [n.id, n.widgets_values ?? []]));
  const widget_mismatch = (wf.nodes || [])
    .filter((n) => JSON.stringify(n.widgets_values ?? []) !== JSON.stringify(saved[n.id] ?? []))
    .map((n) => ({ id: n.id, type: n.type, file: n.widgets_values ?? [], frontend: saved[n.id] ?? null }));
  const links = app.graph.links instanceof Map ? app.graph.links.size : Object.keys(app.graph.links || {}).length;
  return { unknown, error, nodes, links, expected_nodes: (wf.nodes || []).length,
           expected_links: (wf.links || []).length, widget_mismatch, tabs: store.openWorkflows.map((w) => w.filename) };
}"""

# Fits all nodes (with their titles, and room for text an extension draws under a node) into the part of the
# canvas that no panel covers: the graph-canvas panel (right of the side bar, below the tabs) less a band at its
# top (breadcrumb, Run button) and at its bottom (zoom controls).
JS_FIT = """({ pad, below, bandTop, bandBottom }) => {
  const app = window.comfyAPI.app.app;
  const canvas = app.canvas;
  let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
  const titleH = window.LiteGraph.NODE_TITLE_HEIGHT || 30;
  for (const n of app.graph.nodes) {
    x0 = Math.min(x0, n.pos[0]);
    y0 = Math.min(y0, n.pos[1] - titleH);
    x1 = Math.max(x1, n.pos[0] + n.size[0]);
    y1 = Math.max(y1, n.pos[1] + n.size[1] + below);
  }
  const rect = canvas.canvas.getBoundingClientRect();
  const panel = document.querySelector('.graph-canvas-panel')?.getBoundingClientRect() ?? rect;
  const left = panel.left, top = panel.top + bandTop, right = panel.right, bottom = panel.bottom - bandBottom;
  const vw = right - left - 2 * pad, vh = bottom - top - 2 * pad;
  const scale = Math.min(vw / (x1 - x0), vh / (y1 - y0));
  const ds = canvas.ds;
  ds.scale = scale;
  // screen = (graph + offset) * scale, in canvas-element CSS pixels
  const cx = (left - rect.left) + pad + (vw - (x1 - x0) * scale) / 2;
  const cy = (top - rect.top) + pad + (vh - (y1 - y0) * scale) / 2;
  ds.offset[0] = cx / scale - x0;
  ds.offset[1] = cy / scale - y0;
  canvas.setDirty(true, true);
  return { scale, bbox: [x0, y0, x1, y1], visible: [left, top, right, bottom] };
}"""

JS_ALIGN_TEXT = """() => {
  const app = window.comfyAPI.app.app;
  return app.graph.nodes.filter((n) => n.type === "AE_P2PEdit").map((n) => n.__aeAlignText ?? null);
}"""

JS_ALIGN_NODES = """() => {
  const app = window.comfyAPI.app.app;
  return app.graph.nodes.filter((n) => n.type === "AE_P2PEdit").map((n) => ({id: n.id, title: n.title,
                                                                              text: n.__aeAlignText ?? null}));
}"""

JS_DRAWN = """() => [...(window.__aeDrawn || [])]"""

JS_DIALOGS = """() => {
  const out = [];
  for (const el of document.querySelectorAll('.p-dialog, .p-toast-message, [role="dialog"], [role="alert"]')) {
    const r = el.getBoundingClientRect();
    if (r.width && r.height) out.push(el.innerText.trim().replace(/\\s+/g, ' ').slice(0, 500));
  }
  return [...new Set(out)].filter((t) => t);
}"""

JS_CLOSE_DIALOGS = """() => {
  for (const el of document.querySelectorAll('.p-dialog-close-button, .p-toast-close-button')) el.click();
}"""


def check_workflow(page, server_url: str, wf_path: Path, out: Path | None, *, settle: float = 3.5,
                   verbose: bool = False) -> dict:
    """Loads one workflow into a fresh page; returns a report dict (and writes the screenshot if *out*)."""
    wf = json.loads(wf_path.read_text())
    console: list[tuple[str, str]] = []
    page_errors: list[str] = []
    failed: list[str] = []
    on_console = lambda m: console.append((m.type, m.text))
    on_pageerror = lambda e: page_errors.append(str(e))
    on_response = lambda r: failed.append(f"{r.status} {r.request.method} {r.url}") if r.status >= 400 else None
    on_failed = lambda r: failed.append(f"FAILED {r.method} {r.url}: {r.failure}")
    page.on("console", on_console)
    page.on("pageerror", on_pageerror)
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    report: dict = {"workflow": str(wf_path.relative_to(ROOT) if wf_path.is_relative_to(ROOT) else wf_path)}
    try:
        page.goto(server_url + "/", wait_until="load", timeout=120_000)
        page.wait_for_function(JS_APP_READY, timeout=120_000, polling=200)
        page.wait_for_timeout(1500)  # let start-up dialogs/toasts (if any) appear, then clear them
        report["startup_dialogs"] = page.evaluate(JS_DIALOGS)
        page.evaluate(JS_CLOSE_DIALOGS)
        page.evaluate(JS_SETTINGS, DISPLAY_SETTINGS)
        n_console_before, n_errors_before = len(console), len(page_errors)
        res = page.evaluate(JS_LOAD, {"wf": wf, "name": wf_path.stem})
        report.update(res)
        page.wait_for_timeout(800)
        report["dialogs"] = page.evaluate(JS_DIALOGS)
        report["fit"] = page.evaluate(JS_FIT, {"pad": 16, "below": 24, "bandTop": 48, "bandBottom": 52})
        # The extension polls every second and the align request is async: wait for its text.
        deadline = time.monotonic() + settle + 5
        time.sleep(settle)
        texts = page.evaluate(JS_ALIGN_TEXT)
        while time.monotonic() < deadline and any(t is None for t in texts):
            time.sleep(0.25)
            texts = page.evaluate(JS_ALIGN_TEXT)
        report["align_text"] = texts
        report["align_nodes"] = page.evaluate(JS_ALIGN_NODES)
        page.evaluate("() => window.comfyAPI.app.app.graph.setDirtyCanvas(true, true)")
        page.wait_for_timeout(500)
        report["drawn"] = page.evaluate(JS_DRAWN)
        report["dialogs_at_shot"] = page.evaluate(JS_DIALOGS)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            png = page.screenshot(full_page=False)
            report["png_bytes"] = _save_png(png, out)
            report["out"] = str(out)
        report["console_during_load"] = [f"{t}: {x}" for t, x in console[n_console_before:] if t in ("error", "warning")]
        report["page_errors_during_load"] = page_errors[n_errors_before:]
    except Exception as exc:  # noqa: BLE001 - reported, and makes the run fail
        report["error"] = report.get("error") or f"{type(exc).__name__}: {exc}"
    finally:
        page.remove_listener("console", on_console)
        page.remove_listener("pageerror", on_pageerror)
        page.remove_listener("response", on_response)
        page.remove_listener("requestfailed", on_failed)
    report["console"] = [f"{t}: {x}" for t, x in console if t in ("error", "warning")]
    report["page_errors"] = page_errors
    report["failed_requests"] = failed
    report["problems"] = _problems(report)
    _print_report(report, verbose)
    return report


def _problems(r: dict) -> list[str]:
    probs = []
    if r.get("error"):
        probs.append(f"load failed: {r['error']}")
    if r.get("unknown"):
        probs.append(f"node types unknown to the frontend: {r['unknown']}")
    if "nodes" in r and len(r["nodes"]) != r.get("expected_nodes"):
        probs.append(f"graph has {len(r['nodes'])} nodes, the workflow {r.get('expected_nodes')}")
    if "links" in r and r["links"] != r.get("expected_links"):
        probs.append(f"graph has {r['links']} links, the workflow {r.get('expected_links')}")
    for m in r.get("widget_mismatch", []):
        probs.append(f"node {m['id']} ({m['type']}): widgets_values {json.dumps(m['file'])} in the file, "
                     f"{json.dumps(m['frontend'])} after loading into the frontend")
    for d in r.get("dialogs", []) + r.get("dialogs_at_shot", []):
        probs.append(f"frontend dialog/toast: {d}")
    for line in r.get("console_during_load", []):
        if FATAL_PATTERNS.search(line):
            probs.append(f"browser console: {line}")
    for e in r.get("page_errors_during_load", []):
        probs.append(f"uncaught exception in the page: {e}")
    for t in r.get("align_text") or []:
        if isinstance(t, str) and t.startswith("\u26a0"):
            probs.append(f"the web extension reports an alignment error on the Prompt-to-Prompt Edit node: {t}")
    return list(dict.fromkeys(probs))


def _print_report(r: dict, verbose: bool = False) -> None:
    print(f"== {r['workflow']}")
    if "nodes" in r:
        print(f"   nodes {len(r['nodes'])}/{r['expected_nodes']}, links {r['links']}/{r['expected_links']}, "
              f"unknown types {r.get('unknown') or 'none'}, zoom {r.get('fit', {}).get('scale', 0):.3f}")
    if r.get("startup_dialogs"):
        print(f"   start-up dialogs (closed before loading): {r['startup_dialogs']}")
    print(f"   alignment text under the Prompt-to-Prompt Edit node(s): {r.get('align_text')}")
    during = r.get("console_during_load", [])
    csp = [line for line in during if BLOCKED_EXTERNAL.search(line)]
    for line in during:
        if line not in csp or verbose:
            print(f"   [console while loading] {line.splitlines()[0][:300]}")
    if csp and not verbose:
        print(f"   ({len(csp)} blocked look-ups on api.comfy.org while loading: the frontend asking the node "
              f"registry about the pack's nodes; offline here)")
    before = [c for c in r.get("console", []) if c not in during]
    if verbose:
        for line in before:
            print(f"   [console at start-up] {line.splitlines()[0][:300]}")
        for line in r.get("failed_requests", []):
            print(f"   [request] {line}")
    elif before or r.get("failed_requests"):
        print(f"   ({len(before)} console errors/warnings at start-up, before loading, and "
              f"{len(r.get('failed_requests', []))} failed requests: --verbose lists them)")
    for e in r.get("page_errors", []):
        print(f"   [uncaught exception] {e.splitlines()[0][:300]}")
    if r.get("out"):
        print(f"   screenshot: {r['out']} ({r['png_bytes'] / 1024:.0f} KB)")
    if r["problems"]:
        for p in r["problems"]:
            print(f"   PROBLEM: {p}")
    else:
        print("   OK: loaded without errors")


def _save_png(data: bytes, out: Path, max_bytes: int = 400_000) -> int:
    """Saves the screenshot, quantised to a palette if the full-colour PNG is larger than *max_bytes*."""
    from PIL import Image

    img = Image.open(io.BytesIO(data)).convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    if buf.tell() > max_bytes:
        buf = io.BytesIO()
        img.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            buf, format="PNG", optimize=True)
    out.write_bytes(buf.getvalue())
    return buf.tell()




class FrontendSession:
    """``with FrontendSession(workflow_paths) as fe: report = fe.check(path)``: one ComfyUI server and one headless
    Chromium for several workflow checks (a fresh browser context per check)."""

    def __init__(self, workflow_paths, chromium: str = CHROMIUM, dpr: float = 1.0, base_dir=None):
        self.paths = [Path(p) for p in workflow_paths]
        self.chromium = chromium
        self.dpr = dpr
        self._tmp = None
        self.base_dir = Path(base_dir) if base_dir else None

    def __enter__(self):
        from playwright.sync_api import sync_playwright

        from .server import ComfyServer

        if self.base_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="ae_frontend_")
            self.base_dir = Path(self._tmp.name)
        _prepare_base_dir(self.base_dir, [json.loads(p.read_text()) for p in self.paths])
        self.server = ComfyServer(base_dir=self.base_dir, extra_args=["--disable-api-nodes"]).start()
        try:
            for key, value in SERVER_SETTINGS.items():
                self.server.post(f"/settings/{key}", value).raise_for_status()
            self._pw = sync_playwright().start()
            self.browser = self._pw.chromium.launch(executable_path=self.chromium, headless=True,
                                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        except BaseException:
            self.server.stop()
            raise
        return self

    def check(self, wf_path, out=None, settle: float = 3.5, verbose: bool = False) -> dict:
        ctx = self.browser.new_context(viewport=VIEWPORT, device_scale_factor=self.dpr)
        ctx.add_init_script(INIT_SCRIPT)
        try:
            return check_workflow(ctx.new_page(), self.server.url, Path(wf_path), out, settle=settle,
                                  verbose=verbose)
        finally:
            ctx.close()

    def __exit__(self, *exc):
        try:
            self.browser.close()
            self._pw.stop()
        finally:
            self.server.stop()
            if self._tmp is not None:
                self._tmp.cleanup()
