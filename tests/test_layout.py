"""The layout rule (shared/notes/design.md, the bridge issue): every import of ComfyUI internals is in comfy_bridge/;
attention/, inversion/ and training/ are pure torch (they import without ComfyUI); the layers only depend
downwards; the product never imports a test package."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: ComfyUI's top-level modules (its internals); comfy_api is its public node API
COMFY_INTERNALS = {"comfy", "comfy_extras", "comfy_execution", "folder_paths", "execution", "server", "nodes",
                   "node_helpers", "latent_preview", "app", "comfyui_version", "comfy_config", "api_server",
                   "middleware", "utils", "protocol", "cuda_malloc", "hook_breaker_ac10a0", "comfy_api_nodes"}
PRODUCT = ("attention", "inversion", "training", "comfy_bridge", "nodes", "headless", "runner", "toyworld", "bench")
PURE = ("attention", "inversion", "training")
#: which of the pack's packages each package may import (the layering: algorithms, then the bridge, then glue)
ALLOWED = {
    "attention": set(),
    "inversion": {"attention"},
    "training": set(),
    "comfy_bridge": {"attention", "inversion", "training"},
    "toyworld": {"comfy_bridge"},
    "nodes": {"attention", "inversion", "training", "comfy_bridge", "toyworld"},
    "headless": {"comfy_bridge", "toyworld"},
    "runner": {"headless"},
    "bench": {"attention", "inversion", "training", "comfy_bridge", "nodes", "headless", "toyworld"},
}


def _modules(pkg):
    return sorted((ROOT / pkg).rglob("*.py"))


def _imports(path: Path):
    """(absolute module names, pack packages imported relatively) of one file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    rel_pkg = path.relative_to(ROOT).parts
    absolute, pack = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                absolute.add(a.name)
                if a.name.startswith("attention_edit."):
                    pack.add(a.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                absolute.add(node.module)
                if node.module.startswith("attention_edit."):
                    pack.add(node.module.split(".")[1])
            elif node.level > 0:
                base = list(rel_pkg[:-1])[: len(rel_pkg) - node.level]
                target = base + (node.module.split(".") if node.module else [])
                if target:
                    pack.add(target[0])
                elif node.module is None:  # from .. import x
                    pack.update(a.name for a in node.names)
    return absolute, pack


def test_only_the_bridge_imports_comfyui_internals():
    offenders = []
    for pkg in PRODUCT + ("scripts",):
        if pkg == "comfy_bridge":
            continue
        for f in _modules(pkg):
            absolute, _ = _imports(f)
            for m in absolute:
                top = m.split(".")[0]
                if top in COMFY_INTERNALS or (top == "comfy_api" and pkg != "nodes"):
                    offenders.append(f"{f.relative_to(ROOT)}: {m}")
    top_init = _imports(ROOT / "__init__.py")[0]
    offenders += [f"__init__.py: {m}" for m in top_init if m.split(".")[0] in COMFY_INTERNALS]
    assert not offenders, "ComfyUI internals imported outside comfy_bridge/:\n" + "\n".join(sorted(offenders))


#: the numbered node API the nodes pin (ComfyUI asks extensions not to import ``latest``): the newest version both
#: hosts provide (comfy_api/version_list.py: 0.3.75 and 0.33.0 have v0_0_1 and v0_0_2)
NODE_API = "comfy_api.v0_0_2"


def test_the_nodes_pin_a_numbered_node_api_and_nothing_private():
    """nodes/ imports ComfyUI's node API only as comfy_api.v0_0_2 (never comfy_api.latest or comfy_api.internal),
    no module of the pack imports comfy_api.internal, and the pinned version is one both hosts list as supported."""
    import importlib

    wrong = []
    for pkg in PRODUCT + ("scripts",):
        for f in _modules(pkg):
            absolute, _ = _imports(f)
            for m in absolute:
                if m.startswith("comfy_api.internal") or (m.split(".")[0] == "comfy_api" and
                                                          not m.startswith(NODE_API)):
                    wrong.append(f"{f.relative_to(ROOT)}: {m}")
    assert not wrong, "comfy_api imported other than as " + NODE_API + ":\n" + "\n".join(sorted(wrong))
    used = {m for f in _modules("nodes") for m in _imports(f)[0] if m.startswith("comfy_api")}
    assert used == {NODE_API}, used
    versions = importlib.import_module("comfy_api.version_list").supported_versions
    assert "0.0.2" in {v.VERSION for v in versions}
    api = importlib.import_module(NODE_API)
    assert all(hasattr(api, name) for name in ("io", "ui", "ComfyExtension"))


def test_layers_only_depend_downwards_and_never_on_tests():
    bad = []
    for pkg, allowed in ALLOWED.items():
        for f in _modules(pkg):
            absolute, pack = _imports(f)
            for dep in pack - {pkg}:
                if dep in ALLOWED and dep not in allowed:
                    bad.append(f"{f.relative_to(ROOT)} imports {dep}/ (allowed: {sorted(allowed) or 'none'})")
            for m in absolute:
                if m.split(".")[0] in ("testing", "tests", "support", "pytest"):
                    bad.append(f"{f.relative_to(ROOT)} imports the test package {m}")
    assert not (ROOT / "testing").exists(), "a package called testing must not ship"
    assert not bad, "\n".join(sorted(bad))


def test_pure_packages_import_without_comfyui():
    """attention/, inversion/ and training/ import with ComfyUI off sys.path, and load no ComfyUI module."""
    from attention_edit.headless.host import comfy_root

    mods = [".".join(("attention_edit",) + f.relative_to(ROOT).with_suffix("").parts) for pkg in PURE
            for f in _modules(pkg) if f.name != "__init__.py"]
    code = (f"import sys; root = {str(comfy_root())!r}; sys.path = [p for p in sys.path if p.rstrip('/') != root]\n"
            f"import importlib\nfor m in {mods!r}: importlib.import_module(m)\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', "
            "'nodes', 'execution', 'server'))\nassert not bad, bad\nprint('ok', len(" + repr(mods) + "))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=300)
    assert r.returncode == 0 and r.stdout.startswith("ok"), r.stdout + r.stderr


def test_bridge_header_names_the_hosts_and_every_private_use():
    doc = ast.get_docstring(ast.parse((ROOT / "comfy_bridge" / "__init__.py").read_text()))
    assert "0.3.75" in doc and "0.33.0" in doc
    for private in ("current_loaded_models", "GET_NODE_INFO_V1"):
        assert private in doc, f"the bridge header does not name its private use of {private}"
    # no other module claims to be the one contact point
    claims = [str(f.relative_to(ROOT)) for pkg in PRODUCT if pkg != "comfy_bridge" for f in _modules(pkg)
              if "the only module" in f.read_text(encoding="utf-8") or "the one module that touches"
              in f.read_text(encoding="utf-8")]
    assert not claims, claims


@pytest.mark.parametrize("pkg", PURE)
def test_pure_packages_do_not_touch_comfy_objects_internals(pkg):
    """Algorithms never reach into ComfyUI objects (ModelPatcher / CLIP / VAE internals): no attribute access to
    .diffusion_model, .cond_stage_model, .first_stage_model, .model_options, .patches, process_latent_in,
    load_models_gpu or the set_model_* patch setters."""
    attrs = {"diffusion_model", "cond_stage_model", "first_stage_model", "model_options", "process_latent_in",
             "load_models_gpu", "model_sampling", "patches", "add_patches", "add_weight_wrapper"}
    hits = []
    for f in _modules(pkg):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and (node.attr in attrs or node.attr.startswith("set_model_")):
                hits.append(f"{f.relative_to(ROOT)}:{node.lineno}: .{node.attr}")
    assert not hits, hits


def _module_deps(path: Path) -> set:
    """The pack's modules (dotted, without the package name) that one file imports, anywhere in it."""
    rel = path.relative_to(ROOT).with_suffix("").parts
    pkg = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    out = set()

    def add(parts):
        parts = [p for p in parts if p]
        while parts:
            cand = ROOT.joinpath(*parts)
            if cand.with_suffix(".py").is_file():
                out.add(".".join(parts))
                return
            if (cand / "__init__.py").is_file():
                return  # a package: its __init__ (nothing to follow for cycles between modules)
            parts = parts[:-1]

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("attention_edit."):
                    add(a.name.split(".")[1:])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = node.module.split(".")[1:] if (node.module or "").startswith("attention_edit.") else None
            else:
                base = pkg[: len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])
            if base is None:
                continue
            for a in node.names:
                sub = ROOT.joinpath(*base, a.name).with_suffix(".py")
                add(base + [a.name] if sub.is_file() else base)
    me = ".".join(rel)
    out.discard(me)
    return out


def test_no_two_modules_of_the_pack_import_each_other():
    """No import cycle between the pack's modules (imports inside functions count too): each module can be read
    with what it depends on below it (issue 27: comfy_bridge/models.py and flux_models.py imported each other)."""
    graph = {}
    for pkg in PRODUCT:
        for path in _modules(pkg):
            rel = path.relative_to(ROOT).with_suffix("").parts
            graph[".".join(rel)] = _module_deps(path)
    cycles, state = [], {}

    def visit(m, stack):
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d] if d in stack else [m, d])
            elif d not in state and d in graph:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)
