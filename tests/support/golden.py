"""The golden of what users depend on: node ids, inputs (names, types, defaults, widget order), outputs, custom
types, model folders, file formats (metadata keys, tensor key patterns), the web route and the two command lines.

``capture(server, comfy)`` reads all of it from a running host (GET /object_info and POST /attention_edit/align of
a real ComfyUI server; files written by the pack's nodes through the in-process executor; ``--help`` of the two
commands). ``compare(golden, live)`` lists every difference a user would notice. Output slot NAMES are left out:
ComfyUI 0.3.75 reports V3 output names as type names, 0.33 as the output ids (a workflow links outputs by index).

Regenerate (only when a change of the surface is intended, and say so in the commit):
``AE_UPDATE_GOLDEN=1 python -m pytest tests/test_golden.py``.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

GOLDEN_PATH = Path(__file__).resolve().parent.parent / "golden" / "user_surface.json"

#: widget options a user does not choose from a fixed list: the files found on disk. Only the default (and the
#: "none yet" marker) is part of the surface.
FILE_COMBOS = {("AE_LoadInversion", "file"), ("AE_LoadCustomDiffusion", "concept"),
               ("AE_ExportCustomDiffusion", "concept"), ("AE_ImagicLoad", "imagic_file")}
_OPTION_KEYS = ("default", "min", "max", "step", "multiline", "options", "multiselect", "round")


def node_surface(node_id: str, info: dict) -> dict:
    """The part of one /object_info entry a saved workflow or a user depends on."""
    inputs = []
    for section in ("required", "optional", "hidden"):
        order = (info.get("input_order") or {}).get(section) or list((info.get("input") or {}).get(section, {}))
        for name in order:
            spec = info["input"][section][name]
            typ = spec[0]
            opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            entry = {"name": name, "section": section}
            if isinstance(typ, list):  # classic combo
                entry["type"], opts = "COMBO", {**opts, "options": typ}
            else:
                entry["type"] = typ
            for k in _OPTION_KEYS:
                if k in opts:
                    entry[k] = opts[k]
            if (node_id, name) in FILE_COMBOS:
                entry.pop("options", None)
                entry["options"] = "<files>"
            inputs.append(entry)
    return {
        "display_name": info.get("display_name"),
        "category": info.get("category"),
        "output_node": bool(info.get("output_node")),
        "inputs": inputs,
        "outputs": [{"type": t, "is_list": bool(l)} for t, l in
                    zip(info.get("output", []), info.get("output_is_list") or [False] * len(info.get("output", [])))],
    }


def custom_types(nodes: dict) -> list:
    found = set()
    for n in nodes.values():
        for e in n["inputs"]:
            if str(e["type"]).startswith("AE_"):
                found.add(e["type"])
        for o in n["outputs"]:
            if str(o["type"]).startswith("AE_"):
                found.add(o["type"])
    return sorted(found)


_NUM = re.compile(r"(?<=\.)\d+(?=\.)")


def key_patterns(keys) -> list:
    """Tensor names with layer numbers replaced by N (``diffusion_model.input_blocks.N.N....``)."""
    return sorted({_NUM.sub("N", k) for k in keys})


def file_surface(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        keys = list(f.keys())
    return {"metadata_keys": sorted(meta), "format": meta.get("format"), "tensors": key_patterns(keys)}


def cli_options(module: str) -> list:
    """The option strings ``python -m <module> --help`` lists."""
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"python -m {module} --help failed: {out.stderr[-2000:]}")
    return sorted(set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", out.stdout)))


def compare(golden: dict, live: dict, path: str = "") -> list:
    """Human-readable differences that would break a user (empty when none).

    Additions that break nothing are allowed: new nodes, new optional inputs after the existing ones (widget
    values are positional, so an input inserted before others or a new required input breaks saved
    workflows), new combo options, new custom types, files, metadata keys, tensors, response keys and command-line
    options.
    Everything else must be equal: names, types, defaults, ranges, options, order, outputs."""
    diffs = []
    if isinstance(golden, dict) and isinstance(live, dict):
        for k in sorted(set(golden) | set(live), key=str):
            p = f"{path}.{k}" if path else str(k)
            if k not in live:
                diffs.append(f"{p}: missing now (was {json.dumps(golden[k])[:200]})")
            elif k in golden:
                diffs.extend(compare(golden[k], live[k], p))
    elif isinstance(golden, list) and isinstance(live, list):
        if path.endswith(".inputs") or path.endswith(".outputs"):
            for i, g in enumerate(golden):
                if i >= len(live):
                    diffs.append(f"{path}[{i}]: missing now (was {json.dumps(g)[:200]})")
                else:
                    diffs.extend(compare(g, live[i], f"{path}[{i}]"))
            for extra in live[len(golden):]:
                if path.endswith(".inputs") and extra.get("section") == "required":
                    diffs.append(f"{path}: new required input {extra.get('name')!r} (saved workflows lack it; make "
                                 "it optional)")
        elif all(isinstance(x, (str, int, float, bool)) or x is None for x in golden + live):
            missing = [x for x in golden if x not in live]
            if missing:
                diffs.append(f"{path}: missing now {missing[:10]}")
        elif golden != live and not all(isinstance(x, list) for x in golden + live):
            diffs.append(f"{path}: was {json.dumps(golden)[:300]}, now {json.dumps(live)[:300]}")
        else:
            for i, g in enumerate(golden):
                if i >= len(live):
                    diffs.append(f"{path}[{i}]: missing now")
                else:
                    diffs.extend(compare(g, live[i], f"{path}[{i}]"))
    elif golden != live:
        diffs.append(f"{path}: was {json.dumps(golden)[:300]}, now {json.dumps(live)[:300]}")
    return diffs


def load() -> dict:
    return json.loads(GOLDEN_PATH.read_text(encoding="utf-8"))


def save(data: dict) -> None:
    GOLDEN_PATH.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN_PATH.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")
