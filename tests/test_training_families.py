"""Concept training on the SD2.x (v-prediction) and SDXL tiny models, through ComfyUI's executor.

The SD1.x path is tested in depth in test_training.py; here the same nodes run on the other two families and the
family-specific parts are checked:

* textual inversion writes the file ComfyUI (and A1111) read for the family: ``emb_params`` for SD2.x,
  ``clip_l`` + ``clip_g`` for SDXL, and ComfyUI's own CLIP Text Encode with ``embedding:<name>`` gives exactly the
  conditioning training optimised (the sequence of both encoders and, on SDXL, the pooled bigG vector);
* Custom Diffusion trains SDXL's 2048-wide (here 128-wide) attn2 K/V and the modifier token in both encoders,
  saves / reloads, and exports the diffusers format (SDXL token file in the clip_l / clip_g format), which diffusers'
  own SDXL UNet with CustomDiffusionAttnProcessor computes exactly as the patched ComfyUI model, and reads back.

Models are built under ``torch.inference_mode()`` as a loader builds them, with attn2 K/V scaled x4 (a sharper
cross-attention than at random initialisation, so a new word matters; see test_training.py).
"""
from __future__ import annotations

import os

import pytest
import torch

from attention_edit.headless.photos import photo_batch

FAMILIES = [("tiny_sd2_v", "sd2"), ("tiny_sdxl", "sdxl")]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f for _, f in FAMILIES])
def model(comfy, request):
    from attention_edit.comfy_bridge.models import CONFIGS, build_unet

    torch.set_num_threads(1)
    name, family = request.param
    with torch.inference_mode():
        mp, clip, vae = build_unet(CONFIGS[name], seed=0)
        for n, p in mp.model.diffusion_model.named_parameters():
            if ".attn2.to_k." in n or ".attn2.to_v." in n:
                p.mul_(4.0)
    size = CONFIGS[name].image_size
    return dict(mp=mp, clip=clip, vae=vae, family=family, size=size,
                refs=photo_batch(["cat", "coffee", "astronaut"], size))


def _objects(comfy, **objs):
    return {k: comfy.register_object(v) for k, v in objs.items()}


def _dir(kind):
    import folder_paths

    return folder_paths.get_folder_paths(kind)[0]


def test_textual_inversion_writes_the_family_format_comfyui_loads(comfy, model):
    from safetensors.torch import load_file

    from attention_edit.comfy_bridge.sampling import model_pooled_width
    from attention_edit.comfy_bridge.text import PromptEncoder, embedding_width, encoders

    mp, clip, vae, family = model["mp"], model["clip"], model["vae"], model["family"]
    name = f"zq_ti_{family}"
    text = f"a photo of embedding:{name} on a table"
    g = _objects(comfy, m=mp, c=clip, v=vae, i=model["refs"])
    g["t"] = {"class_type": "AE_TrainTextualInversion", "inputs": {
        "model": ["m", 0], "clip": ["c", 0], "vae": ["v", 0], "images": ["i", 0], "name": name,
        "initializer": "teapot", "num_vectors": 2, "steps": 40, "learning_rate": 0.05, "batch_size": 2, "seed": 0,
        "templates": "object", "resolution": model["size"], "gradient_checkpointing": False}}
    g["e"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t", 0], "text": text}}
    res = comfy.run_workflow(g, outputs=["t", "e"])
    path = res.value("t", 2)
    saved = load_file(path)
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    b, a = float(meta["probe_loss_before"]), float(meta["probe_loss_after"])
    print(f"\n[TI {family}] probe loss {b:.4f} -> {a:.4f}")
    assert a < b
    width = embedding_width(clip)
    if family == "sdxl":
        (_, _, wl), (_, _, wg) = encoders(clip)
        assert set(saved) == {"clip_l", "clip_g"} and saved["clip_l"].shape == (2, wl) and \
            saved["clip_g"].shape == (2, wg)
        vectors = torch.cat([saved["clip_l"], saved["clip_g"]], -1)
    else:
        assert set(saved) == {"emb_params"} and saved["emb_params"].shape == (2, width)
        vectors = saved["emb_params"]
    # ComfyUI's own loader (CLIP Text Encode, embedding:<name>) gives what training optimised
    cond = res.value("e", 0)
    P = model_pooled_width(mp)
    trained = PromptEncoder(clip, name, 2, width, P).encode(text, vectors)
    if P:
        assert torch.equal(cond[0][0], trained[:, :-1])
        assert torch.equal(cond[0][1]["pooled_output"].reshape(-1), trained[0, -1, :P])
    else:
        assert torch.equal(cond[0][0], trained)


@pytest.fixture(scope="module")
def cd_result(comfy, model):
    mp, clip, vae, family = model["mp"], model["clip"], model["vae"], model["family"]
    g = _objects(comfy, m=mp, c=clip, v=vae, i=model["refs"])
    g["t"] = {"class_type": "AE_TrainCustomDiffusion", "inputs": {
        "model": ["m", 0], "clip": ["c", 0], "vae": ["v", 0], "images": ["i", 0], "name": f"zq_pot_{family}",
        "modifier_token": "<v1>", "class_noun": "wooden pot", "initializer": "ktn", "prior_loss_weight": 1.0,
        "train": "crossattn_kv", "steps": 30, "learning_rate": 1e-2, "batch_size": 1, "seed": 0,
        "resolution": model["size"], "augment": True, "gradient_checkpointing": False}}
    return comfy.run_workflow(g, outputs=["t"])


def test_custom_diffusion_trains_kv_and_the_token_in_every_encoder(comfy, model, cd_result):
    from safetensors import safe_open

    from attention_edit.comfy_bridge.text import embedding_width, encoders
    from attention_edit.comfy_bridge.training import parameter_shapes
    from attention_edit.training.custom_diffusion import trained_keys

    mp, clip, family = model["mp"], model["clip"], model["family"]
    path = os.path.join(_dir("attention_edit_concepts"), cd_result.value("t", 2))
    with safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
        token = f.get_tensor("modifier_token.<v1>")
    b, a = float(meta["probe_loss_before"]), float(meta["probe_loss_after"])
    print(f"\n[CD {family}] probe loss {b:.4f} -> {a:.4f}")
    assert a < b
    assert token.shape == (1, embedding_width(clip))
    kv = trained_keys(parameter_shapes(mp), "crossattn_kv")
    ctx = mp.model.model_config.unet_config["context_dim"]
    assert kv and all(parameter_shapes(mp)[k][-1] == ctx for k in kv)  # K/V read the whole context (SDXL: L + G)
    out_model, out_clip = cd_result.value("t", 0), cd_result.value("t", 1)
    assert set(out_model.patches) == set(kv)
    text = "a photo of a <v1> wooden pot"
    toks = out_clip.tokenize(text)
    for key, chunks in toks.items():  # the modifier token is one vector in every encoder's sequence
        assert torch.is_tensor(chunks[0][5][0]), key
    if family == "sdxl":
        (_, _, wl), (_, _, wg) = encoders(clip)
        assert toks["l"][0][5][0].shape == (wl,) and toks["g"][0][5][0].shape == (wg,)
        assert torch.equal(toks["l"][0][5][0], token[0, :wl]) and torch.equal(toks["g"][0][5][0], token[0, wl:])


def test_custom_diffusion_exports_and_reads_back_the_diffusers_format(comfy, model, cd_result, tmp_path):
    """Export through the node; on SDXL the token file is the clip_l / clip_g format, and diffusers' own SDXL UNet
    with the exported CustomDiffusionAttnProcessors computes what the patched ComfyUI model computes."""
    pytest.importorskip("diffusers")
    from safetensors import safe_open
    from safetensors.torch import load_file

    import comfy.model_management as mm
    from support import diffusers_bridge as B
    from attention_edit.comfy_bridge.text import encoders
    from attention_edit.nodes import training_nodes as TN
    from attention_edit.training import custom_diffusion as cd

    mp, clip, family = model["mp"], model["clip"], model["family"]
    concept = cd_result.value("t", 2)
    g = _objects(comfy, m=mp)
    g["x"] = {"class_type": "AE_ExportCustomDiffusion", "inputs": {"model": ["m", 0], "concept": concept,
                                                                   "folder": f"zq_{family}"}}
    out_dir = comfy.run_workflow(g, outputs=["x"]).value("x", 0)
    assert sorted(os.listdir(out_dir)) == [cd.DIFFUSERS_WEIGHTS_NAME, "v1.safetensors"]
    c = TN.load_concept(os.path.join(_dir("attention_edit_concepts"), concept))
    deltas, tokens = TN.resolve_concept(c, mp, clip)
    tok_file = os.path.join(out_dir, "v1.safetensors")
    tok = load_file(tok_file)
    with safe_open(tok_file, framework="pt") as f:
        assert dict(f.metadata())["token"] == "<v1>"
    if family == "sdxl":
        (_, _, wl), _ = encoders(clip)
        assert set(tok) == {"clip_l", "clip_g"}
        assert torch.equal(torch.cat([tok["clip_l"], tok["clip_g"]], -1), tokens["<v1>"])
    else:
        assert list(tok) == ["<v1>"] and torch.equal(tok["<v1>"], tokens["<v1>"][0])
    # read back from the exported folder: the same deltas (full - base, float rounding) and the same token
    back, back_tok = TN.resolve_concept(TN.load_concept(os.path.join(out_dir, cd.DIFFUSERS_WEIGHTS_NAME)), mp, clip)
    assert back.keys() == deltas.keys() and torch.equal(back_tok["<v1>"], tokens["<v1>"])
    assert max(float((back[k] - deltas[k]).abs().max()) for k in deltas) < 1e-6

    # diffusers' UNet with the exported processors == the patched ComfyUI model
    weights = load_file(os.path.join(out_dir, cd.DIFFUSERS_WEIGHTS_NAME))
    unet = B.to_diffusers_unet(mp)
    unet.set_attn_processor({**unet.attn_processors, **unet._process_custom_diffusion(weights)})
    patched, _ = TN.apply_concept(mp, None, deltas, {})
    mm.load_models_gpu([patched])
    gen = torch.Generator().manual_seed(0)
    hw = model["size"] // 8
    x_vp = torch.randn(2, 4, hw, hw, generator=gen)
    ctx = mp.model.model_config.unet_config["context_dim"]
    emb = torch.randn(2, 77, ctx, generator=gen)
    extra, demb = {}, emb
    if family == "sdxl":
        P = mp.model.adm_channels - 6 * 256
        pooled = torch.randn(2, P, generator=gen)
        extra["y"] = mp.model.encode_adm(pooled_output=pooled, width=hw * 8, height=hw * 8)
        unet.ae_time_ids = torch.tensor([hw * 8, hw * 8, 0, 0, hw * 8, hw * 8], dtype=torch.float32)
        demb = (emb, pooled)
    ms = mp.model.model_sampling
    worst = 0.0
    for t in (10, 500, 950):
        sigma = float(ms.sigmas[t])
        with torch.no_grad():
            x_ve = B.vp_to_ve(x_vp, sigma)
            x0 = patched.model.apply_model(x_ve, torch.full((2,), sigma), c_crossattn=emb, **extra)
            e_c = (x_ve - x0) / sigma
            out = B.model_output(unet, x_vp, t, demb)
        if unet.ae_prediction_type == "v_prediction":  # compare the noise (diffusers' v -> eps at t)
            a = float(ms.alphas_cumprod[t]) if hasattr(ms, "alphas_cumprod") else 1.0 / (1.0 + sigma ** 2)
            out = a ** 0.5 * out + (1.0 - a) ** 0.5 * x_vp
        worst = max(worst, float((e_c - out).abs().max()))
    print(f"\n[CD diffusers {family}] exported processors in diffusers vs patched ComfyUI model: max |eps diff| "
          f"{worst:.2e}")
    assert worst < 1e-4
    mm.load_models_gpu([mp])


def test_imagic_optimises_the_whole_conditioning_and_fine_tunes(comfy, model):
    """Imagic 1 -> 2 (LoRA) -> 3 through the executor. On SDXL the optimised embedding is the whole conditioning
    (sequence and pooled vector, one more row), Imagic 3 interpolates both (eta 1: exactly the target's sequence and
    pooled output), the fine-tuned model samples with it, and Load Imagic refuses a model of another family."""
    from attention_edit.comfy_bridge.sampling import model_pooled_width

    mp, clip, vae, family = model["mp"], model["clip"], model["vae"], model["family"]
    name = f"zq_imagic_{family}"
    target = "a photo of a sitting dog"
    size = model["size"]
    g = _objects(comfy, m=mp, c=clip, v=vae, i=model["refs"][:1])
    g["tgt"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": target}}
    g["neg"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["c", 0], "text": ""}}
    g["e"] = {"class_type": "AE_ImagicOptimizeEmbedding", "inputs": {
        "model": ["m", 0], "vae": ["v", 0], "image": ["i", 0], "target": ["tgt", 0], "name": name, "steps": 20,
        "learning_rate": 1e-2, "seed": 0, "gradient_checkpointing": False}}
    g["f"] = {"class_type": "AE_ImagicFineTune", "inputs": {
        "model": ["m", 0], "imagic": ["e", 0], "train": "lora", "rank": 4, "steps": 20, "learning_rate": 1e-3,
        "seed": 0, "gradient_checkpointing": False, "name": ""}}
    g["i0"] = {"class_type": "AE_ImagicInterpolate", "inputs": {"imagic": ["f", 1], "eta": 0.0}}
    g["i1"] = {"class_type": "AE_ImagicInterpolate", "inputs": {"imagic": ["f", 1], "eta": 1.0}}
    g["lat"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    g["ks"] = {"class_type": "KSampler", "inputs": {
        "model": ["f", 0], "positive": ["i0", 0], "negative": ["neg", 0], "latent_image": ["lat", 0], "seed": 3,
        "steps": 3, "cfg": 4.0, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}}
    res = comfy.run_workflow(g, outputs=["e", "f", "i0", "i1", "ks"])
    imagic = res.value("f", 1)
    tgt = res.value("tgt", 0)
    P = model_pooled_width(mp)
    T = tgt[0][0].shape[1]
    assert imagic.e_opt.shape == (1, T + (1 if P else 0), tgt[0][0].shape[-1]) and imagic.pooled_width == P
    m = imagic.metadata
    print(f"\n[Imagic {family}] embedding probe {m['embedding.probe_loss_before']:.4f} -> "
          f"{m['embedding.probe_loss_after']:.4f}; fine-tune {m['finetune.probe_loss_before']:.4f} -> "
          f"{m['finetune.probe_loss_after']:.4f}")
    assert m["embedding.probe_loss_after"] < m["embedding.probe_loss_before"]
    assert m["finetune.probe_loss_after"] < m["finetune.probe_loss_before"]
    c1, c0 = res.value("i1", 0), res.value("i0", 0)
    assert torch.equal(c1[0][0], tgt[0][0].float())
    if P:
        assert torch.equal(c1[0][1]["pooled_output"].reshape(-1), tgt[0][1]["pooled_output"].float().reshape(-1))
        assert torch.equal(c0[0][1]["pooled_output"].reshape(-1), imagic.e_opt[0, -1, :P])
        assert not torch.equal(c0[0][1]["pooled_output"], c1[0][1]["pooled_output"])  # the pooled vector moved
    assert torch.isfinite(res.value("ks", 0)["samples"]).all()
    # the LoRA is in ComfyUI's generic keys, applied by ComfyUI's own LoRA loader to this model
    assert imagic.unet and all(k.startswith("diffusion_model.") for k in imagic.unet)
    assert res.value("f", 0).patches
    # Load Imagic with a model of another family is refused
    from attention_edit.comfy_bridge.models import CONFIGS, build_unet

    other, _, _ = build_unet(CONFIGS["tiny_sdxl" if family != "sdxl" else "tiny_test"], seed=0)
    g2 = _objects(comfy, m=other)
    g2["l"] = {"class_type": "AE_ImagicLoad", "inputs": {"model": ["m", 0], "imagic_file": name + ".safetensors",
                                                         "strength": 1.0}}
    with pytest.raises(comfy.WorkflowExecutionError) as e:
        comfy.run_workflow(g2, outputs=["l"])
    assert "Imagic" in str(e.value) and ("wide" in str(e.value) or "SDXL" in str(e.value)), str(e.value)
