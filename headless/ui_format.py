"""API-format <-> UI-format ComfyUI workflows, driven by the nodes' real /object_info.

The API format (what POST /prompt takes) is the source of truth of the shipped workflows; the UI format (what the
ComfyUI frontend loads: nodes with ids, type, pos, size, inputs/outputs with link ids, widgets_values, a links
array, groups, version 0.4) is generated from it by ``scripts/make_ui_workflows.py`` with :func:`api_to_ui`, and
:func:`ui_to_api` maps it back (what the frontend's "queue prompt" does), so a test can prove they agree.

Widget order follows the frontend (comfyui_frontend_package 1.32): inputs in ``input_order`` (required, then
optional); an input is a widget when its type is INT, FLOAT, STRING, BOOLEAN or COMBO (a list of options) and it
is not ``forceInput``. Serialized extra values, as the frontend writes them:
- an INT with ``control_after_generate`` (or named ``seed`` / ``noise_seed``, unless the option is False) and a
  COMBO with ``control_after_generate`` are followed by the control value ("fixed" here, for reproducibility);
- a COMBO with ``image_upload`` (LoadImage) is followed by the upload button's value "image".
"""
from __future__ import annotations

import uuid
from typing import Any, Mapping

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
CONTROL_VALUE = "fixed"
UPLOAD_VALUE = "image"

# what users have: the Comfy-Org SD1.5 checkpoint the ComfyUI templates use (the frontend offers the download)
SD15_MODEL = {
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
           "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "directory": "checkpoints",
}

_NS = uuid.UUID("6c1b3f0e-5d0a-4b8e-9d55-ae0000000001")

#: frontend-only node types (not sent to the server, no object_info): the workflows' notes
VIRTUAL_NODES = ("Note", "MarkdownNote")

#: what each shipped workflow does (the first line of its note in the UI file)
WORKFLOW_NOTES = {
    "p2p_word_swap": "Direct Inversion of a photo, then a Prompt-to-Prompt word swap (cat -> dog) with the "
                     "prediction-difference mask, and the photo's own pixels kept outside it (Lock Background).",
    "p2p_word_swap_null_text": "Null-text inversion of a photo, then a Prompt-to-Prompt word swap (cat -> dog) with the "
                               "prediction-difference mask and the background locked.",
    "p2p_refine_local_blend": "Prompt-to-Prompt refine (added words) after Direct Inversion, with local blend on the "
                              "word's attention map and the background locked: only the edited region changes.",
    "p2p_reweight": "Direct Inversion, then the source prompt with one word's attention scaled (Prompt-to-Prompt "
                    "equalizer).",
    "adapedit_soft_edit": "AdapEdit soft edit: pass 1 records the maps, FWT turns them into a per-word schedule, pass 2 "
                          "edits with that schedule and DPS.",
    "custom_edit_custom_diffusion": "Custom-Edit: learn a concept with Custom Diffusion from the reference pictures, "
                                    "invert the photo with the customised model, P2P refine with the source-only mask.",
    "custom_edit_textual_inversion": "Custom-Edit with textual inversion: learn a word, invert with the original model, "
                                     "P2P refine with the learned word.",
    "imagic_edit": "Imagic: optimise the text embedding to the photo, fine-tune (LoRA), sample eta 0 and 0.7.",
    "p2p_word_swap_sdxl": "SDXL: Direct Inversion of a 1024x1024 photo (cfg 7.5, 50 steps), then a Prompt-to-Prompt "
                          "word swap (cat -> dog) with the prediction-difference mask and the background locked.",
    "p2p_word_swap_sd2": "SD2.x 768-v (v-prediction): Direct Inversion of a 768x768 photo (cfg 7.5, 50 steps), then a "
                         "Prompt-to-Prompt word swap (cat -> dog) with the prediction-difference mask and the "
                         "background locked.",
    "p2p_word_swap_flux": "Flux.1-dev: Direct Inversion of a 1024x1024 photo (FireFlow's path, 28 steps, guidance 3.5), "
                          "then a Prompt-to-Prompt word swap (cat -> dog) on the joint attention of every block, with "
                          "the prediction-difference mask (Flux's attention maps do not locate words) and the "
                          "background locked.",
    "p2p_word_swap_sd3": "SD3.5: Direct Inversion of a 1024x1024 photo (FireFlow's path, 40 steps), then a "
                         "Prompt-to-Prompt word swap (cat -> dog) at cfg 4.5 on the joint attention of every block, "
                         "the word's CLIP and T5 columns together, with the prediction-difference mask and the "
                         "background locked.",
}

#: the part of every note that says how to run the workflow without a Stable Diffusion checkpoint
NO_CHECKPOINT_NOTE = (
    "Needs an SD1.x checkpoint in models/checkpoints (the Load Checkpoint node offers "
    "v1-5-pruned-emaonly-fp16.safetensors). Without one, ComfyUI stops with \"ckpt_name ... not in []\": replace "
    "Load Checkpoint with the pack's own model, 'ToyWorld Model Loader (Attention Edit)' (AE_ToyWorldLoader, under "
    "attention_edit/loaders: a 64x64 model of coloured shapes, not Stable Diffusion), connect its MODEL, CLIP and "
    "VAE where Load Checkpoint's were, and scale the photo to 64x64. Headless, `python -m attention_edit.runner "
    "<workflow>` does this by itself.")


#: the no-checkpoint part of the note of a workflow made for another model family than SD1.x: its checkpoint
#: loader's "_meta" names the test model the runner swaps in (headless/runner.py TOY_WEIGHTS_META)
FAMILY_NO_CHECKPOINT_NOTE = (
    "Needs an {family} checkpoint in models/checkpoints (Load Checkpoint names {ckpt}); photos at {size}x{size}. "
    "Without one, ComfyUI stops with \"ckpt_name ... not in []\": replace Load Checkpoint with the pack's "
    "'ToyWorld Model Loader (Attention Edit)' (AE_ToyWorldLoader, under attention_edit/loaders) set to '{weights}' "
    "({what}), connect its MODEL, CLIP and VAE where Load Checkpoint's were, and scale the photo to "
    "{tsize}x{tsize}. Headless, `python -m attention_edit.runner <workflow>` does this by itself.")
_RANDOM_WHAT = "random weights, not Stable Diffusion: the output is noise, it only shows that the graph runs"
#: test model -> (family, a real checkpoint's photo size, the test model's size, what it is)
FAMILY_OF_TEST_MODEL = {"random SDXL (untrained test model)": ("SDXL", 1024, 128, _RANDOM_WHAT),
                        "random SD2.x v-prediction (untrained test model)": ("SD2.x", 768, 64, _RANDOM_WHAT),
                        "random Flux.1 (untrained test model)": ("Flux.1", 1024, 64, _RANDOM_WHAT),
                        "random SD3.5 (untrained test model)": ("SD3.5", 1024, 64, _RANDOM_WHAT),
                        "toyworld MM-DiT (shipped, Flux.1 architecture)": (
                            "Flux.1", 1024, 64, "a small Flux.1-architecture model of coloured shapes shipped with "
                            "the pack, not a photo model: it edits ToyWorld scenes such as 'a red circle on the "
                            "left'")}


def workflow_note(name: str, api: Mapping[str, Any] | None = None) -> str:
    """The text of the Note node of a shipped workflow (what it does, and how to run it without a checkpoint;
    *api*: the workflow, whose checkpoint loader may name another family's test model)."""
    from .runner import TOY_WEIGHTS_META

    first = WORKFLOW_NOTES.get(name, "An Attention Edit workflow.")
    rest = NO_CHECKPOINT_NOTE
    for node in (api or {}).values():
        weights = (node.get("_meta") or {}).get(TOY_WEIGHTS_META) \
            if node.get("class_type") == "CheckpointLoaderSimple" else None
        if weights in FAMILY_OF_TEST_MODEL:
            family, size, tsize, what = FAMILY_OF_TEST_MODEL[weights]
            rest = FAMILY_NO_CHECKPOINT_NOTE.format(family=family, ckpt=node["inputs"].get("ckpt_name"), size=size,
                                                    weights=weights, tsize=tsize, what=what)
            break
    return f"{first}\n\n{rest.replace('<workflow>', name)}"


# --------------------------------------------------------------------------------------------------
# object_info
# --------------------------------------------------------------------------------------------------

def node_info(class_type: str) -> dict:
    """GET /object_info/<class_type>, computed in-process (comfy_bridge.host.node_info). Needs an initialised
    in-process ComfyUI (headless.host.init_comfy)."""
    from ..comfy_bridge import host

    return host.node_info(class_type)


def object_info_for(prompts: list[Mapping[str, Any]]) -> dict:
    """{class_type: node_info} for every node type used by the given API prompts."""
    types = sorted({n["class_type"] for p in prompts for n in p.values()})
    return {t: node_info(t) for t in types}


# --------------------------------------------------------------------------------------------------
# input specs
# --------------------------------------------------------------------------------------------------

def _spec_type(spec) -> str:
    t = spec[0]
    return "COMBO" if isinstance(t, (list, tuple)) else str(t)


def _spec_opts(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def ordered_inputs(info: Mapping[str, Any]) -> list[tuple[str, list, bool]]:
    """(name, spec, optional) of the node's visible inputs, in the frontend's order (input_order: required then
    optional; then any input input_order misses)."""
    inputs = info.get("input", {})
    order = info.get("input_order") or {k: list(v) for k, v in inputs.items()}
    out, seen = [], set()
    for kind in ("required", "optional"):
        for name in order.get(kind, []):
            if name in inputs.get(kind, {}):
                out.append((name, list(inputs[kind][name]), kind == "optional"))
                seen.add(name)
    for kind in ("required", "optional"):
        for name, spec in inputs.get(kind, {}).items():
            if name not in seen:
                out.append((name, list(spec), kind == "optional"))
    return out


def is_widget(spec) -> bool:
    return _spec_type(spec) in WIDGET_TYPES and not _spec_opts(spec).get("forceInput", False)


def extra_widget_values(name: str, spec) -> list:
    """Values the frontend serializes right after this widget's own value (control / upload widgets)."""
    t, o = _spec_type(spec), _spec_opts(spec)
    extra = []
    if t == "INT" and o.get("control_after_generate", name in SEED_NAMES):
        extra.append(CONTROL_VALUE)
    elif t == "COMBO" and o.get("control_after_generate"):
        extra.append(CONTROL_VALUE)
    if t == "COMBO" and o.get("image_upload"):
        extra.append(UPLOAD_VALUE)
    return extra


def widget_slots(info: Mapping[str, Any]) -> list[tuple[str | None, Any]]:
    """The serialized widgets_values layout of a node: (input name, spec) for a widget's own value, (None,
    extra value) for a control/upload widget's value."""
    out = []
    for name, spec, _opt in ordered_inputs(info):
        if is_widget(spec):
            out.append((name, spec))
            out.extend((None, v) for v in extra_widget_values(name, spec))
    return out


def _default(spec):
    o = _spec_opts(spec)
    if "default" in o:
        return o["default"]
    if _spec_type(spec) == "COMBO":
        opts = spec[0] if isinstance(spec[0], (list, tuple)) else o.get("options", [])
        return opts[0] if opts else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(_spec_type(spec))


def _is_link(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and isinstance(v[0], (str, int)) and isinstance(v[1], int) \
        and not isinstance(v[0], bool)


# --------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------

_IMAGE_NODES = {"LoadImage", "SaveImage", "PreviewImage"}


def _node_size(class_type: str, info: Mapping[str, Any], n_sockets: int) -> list[int]:
    slots = widget_slots(info)
    multiline = sum(1 for n, s in slots if n is not None and _spec_opts(s).get("multiline"))
    width = 400 if multiline else 320
    rows = max(n_sockets, len(info.get("output", [])))
    height = 10 + 22 * rows + 26 * (len(slots) - multiline) + 110 * multiline
    if class_type in _IMAGE_NODES:
        width, height = max(width, 340), height + 260
    return [width, height]


def _layout(api: Mapping[str, Any], sizes: Mapping[str, list]) -> dict[str, list[float]]:
    """Left to right: columns by longest path from the inputs, then every node moved right to just left of its
    first consumer. Within a column, nodes follow the height of what feeds them."""
    ids = list(api)
    preds = {n: sorted({str(v[0]) for v in api[n].get("inputs", {}).values() if _is_link(v)}, key=ids.index)
             for n in ids}
    succs = {n: [m for m in ids if n in preds[m]] for n in ids}
    depth: dict[str, int] = {}

    def d(n, stack=()):
        if n not in depth:
            if n in stack:
                raise ValueError(f"the workflow has a cycle through node {n}")
            depth[n] = 1 + max((d(p, stack + (n,)) for p in preds[n]), default=-1)
        return depth[n]

    for n in ids:
        d(n)
    for n in sorted(ids, key=lambda n: -depth[n]):  # as late as possible: just left of the first consumer
        if succs[n]:
            depth[n] = max(depth[n], min(depth[s] for s in succs[n]) - 1)
    columns: dict[int, list[str]] = {}
    for n in ids:
        columns.setdefault(depth[n], []).append(n)
    pos: dict[str, list[float]] = {}
    x = 0
    for col in sorted(columns):
        members = columns[col]

        def key(n):
            ys = [pos[p][1] + sizes[p][1] / 2 for p in preds[n] if p in pos]
            return (sum(ys) / len(ys) if ys else -1.0, ids.index(n))

        members.sort(key=key)
        y = 0
        for n in members:
            want = key(n)[0] - sizes[n][1] / 2 if key(n)[0] >= 0 else y
            y = max(y, int(round(want / 10)) * 10)
            pos[n] = [int(x), int(y)]
            y += sizes[n][1] + 60
        x += max(sizes[n][0] for n in members) + 60
    return pos


# --------------------------------------------------------------------------------------------------
# conversion
# --------------------------------------------------------------------------------------------------

def api_to_ui(name: str, api: Mapping[str, Any], infos: Mapping[str, Mapping[str, Any]]) -> dict:
    """The UI-format workflow (version 0.4) of an API-format workflow whose node ids are integers."""
    api = {str(k): v for k, v in api.items()}
    for nid in api:
        if not nid.isdigit():
            raise ValueError(f"node id {nid!r}: the UI format needs integer node ids")
    order_ids = sorted(api, key=int)
    # links, in order of (target node, target input)
    links: list[list] = []
    inputs_of: dict[str, list[dict]] = {}
    widgets_of: dict[str, list] = {}
    out_links: dict[tuple[str, int], list[int]] = {}
    for nid in order_ids:
        node = api[nid]
        info = infos[node["class_type"]]
        vals = node.get("inputs", {})
        known = {n for n, _s, _o in ordered_inputs(info)}
        unknown = set(vals) - known
        if unknown:
            raise ValueError(f"node {nid} ({node['class_type']}): inputs {sorted(unknown)} are not in its object_info")
        ins, wv = [], []
        for iname, spec, optional in ordered_inputs(info):
            v = vals.get(iname)
            widget = is_widget(spec)
            if widget:
                wv.append(_default(spec) if v is None or _is_link(v) else v)
                wv.extend(extra_widget_values(iname, spec))
            if _is_link(v) or not widget:
                entry: dict[str, Any] = {"name": iname, "type": _spec_type(spec), "link": None}
                if widget:
                    entry["widget"] = {"name": iname}
                if optional and not widget:
                    entry["shape"] = 7
                if _is_link(v):
                    src, slot = str(v[0]), int(v[1])
                    if src not in api:
                        raise ValueError(f"node {nid} input {iname!r} links to missing node {src}")
                    src_out = infos[api[src]["class_type"]].get("output", [])
                    if slot >= len(src_out):
                        raise ValueError(f"node {nid} input {iname!r} links to output {slot} of node {src}, which "
                                         f"has {len(src_out)} outputs")
                    lid = len(links) + 1
                    links.append([lid, int(src), slot, int(nid), len(ins), str(src_out[slot])])
                    entry["link"] = lid
                    out_links.setdefault((src, slot), []).append(lid)
                elif not optional and not widget:
                    raise ValueError(f"node {nid} ({node['class_type']}): required input {iname!r} is not connected")
                ins.append(entry)
        inputs_of[nid], widgets_of[nid] = ins, wv
    sizes = {nid: _node_size(api[nid]["class_type"], infos[api[nid]["class_type"]], len(inputs_of[nid]))
             for nid in order_ids}
    uses_checkpoint = any(api[n]["class_type"] == "CheckpointLoaderSimple" for n in order_ids)
    pos = _layout({k: api[k] for k in order_ids}, sizes)
    topo = sorted(order_ids, key=lambda n: (pos[n][0], int(n)))
    nodes_out = []
    for nid in order_ids:
        node = api[nid]
        ct = node["class_type"]
        info = infos[ct]
        outs = []
        names = info.get("output_name") or info.get("output", [])
        for slot, t in enumerate(info.get("output", [])):
            ls = out_links.get((nid, slot))
            o: dict[str, Any] = {"name": str(names[slot]) if slot < len(names) else str(t), "type": str(t),
                                 "links": ls if ls else None}
            if ls:
                o["slot_index"] = slot
            outs.append(o)
        entry = {"id": int(nid), "type": ct, "pos": pos[nid], "size": sizes[nid], "flags": {},
                 "order": topo.index(nid), "mode": 0, "inputs": inputs_of[nid], "outputs": outs}
        title = (node.get("_meta") or {}).get("title")
        if title and title != info.get("display_name", ct):
            entry["title"] = title
        props: dict[str, Any] = {"Node name for S&R": ct}
        if ct == "CheckpointLoaderSimple" and node["inputs"].get("ckpt_name") == SD15_MODEL["name"]:
            props["models"] = [dict(SD15_MODEL)]
        entry["properties"] = props
        entry["widgets_values"] = widgets_of[nid]
        nodes_out.append(entry)
    last = max(int(n) for n in order_ids)
    if uses_checkpoint:  # a note above the graph: what it does, how to run it without a checkpoint
        last += 1
        nodes_out.append({"id": last, "type": "Note", "pos": [0, -260], "size": [560, 220], "flags": {},
                          "order": len(nodes_out), "mode": 0, "inputs": [], "outputs": [],
                          "properties": {"text": ""}, "widgets_values": [workflow_note(name, api)],
                          "color": "#432", "bgcolor": "#653"})
    return {
        "id": str(uuid.uuid5(_NS, name)),
        "revision": 0,
        "last_node_id": last,
        "last_link_id": len(links),
        "nodes": nodes_out,
        "links": links,
        "groups": [],
        "config": {},
        "extra": {"ds": {"scale": 0.75, "offset": [40, 40]}},
        "version": 0.4,
    }


def ui_to_api(ui: Mapping[str, Any], infos: Mapping[str, Mapping[str, Any]]) -> dict:
    """The API prompt the frontend would queue for a UI-format workflow (widgets_values mapped back to input
    names by the same widget layout; links resolved through the links array). Raises ValueError on a
    structural problem (a link to a missing node or slot, a widget count that does not match object_info)."""
    links = {}
    for ln in ui.get("links", []):
        lid, src, sslot, dst, dslot, typ = ln
        links[lid] = (src, sslot, dst, dslot, typ)
    by_id = {n["id"]: n for n in ui["nodes"]}
    api: dict[str, dict] = {}
    for n in sorted(ui["nodes"], key=lambda n: n["id"]):
        if n.get("mode", 0) in (2, 4) or n["type"] in VIRTUAL_NODES:  # muted / bypassed, or a frontend-only note
            continue
        info = infos[n["type"]]
        slots = widget_slots(info)
        wv = n.get("widgets_values", [])
        if len(wv) != len(slots):
            raise ValueError(f"node {n['id']} ({n['type']}): {len(wv)} widgets_values but object_info gives "
                             f"{len(slots)} widget slots {[s[0] or '(control)' for s in slots]}")
        inputs: dict[str, Any] = {}
        for (iname, _spec), value in zip(slots, wv):
            if iname is not None:
                inputs[iname] = value
        for slot_i, inp in enumerate(n.get("inputs", [])):
            lid = inp.get("link")
            if lid is None:
                continue
            if lid not in links:
                raise ValueError(f"node {n['id']} input {inp['name']!r}: link {lid} is not in the links array")
            src, sslot, dst, dslot, _typ = links[lid]
            if dst != n["id"] or dslot != slot_i:
                raise ValueError(f"link {lid} says it ends at node {dst} slot {dslot}, but node {n['id']} lists it "
                                 f"at input slot {slot_i}")
            if src not in by_id:
                raise ValueError(f"link {lid} starts at missing node {src}")
            if sslot >= len(by_id[src].get("outputs", [])) or lid not in (by_id[src]["outputs"][sslot].get("links") or []):
                raise ValueError(f"link {lid} starts at node {src} output {sslot}, which does not list it")
            inputs[inp["name"]] = [str(src), sslot]
        api[str(n["id"])] = {"class_type": n["type"], "inputs": inputs,
                             "_meta": {"title": n.get("title") or info.get("display_name", n["type"])}}
    return api
