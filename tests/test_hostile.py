"""Hostile and careless input (the hostile-input issue): each row sends exactly that input, through the HTTP server of
a real ComfyUI where a user's request comes through it, and checks what the user sees: no hang, no silent garbage,
a refusal that names the input or the file and the fix. The README's table lists the rows."""
import json
import math
import threading
import time

import pytest
import requests
import torch

from attention_edit.comfy_bridge import files
from attention_edit.headless.photos import save_input_photo
from support.server import PromptFailed

RANDOM = "random (untrained test model)"
NAN = float("nan")


# ------------------------------------------------------------------------------------------------------- helpers
def loader():
    return {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": RANDOM, "seed": 0}}


def invert_graph(photo, **over):
    inputs = {"model": ["1", 0], "clip": ["1", 1], "latent": ["3", 0], "source_prompt": "a photo of a cat",
              "method": "ddim", "steps": 3, "cfg": 7.5, "scheduler": "p2p_ddim", "num_inner_steps": 2,
              "early_stop_epsilon": 1e-5, "learning_rate": 0.01}
    inputs.update(over)
    return {"1": loader(), "2": {"class_type": "LoadImage", "inputs": {"image": photo}},
            "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
            "4": {"class_type": "AE_InvertImage", "inputs": inputs}}


def edit_graph(photo, edit_inputs=None, blend=None, reweight=None):
    g = invert_graph(photo)
    g["5"] = {"class_type": "AE_P2PEdit", "inputs": {
        "edited_prompts": "a photo of a dog", "mode": "auto", "cross_replace_steps": "0.8",
        "self_replace_steps": "0.4", "self_replace_max_resolution": "full", **(edit_inputs or {})}}
    src = ["5", 0]
    if reweight is not None:
        g["6"] = {"class_type": "AE_P2PReweight", "inputs": {"edit": src, "equalizer": reweight}}
        src = ["6", 0]
    if blend is not None:
        g["7"] = {"class_type": "AE_P2PLocalBlend", "inputs": {
            "edit": src, "source_words": "cat", "target_words": "dog", "use": "both", "threshold": 0.3,
            "start": 0.2, **blend}}
        src = ["7", 0]
    g["8"] = {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1], "inversion": ["4", 0],
                                                            "edit": src}}
    g["9"] = {"class_type": "SaveLatent", "inputs": {"samples": ["8", 0], "filename_prefix": "hostile"}}
    return g


def save_inversion(g, prefix="hostile"):
    g["10"] = {"class_type": "AE_SaveInversion", "inputs": {"inversion": ["4", 0], "filename_prefix": prefix}}
    return g


def failure(srv, prompt, timeout=120) -> str:
    """Runs *prompt* through the server; it must fail; returns the node's message (exception type: message)."""
    with pytest.raises(PromptFailed) as ei:
        srv.run(prompt, timeout=timeout)
    return f"{ei.value.exception_type}: {ei.value.exception_message}"


@pytest.fixture(scope="module")
def photo(comfy_server):
    return save_input_photo("cat", 64, input_dir=comfy_server.input_dir)


@pytest.fixture(scope="module")
def tiny_shapes(comfy):
    """Parameter shapes of the tiny random model the server's AE_ToyWorldLoader builds (same config)."""
    from attention_edit.comfy_bridge.models import TINY_TEST, build_unet
    from attention_edit.comfy_bridge.training import parameter_shapes

    mp, clip, _ = build_unet(TINY_TEST, seed=0)
    return parameter_shapes(mp), clip


def concept_file(srv, name, shapes, fill=0.0):
    """A concept file of this pack (K/V deltas of every attn2 + a modifier token) in the server's concept folder."""
    from attention_edit.training import custom_diffusion as cd

    kv = cd.trained_keys(shapes, "crossattn_kv")
    tensors = {k: torch.full(shapes[k], fill) for k in kv}
    tensors[cd.TOKEN_PREFIX + "<v9>"] = torch.full((1, 64), fill)
    path = srv.base_dir / "models" / "attention_edit_concepts" / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    files.save_safetensors(str(path), tensors, {"format": cd.FORMAT, "version": "1", "weights": "delta"})
    return path


def load_concept_graph(concept, strength=1.0):
    return {"1": loader(),
            "2": {"class_type": "AE_LoadCustomDiffusion", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                                     "concept": concept, "strength": strength}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["2", 1], "text": "a photo of a <v9> cat"}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {
                "model": ["2", 0], "seed": 0, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "normal",
                "positive": ["3", 0], "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
            "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0], "filename_prefix": "hostile_cd"}}}


BAD_FILES = {
    "empty": b"",
    "truncated": None,  # the first 100 bytes of a valid file
    "renamed_pickle": b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
    "bad_header": (10 ** 9).to_bytes(8, "little") + b"{not json at all",
}


def write_bad(path, kind, valid: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(valid[:100] if kind == "truncated" else BAD_FILES[kind])


# ------------------------------------------------------------------------------------------------ 1. the route
ROUTE = "/attention_edit/align"


def test_route_refuses_oversize_input_at_once(comfy_server):
    for body, what in (({"source": "a photo of a cat", "target": "a photo of a dog\n" * 20000}, "20,000 lines"),
                       ({"source": "a photo of a cat", "target": "a photo of a dog\n" * 600}, "600 lines"),
                       ({"source": "x" * 200_000, "target": "a photo of a dog"}, "a 200 KB source")):
        t = time.monotonic()
        r = comfy_server.post(ROUTE, body, timeout=10)
        took = time.monotonic() - t
        assert r.status_code == 413, (what, r.status_code, r.text[:200])
        assert "at most" in r.json()["error"], r.json()
        assert took < 1.0, f"{what}: answered in {took:.2f} s"


@pytest.mark.parametrize("body", [[1, 2], "source", None, 3.5])
def test_route_answers_400_with_a_message_for_json_that_is_not_an_object(comfy_server, body):
    r = comfy_server.post(ROUTE, None, data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "send a JSON object" in r.json()["error"], (r.status_code, r.text)
    r = comfy_server.post(ROUTE, None, data=b"{broken", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "not JSON" in r.json()["error"]
    r = comfy_server.post(ROUTE, {"source": 5, "target": "a dog"})
    assert r.status_code == 400 and "'source' must be a string" in r.json()["error"]


def test_queue_answers_within_100_ms_while_large_requests_are_in_flight(comfy_server):
    """The route's work runs off ComfyUI's event loop: with four clients sending the largest request the route
    accepts (16 edited prompts of MAX_PROMPT_CHARS characters), GET /queue still answers within 100 ms."""
    from attention_edit.nodes.routes import MAX_PROMPT_CHARS

    words = ("a photo of a big red cat sitting on a small wooden chair " * 80)[:MAX_PROMPT_CHARS - 10]
    body = {"source": words, "target": "\n".join([words] * 16)}
    stop, sent = threading.Event(), []

    def client():
        s = requests.Session()
        s.trust_env = False
        while not stop.is_set():
            sent.append(s.post(comfy_server.url + ROUTE, json=body, timeout=30).status_code)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        lat = []
        for _ in range(25):
            t0 = time.monotonic()
            comfy_server.queue()
            lat.append(time.monotonic() - t0)
            time.sleep(0.04)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert sent and set(sent) == {200}, set(sent)
    assert max(lat) < 0.1, f"GET /queue took up to {max(lat) * 1000:.0f} ms while the route was busy"


# ---------------------------------------------------------------------------------------- 2. no silent garbage
def test_invert_image_with_cfg_nan_is_refused_naming_the_input(comfy_server, photo):
    msg = failure(comfy_server, save_inversion(invert_graph(photo, cfg=NAN)))
    assert "Invert Image" in msg and "'cfg'" in msg and "finite" in msg, msg


def test_load_custom_diffusion_with_strength_nan_is_refused(comfy_server, tiny_shapes):
    concept_file(comfy_server, "hostile_ok", tiny_shapes[0], 0.0)
    msg = failure(comfy_server, load_concept_graph("hostile_ok.safetensors", strength=NAN))
    assert "Load Custom Diffusion" in msg and "'strength'" in msg, msg


@pytest.mark.parametrize("fill", [NAN, math.inf])
def test_a_concept_with_nan_or_inf_tensors_is_refused_before_it_is_applied(comfy_server, tiny_shapes, fill):
    name = f"hostile_{'nan' if fill != fill else 'inf'}"
    concept_file(comfy_server, name, tiny_shapes[0], fill)
    msg = failure(comfy_server, load_concept_graph(f"{name}.safetensors"))
    assert f"{name}.safetensors" in msg and "NaN or infinite" in msg and "again" in msg, msg


def _input_types(spec: dict) -> dict:
    """{input name: type} of a node's /object_info entry, in widget order (required, then optional)."""
    return {n: spec["input"][sec][n][0] for sec in ("required", "optional") for n in (spec["input_order"].get(sec) or [])}


def _default_kwargs(spec: dict, cls, pick) -> dict:
    """execute() keyword arguments of a node: ``pick(name, type)`` where it returns a value, else the input's
    default from /object_info (None when it has none); wrapped in lists for an input-list node."""
    listy = bool(cls.define_schema().is_input_list)
    out = {}
    for n, t in _input_types(spec).items():
        sec = "required" if n in spec["input"].get("required", {}) else "optional"
        opts = spec["input"][sec][n][1] if len(spec["input"][sec][n]) > 1 else {}
        v = pick(n, t)
        v = opts.get("default") if v is None else v
        out[n] = [v] if listy else v
    return out


def test_every_float_input_of_every_node_refuses_nan_and_inf(comfy, comfy_server):
    """ComfyUI's min/max check lets NaN and inf through: each node checks its float inputs first, and the message
    names the node and the input. Every FLOAT input of every AE_* node is tried (from /object_info)."""
    import nodes as comfy_nodes

    info = comfy_server.object_info()
    tried = 0
    for node_id, spec in sorted(info.items()):
        if not node_id.startswith("AE_"):
            continue
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        floats = [n for n, t in _input_types(spec).items() if t == "FLOAT"]
        for target in floats:
            for bad in (NAN, math.inf):
                kwargs = _default_kwargs(spec, cls, lambda n, t: bad if n == target else None)
                with pytest.raises(ValueError) as ei:
                    cls.execute(**kwargs)
                assert f"'{target}'" in str(ei.value) and "finite" in str(ei.value), (node_id, target, ei.value)
                tried += 1
    assert tried >= 2 * 19, tried


def test_a_non_finite_result_stops_the_run_naming_the_node(comfy, tiny_shapes):
    """An inversion whose null-text embeddings are infinite (a damaged result passed between nodes) makes the Edit
    Sampler produce an infinite latent: the run stops with a message naming the node and what to check."""
    import dataclasses

    from attention_edit.comfy_bridge.models import TINY_TEST, build_unet
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule
    from attention_edit.comfy_bridge.text import encode

    mp, clip, vae = build_unet(TINY_TEST, seed=0)
    src, empty = encode(clip, "a photo of a cat"), encode(clip, "")
    latent = torch.zeros(1, 4, 8, 8)
    inv = invert(mp, latent, src, empty, replay_schedule(mp, "p2p_ddim", 2), method="ddim",
                 source_prompt="a photo of a cat")
    bad = dataclasses.replace(inv, uncond=[u * math.inf for u in inv.uncond])
    g = {"m": comfy.register_object(mp), "c": comfy.register_object(clip), "i": comfy.register_object(bad),
         "s": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["m", 0], "clip": ["c", 0], "inversion": ["i", 0]}}}
    with pytest.raises(comfy.WorkflowExecutionError) as ei:
        comfy.run_workflow(g, outputs=["s"])
    msg = ei.value.exception_message
    assert "Prompt-to-Prompt Edit Sampler" in msg and "NaN/infinite" in msg and "inversion" in msg, msg


# ------------------------------------------------------------------------------------------ 3. clear messages
@pytest.fixture(scope="module")
def valid_bytes(comfy_server, tiny_shapes):
    return concept_file(comfy_server, "hostile_valid", tiny_shapes[0], 0.0).read_bytes()


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_damaged_files_name_the_file_and_the_fix_in_every_loader(comfy_server, valid_bytes, kind):
    srv = comfy_server
    concept = srv.base_dir / "models" / "attention_edit_concepts" / f"hostile_{kind}.safetensors"
    write_bad(concept, kind, valid_bytes)
    msg = failure(srv, load_concept_graph(concept.name))
    assert concept.name in msg and "again" in msg and "SafetensorError" not in msg.split(":")[0], msg
    export = {"1": loader(), "2": {"class_type": "AE_ExportCustomDiffusion", "inputs": {
        "model": ["1", 0], "concept": concept.name, "folder": f"hostile_{kind}"}}}
    msg = failure(srv, export)
    assert concept.name in msg and "again" in msg, msg
    inv = srv.output_dir / "inversions" / f"hostile_{kind}.safetensors"
    write_bad(inv, kind, valid_bytes)
    load = {"1": {"class_type": "AE_LoadInversion", "inputs": {"file": inv.name}},
            "2": {"class_type": "AE_SaveInversion", "inputs": {"inversion": ["1", 0], "filename_prefix": "x"}}}
    msg = failure(srv, load)
    assert inv.name in msg and "again" in msg, msg
    imagic = srv.base_dir / "models" / "attention_edit_imagic" / f"hostile_{kind}.safetensors"
    write_bad(imagic, kind, valid_bytes)
    msg = failure(srv, {"1": loader(), "2": {"class_type": "AE_ImagicLoad", "inputs": {
        "model": ["1", 0], "imagic_file": imagic.name, "strength": 1.0}},
        "3": {"class_type": "AE_ImagicInterpolate", "inputs": {"imagic": ["2", 1], "eta": 0.7}},
        "4": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["3", 0]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["2", 0], "seed": 0, "steps": 1, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
            "positive": ["3", 0], "negative": ["4", 0], "latent_image": ["5", 0], "denoise": 1.0}},
        "7": {"class_type": "SaveLatent", "inputs": {"samples": ["6", 0], "filename_prefix": "hostile_im"}}})
    assert imagic.name in msg and "again" in msg, msg


def test_an_inversion_file_with_metadata_but_no_tensors(comfy_server):
    from attention_edit.inversion.store import FORMAT

    path = comfy_server.output_dir / "inversions" / "hostile_empty_tensors.safetensors"
    files.save_safetensors(str(path), {"unrelated": torch.zeros(1)}, {"format": FORMAT, "method": "ddim"})
    load = {"1": {"class_type": "AE_LoadInversion", "inputs": {"file": path.name}},
            "2": {"class_type": "AE_SaveInversion", "inputs": {"inversion": ["1", 0], "filename_prefix": "x"}}}
    msg = failure(comfy_server, load)
    assert path.name in msg and "lacks the tensor(s) x_T" in msg and "Invert Image" in msg, msg


def test_edit_widget_mistakes_name_the_input(comfy_server, photo):
    msg = failure(comfy_server, edit_graph(photo, reweight="blue: 1e308"))
    assert "1e308" in msg and "'blue'" in msg and "-1000..1000" in msg, msg
    msg = failure(comfy_server, edit_graph(photo, blend={"start": NAN}))
    assert "Local Blend" in msg and "'start'" in msg and "finite" in msg, msg
    msg = failure(comfy_server, edit_graph(photo, {"cross_replace_steps": "0.8; lion:"}))
    assert "missing window after 'lion'" in msg and "lion: 0.4" in msg, msg


@pytest.mark.parametrize("prefix, expect", [("bad\0name", "control characters"), ("p" * 300, "at most 120")])
def test_save_inversion_prefix_mistakes(comfy_server, photo, prefix, expect):
    before = set((comfy_server.output_dir / "inversions").glob("*")) if (comfy_server.output_dir / "inversions").exists() \
        else set()
    msg = failure(comfy_server, save_inversion(invert_graph(photo), prefix))
    assert "filename_prefix" in msg and expect in msg, msg
    after = set((comfy_server.output_dir / "inversions").glob("*"))
    assert after == before, "nothing may be written"


# -------------------------------------------------------------------------------------- 5. no checkpoint at all
def test_a_shipped_workflow_without_a_checkpoint_names_the_toyworld_loader(comfy):
    from attention_edit.headless import runner

    g = runner.load_workflow("p2p_word_swap_null_text")
    with pytest.raises(comfy.WorkflowValidationError) as ei:
        comfy.run_workflow(g)
    msg = str(ei.value)
    assert "ckpt_name" in msg and "not in" in msg, msg
    hint = runner.missing_model_hint(msg)
    assert hint and "AE_ToyWorldLoader" in hint and "--ckpt" in hint


# ---------------------------------------------------------------------------- rows that held: still tested here
def test_a_pickle_payload_is_never_run(comfy_server, tmp_path):
    """A concept .bin whose pickle would create a file when unpickled: it is read with torch.load(weights_only=True),
    refused with a message naming the file, and the payload never runs."""
    import os
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = comfy_server.base_dir / "models" / "attention_edit_concepts" / "hostile_payload.bin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"unet": {"x": Payload()}}))
    msg = failure(comfy_server, load_concept_graph(path.name))
    assert path.name in msg and "weights_only" in msg, msg
    assert not os.path.exists(marker), "the pickle payload ran"


def test_every_model_node_refuses_a_model_family_it_cannot_handle(comfy, comfy_server):
    """A MODEL the pack cannot edit with (here a tiny SDXL refiner built from ComfyUI's own SDXLRefiner classes) is
    refused by every AE_* node that takes a MODEL, before any work starts, with one message naming the node, the
    model's family and what is supported."""
    import nodes as comfy_nodes

    from attention_edit.comfy_bridge.families import family_key as model_family
    from attention_edit.comfy_bridge.models import build_tiny_sdxl_refiner

    flux = build_tiny_sdxl_refiner()
    assert model_family(flux) == "SDXLRefiner"
    info = comfy_server.object_info()
    tried = []
    for node_id, spec in sorted(info.items()):
        if not node_id.startswith("AE_"):
            continue
        if "MODEL" not in _input_types(spec).values():
            continue
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        kwargs = _default_kwargs(spec, cls, lambda n, t: flux if t == "MODEL" else None)
        with pytest.raises(ValueError) as ei:
            cls.execute(**kwargs)
        msg = str(ei.value)
        short = spec["display_name"].split(" (")[0]  # "Invert Image (Null-text / DDIM)" -> "Invert Image"
        assert msg.startswith(short) and ": this MODEL is SDXLRefiner" in msg and "SD1.x checkpoints" in msg, \
            (node_id, msg)
        assert "which the pack does not support" in msg and "Load a checkpoint of a supported family" in msg, msg
        tried.append(node_id)
    assert len(tried) >= 9, tried  # inversion, edit sampler, 2 trainers, concept load/export, 3 Imagic nodes
