"""Edit only where the words changed (the fidelity issue): Direct Inversion on every family, the prediction-difference
mask (DiffEdit) on the ToyWorld UNet and MM-DiT, the locked background, and what bad masks and thresholds get.

Models: the tiny random models of each family built from ComfyUI's own classes (SD1.x, SD2.x v, SDXL, Flux.1) for
the exactness checks; the shipped ToyWorld UNet and MM-DiT on rendered scenes where the judge must read an edit.
The whole Edit Sampler -> VAE Decode -> Lock Background chain runs through ComfyUI's executor, the bad-input rows
through a real ComfyUI server.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from attention_edit.attention.recipe import EditSpec, LocalBlendSpec, build_controller

SOURCE = "a photo of a cat"
TARGET = "a photo of a dog"
STEPS = 6


def enc(clip, p):
    return clip.encode_from_tokens_scheduled(clip.tokenize(p))


@pytest.fixture(scope="module", params=["tiny_test", "tiny_sd2_eps", "tiny_sd2_v", "tiny_sdxl", "tiny_flux"],
                ids=["sd1", "sd2_eps", "sd2_v", "sdxl", "flux"])
def family(request, comfy, _cat64):
    import dataclasses

    if request.param == "tiny_flux":
        from attention_edit.comfy_bridge.flux_models import build_flux

        m, clip, vae = build_flux("tiny_flux", seed=0)
    else:
        from attention_edit.comfy_bridge.families import prediction_type
        from attention_edit.comfy_bridge.models import CONFIGS, build_unet

        cfg = (dataclasses.replace(CONFIGS["tiny_sd2_v"], name="tiny_sd2_eps", prediction="eps")
               if request.param == "tiny_sd2_eps" else CONFIGS[request.param])
        m, clip, vae = build_unet(cfg, seed=0)
        assert prediction_type(m) == ("v" if request.param == "tiny_sd2_v" else "eps")
    with torch.no_grad():
        latent = vae.encode(_cat64[..., :3]).detach()
    return dict(name=request.param, m=m, clip=clip, vae=vae, latent=latent)


def _invert(f, method):
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule

    cond = enc(f["clip"], SOURCE)
    empty = cond if f["name"] == "tiny_flux" else enc(f["clip"], "")
    return invert(f["m"], f["latent"], cond, empty, replay_schedule(f["m"], "p2p_ddim", STEPS), method=method,
                  guidance_scale=1.0 if f["name"] == "tiny_flux" else 7.5, source_prompt=SOURCE)


def _edit(f, inv, target=TARGET, **spec):
    from attention_edit.comfy_bridge.sampling import edit

    ctrl = build_controller(f["clip"].tokenizer, SOURCE, EditSpec(target_prompts=(target,), **spec), inv.steps)
    return edit(f["m"], inv, [enc(f["clip"], target)], ctrl)


def test_direct_inversion_source_row_is_the_photo_latent(family):
    """Direct Inversion (Ju et al. 2023): the edit's source row is put back on the inversion path every step, so it
    ends on the encoded photo to float precision, on every family, while the edited row is the controller's. A DDIM
    inversion of the same random-weight model does not reconstruct (so the check can fail)."""
    inv = _invert(family, "direct")
    assert inv.method == "direct" and inv.path is not None and inv.path.shape[0] == STEPS + 1
    assert inv.solver == ("fireflow" if family["name"] == "tiny_flux" else "")
    out = _edit(family, inv, self_replace_steps=0.5, self_min_downscale=1.0)
    latent = family["latent"][0]
    err = (out[0] - latent).abs().max().item()
    assert err <= 1e-5 * max(1.0, latent.abs().max().item()), f"source row off the photo's latent by {err}"
    assert (out[1] - out[0]).abs().max().item() > 1e-3, "the edited row must be the edit, not the source"
    plain = _invert(family, "ddim" if family["name"] != "tiny_flux" else "rf_euler")
    base = _edit(family, plain, self_replace_steps=0.5, self_min_downscale=1.0)
    assert (base[0] - latent).abs().max().item() > 100 * err, "a plain inversion reconstructs as well: weak check"


def test_direct_inversion_survives_save_and_load(family):
    """The inversion file keeps the path and the solver: the loaded inversion edits exactly like the original."""
    from attention_edit.inversion import store

    inv = _invert(family, "direct")
    tensors, meta = store.to_file(inv)
    assert "path" in tensors and meta["method"] == "direct"
    back = store.from_file(tensors, meta)
    assert back.solver == inv.solver and torch.equal(back.path, inv.path.float())
    assert torch.equal(_edit(family, back), _edit(family, inv))
    tensors.pop("path")
    with pytest.raises(ValueError, match="needs its inversion path"):
        store.from_file(tensors, meta, "the file 'x.safetensors'")


def test_direct_inversion_of_a_batch_keeps_each_photos_path(comfy, _cat64):
    """Invert Images (Batch) with method direct: each photo gets its own path, the one it gets alone (to rounding),
    and each edit's source row ends on its own photo's latent."""
    from attention_edit.comfy_bridge.models import CONFIGS, build_unet
    from attention_edit.comfy_bridge.sampling import edit, invert, invert_batch, replay_schedule
    from attention_edit.headless.photos import photo

    m, clip, vae = build_unet(CONFIGS["tiny_test"], seed=0)
    with torch.no_grad():
        lats = [vae.encode(img[..., :3]).detach() for img in (_cat64, photo("coffee", 64))]
    prompts = [SOURCE, "a photo of a cup of coffee"]
    conds, empty, sig = [enc(clip, p) for p in prompts], enc(clip, ""), replay_schedule(m, "p2p_ddim", STEPS)
    batch = invert_batch(m, torch.cat(lats), conds, empty, sig, method="direct", source_prompts=prompts)
    for inv, lat, cond, p in zip(batch, lats, conds, prompts):
        alone = invert(m, lat, cond, empty, sig, method="direct", source_prompt=p)
        assert torch.allclose(inv.path, alone.path, rtol=1e-4, atol=1e-4) and torch.equal(inv.path[-1], alone.path[-1])
        out = edit(m, inv, [enc(clip, "a photo of a dog")])
        assert (out[0] - lat[0]).abs().max().item() <= 1e-5 * max(1.0, lat.abs().max().item())


def test_a_damaged_path_is_refused_naming_the_fix(family):
    import dataclasses

    inv = _invert(family, "direct")
    bad = dataclasses.replace(inv, path=inv.path[:-1])
    with pytest.raises(ValueError, match="path has shape .* run Invert Image again"):
        _edit(family, bad)


# ------------------------------------------------------------------------- ToyWorld: masks on a model that draws
@pytest.fixture(scope="module")
def toy(comfy):
    from attention_edit.bench import editbench as eb

    return eb.load_model()


@pytest.fixture(scope="module")
def toy_mmdit(comfy):
    from attention_edit.bench import editbench as eb

    return eb.load_mmdit()


@pytest.mark.parametrize("model", ["unet", "mmdit"])
def test_prediction_mask_overlaps_the_judged_object(request, model):
    """The prediction-difference mask (DiffEdit) of a colour swap covers the object the judge finds in the source
    render (mean IoU over 4 seeded scenes >= 0.5) on the UNet and on the MM-DiT, whose attention maps are flat (its
    attention mask covers almost the whole image, so it is no local mask)."""
    from attention_edit.bench import fidelitybench as fb

    tm = request.getfixturevalue("toy" if model == "unet" else "toy_mmdit")
    st = fb.settings_for(model, steps=10)
    ious = [fb.mask_iou_case(tm, s, st) for s in range(4)]
    assert float(np.mean(ious)) >= 0.5, ious
    if model == "mmdit":
        cover = fb.fidelity_case(tm, 0, "swap", st, ("direct",), ("attention",))[("direct", "attention")]["cover"]
        assert cover > 0.9, f"the MM-DiT's attention mask was expected to be flat, it covers {cover:.0%}"


def test_prediction_mask_keeps_the_mmdit_background_and_the_judge_reads_the_edit(toy_mmdit):
    """On the MM-DiT, Direct + P2P with the prediction mask: the judge reads the new colour, the background outside
    the object stays above 30 dB, and the locked variant is bit-identical to the photo outside its weight."""
    from attention_edit.bench import fidelitybench as fb

    st = fb.settings_for("mmdit", steps=10)
    res = fb.fidelity_case(toy_mmdit, 1, "swap", st, ("direct",), ("prediction",))
    for v in ("prediction", "locked (prediction)"):
        r = res[("direct", v)]
        assert r["success"] and r["bg_psnr"] >= 30, (v, r)
    assert res[("direct", "locked (prediction)")]["identical"]
    assert res[("direct", "prediction")]["cover"] < 0.5


def test_identical_prompts_give_an_empty_prediction_mask(toy):
    """Prompts that differ in no word have the same predictions: the mask is empty (and the sampler logs that the
    blend undoes the edit everywhere), never NaN."""
    from attention_edit.attention.masks import difference_mask
    from attention_edit.bench import editbench as eb
    from attention_edit.bench import fidelitybench as fb
    from attention_edit.comfy_bridge.sampling import prediction_mask

    sc = eb.one_object_scene(0)
    inv, _ = fb.invert_timed(toy, sc, sc.caption, eb.Settings(steps=4), "direct")
    diff = prediction_mask(toy.model, inv, [toy.encode(sc.caption)], draws=2)
    assert torch.isfinite(diff).all() and float(diff.abs().max()) == 0.0
    assert float(difference_mask(diff).sum()) == 0.0


# ------------------------------------------------------------------ the chain in ComfyUI's executor: lock and masks
def _scene_png(comfy, caption="a red circle on the left on white", name="fidelity_scene.png"):
    from PIL import Image

    from attention_edit.toyworld import scenes
    import folder_paths

    sc = scenes.render_spec(scenes.spec_from_caption(caption), seed=0)
    Image.fromarray(sc.image).save(f"{folder_paths.get_input_directory()}/{name}")
    return sc, name


def _chain(image, weights="toyworld (shipped)", method="direct", source="a red circle on the left on white",
           target="a blue circle on the left on white", blend=None, lock=None, steps=10, cfg=7.5):
    g = {"1": {"class_type": "AE_ToyWorldLoader", "inputs": {"weights": weights, "seed": 0}},
         "2": {"class_type": "LoadImage", "inputs": {"image": image}},
         "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
         "4": {"class_type": "AE_InvertImage", "inputs": {
             "model": ["1", 0], "clip": ["1", 1], "latent": ["3", 0], "source_prompt": source, "method": method,
             "steps": steps, "cfg": cfg, "scheduler": "p2p_ddim", "num_inner_steps": 2, "early_stop_epsilon": 1e-5,
             "learning_rate": 0.01}},
         "5": {"class_type": "AE_P2PEdit", "inputs": {
             "edited_prompts": target, "mode": "replace", "cross_replace_steps": "0.8", "self_replace_steps": "0.4",
             "self_replace_max_resolution": "full"}},
         "6": {"class_type": "AE_P2PLocalBlend", "inputs": {
             "edit": ["5", 0], "source_words": "red, circle", "target_words": "blue, circle", "use": "both",
             "threshold": 0.3, "start": 0.2, "mask_resolution": "full", "mask_from": "prediction",
             **(blend or {})}},
         "7": {"class_type": "AE_P2PEditSampler", "inputs": {"model": ["1", 0], "clip": ["1", 1],
                                                             "inversion": ["4", 0], "edit": ["6", 0]}},
         "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 2], "vae": ["1", 2]}},
         "9": {"class_type": "AE_LockBackground", "inputs": {"edited": ["8", 0], "photo": ["2", 0], "mask": ["7", 4],
                                                             "grow": 0, "feather": 8, **(lock or {})}},
         "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "fidelity_locked"}},
         "11": {"class_type": "MaskToImage", "inputs": {"mask": ["7", 4]}},
         "12": {"class_type": "SaveImage", "inputs": {"images": ["11", 0], "filename_prefix": "fidelity_mask"}}}
    return g


def _saved(comfy, res, nid, k=0):
    from pathlib import Path

    import folder_paths
    from PIL import Image

    img = res["outputs"][nid]["images"][k]
    path = Path(folder_paths.get_output_directory()) / img.get("subfolder", "") / img["filename"]
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("weights", ["toyworld (shipped)", "toyworld MM-DiT (shipped, Flux.1 architecture)"],
                         ids=["unet", "mmdit"])
def test_locked_background_is_bit_identical_outside_the_mask(comfy, weights):
    """Invert (direct) -> word swap with the prediction mask -> VAE Decode -> Lock Background -> SaveImage, in
    ComfyUI's executor: every saved pixel farther than grow + feather from the Edit Sampler's mask equals the input
    photo's, the edit inside is kept (the judge reads a blue circle), and the mask is a local one."""
    from scipy import ndimage

    from attention_edit.toyworld import judge

    sc, name = _scene_png(comfy)
    mmdit = "MM-DiT" in weights
    res = comfy.run_workflow(_chain(name, weights, cfg=1.0 if mmdit else 7.5))
    locked, mask = _saved(comfy, res, "10"), _saved(comfy, res, "12", 1)[..., 0] >= 128  # row 0: the reconstruction
    assert _saved(comfy, res, "12", 0).min() == 255, "the reconstruction's row of the mask must be all white"
    assert 0 < mask.mean() < 0.5, f"the mask covers {mask.mean():.0%}"
    far = ndimage.distance_transform_edt(~mask) >= 8  # grow 0 + feather 8
    assert np.array_equal(locked[far], sc.image[far]), "a pixel outside the locked mask differs from the photo"
    found = judge.judge_image(locked, background=sc.background)
    assert any(o["colour"] == "blue" and o["shape"] == "circle" for o in found), found


def test_lock_background_node_alone(comfy):
    """Lock Background on plain tensors: weight 0 -> the photo bit for bit, 1 -> the edit, the feathered ring
    between; a smaller photo or a mask of another size is refused naming the fix."""
    from attention_edit.nodes.edit_nodes import AE_LockBackground

    g = torch.Generator().manual_seed(0)
    photo = (torch.randint(0, 256, (1, 32, 32, 3), generator=g).float() / 255)
    edited = torch.rand((2, 32, 32, 3), generator=g)
    mask = torch.zeros((1, 32, 32))
    mask[:, 10:20, 10:20] = 1
    out = AE_LockBackground.execute(edited, photo, mask, 2, 3).result[0]
    assert out.shape == edited.shape
    inside, far = mask[0] > 0, torch.ones(32, 32, dtype=torch.bool)
    far[5:25, 5:25] = False  # beyond grow 2 + feather 3 (+ the box's corners)
    assert torch.equal(out[:, far], photo.expand(2, -1, -1, -1)[:, far])
    assert torch.equal(out[:, inside], edited[:, inside])
    # the Edit Sampler's mask (row 0, the reconstruction's, all ones): with its 'latents' decoded the reconstruction
    # passes unchanged; with its 'edited' decoded (one image fewer) row 0 is left out
    sampler_mask = torch.cat([torch.ones((1, 32, 32)), mask, mask])
    both = AE_LockBackground.execute(edited[:1].repeat(3, 1, 1, 1), photo, sampler_mask, 2, 3).result[0]
    assert torch.equal(both[0], edited[0]) and torch.equal(both[1:, far], photo.expand(2, -1, -1, -1)[:, far])
    assert torch.equal(AE_LockBackground.execute(edited, photo, sampler_mask, 2, 3).result[0], out)
    with pytest.raises(ValueError, match="Lock Background: the photo is 16x16 but the edited images are 32x32"):
        AE_LockBackground.execute(edited, photo[:, :16, :16], mask, 0, 0)
    with pytest.raises(ValueError, match="is 16x16 pixels but the image is 32x32"):
        AE_LockBackground.execute(edited, photo, mask[:, :16, :16], 0, 0)


# ------------------------------------------------------------------------- bad input, through a real ComfyUI server
@pytest.fixture(scope="module")
def served_scene(comfy_server):
    from PIL import Image

    from attention_edit.toyworld import scenes

    sc = scenes.render_spec(scenes.spec_from_caption("a red circle on the left on white"), seed=0)
    Image.fromarray(sc.image).save(comfy_server.input_dir / "fidelity_scene.png")
    return "fidelity_scene.png"


def _failure(srv, prompt):
    from support.server import PromptFailed

    with pytest.raises(PromptFailed) as ei:
        srv.run(prompt, timeout=180)
    return f"{ei.value.exception_type}: {ei.value.exception_message}"


def _solid(value, size=64):
    return {"class_type": "SolidMask", "inputs": {"value": value, "width": size, "height": size}}


@pytest.mark.parametrize("case, expect", [
    ("threshold_nan", ["Local Blend", "'prediction_threshold'", "finite"]),
    ("blend_empty", ["mask connected to Prompt-to-Prompt Local Blend", "empty", "paint the region"]),
    ("blend_full", ["mask connected to Prompt-to-Prompt Local Blend", "covers the whole image"]),
    ("blend_size", ["is 48x48 pixels but the image is 64x64", "64x64 or 8x8"]),
    ("lock_empty", ["Lock Background", "empty"]),
    ("lock_size", ["Lock Background", "is 48x48 pixels but the image is 64x64"]),
])
def test_bad_masks_and_thresholds_name_the_input_and_keep_the_cache(comfy_server, served_scene, case, expect):
    """Each bad mask or threshold stops the run with a message naming the input and the fix; the inversion computed
    before stays in ComfyUI's cache (the corrected prompt that follows does not invert again)."""
    good = _chain(served_scene, steps=4)
    comfy_server.run(good, timeout=180)  # the inversion is cached from here on
    bad = _chain(served_scene, steps=4)
    if case == "threshold_nan":
        bad["6"]["inputs"]["prediction_threshold"] = float("nan")
    elif case.startswith("blend_"):
        bad["20"] = _solid({"blend_empty": 0.0, "blend_full": 1.0, "blend_size": 1.0}[case],
                           48 if case == "blend_size" else 64)
        bad["6"]["inputs"]["mask"] = ["20", 0]
    else:
        bad["20"] = _solid({"lock_empty": 0.0, "lock_full": 1.0, "lock_size": 1.0}[case],
                           48 if case == "lock_size" else 64)
        bad["9"]["inputs"]["mask"] = ["20", 0]
    msg = _failure(comfy_server, bad)
    for e in expect:
        assert e in msg, msg
    again = comfy_server.run(good, timeout=180)
    msgs = {m[0]: m[1] for m in again["status"]["messages"]}
    assert "4" in msgs["execution_cached"]["nodes"], "the inversion was computed again after the bad input"


def test_lock_background_with_a_mask_over_everything_passes_the_edit_on_and_says_so(comfy_server, served_scene):
    """A mask over the whole image (an edit without local blend, or maps that locate nothing) leaves nothing to lock:
    the run goes on with the edit as it is, and the node's text says why and what to connect."""
    g = _chain(served_scene, steps=4)
    g["20"] = _solid(1.0)
    g["9"]["inputs"]["mask"] = ["20", 0]
    entry = comfy_server.run(g, timeout=180)
    text = " ".join(entry["outputs"]["9"]["text"])
    assert "covers the whole image, so nothing is locked" in text and "Local Blend" in text, text


def test_out_of_range_thresholds_are_refused_in_the_algorithm_layer():
    """What ComfyUI's min/max check does for the widget (refusing 1.5 before the run) the spec does for any caller."""
    for kw in (dict(prediction_threshold=1.5), dict(prediction_threshold=float("nan")), dict(threshold=-0.1),
               dict(noise_draws=0), dict(noise_strength=1.0), dict(mask_from="magic")):
        with pytest.raises(ValueError):
            LocalBlendSpec(**kw)
