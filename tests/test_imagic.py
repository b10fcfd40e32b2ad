"""Imagic (training/imagic.py, nodes/imagic_nodes.py) inside a real in-process ComfyUI.

The model is the tiny SD1.x model built under ``torch.inference_mode()`` as a loader node builds it (inference-mode
weights: the trap training must survive), with the attn2 key/value weights scaled x4 as in test_training.py (at
random initialisation cross-attention is nearly uniform and the text barely matters). The photo is a real one
(scikit-image's cat). Nodes run through ComfyUI's executor; sampling is core KSampler. Figures are printed with -s.
"""
from __future__ import annotations

import os
import threading
import time

import pytest
import torch

from attention_edit.comfy_bridge.files import save_safetensors
from attention_edit.comfy_bridge.training import context_dim, weight_keys

from attention_edit.headless.photos import photo, photo_batch

EMB_STEPS, EMB_LR = 40, 1e-2   # the tiny random model needs a larger rate than SD's 1e-3 to move in 40 steps
FT_STEPS, FT_LR = 40, 1e-3
TARGET = "a photo of a sitting cat"
NAME = "zq_imagic"
WIDTH = 64  # TINY_TEST text width (context_dim)


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
def cat():
    return photo("cat", 64)


def snapshot(mp, clip):
    return ({k: v.detach().clone() for k, v in mp.model.diffusion_model.state_dict().items()},
            {k: v.detach().clone() for k, v in clip.cond_stage_model.state_dict().items()})


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def glue():
    """The nodes' glue functions (imported late: the node module registers its model folder on import)."""
    from attention_edit.nodes import imagic_nodes

    return imagic_nodes


def objects(comfy, **objs):
    return {k: comfy.register_object(v) for k, v in objs.items()}


def imagic_dir():
    import folder_paths

    return folder_paths.get_folder_paths("attention_edit_imagic")[0]


def meta_of(path):
    import json

    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        raw = dict(f.metadata() or {})
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def encode(clip_ref, text):
    return {"class_type": "CLIPTextEncode", "inputs": {"clip": clip_ref, "text": text}}


def ksampler(model_ref, positive, negative, latent, seed=3):
    return {"class_type": "KSampler", "inputs": {
        "model": model_ref, "positive": positive, "negative": negative, "latent_image": latent, "seed": seed,
        "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}


def embed_node(name=NAME, steps=EMB_STEPS, image=("i", 0)):
    return {"class_type": "AE_ImagicOptimizeEmbedding", "inputs": {
        "model": ["m", 0], "vae": ["v", 0], "image": list(image), "target": ["tgt", 0], "name": name,
        "steps": steps, "learning_rate": EMB_LR, "seed": 0, "gradient_checkpointing": False}}


def finetune_node(imagic_ref, steps=FT_STEPS, train="lora", name=""):
    return {"class_type": "AE_ImagicFineTune", "inputs": {
        "model": ["m", 0], "imagic": imagic_ref, "train": train, "rank": 4, "steps": steps,
        "learning_rate": FT_LR, "seed": 0, "gradient_checkpointing": False, "name": name}}


def interp(imagic_ref, eta):
    return {"class_type": "AE_ImagicInterpolate", "inputs": {"imagic": imagic_ref, "eta": eta}}


@pytest.fixture(scope="module")
def chain(comfy, tiny, cat):
    """Photo + target text -> Imagic 1 -> Imagic 2 (lora) -> Imagic 3 at eta 0, 0.7, 1 -> KSampler, once."""
    mp, clip, vae = tiny
    before = snapshot(mp, clip)
    g = objects(comfy, m=mp, c=clip, v=vae, i=cat)
    g["tgt"] = encode(["c", 0], TARGET)
    g["neg"] = encode(["c", 0], "")
    g["lat"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["e"] = embed_node()
    g["f"] = finetune_node(["e", 0])
    g["i0"], g["i7"], g["i1"] = interp(["f", 1], 0.0), interp(["f", 1], 0.7), interp(["f", 1], 1.0)
    g["ks"] = ksampler(["f", 0], ["i7", 0], ["neg", 0], ["lat", 0])
    t0 = time.time()
    res = comfy.run_workflow(g, outputs=["e", "f", "i0", "i7", "i1", "ks", "tgt"])
    return dict(res=res, before=before, seconds=time.time() - t0)


# ------------------------------------------------------------------------------------------------------------
# the chain of nodes
# ------------------------------------------------------------------------------------------------------------

def test_both_losses_fall_and_e_opt_stays_near_e_tgt(chain):
    res = chain["res"]
    path = res.value("f", 2)
    assert os.path.dirname(path) == os.path.realpath(imagic_dir()) and os.path.basename(path) == NAME + ".safetensors"
    m = meta_of(path)
    eb, ea = m["embedding.probe_loss_before"], m["embedding.probe_loss_after"]
    fb, fa = m["finetune.probe_loss_before"], m["finetune.probe_loss_after"]
    d = res.value("f", 1).distance()
    print(f"\n[Imagic nodes] embedding {EMB_STEPS} steps: probe loss {eb:.4f} -> {ea:.4f} ({100 * (1 - ea / eb):.1f}% "
          f"lower), |e_opt - e_tgt| / |e_tgt| = {d['relative_l2']:.3f}, mean token cosine {d['mean_cosine']:.4f}; "
          f"lora fine-tuning {FT_STEPS} steps: {fb:.4f} -> {fa:.4f} ({100 * (1 - fa / fb):.1f}% lower); "
          f"whole graph {chain['seconds']:.1f} s ({m['embedding.seconds']:.1f} s + {m['finetune.seconds']:.1f} s)")
    assert ea < 0.97 * eb, "the embedding optimisation did not lower the reconstruction loss"
    assert fa < 0.8 * fb, "fine-tuning did not lower the reconstruction loss"
    # both stages use the same probe set: stage 2 starts exactly where stage 1 ended (a zero-initialised adapter)
    assert fb == pytest.approx(ea, rel=1e-5)
    assert 0 < d["relative_l2"] < 0.5 and d["mean_cosine"] > 0.9
    assert m["stage"] == "finetuned" and m["finetune.mode"] == "lora" and m["finetune.steps_done"] == FT_STEPS
    assert m["embedding.steps_done"] == EMB_STEPS and m["embedding.interrupted"] is False
    assert len(m["embedding_losses"]) == EMB_STEPS and len(m["finetune_losses"]) == FT_STEPS
    for node, slot in (("e", 1), ("f", 3)):
        plot = res.value(node, slot)
        assert plot.shape == (1, 320, 512, 3) and float(plot.min()) < 0.5


def test_graph_model_and_clip_untouched_only_trained_weights_differ(chain, tiny):
    import comfy.model_management as mm

    from attention_edit.comfy_bridge.training import weight_keys
    from attention_edit.training.imagic import trained_keys

    mp, clip, vae = tiny
    before = chain["before"]
    out = chain["res"].value("f", 0)
    keys = trained_keys(weight_keys(mp), "lora")
    assert keys and all(k.endswith(".weight") for k in keys)
    assert set(out.patches) == set(keys) and not out.weight_wrapper_patches
    # the input MODEL / CLIP: loaded as a sampler loads them, bit-identical weights, no patches or wrappers added
    mm.load_models_gpu([mp])
    assert same(before[0], snapshot(mp, clip)[0]) and same(before[1], snapshot(mp, clip)[1])
    assert not mp.patches and not mp.weight_wrapper_patches and not clip.patcher.patches
    # the fine-tuned MODEL, loaded, differs from the base exactly at the trained weights (no bias, no norm)
    mm.load_models_gpu([out])
    patched = {k: v.detach().clone() for k, v in out.model.diffusion_model.state_dict().items()}
    changed = {"diffusion_model." + k for k in patched if not torch.equal(patched[k], before[0][k])}
    assert changed == set(keys)
    mm.load_models_gpu([mp])
    assert same(before[0], snapshot(mp, clip)[0])


def test_eta_one_is_exactly_e_tgt_and_eta_zero_exactly_e_opt(chain):
    res = chain["res"]
    result = res.value("f", 1)
    target = res.value("tgt", 0)
    c1, c0, c7 = res.value("i1", 0), res.value("i0", 0), res.value("i7", 0)
    assert torch.equal(c1[0][0], target[0][0]) and torch.equal(c1[0][0], result.e_tgt)
    assert torch.equal(c0[0][0], result.e_opt)
    assert not torch.equal(result.e_opt, result.e_tgt)
    assert torch.equal(c7[0][0], 0.7 * result.e_tgt + (1 - 0.7) * result.e_opt)
    assert c7[0][0].shape == (1, 77, WIDTH)
    assert torch.equal(c7[0][1]["pooled_output"], target[0][1]["pooled_output"])


def test_saved_file_reloads_to_bit_identical_samples(comfy, chain, tiny):
    """Load Imagic + Imagic 3 + KSampler gives the same latent bits as the in-memory chain; the base model does
    not; ComfyUI's own LoRA loader reads the file's UNet part too."""
    from comfy import sd as comfy_sd
    from safetensors.torch import load_file

    from attention_edit.training.imagic import trained_keys

    mp, clip, vae = tiny
    g = objects(comfy, m=mp, c=clip)
    g["neg"] = encode(["c", 0], "")
    g["lat"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["l"] = {"class_type": "AE_ImagicLoad", "inputs": {"model": ["m", 0], "imagic_file": NAME + ".safetensors",
                                                          "strength": 1.0}}
    g["i7"] = interp(["l", 1], 0.7)
    g["ks"] = ksampler(["l", 0], ["i7", 0], ["neg", 0], ["lat", 0])
    g["ks_b"] = ksampler(["m", 0], ["i7", 0], ["neg", 0], ["lat", 0])
    r2 = comfy.run_workflow(g, outputs=["ks", "ks_b", "l"])
    trained = chain["res"].value("ks", 0)["samples"]
    assert r2.value("l", 2) == "finetuned"
    assert torch.equal(r2.value("ks", 0)["samples"], trained)
    assert not torch.equal(r2.value("ks_b", 0)["samples"], trained)
    loaded, orig = r2.value("l", 1), chain["res"].value("f", 1)
    for a in ("e_tgt", "e_opt", "photo_latent", "pooled_output"):
        assert torch.equal(getattr(loaded, a), getattr(orig, a)), a
    assert loaded.unet.keys() == orig.unet.keys() and all(torch.equal(loaded.unet[k], orig.unet[k]) for k in orig.unet)
    # the UNet part is ComfyUI's generic LoRA format: core LoRA loading patches exactly the trained weights
    sd = load_file(os.path.join(imagic_dir(), NAME + ".safetensors"))
    assert {k.rsplit(".", 2)[-2] if k.endswith(".weight") else k.rsplit(".", 1)[-1] for k in sd
            if not k.startswith("imagic.")} == {"lora_up", "lora_down", "alpha"}
    m_core, _ = comfy_sd.load_lora_for_models(mp, None, sd, 1.0, 0.0)
    assert set(m_core.patches) == set(trained_keys(weight_keys(mp), "lora"))


def test_eta_sweep_gives_each_eta_the_same_noise_and_a_labelled_grid(comfy, chain, tiny):
    mp, clip, vae = tiny
    res = chain["res"]
    result = res.value("f", 1)
    g = objects(comfy, m=res.value("f", 0), c=clip, v=vae, im=result)
    g["neg"] = encode(["c", 0], "")
    g["s"] = {"class_type": "AE_ImagicEtaSweep", "inputs": {"imagic": ["im", 0], "etas": "0, 0.7; 1"}}
    g["ks"] = ksampler(["m", 0], ["s", 0], ["neg", 0], ["s", 1])
    g["dec"] = {"class_type": "VAEDecode", "inputs": {"samples": ["ks", 0], "vae": ["v", 0]}}
    g["grid"] = {"class_type": "AE_ImagicEtaGrid", "inputs": {"images": ["dec", 0], "etas": ["s", 2], "columns": 0}}
    r = comfy.run_workflow(g, outputs=["s", "ks", "grid"])
    cond, lat, etas = r.value("s", 0), r.value("s", 1), r.value("s", 2)
    assert etas == "0, 0.7, 1"
    assert cond[0][0].shape == (3, 77, WIDTH) and cond[0][1]["pooled_output"].shape[0] == 3
    assert torch.equal(cond[0][0][0], result.e_opt[0]) and torch.equal(cond[0][0][2], result.e_tgt[0])
    assert lat["samples"].shape == (3, 4, 8, 8) and lat["batch_index"] == [0, 0, 0]
    rows = r.value("ks", 0)["samples"]
    single = res.value("ks", 0)["samples"]  # eta 0.7 alone, same seed: the same noise, so the same picture
    # (batched and single matmuls round differently; the tiny random model's latents are ~100 in size)
    assert torch.allclose(rows[1], single[0], rtol=1e-4, atol=1e-3), float((rows[1] - single[0]).abs().max())
    assert not torch.allclose(rows[0], rows[2], atol=1e-3)
    grid = r.value("grid", 0)
    assert grid.shape == (1, 64 + 14, 3 * 64, 3)


# ------------------------------------------------------------------------------------------------------------
# algorithm level: the other fine-tuning modes, interruption, bad input
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stage1(comfy, tiny, cat):
    mp, clip, vae = tiny
    with torch.inference_mode():
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(TARGET))
        return glue().optimize_embedding(mp, vae, cat, cond, "zq_algo", steps=8, learning_rate=EMB_LR)


@pytest.mark.parametrize("mode", ["attention", "full"])
def test_full_and_attention_modes_change_only_their_parameters(comfy, tiny, stage1, mode):
    import comfy.model_management as mm

    from attention_edit.training import imagic as im

    mp, clip, vae = tiny
    base = snapshot(mp, clip)[0]
    with torch.inference_mode():
        r = glue().finetune(mp, stage1, mode=mode, steps=3, learning_rate=1e-3)
    keys = im.trained_keys(weight_keys(mp), mode)
    if mode == "attention":
        assert all(".attn1." in k or ".attn2." in k for k in keys) and any(k.endswith(".bias") for k in keys)
    else:
        assert len(keys) == len(list(mp.model.diffusion_model.parameters()))
    assert set(r.unet) == {im.file_key(k) for k in keys}
    out = glue().apply_imagic(mp, r)
    assert set(out.patches) == set(keys)
    mm.load_models_gpu([out])
    patched = out.model.diffusion_model.state_dict()
    changed = {"diffusion_model." + k for k in patched if not torch.equal(patched[k], base[k])}
    assert changed <= set(keys) and len(changed) >= 0.9 * len(keys)
    mm.load_models_gpu([mp])
    assert same(base, snapshot(mp, clip)[0])


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_interrupt_in_either_stage_keeps_what_was_learned(comfy, tiny, cat, stage1, mode, tmp_path):
    """ComfyUI's interrupt (raised by the progress bar) at step 6: the learned state so far comes back in
    TrainingInterrupted, is usable, and saves and loads."""
    import comfy.model_management as mm

    from attention_edit.training import imagic as im
    from attention_edit.training.fit import TrainingInterrupted

    mp, clip, vae = tiny

    def progress(done, total):
        if done == 6:
            raise mm.InterruptProcessingException()

    from attention_edit.comfy_bridge import training as bt

    with torch.inference_mode(), pytest.raises(TrainingInterrupted) as ei:
        with bt.TrainingSession(bt.training_clone(mp)) as sess:  # the pure trainer in a bridge session
            im.optimize_embedding(sess, bt.model_latent(mp, stage1.photo_latent), stage1.photo_latent,
                                  stage1.e_tgt, steps=100, learning_rate=EMB_LR, progress=progress, name="zq_cut")
    r1 = ei.value.result
    assert r1.metadata["embedding.interrupted"] and r1.metadata["embedding.steps_done"] == 6
    assert 1 <= r1.metadata["embedding.best_step"] <= 6 and not torch.equal(r1.e_opt, r1.e_tgt)
    with torch.inference_mode(), pytest.raises(TrainingInterrupted) as ei:
        glue().finetune(mp, r1, mode=mode, rank=2, steps=100, learning_rate=1e-3, progress=progress)
    r2 = ei.value.result
    assert r2.metadata["finetune.interrupted"] and r2.metadata["finetune.steps_done"] == 6 and r2.unet
    assert r2.metadata["finetune.probe_loss_after"] < r2.metadata["finetune.probe_loss_before"]
    path = str(tmp_path / "cut.safetensors")
    save_safetensors(path, *im.imagic_file(r2, "cut"))
    back = glue().load_imagic(path)
    assert back.stage == "finetuned" and back.metadata["finetune.interrupted"] is True
    assert all(torch.equal(back.unet[k], r2.unet[k]) for k in r2.unet)
    out = glue().apply_imagic(mp, back)
    assert set(out.patches) == set(im.trained_keys(weight_keys(mp), mode))


def test_node_interrupt_saves_a_usable_file(comfy, tiny, cat):
    """POST /interrupt (in-process: nodes.interrupt_processing) while Imagic 2 runs: the run is reported as
    interrupted, the file holds the fine-tuning so far, and Load Imagic + KSampler work with it."""
    mp, clip, vae = tiny
    name = "zq_imagic_cut"
    g = objects(comfy, m=mp, c=clip, v=vae, i=cat)
    g["tgt"] = encode(["c", 0], TARGET)
    g["e"] = embed_node(name=name, steps=5)
    g["f"] = finetune_node(["e", 0], steps=5000)
    stub = comfy._default_stub()
    stub.events.clear()
    done = threading.Event()

    def watcher():
        while not done.is_set():
            for ev, data in list(stub.events):
                if ev == "progress" and str(data.get("node")) == "f" and data.get("value", 0) >= 8:
                    comfy.interrupt()
                    return
            time.sleep(0.01)

    th = threading.Thread(target=watcher, daemon=True)
    th.start()
    try:
        with pytest.raises(comfy.WorkflowInterrupted):
            comfy.run_workflow(g, outputs=["f"])
    finally:
        done.set()
        th.join(5)
    m = meta_of(os.path.join(imagic_dir(), name + ".safetensors"))
    assert m["stage"] == "finetuned" and m["finetune.interrupted"] is True
    assert 8 <= m["finetune.steps_done"] < 5000 and m["embedding.steps_done"] == 5
    g = objects(comfy, m=mp, c=clip)
    g["neg"] = encode(["c", 0], "")
    g["lat"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    g["l"] = {"class_type": "AE_ImagicLoad", "inputs": {"model": ["m", 0], "imagic_file": name + ".safetensors",
                                                          "strength": 1.0}}
    g["i"] = interp(["l", 1], 0.7)
    g["ks"] = ksampler(["l", 0], ["i", 0], ["neg", 0], ["lat", 0])
    r = comfy.run_workflow(g, outputs=["ks"])
    assert torch.isfinite(r.value("ks", 0)["samples"]).all()


def test_bad_photos_give_clear_errors(comfy, tiny, cat):
    from attention_edit.training import imagic as im

    mp, clip, vae = tiny
    g = objects(comfy, m=mp, c=clip, v=vae, i=photo_batch(["cat", "coffee"], 64))
    g["tgt"] = encode(["c", 0], TARGET)
    g["e"] = embed_node(name="zq_bad", steps=2)
    with pytest.raises(comfy.WorkflowExecutionError) as ei:
        comfy.run_workflow(g, outputs=["e"])
    msg = ei.value.exception_message
    assert "Imagic edits one photo" in msg and "batch of 2" in msg and "Image From Batch" in msg, msg
    with pytest.raises(ValueError, match=r"60x64 pixels.*multiples of 8.*56x64"):
        im.check_photo(cat[:, :, :60], 8)
    with pytest.raises(ValueError, match="no photo"):
        im.check_photo(None, 8)
    with pytest.raises(ValueError, match="IMAGE"):
        im.check_photo(cat[0], 8)


def test_bad_conditioning_eta_and_files_give_clear_errors(comfy, tiny, stage1, tmp_path):
    from safetensors.torch import save_file

    from attention_edit.training import imagic as im

    mp, clip, vae = tiny
    with torch.inference_mode():
        long_text = " ".join(["cat"] * 100)
        long = clip.encode_from_tokens_scheduled(clip.tokenize(long_text))
        short = clip.encode_from_tokens_scheduled(clip.tokenize(TARGET))
    assert long[0][0].shape[1] == 154
    # a target text with another token count than step 1's
    with pytest.raises(ValueError, match=r"\[1, 154, 64\].*\[1, 77, 64\].*tokens"):
        im.conditioning(stage1, 0.7, long)
    width = context_dim(mp)
    with pytest.raises(ValueError, match="holds 2 conditionings"):
        im.target_embedding(short + short, width)
    with pytest.raises(ValueError, match="64-wide"):
        im.target_embedding([[torch.zeros(1, 77, 32), {}]], width)
    with pytest.raises(ValueError, match="carries area"):
        im.target_embedding([[short[0][0], {"area": (8, 8, 0, 0)}]], width)
    # eta outside its range: the node refuses it at validation, the function with the allowed range
    for eta in (-0.1, 1.6, float("nan")):
        with pytest.raises(ValueError, match=r"outside 0.0-1.5.*0 reconstructs the photo, 1 is the target"):
            im.conditioning(stage1, eta)
    with pytest.raises(ValueError, match="not a number"):
        im.parse_etas("0, 0.7, x")
    with pytest.raises(ValueError, match="outside"):
        im.parse_etas("0.5 2")
    g = objects(comfy, im=stage1)
    g["i"] = interp(["im", 0], 1.6)
    with pytest.raises(comfy.WorkflowValidationError, match="Value 1.6 bigger than max of 1.5"):
        comfy.run_workflow(g, outputs=["i"])
    # fine-tuning settings
    with pytest.raises(ValueError, match="unknown fine-tuning mode 'bitfit'"):
        glue().finetune(mp, stage1, mode="bitfit")
    with pytest.raises(ValueError, match="steps must be at least 1"):
        glue().finetune(mp, stage1, steps=0)
    # files: not an Imagic file; a result that does not fit the model
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not an Imagic file"):
        glue().load_imagic(str(other))
    key = "diffusion_model.input_blocks.0.0"
    with pytest.raises(ValueError, match=r"does not fit this model.*other shapes"):
        glue().apply_imagic(mp, {key + ".diff": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match=r"does not fit this model.*does not have"):
        glue().apply_imagic(mp, {"diffusion_model.nowhere.diff": torch.zeros(3, 3)})
