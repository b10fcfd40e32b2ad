"""Concept training (textual inversion, Custom Diffusion) inside a real in-process ComfyUI.

The model is the tiny SD1.x model (``build_unet(TINY_TEST)``), built under ``torch.inference_mode()`` exactly as a
loader node builds it (so its weights are inference tensors, the trap training must survive), with the attn2
key/value weights scaled x4: at random initialisation cross-attention is nearly uniform over the 77 tokens and a
new word barely moves the output; sharper attention, as in a trained model, lets the text matter. The reference
pictures are real photos (scikit-image). Nodes run through ComfyUI's executor (``comfy.run_workflow``).

Figures (loss before/after on a fixed probe set, seconds) are printed with ``-s``.
"""
from __future__ import annotations

import json
import os
import threading
import time

import pytest
import torch

from attention_edit.comfy_bridge.training import base_weight, parameter_shapes

from attention_edit.headless.photos import photo, photo_batch, photo_pil

TI_STEPS = 60
CD_STEPS = 50
TEXT_DIM = 64  # TINY_TEST clip width


# ------------------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(comfy):
    from attention_edit.comfy_bridge.models import TINY_TEST, build_unet

    torch.set_num_threads(1)
    with torch.inference_mode():
        mp, clip, vae = build_unet(TINY_TEST, seed=0)
        for n, p in mp.model.diffusion_model.named_parameters():
            if ".attn2.to_k." in n or ".attn2.to_v." in n:
                p.mul_(4.0)
    return mp, clip, vae


@pytest.fixture(scope="module")
def refs():
    return photo_batch(["cat", "coffee", "astronaut"], 64)


@pytest.fixture(scope="module")
def class_images():
    return photo_batch(["rocket", "hubble"], 64)


def TN():
    """The nodes' glue functions (imported late: the node module registers its model folder on import)."""
    from attention_edit.nodes import training_nodes

    return training_nodes


def attn2_layers(mp) -> int:
    """How many cross-attention (attn2) layers the model has (derived from the model, not the tiny architecture)."""
    return sum(1 for n, _ in mp.model.diffusion_model.named_modules() if n.endswith(".attn2"))


def snapshot(mp, clip):
    return ({k: v.detach().clone() for k, v in mp.model.diffusion_model.state_dict().items()},
            {k: v.detach().clone() for k, v in clip.cond_stage_model.state_dict().items()})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def embeddings_dir():
    import folder_paths

    return folder_paths.get_folder_paths("embeddings")[0]


def concepts_dir():
    import folder_paths

    return folder_paths.get_folder_paths("attention_edit_concepts")[0]


def meta_of(path):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        return dict(f.metadata() or {})


def objects(comfy, **objs):
    return {k: comfy.register_object(v) for k, v in objs.items()}


def eps_of(patcher, x_ve, sigma, emb):
    """eps predicted by a (patched) MODEL: loads it as a sampler would, then apply_model."""
    import comfy.model_management as mm

    mm.load_models_gpu([patcher])
    with torch.no_grad():
        s = torch.full((x_ve.shape[0],), float(sigma))
        x0 = patcher.model.apply_model(x_ve, s, c_crossattn=emb)
    return (x_ve - x0) / float(sigma)


def ksampler_graph(model_ref, clip_ref, text, seed=3):
    return {
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": text}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": ""}},
        "lat": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "ks": {"class_type": "KSampler", "inputs": {
            "model": model_ref, "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["lat", 0],
            "seed": seed, "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
    }


# ------------------------------------------------------------------------------------------------------------
# textual inversion
# ------------------------------------------------------------------------------------------------------------

def ti_inputs(name, steps=TI_STEPS, **over):
    d = {"model": ["m", 0], "clip": ["c", 0], "vae": ["v", 0], "images": ["i", 0], "name": name,
         "initializer": "teapot", "num_vectors": 2, "steps": steps, "learning_rate": 0.05, "batch_size": 2,
         "seed": 0, "templates": "object", "resolution": 64, "gradient_checkpointing": False}
    d.update(over)
    return d


def test_textual_inversion_node_learns_a_word_comfyui_loads(comfy, tiny):
    """Mixed-size photos from a folder (core Load Image Dataset from Folder) -> the node -> embedding file;
    ComfyUI's own embedding loader (CLIPTextEncode with 'embedding:name') gives exactly the saved vectors."""
    import folder_paths

    from attention_edit.comfy_bridge.text import PromptEncoder

    mp, clip, vae = tiny
    folder = os.path.join(folder_paths.get_input_directory(), "zq_refs")
    os.makedirs(folder, exist_ok=True)
    for name, size in (("cat", 64), ("coffee", (96, 64)), ("astronaut", (48, 80))):
        photo_pil(name, size).save(os.path.join(folder, f"{name}.png"))
    before = snapshot(mp, clip)
    name = "zq_teapot"
    text = f"a photo of embedding:{name} on a table"
    g = objects(comfy, m=mp, c=clip, v=vae)
    g["i"] = {"class_type": "LoadImageDataSetFromFolder", "inputs": {"folder": "zq_refs"}}
    g["t"] = {"class_type": "AE_TrainTextualInversion", "inputs": ti_inputs(name)}
    g["e"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t", 0], "text": text}}
    t0 = time.time()
    res = comfy.run_workflow(g, outputs=["t", "e"])
    took = time.time() - t0

    path = res.value("t", 2)
    assert res.value("t", 1) == f"embedding:{name}"
    assert os.path.dirname(path) == os.path.realpath(embeddings_dir()) and os.path.isfile(path)
    meta = meta_of(path)
    before_loss, after_loss = float(meta["probe_loss_before"]), float(meta["probe_loss_after"])
    print(f"\n[TI node] {TI_STEPS} steps, 3 mixed-size photos at 64 px: probe loss {before_loss:.4f} -> "
          f"{after_loss:.4f} ({100 * (1 - after_loss / before_loss):.1f}% lower), {took:.1f} s")
    assert after_loss < 0.97 * before_loss, "training did not lower the loss"
    assert meta["steps_done"] == str(TI_STEPS) and json.loads(meta["train.image_size"]) == [64, 64]

    # ComfyUI's own loader reads exactly the saved vectors ...
    import comfy.sd1_clip
    from safetensors.torch import load_file

    saved = load_file(path)["emb_params"]
    loaded = comfy.sd1_clip.load_embed(name, [embeddings_dir()], TEXT_DIM, "clip_l")
    assert saved.shape == (2, TEXT_DIM) and torch.equal(loaded, saved)
    # ... and CLIPTextEncode with 'embedding:name' equals the conditioning with those vectors spliced in
    cond = res.value("e", 0)[0][0]
    expected = PromptEncoder(clip, name, 2, TEXT_DIM).encode(text, saved)
    assert torch.equal(cond, expected)
    init = PromptEncoder(clip, name, 2, TEXT_DIM).encode(text, torch.zeros(2, TEXT_DIM))
    assert not torch.equal(cond, init)

    plot = res.value("t", 3)
    assert plot.shape == (1, 320, 512, 3) and float(plot.min()) < 0.5  # something drawn on white
    # the graph's MODEL and CLIP are untouched: same weights, no patches, the original tokenizer
    assert same(before[0], snapshot(mp, clip)[0]) and same(before[1], snapshot(mp, clip)[1])
    assert not mp.patches and not mp.weight_wrapper_patches and not clip.patcher.patches
    assert clip.tokenizer.clip_l.embedding_directory is None


def test_textual_inversion_interrupt_saves_best_so_far(comfy, tiny, refs):
    """POST /interrupt (in-process: nodes.interrupt_processing) during training: the run is reported as
    interrupted and the best vectors so far are saved."""
    from safetensors.torch import load_file

    mp, clip, vae = tiny
    name = "zq_interrupted"
    g = objects(comfy, m=mp, c=clip, v=vae, i=refs)
    g["t"] = {"class_type": "AE_TrainTextualInversion", "inputs": ti_inputs(name, steps=2000)}
    stub = comfy._default_stub()
    stub.events.clear()
    done = threading.Event()

    def watcher():
        while not done.is_set():
            for ev, data in list(stub.events):
                if ev == "progress" and str(data.get("node")) == "t" and data.get("value", 0) >= 8:
                    comfy.interrupt()
                    return
            time.sleep(0.01)

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    try:
        with pytest.raises(comfy.WorkflowInterrupted):
            comfy.run_workflow(g, outputs=["t"])
    finally:
        done.set()
        th.join(5)
    path = os.path.join(embeddings_dir(), name + ".safetensors")
    meta = meta_of(path)
    assert meta["interrupted"] == "true"
    done_steps, best = int(meta["steps_done"]), int(meta["best_step"])
    assert 8 <= done_steps < 2000 and 1 <= best <= done_steps
    assert load_file(path)["emb_params"].shape == (2, TEXT_DIM)


def test_textual_inversion_interrupt_result_is_the_best_state(comfy, tiny, refs, tmp_path):
    """Algorithm level: an interrupt at step 12 returns the vectors of the best smoothed loss, and the saved file
    holds exactly the result's vectors."""
    import comfy.model_management as mm
    from safetensors.torch import load_file

    from attention_edit.training import textual_inversion as ti
    from attention_edit.training.fit import TrainingInterrupted

    mp, clip, vae = tiny

    def progress(done, total):
        if done == 12:
            raise mm.InterruptProcessingException()

    with torch.inference_mode(), pytest.raises(TrainingInterrupted) as ei:
        TN().textual_inversion(mp, clip, vae, refs, "zq_algo", "teapot", num_vectors=1, steps=100,
                               learning_rate=0.05, batch_size=1, resolution=64, progress=progress)
    r = ei.value.result
    assert r.interrupted and r.steps_done == 12 and 5 <= r.best_step <= 12
    path = TN().save_embedding(str(tmp_path), r)
    assert torch.equal(load_file(path)["emb_params"], r.vectors)


# ------------------------------------------------------------------------------------------------------------
# Custom Diffusion
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cd_run(comfy, tiny, refs, class_images):
    """The Custom Diffusion node trained once (with prior preservation), its outputs and a KSampler run with them."""
    mp, clip, vae = tiny
    before = snapshot(mp, clip)
    g = objects(comfy, m=mp, c=clip, v=vae, i=refs, ci=class_images)
    g["t"] = {"class_type": "AE_TrainCustomDiffusion", "inputs": {
        "model": ["m", 0], "clip": ["c", 0], "vae": ["v", 0], "images": ["i", 0], "name": "zq_pot",
        "modifier_token": "<v1>", "class_noun": "wooden pot", "initializer": "ktn", "class_images": ["ci", 0],
        "prior_loss_weight": 1.0, "train": "crossattn_kv", "steps": CD_STEPS, "learning_rate": 1e-2,
        "batch_size": 1, "seed": 0, "resolution": 64, "augment": True, "gradient_checkpointing": True}}
    g.update(ksampler_graph(["t", 0], ["t", 1], "a photo of a <v1> wooden pot"))
    t0 = time.time()
    res = comfy.run_workflow(g, outputs=["t", "ks"])
    return dict(res=res, before=before, seconds=time.time() - t0)


def test_custom_diffusion_trains_only_kv_and_the_token(comfy, tiny, cd_run):
    import comfy.model_management as mm

    from attention_edit.training.custom_diffusion import trained_keys

    mp, clip, vae = tiny
    res, before = cd_run["res"], cd_run["before"]
    concept = res.value("t", 2)
    path = os.path.join(concepts_dir(), concept)
    meta = meta_of(path)
    b, a = float(meta["probe_loss_before"]), float(meta["probe_loss_after"])
    print(f"\n[CD node] {CD_STEPS} steps with prior preservation and gradient checkpointing: probe loss {b:.4f} -> "
          f"{a:.4f} ({100 * (1 - a / b):.1f}% lower); node + KSampler {cd_run['seconds']:.1f} s")
    assert a < 0.95 * b
    kv = trained_keys(parameter_shapes(mp), "crossattn_kv")
    assert len(kv) == 2 * attn2_layers(mp) and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in kv)

    out = res.value("t", 0)
    assert set(out.patches) == set(kv) and not out.weight_wrapper_patches
    # the original MODEL / CLIP are untouched: loaded as a sampler loads them (the modules are shared with the
    # clones, and whichever patcher is loaded has its patches in them), the weights are bit-identical; no
    # patches or wrappers were added to them, the tokenizer is the original one
    mm.load_models_gpu([mp])
    assert same(before[0], snapshot(mp, clip)[0]) and same(before[1], snapshot(mp, clip)[1])
    assert not mp.patches and not mp.weight_wrapper_patches and clip.tokenizer.clip_l.embedding_directory is None
    # loaded, the trained MODEL differs from the base exactly at the K/V weights
    mm.load_models_gpu([out])
    patched = {k: v.detach().clone() for k, v in out.model.diffusion_model.state_dict().items()}
    changed = {"diffusion_model." + k for k in patched if not torch.equal(patched[k], before[0][k])}
    assert changed == set(kv)
    mm.load_models_gpu([mp])  # loading the original again restores every weight
    assert same(before[0], snapshot(mp, clip)[0])

    # the CLIP knows the modifier token; the original CLIP reads '<v1>' as ordinary BPE pieces
    text = "a photo of a <v1> wooden pot"
    new_c = res.value("t", 1).encode_from_tokens(res.value("t", 1).tokenize(text))
    old_c = clip.encode_from_tokens(clip.tokenize(text))
    assert not torch.equal(new_c, old_c)
    assert res.value("t", 1).tokenize(text)["l"][0][5][0].shape == (TEXT_DIM,)  # "<v1>" is one vector


def test_custom_diffusion_saved_reloaded_is_bit_identical(comfy, tiny, cd_run):
    """The file written by the trainer, loaded by AE_LoadCustomDiffusion, gives bit-identical samples to the
    in-memory result; the base model samples as before."""
    mp, clip, vae = tiny
    res = cd_run["res"]
    g = objects(comfy, m=mp, c=clip)
    g["l"] = {"class_type": "AE_LoadCustomDiffusion", "inputs": {"model": ["m", 0], "clip": ["c", 0],
                                                                 "concept": res.value("t", 2), "strength": 1.0}}
    g.update(ksampler_graph(["l", 0], ["l", 1], "a photo of a <v1> wooden pot"))
    base = ksampler_graph(["m", 0], ["c", 0], "a photo of a <v1> wooden pot")
    g.update({k + "_b": v for k, v in base.items()})
    for k in ("ks_b",):
        g[k]["inputs"].update(positive=["pos_b", 0], negative=["neg_b", 0], latent_image=["lat_b", 0])
    g["x"] = {"class_type": "AE_ExportCustomDiffusion", "inputs": {"model": ["m", 0], "concept": res.value("t", 2),
                                                                   "folder": ""}}
    r2 = comfy.run_workflow(g, outputs=["ks", "ks_b", "l", "x"])
    assert r2.value("l", 2) == "<v1>"
    out_dir = r2.value("x", 0)
    assert sorted(os.listdir(out_dir)) == ["pytorch_custom_diffusion_weights.safetensors", "v1.safetensors"]
    trained = res.value("ks", 0)["samples"]
    assert torch.equal(r2.value("ks", 0)["samples"], trained)
    assert not torch.equal(r2.value("ks_b", 0)["samples"], trained)


def test_custom_diffusion_diffusers_format_round_trips(comfy, tiny, cd_run, tmp_path):
    """Export to the diffusers format, check it against diffusers' own CustomDiffusionAttnProcessor on the same
    UNet weights, read it back (and as delta.bin), and read a file written by diffusers' save_attn_procs."""
    pytest.importorskip("diffusers")
    from safetensors.torch import load_file, save_file

    import comfy.model_management as mm
    from support import diffusers_bridge as B
    from attention_edit.training import custom_diffusion as cd

    mp, clip, vae = tiny
    concept = TN().load_concept(os.path.join(concepts_dir(), cd_run["res"].value("t", 2)))
    deltas, tokens = TN().resolve_concept(concept, mp, clip)
    # our file round trip is exact
    assert all(torch.equal(deltas[k], concept.unet[k]) for k in deltas)

    out_dir = tmp_path / "diffusers"
    TN().export_diffusers(str(out_dir), mp, deltas, tokens)
    weights = load_file(str(out_dir / cd.DIFFUSERS_WEIGHTS_NAME))
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight" in weights
    assert len(weights) == len(deltas)
    tok = load_file(str(out_dir / "v1.safetensors"))
    assert list(tok) == ["<v1>"] and torch.equal(tok["<v1>"], tokens["<v1>"][0])

    # diffusers' UNet with the exported processors computes what the patched ComfyUI model computes
    unet = B.to_diffusers_unet(mp)
    unet.set_attn_processor({**unet.attn_processors, **unet._process_custom_diffusion(weights)})
    patched, _ = TN().apply_concept(mp, None, deltas, {})
    g = torch.Generator().manual_seed(0)
    x_vp = torch.randn(2, 4, 8, 8, generator=g)
    emb = torch.randn(2, 77, TEXT_DIM, generator=g)
    ms = mp.model.model_sampling
    worst = 0.0
    for t in (10, 500, 950):
        sigma = float(ms.sigmas[t])
        e_c = eps_of(patched, B.vp_to_ve(x_vp, sigma), sigma, emb)
        with torch.no_grad():
            e_d = unet(x_vp, t, encoder_hidden_states=emb).sample
        worst = max(worst, float((e_c - e_d).abs().max()))
    print(f"\n[CD diffusers] exported file in diffusers vs patched ComfyUI model: max |eps diff| {worst:.2e}")
    assert worst < 1e-4

    # read back: the same deltas (full weights - base weights; exact up to float rounding)
    back, back_tok = TN().resolve_concept(TN().load_concept(str(out_dir / cd.DIFFUSERS_WEIGHTS_NAME)), mp, clip)
    assert back.keys() == deltas.keys() and torch.equal(back_tok["<v1>"], tokens["<v1>"])
    assert max(float((back[k] - deltas[k]).abs().max()) for k in deltas) < 1e-6
    # the original delta.bin layout, read with torch.load(weights_only=True)
    bin_path = tmp_path / "delta.bin"
    torch.save({"unet": {cd._proc_to_param(k): v for k, v in weights.items()},
                "modifier_token": {"<v1>": tok["<v1>"]}}, str(bin_path))
    from_bin, bin_tok = TN().resolve_concept(TN().load_concept(str(bin_path)), mp, clip)
    assert all(torch.equal(from_bin[k], back[k]) for k in back) and torch.equal(bin_tok["<v1>"], back_tok["<v1>"])

    # the CompVis delta_epoch=*.ckpt layout
    ckpt = tmp_path / "delta_epoch=000001.ckpt"
    full = {"model." + k: base_weight(mp, k).float() + d for k, d in deltas.items()}
    torch.save({"state_dict": {**full, "embed": tokens["<v1>"]}}, str(ckpt))
    from_ckpt, ckpt_tok = TN().resolve_concept(TN().load_concept(str(ckpt)), mp, clip)
    assert set(ckpt_tok) == {"<new1>"} and torch.equal(ckpt_tok["<new1>"], tokens["<v1>"])
    assert all(torch.equal(from_ckpt[k], back[k]) for k in back)

    # a file made by diffusers itself: random K/V processors, save_attn_procs -> our loader
    from diffusers.models.attention_processor import CustomDiffusionAttnProcessor

    unet2 = B.to_diffusers_unet(mp)
    procs = {}
    gen = torch.Generator().manual_seed(1)
    for name, mod in unet2.attn_processors.items():
        if ".attn2." not in name:
            procs[name] = CustomDiffusionAttnProcessor(train_kv=False, train_q_out=False)
            continue
        attn = unet2.get_submodule(name[:-len(".processor")])
        p = CustomDiffusionAttnProcessor(train_kv=True, train_q_out=False, hidden_size=attn.to_k.out_features,
                                         cross_attention_dim=attn.to_k.in_features)
        with torch.no_grad():
            for src, dst in ((attn.to_k, p.to_k_custom_diffusion), (attn.to_v, p.to_v_custom_diffusion)):
                dst.weight.copy_(src.weight * (1 + 0.3 * torch.randn(src.weight.shape, generator=gen)))
        procs[name] = p
    unet2.set_attn_processor(procs)
    d_dir = tmp_path / "made_by_diffusers"
    unet2.save_attn_procs(str(d_dir))
    save_file({"<new1>": torch.randn(TEXT_DIM, generator=gen)}, str(d_dir / "<new1>.safetensors"))
    c2 = TN().load_concept(str(d_dir / cd.DIFFUSERS_WEIGHTS_NAME))
    d2, t2 = TN().resolve_concept(c2, mp, clip)
    assert set(t2) == {"<new1>"} and len(d2) == len(deltas)
    m2, _ = TN().apply_concept(mp, None, d2, t2)
    sigma = float(ms.sigmas[400])
    e_c = eps_of(m2, B.vp_to_ve(x_vp, sigma), sigma, emb)
    with torch.no_grad():
        e_d = unet2(x_vp, 400, encoder_hidden_states=emb).sample
    err = float((e_c - e_d).abs().max())
    print(f"[CD diffusers] file written by diffusers save_attn_procs, loaded here: max |eps diff| {err:.2e}")
    assert err < 1e-4
    mm.load_models_gpu([mp])


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------

def test_no_images_and_mixed_sizes():
    from attention_edit.training.common import collect_images, prepare_pixels

    for empty in (None, [], torch.zeros(0, 64, 64, 3)):
        with pytest.raises(ValueError, match="no reference images"):
            collect_images(empty)
    imgs = collect_images([photo("cat", 64), photo("coffee", (80, 48)), photo_batch(["rocket", "camera"], 32)])
    assert len(imgs) == 4
    px = prepare_pixels(imgs, 0)  # mixed sizes: centre crop + resize to the FIRST picture's size
    assert px.shape == (4, 3, 64, 64) and 0 <= float(px.min()) and float(px.max()) <= 1
    assert prepare_pixels(imgs, 36).shape == (4, 3, 32, 32)  # rounded down to the VAE's multiple of 8


def test_bad_names_and_existing_words_are_refused(comfy, tiny, refs, tmp_path):
    from attention_edit.training import custom_diffusion as cd
    from attention_edit.training import textual_inversion as ti
    from attention_edit.comfy_bridge.files import file_in_folder, validate_name
    from attention_edit.comfy_bridge.text import check_new_token

    mp, clip, vae = tiny
    for bad in ("../evil", "a/b", "a\\b", "..", "x..y", "/abs", ".hidden", "", "a b", "nul\0"):
        with pytest.raises(ValueError):
            validate_name(bad)
    with pytest.raises(ValueError):
        file_in_folder(str(tmp_path), "../outside.safetensors")
    with pytest.raises(ValueError, match="already exists in the CLIP vocabulary"):
        check_new_token(clip, "cat")
    with pytest.raises(ValueError, match="already exists in the CLIP vocabulary"):
        TN().textual_inversion(mp, clip, vae, refs, "Teapot", "teapot", steps=1, resolution=64)
    with pytest.raises(ValueError, match="already exists in the CLIP vocabulary"):
        TN().custom_diffusion(mp, clip, vae, refs, "dog", "pot", steps=1, resolution=64)
    with pytest.raises(ValueError, match="modifier token"):
        cd.validate_modifier_token("two words")
    # through the executor: a path in the name is refused before anything is written
    parent = os.path.dirname(embeddings_dir())
    listing = set(os.listdir(parent))
    g = objects(comfy, m=mp, c=clip, v=vae, i=refs)
    g["t"] = {"class_type": "AE_TrainTextualInversion", "inputs": ti_inputs("../evil", steps=1)}
    with pytest.raises(comfy.WorkflowExecutionError, match="path separator"):
        comfy.run_workflow(g, outputs=["t"])
    g["t"]["inputs"].update(name="zq_noimg")
    g["i"] = comfy.register_object(torch.zeros(0, 64, 64, 3))
    with pytest.raises(comfy.WorkflowExecutionError, match="no reference images"):
        comfy.run_workflow(g, outputs=["t"])
    assert set(os.listdir(parent)) == listing and not os.path.exists(os.path.join(parent, "evil.safetensors"))
    with pytest.raises(ValueError, match="path separator"):
        TN().save_concept(str(tmp_path / "c"), "../escape", cd.Concept("delta", {}, {}))
    assert not (tmp_path / "escape.safetensors").exists()


def test_concept_for_another_architecture_names_the_keys(comfy, tiny):
    """An SD1.5-shaped delta file and a file with foreign keys: clear errors naming the keys, also in the node."""
    from attention_edit.training import custom_diffusion as cd
    from attention_edit.comfy_bridge.files import save_safetensors as save_safetensors_atomic

    mp, clip, vae = tiny
    kv = cd.trained_keys(parameter_shapes(mp))
    wide = {k: torch.zeros(320, 768) for k in kv[:3]}  # SD1.5 widths
    wide["diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"] = torch.zeros(640, 768)
    wide[cd.TOKEN_PREFIX + "<v1>"] = torch.zeros(1, 768)
    path = save_safetensors_atomic(os.path.join(concepts_dir(), "zq_sd15.safetensors"), wide,
                                   {"format": cd.FORMAT, "version": "1"})
    with pytest.raises(ValueError) as ei:
        TN().resolve_concept(TN().load_concept(path), mp, clip)
    msg = str(ei.value)
    assert "input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight" in msg and kv[0] in msg and "[320, 768]" in msg
    # right UNet shapes, wrong text width
    ok = {k: torch.zeros(tuple(base_weight(mp, k).shape)) for k in kv}
    ok[cd.TOKEN_PREFIX + "<v1>"] = torch.zeros(1, 768)
    p2 = save_safetensors_atomic(os.path.join(concepts_dir(), "zq_width.safetensors"), ok, {"format": cd.FORMAT})
    with pytest.raises(ValueError, match="token embedding width"):
        TN().resolve_concept(TN().load_concept(p2), mp, clip)
    # diffusers names of blocks the tiny UNet does not have
    foreign = {"down_blocks.3.attentions.0.transformer_blocks.0.attn2.processor.to_k_custom_diffusion.weight":
               torch.zeros(1280, 768)}
    p3 = os.path.join(concepts_dir(), "zq_foreign", cd.DIFFUSERS_WEIGHTS_NAME)
    save_safetensors_atomic(p3, foreign)
    with pytest.raises(ValueError, match="down_blocks.3.attentions.0"):
        TN().resolve_concept(TN().load_concept(p3), mp, clip)
    # the loader node reports it
    g = objects(comfy, m=mp, c=clip)
    g["l"] = {"class_type": "AE_LoadCustomDiffusion", "inputs": {"model": ["m", 0], "clip": ["c", 0],
                                                                 "concept": "zq_sd15.safetensors", "strength": 1.0}}
    with pytest.raises(comfy.WorkflowExecutionError, match="does not fit this model"):
        comfy.run_workflow(g, outputs=["l"])
    os.remove(path)
    os.remove(p2)


def test_custom_diffusion_all_of_attn2_option(comfy, tiny, refs, tmp_path):
    """train='crossattn' trains every attn2 parameter (q, k, v, out weight and bias); the diffusers export holds
    them under to_q/to_k/to_v/to_out_custom_diffusion and reads back."""
    from attention_edit.training import custom_diffusion as cd

    mp, clip, vae = tiny
    with torch.inference_mode():
        r = TN().custom_diffusion(mp, clip, vae, refs, "<zq2>", "mug", mode="crossattn", steps=3,
                                  learning_rate=1e-3, batch_size=1, resolution=64, augment=False)
    leaves = {k.split(".attn2.")[1] for k in r.deltas}
    assert leaves == {"to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight", "to_out.0.bias"}
    assert len(r.deltas) == 5 * attn2_layers(mp) and all(float(d.abs().max()) > 0 for d in r.deltas.values())
    TN().export_diffusers(str(tmp_path), mp, r.deltas, r.tokens)
    back, tok = TN().resolve_concept(TN().load_concept(str(tmp_path / cd.DIFFUSERS_WEIGHTS_NAME)), mp, clip)
    assert back.keys() == r.deltas.keys() and set(tok) == {"<zq2>"}
    assert max(float((back[k] - r.deltas[k]).abs().max()) for k in back) < 1e-6


def test_gradient_checkpointing_gives_the_same_training(comfy, tiny, refs):
    """Recomputing activations in the backward pass changes memory, not the result: 3 steps with and without
    checkpointing give bit-identical deltas and token vectors (CPU, deterministic kernels)."""
    from attention_edit.training import custom_diffusion as cd

    mp, clip, vae = tiny
    runs = []
    for gc in (False, True):
        with torch.inference_mode():
            runs.append(TN().custom_diffusion(mp, clip, vae, refs[:1], "<zq3>", "cup", steps=3,
                                              learning_rate=1e-3, batch_size=1, resolution=64, augment=False,
                                              gradient_checkpointing=gc))
    a, b = runs
    assert a.losses == b.losses
    assert all(torch.equal(a.deltas[k], b.deltas[k]) for k in a.deltas)
    assert torch.equal(a.tokens["<zq3>"], b.tokens["<zq3>"])
    # the checkpointing wrappers are gone afterwards
    assert not any(hasattr(m, "_ae_plain_forward") for m in mp.model.diffusion_model.modules())


def test_reference_pictures_keep_mixed_sizes_and_chain(comfy):
    """AE_ReferencePictures (the pack's replacement of core ImageBatch, deprecated in ComfyUI 0.33): pictures of
    different sizes stay as they are, batches are split into pictures, 'more' chains another list in front."""
    a, b = photo("cat", 64), photo("coffee", (96, 64))
    pair = torch.cat([photo("rocket", 48), photo("hubble", 48)])
    g = {"a": comfy.register_object(a), "b": comfy.register_object(b), "p": comfy.register_object(pair)}
    g["r1"] = {"class_type": "AE_ReferencePictures", "inputs": {"image_1": ["a", 0], "image_3": ["b", 0]}}
    g["r2"] = {"class_type": "AE_ReferencePictures", "inputs": {"image_1": ["p", 0], "more": ["r1", 0]}}
    res = comfy.run_workflow(g, outputs=["r2"])
    out = res.values("r2")[0]
    assert [tuple(x.shape) for x in out] == [(1, 64, 64, 3), (1, 64, 96, 3), (1, 48, 48, 3), (1, 48, 48, 3)]
    assert torch.equal(out[0], a) and torch.equal(out[1], b) and torch.equal(out[3], pair[1:])
