"""ToyWorld: renderer, judge, the small SD1.x builder and the loader node (fast: about 10 s on 2 CPU cores)."""
import os

import numpy as np
import pytest
import torch

import comfy.cli_args

comfy.cli_args.args.cpu = True

from attention_edit.comfy_bridge import models as unet_models  # noqa: E402
from attention_edit.toyworld import judge, scenes  # noqa: E402


def test_renderer_deterministic_per_seed():
    a, b = scenes.sample_scene(7), scenes.sample_scene(7)
    assert np.array_equal(a.image, b.image) and a.caption == b.caption and a.spec == b.spec
    assert a.image.shape == (64, 64, 3) and a.image.dtype == np.uint8
    c = scenes.sample_scene(8)
    assert not np.array_equal(a.image, c.image)
    imgs1, caps1, _ = scenes.make_dataset(20, seed=3)
    imgs2, caps2, _ = scenes.make_dataset(20, seed=3)
    assert np.array_equal(imgs1, imgs2) and caps1 == caps2


def test_render_spec_attribute_swap_keeps_geometry():
    red = scenes.render_spec(scenes.spec_from_attrs("circle", "red", "big", "left", "white"), seed=3)
    blue = scenes.render_spec(scenes.spec_from_attrs("circle", "blue", "big", "left", "white"), seed=3)
    assert red.caption == "a big red circle on the left on white"
    assert np.array_equal(red.objects[0].mask, blue.objects[0].mask)
    m = red.objects[0].mask
    assert not np.array_equal(red.image[m], blue.image[m])
    from scipy import ndimage

    far = ~ndimage.binary_dilation(m, iterations=2)  # anti-aliased edges aside, the rest is identical
    assert np.array_equal(red.image[far], blue.image[far])
    assert red.objects[0].centre[0] < 32  # on the left


def test_scene_vocabulary_and_ground_truth():
    seen = {k: set() for k in ("shape", "colour", "size", "position")}
    bgs, counts = set(), set()
    for i in range(300):
        sc = scenes.sample_scene(i)
        bgs.add(sc.background)
        counts.add(len(sc.objects))
        for o in sc.objects:
            assert o.mask.shape == (64, 64) and o.mask.sum() > 20
            for k in seen:
                seen[k].add(getattr(o, k))
    assert seen["shape"] >= {"circle", "square", "triangle"}
    assert seen["colour"] >= {"red", "green", "blue", "yellow"}
    assert seen["size"] == {"small", "big"}
    assert seen["position"] == {"left", "right", "top", "bottom", "centre"}
    assert "stripes" in bgs and counts == {1, 2}


def test_judge_accuracy_on_ground_truth():
    res = judge.validate(80, seed=500)
    for k in judge.ATTRS:
        assert res[k] >= 0.98, res
    # accepts float tensors in [0, 1] (IMAGE layout) too
    sc = scenes.sample_scene(1)
    img = torch.from_numpy(sc.image).float()[None] / 255.0
    found = judge.judge_image(img)
    assert [o["colour"] for o in found][: len(sc.objects)]


def test_build_tiny_and_sample():
    import comfy.sample

    mp, clip, vae = unet_models.build_unet(unet_models.TINY_TEST, seed=0)
    mp2, clip2, vae2 = unet_models.build_unet(unet_models.TINY_TEST, seed=0)
    a, b = unet_models.state_dicts(mp, clip, vae), unet_models.state_dicts(mp2, clip2, vae2)
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded init
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a big red circle on the left"))
    uncond = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    assert cond[0][0].shape == (1, 77, unet_models.TINY_TEST.context_dim)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(mp, noise, 4, 5.0, "euler", "normal", cond, uncond, latent, seed=0, disable_pbar=True)
    img = vae.decode(out)
    assert out.shape == (1, 4, 8, 8) and img.shape[-3:] == (64, 64, 3) and torch.isfinite(img).all()
    assert vae.encode(img.reshape(1, 64, 64, 3)).shape == (1, 4, 8, 8)


def test_save_load_roundtrip(tmp_path):
    mp, clip, vae = unet_models.build_unet(unet_models.TINY_TEST, seed=1)
    p = tmp_path / "tiny.safetensors"
    unet_models.save_weights(p, mp, clip, vae)
    cfg, sd, meta = unet_models.read_weights(p)
    assert cfg == unet_models.TINY_TEST
    mp2, clip2, vae2 = unet_models.load_weights(p)
    a, b = unet_models.state_dicts(mp, clip, vae), unet_models.state_dicts(mp2, clip2, vae2)
    assert set(a) == set(b)
    assert all(torch.equal(a[k].half().float(), b[k].float()) for k in a)


def test_loader_node_random():
    from attention_edit.nodes.toyworld_nodes import RANDOM, AE_ToyWorldLoader

    schema = AE_ToyWorldLoader.define_schema()
    assert schema.node_id == "AE_ToyWorldLoader"
    assert all(getattr(i, "tooltip", None) for i in schema.inputs)
    out = AE_ToyWorldLoader.execute(weights=RANDOM, seed=0)
    mp, clip, vae = out.args if hasattr(out, "args") else out.result
    assert mp.model.diffusion_model is not None and clip.tokenizer is not None and vae.first_stage_model is not None


def test_loader_shipped_weights_roundtrip(tmp_path):
    from attention_edit.nodes.toyworld_nodes import SHIPPED, WEIGHTS_PATH, load_toyworld

    assert os.path.exists(WEIGHTS_PATH), f"the shipped ToyWorld weights are missing: {WEIGHTS_PATH}"
    assert os.path.getsize(WEIGHTS_PATH) <= 40 * 2**20
    mp, clip, vae = load_toyworld(SHIPPED)
    assert mp.model.toy_config.name == "toyworld"
    p = tmp_path / "again.safetensors"
    unet_models.save_weights(p, mp, clip, vae)
    _, sd_a, _ = unet_models.read_weights(WEIGHTS_PATH)
    _, sd_b, _ = unet_models.read_weights(p)
    assert set(sd_a) == set(sd_b)
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_loader_offers_the_shipped_mmdit():
    """The loader's 'toyworld MM-DiT (shipped)' choice: the trained Flux-architecture model (family flux, pooled
    input weight zero: trained with --no-pooled) on the ToyWorld VAE, under 25 MB; an RF-Solver inversion of a
    rendered scene reconstructs it within 1 dB of the VAE's own PSNR (20 steps, cfg 1)."""
    from attention_edit.bench import editbench as eb
    from attention_edit.comfy_bridge.families import family_key as model_family
    from attention_edit.nodes.toyworld_nodes import SHIPPED_MMDIT, AE_ToyWorldLoader
    from attention_edit.toyworld.train_mmdit import WEIGHTS

    assert os.path.exists(WEIGHTS), f"the shipped ToyWorld MM-DiT weights are missing: {WEIGHTS}"
    assert os.path.getsize(WEIGHTS) <= 25 * 2**20
    out = AE_ToyWorldLoader.execute(weights=SHIPPED_MMDIT, seed=0)
    mp, clip, vae = out.args if hasattr(out, "args") else out.result
    assert model_family(mp) == "flux" and mp.model.diffusion_model.vector_in.in_layer.weight.abs().max() == 0
    assert clip.encode_from_tokens_scheduled(clip.tokenize("a red circle"))[0][0].shape[1] == 32  # its T5 length
    tm = eb.load_mmdit()
    r = eb.inversion_case(tm, 1000, eb.Settings(steps=20, **eb.MMDIT_SETTINGS), methods=("rf_solver",))
    assert r["rf_solver"] > r["vae"] - 1.0, r


def test_spec_from_caption():
    spec = scenes.spec_from_caption("A small Blue square, at the top on stripes")
    assert spec == scenes.spec_from_attrs("square", "blue", "small", "top", "stripes")
    assert scenes.spec_from_caption("a red circle") == scenes.spec_from_attrs("circle", "red", "big", "centre", "white")
    # the canonical caption of every spec parses back to it
    for shape in scenes.SHAPES:
        for pos in scenes.POSITIONS:
            spec = scenes.spec_from_attrs(shape, "yellow", "small", pos, "gray")
            assert scenes.spec_from_caption(scenes.caption_for(spec)) == spec
    with pytest.raises(ValueError, match="names no shape.*ToyWorld knows"):
        scenes.spec_from_caption("a red blob")
    with pytest.raises(ValueError, match="more than one colour"):
        scenes.spec_from_caption("a red and blue circle")


def test_trainer_split_merge_roundtrip(tmp_path):
    """The per-file size split used to bring GPU-trained weights back is lossless."""
    from safetensors.torch import load_file, save_file

    from attention_edit.toyworld.train import merge_weights, split_weights

    sd = {f"w{i}": torch.randn(256, 256) for i in range(5)}
    src = str(tmp_path / "w.safetensors")
    save_file(sd, src, metadata={"config": "{}"})
    parts = split_weights(src, str(tmp_path / "parts"), max_mb=0.6)
    assert len(parts) == 3 and all(os.path.getsize(p) < 0.6 * 2 ** 20 + 4096 for p in parts)
    merge_weights(parts, str(tmp_path / "m.safetensors"))
    back = load_file(str(tmp_path / "m.safetensors"))
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_mmdit_trainer_resumes_and_exports(tmp_path):
    """The ToyWorld MM-DiT trainer (toyworld/train_mmdit.py), run as its command: a short run checkpoints, a
    --resume run continues from its step (not from 0; here with --no-pooled; one with another config is refused),
    and --export writes weights that load_toyworld_mmdit turns into ComfyUI's Flux model (family "flux") on the
    shipped ToyWorld VAE, its tokenizer padding T5 to the run's --t5-length. --init starts a run from an export;
    a --t5-length shorter than the captions is refused. Tiny settings: 48 scenes, batch 4."""
    import json
    import subprocess
    import sys

    out = str(tmp_path / "run")
    base = [sys.executable, "-m", "attention_edit.toyworld.train_mmdit", "--out", out, "--n-data", "48", "--batch",
            "4", "--probe-n", "2", "--probe-cfg", "0", "--warmup", "2", "--cpu"]

    def run(*extra):
        r = subprocess.run(base + list(extra), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
        return r.stdout

    run("--minutes", "0.9")  # the toyworld_mmdit config: T5 at 32 tokens
    steps = [json.loads(line)["step"] for line in open(os.path.join(out, "probe.jsonl"))]
    assert steps and steps[-1] > 0
    r = subprocess.run(base + ["--minutes", "1.6", "--resume", "--t5-length", "40"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode != 0 and "pass the run's --config and --t5-length again" in r.stderr, r.stderr[-1500:]
    log = run("--minutes", "1.6", "--resume", "--no-pooled")
    assert f"resumed step={steps[-1]} " in log, log[-1500:]
    again = [json.loads(line)["step"] for line in open(os.path.join(out, "probe.jsonl"))]
    assert again[-1] > steps[-1]
    path = str(tmp_path / "w.safetensors")
    run("--export", path)
    from attention_edit.comfy_bridge.families import family_key as model_family
    from attention_edit.toyworld.train_mmdit import TOYWORLD_WEIGHTS, load_toyworld_mmdit

    m, clip, vae = load_toyworld_mmdit(path)
    assert model_family(m) == "flux"
    # --no-pooled (on the resumed run): the pooled CLIP-L vector's input weight is exported as zeros
    w = m.model.diffusion_model.vector_in.in_layer.weight
    assert w.abs().max() == 0 and m.model.diffusion_model.vector_in.out_layer.weight.abs().max() > 0
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle on the left on white"))
    assert cond[0][0].shape[1] == 32  # T5 length 32: kept in the file's config, the loader's tokenizer pads to it
    assert m.toy_config.t5_min_length == 32
    # --init: a new run starts from the exported weights (fresh optimiser), its step continuing the file's
    out2 = str(tmp_path / "run2")
    r = subprocess.run(base[:4] + [out2] + base[5:] + ["--minutes", "0.8", "--init", path, "--no-pooled",
                                                      "--free-pads", "0.5"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert f"initialised from {path} (step {again[-1]}," in r.stdout, r.stdout[-1500:]
    assert json.loads(open(os.path.join(out2, "probe.jsonl")).readlines()[-1])["step"] > again[-1]
    r = subprocess.run(base[:4] + [out2 + "x"] + base[5:] + ["--minutes", "0.5", "--init", TOYWORLD_WEIGHTS],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "not a ToyWorld MM-DiT weights file" in r.stderr, r.stderr[-1500:]
    r = subprocess.run(base[:4] + [out2 + "y"] + base[5:] + ["--minutes", "0.5", "--t5-length", "12"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "--t5-length 12 is shorter than a ToyWorld caption's" in r.stderr, r.stderr[-1500:]


def test_caption_free_pads_replace_only_the_pad_outputs():
    """--free-pads: for a marked caption the T5 outputs at pad positions become the empty caption's (which carry no
    caption), its word and end-token outputs stay; an unmarked caption is untouched."""
    from types import SimpleNamespace

    from attention_edit.toyworld.train_mmdit import WEIGHTS, FluxTokens, MMDiTTrainer, encode_text, \
        load_toyworld_mmdit

    _, clip, _ = load_toyworld_mmdit(WEIGHTS, dtype=torch.float32)
    tokens = FluxTokens(clip)
    te = clip.cond_stage_model
    fake = SimpleNamespace(te=te, tokens=tokens, T5_PAD=MMDiTTrainer.T5_PAD)
    l_ids, t5_ids = tokens.batch(["a small red circle on the left on white", "a big blue square at the top on gray"])
    with torch.no_grad():
        ctx, _ = encode_text(te, l_ids, t5_ids)
        out = MMDiTTrainer.caption_free_pads(fake, ctx, t5_ids, torch.tensor([True, False]))
        empty = te.t5xxl([tokens.ids("")[1]])[0]
    pads = torch.as_tensor(t5_ids[0]) == 0
    assert len(t5_ids[0]) == 32 and 15 < int(pads.sum()) < 32 and not pads[0]  # the shipped model's T5 length
    assert torch.equal(out[0, pads], empty[0, pads].to(out.dtype)) and not torch.allclose(ctx[0, pads], out[0, pads])
    assert torch.equal(out[0, ~pads], ctx[0, ~pads]) and torch.equal(out[1], ctx[1])



def test_free_pads_out_of_range_is_refused(capsys):
    from attention_edit.toyworld.train_mmdit import parse_args

    assert parse_args(["--free-pads", "0.5"]).free_pads == 0.5
    with pytest.raises(SystemExit):
        parse_args(["--free-pads", "2"])
    assert "--free-pads 2: a share of the batch, between 0 (off) and 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--t5-length", "-3"])
    assert "--t5-length -3: a number of T5 tokens, at least 25" in capsys.readouterr().err
