"""What users depend on does not change: the golden of the user surface (tests/golden/user_surface.json), taken
before the bridge re-layout, compared on whichever ComfyUI host the suite runs on (see tests/support/golden.py)."""
import os
from pathlib import Path

import pytest

from support import golden


def _files_via_nodes(comfy, photo):
    """Runs every node that writes a file (tiny random model, one step each) and returns
    {what: (folder relative to the base directory, file surface)}."""
    import folder_paths

    img = comfy.register_object(photo)
    loader = {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": "random (untrained test model)", "seed": 0}}
    g = {
        "m": loader, "img": img,
        "enc": {"class_type": "VAEEncode", "inputs": {"pixels": ["img", 0], "vae": ["m", 2]}},
        "inv": {"class_type": "AE_InvertImage", "inputs": {
            "model": ["m", 0], "clip": ["m", 1], "latent": ["enc", 0], "source_prompt": "a photo of a cat",
            "method": "null_text", "steps": 2, "cfg": 7.5, "scheduler": "p2p_ddim", "num_inner_steps": 1,
            "early_stop_epsilon": 1e-5, "learning_rate": 0.01}},
        "save": {"class_type": "AE_SaveInversion", "inputs": {"inversion": ["inv", 0], "filename_prefix": "golden"}},
        "ti": {"class_type": "AE_TrainTextualInversion", "inputs": {
            "model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "images": ["img", 0], "name": "golden_ti",
            "initializer": "object", "num_vectors": 1, "steps": 1, "learning_rate": 5e-3, "batch_size": 1,
            "seed": 0, "templates": "object", "resolution": 64, "gradient_checkpointing": False}},
        "cd": {"class_type": "AE_TrainCustomDiffusion", "inputs": {
            "model": ["m", 0], "clip": ["m", 1], "vae": ["m", 2], "images": ["img", 0], "name": "golden_cd",
            "modifier_token": "<v1>", "class_noun": "cat", "initializer": "ktn", "prior_loss_weight": 1.0,
            "train": "crossattn_kv", "steps": 1, "learning_rate": 2e-5, "batch_size": 1, "seed": 0,
            "resolution": 64, "augment": False, "gradient_checkpointing": False}},
        "tgt": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["m", 1], "text": "a photo of a sleeping cat"}},
        "ie": {"class_type": "AE_ImagicOptimizeEmbedding", "inputs": {
            "model": ["m", 0], "vae": ["m", 2], "image": ["img", 0], "target": ["tgt", 0], "name": "golden_im",
            "steps": 1, "learning_rate": 1e-3, "seed": 0, "gradient_checkpointing": False}},
        "ft": {"class_type": "AE_ImagicFineTune", "inputs": {
            "model": ["m", 0], "imagic": ["ie", 0], "train": "lora", "rank": 2, "steps": 1, "learning_rate": 0.0,
            "seed": 0, "gradient_checkpointing": False}},
    }
    comfy.run_workflow(g, outputs=["save", "ti", "cd", "ft"])
    comfy.run_workflow({"m": loader, "exp": {"class_type": "AE_ExportCustomDiffusion", "inputs": {
        "model": ["m", 0], "concept": "golden_cd.safetensors", "folder": "golden_export"}}}, outputs=["exp"])
    base = Path(folder_paths.base_path).resolve()
    found = {}
    for p in sorted(base.rglob("*.safetensors")):
        if not (p.name.startswith("golden") or p.parent.name == "golden_export"):
            continue
        rel = p.relative_to(base)
        what = rel.parent.name if p.parent.name == "golden_export" else p.stem
        what = f"{what}/{p.name}" if p.parent.name == "golden_export" else what
        found[what] = {"folder": str(rel.parent), **golden.file_surface(p)}
    return found


def _route(server):
    r = server.post("/attention_edit/align", {"source": "a photo of a cat",
                                              "target": "a photo of a dog\na photo of a cat wearing a hat"})
    bad = server.post("/attention_edit/align", {"source": "a photo of a cat", "target": "a big photo of a dog",
                                                "mode": "replace"})
    edits = r.json()["edits"]
    return {"path": "POST /attention_edit/align", "status": r.status_code,
            "edit_keys": [sorted(e) for e in edits], "error_keys": sorted(bad.json()["edits"][0])}


@pytest.fixture(scope="module")
def live(comfy, comfy_server, _cat64):
    info = comfy_server.object_info()
    nodes = {k: golden.node_surface(k, v) for k, v in sorted(info.items()) if k.startswith("AE_")}
    return {
        "nodes": nodes,
        "custom_types": golden.custom_types(nodes),
        "files": _files_via_nodes(comfy, _cat64.clone()),
        "route": _route(comfy_server),
        "cli": {"python -m attention_edit.runner": golden.cli_options("attention_edit.runner"),
                "python -m attention_edit.toyworld.train": golden.cli_options("attention_edit.toyworld.train")},
    }


def test_user_surface_is_unchanged(live):
    if os.environ.get("AE_UPDATE_GOLDEN") == "1":
        golden.save(live)
    diffs = golden.compare(golden.load(), live)
    assert not diffs, "the user surface changed:\n" + "\n".join(diffs)


def test_golden_covers_every_node_and_format(live):
    g = golden.load()
    assert len(g["nodes"]) >= 22 and set(g["nodes"]) <= set(live["nodes"])
    formats = {v["format"] for v in g["files"].values()}
    assert {"attention_edit.inversion/1", "attention_edit.textual_inversion", "attention_edit.custom_diffusion",
            "attention_edit.imagic"} <= formats
