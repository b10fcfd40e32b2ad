"""Flux.1 (MM-DiT, rectified flow): the tiny Flux model from ComfyUI's own classes, rectified-flow inversion and the
replay, against ComfyUI's own sampler and diffusers' Flux transformer and FlowMatchEulerDiscreteScheduler on
identical weights.

The model (comfy_bridge.flux_models.TINY_FLUX): ComfyUI's Flux config and comfy/ldm/flux transformer (2 double-stream
and 2 single-stream blocks, hidden 64, guidance embedding), FluxClipModel with narrow CLIP-L and T5 and the real
tokenizers, a 16-channel VAE; seeded random weights. The photo is scikit-image's cat at 64x64 (latent 16 x 8 x 8).
"""
from __future__ import annotations

import pytest
import torch

SOURCE = "a photo of a cat"


@pytest.fixture(scope="module")
def flux(comfy):
    from attention_edit.comfy_bridge.flux_models import build_flux
    from attention_edit.headless.photos import photo

    m, clip, vae = build_flux("tiny_flux", seed=0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(SOURCE))
    with torch.no_grad():
        latent = vae.encode(photo("cat", 64)[..., :3]).detach()
    return dict(m=m, clip=clip, vae=vae, cond=cond, latent=latent)


def _invert(f, method, steps, scheduler="simple"):
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule

    return invert(f["m"], f["latent"], f["cond"], f["cond"], replay_schedule(f["m"], scheduler, steps), method=method,
                  source_prompt=SOURCE)


def test_the_tiny_model_is_comfyuis_flux(flux):
    from attention_edit.comfy_bridge.families import family_key as model_family, prediction_type

    m, cond = flux["m"], flux["cond"]
    assert (model_family(m), prediction_type(m)) == ("flux", "flow")
    assert cond[0][0].shape == (1, 256, 48) and cond[0][1]["pooled_output"].shape == (1, 32)  # T5 padded to 256
    assert flux["latent"].shape == (1, 16, 8, 8)


def test_euler_replay_without_edit_is_bit_identical_to_core_euler(flux):
    """Feature off: replaying an rf_euler inversion equals ComfyUI's own euler sampler (SamplerCustom) started from
    the same x_T, bit for bit (ComfyUI scales a flow model's start latent by 1 - sigma_0, so x_T goes in as the
    noise of an empty latent)."""
    import comfy.sample
    import comfy.samplers

    from attention_edit.comfy_bridge.sampling import edit

    m, cond = flux["m"], flux["cond"]
    inv = _invert(flux, "rf_euler", 6)
    ours = edit(m, inv, [])
    noise = m.model.process_latent_in(inv.x_T.clone())
    core = comfy.sample.sample_custom(m, noise, 1.0, comfy.samplers.ksampler("euler"), inv.sigmas.clone(), cond, cond,
                                      torch.zeros_like(inv.x_T), seed=0)
    assert torch.equal(ours, core)


def test_reconstruction_error_falls_with_steps_and_second_order_beats_euler(flux):
    """Per method, the reconstruction (invert, replay without edit) improves with the step count, and at equal
    steps RF-Solver's and FireFlow's second-order steps reconstruct far better than Euler (random weights; the
    benchmark bench/bench_flow_inversion.py prints the whole table)."""
    err = {}
    for method in ("rf_euler", "rf_solver", "fireflow"):
        for steps in (4, 10):
            from attention_edit.comfy_bridge.sampling import edit

            inv = _invert(flux, method, steps)
            assert inv.family == "flux" and inv.prediction == "flow" and inv.uncond == []
            err[method, steps] = float((edit(flux["m"], inv, [])[0] - flux["latent"][0]).pow(2).mean())
    print("\n[flux inversion] latent MSE " + ", ".join(f"{m} {s}: {e:.2e}" for (m, s), e in err.items()))
    for method in ("rf_euler", "rf_solver", "fireflow"):
        assert err[method, 10] < 0.5 * err[method, 4]
    for steps in (4, 10):
        assert err["rf_solver", steps] < 0.5 * err["rf_euler", steps]
        assert err["fireflow", steps] < 0.5 * err["rf_euler", steps]


@pytest.mark.parametrize("method, scheduler, needle", [
    ("null_text", "simple", "there is no unconditional branch to optimise"),
    ("ddim", "simple", "choose one of rf_euler, rf_solver, fireflow"),
    ("rf_euler", "p2p_ddim_reference", "use 'simple'"),
])
def test_diffusion_methods_and_schedules_are_refused_on_flux(flux, method, scheduler, needle):
    with pytest.raises(ValueError, match=needle):
        _invert(flux, method, 4, scheduler)


def test_flow_methods_are_refused_on_a_diffusion_model(comfy):
    from attention_edit.comfy_bridge.models import TINY_TEST, build_unet
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule

    m, clip, vae = build_unet(TINY_TEST, seed=0)
    c = clip.encode_from_tokens_scheduled(clip.tokenize(SOURCE))
    with pytest.raises(ValueError, match="rectified-flow inversion"):
        invert(m, torch.zeros(1, 4, 8, 8), c, c, replay_schedule(m, "p2p_ddim", 3), method="rf_solver")


# ---- agreement with diffusers on identical weights

@pytest.fixture(scope="module")
def dflux(flux):
    pytest.importorskip("diffusers")
    from support import diffusers_bridge as B

    return B.to_diffusers_flux(flux["m"])


def test_diffusers_flux_transformer_gives_the_same_velocity(flux, dflux):
    from support import diffusers_bridge as B

    m, cond = flux["m"], flux["cond"]
    seq, pooled = cond[0][0], cond[0][1]["pooled_output"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    worst = 0.0
    for s in (0.05, 0.5, 1.0):
        with torch.no_grad():
            x0 = m.model.apply_model(x, torch.tensor([s]), c_crossattn=seq, y=pooled, guidance=torch.tensor([3.5]))
        v_comfy = (x - x0) / s
        worst = max(worst, float((v_comfy - B.flux_velocity(dflux, x, s, seq, pooled, 3.5)).abs().max()))
    print(f"\n[flux diffusers] velocity max |comfy - diffusers| = {worst:.2e}")
    assert worst < 1e-4


def test_replay_and_inversion_agree_with_diffusers(flux, dflux):
    """The Euler replay against diffusers' FlowMatchEulerDiscreteScheduler (dynamic shifting, exponential time shift
    with mu = ComfyUI's Flux shift 1.15: the same sigmas as ComfyUI's 'simple' schedule) stepping diffusers'
    transformer from the same x_T; the rf_euler inversion against the same integration written out with diffusers'
    transformer (diffusers has no flow inversion scheduler; RF-Inversion's controlled ODE at gamma 0 is this loop)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from attention_edit.comfy_bridge.sampling import edit
    from attention_edit.inversion.flow import SIGMA_FLOOR
    from support import diffusers_bridge as B

    m, cond = flux["m"], flux["cond"]
    seq, pooled = cond[0][0], cond[0][1]["pooled_output"]
    steps = 8
    inv = _invert(flux, "rf_euler", steps)
    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, time_shift_type="exponential")
    import numpy as np

    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0 / steps, steps), mu=1.15)
    sig_diff = sched.sigmas.float()
    sig_gap = float((sig_diff - inv.sigmas).abs().max())
    assert sig_gap < 1e-5, (sig_diff, inv.sigmas)

    # replay from x_T
    x = m.model.process_latent_in(inv.x_T.clone())
    for t in sched.timesteps:
        s = float(t) / 1000.0
        x = sched.step(B.flux_velocity(dflux, x, s, seq, pooled, 3.5), t, x).prev_sample
    ours = m.model.process_latent_in(edit(m, inv, []))
    replay_gap = float((ours - x).abs().max())

    # inversion from the photo
    x = m.model.process_latent_in(flux["latent"].clone())
    levels = inv.sigmas.flip(0).tolist()
    for a, b in zip(levels[:-1], levels[1:]):
        x = x + (b - a) * B.flux_velocity(dflux, x, max(a, SIGMA_FLOOR), seq, pooled, 3.5)
    inv_gap = float((m.model.process_latent_in(inv.x_T.clone()) - x).abs().max())
    print(f"\n[flux diffusers] sigmas max |diff| {sig_gap:.1e}; Euler replay (FlowMatchEulerDiscreteScheduler) max "
          f"|diff| {replay_gap:.2e}; Euler inversion max |diff| {inv_gap:.2e} (|x| up to {float(x.abs().max()):.2f})")
    assert replay_gap < 1e-3 and inv_gap < 1e-3


# ---- Prompt-to-Prompt on Flux's joint attention

STEPS = 6


@pytest.fixture(scope="module")
def inv(flux):
    return _invert(flux, "rf_solver", STEPS)


def _enc(flux, p):
    return flux["clip"].encode_from_tokens_scheduled(flux["clip"].tokenize(p))


def _run(flux, inv, spec):
    from attention_edit.attention.recipe import build_controller
    from attention_edit.comfy_bridge.sampling import edit

    ctrl = build_controller(flux["clip"].tokenizer, SOURCE, spec, inv.steps)
    return edit(flux["m"], inv, [_enc(flux, p) for p in spec.target_prompts], ctrl), ctrl


@pytest.mark.parametrize("blocks", ["all", "double", "vital"])
@pytest.mark.parametrize("spec_kw", [
    dict(mode="replace", cross_replace_steps=0.8, self_replace_steps=0.5),
    dict(mode="refine", cross_replace_steps=(0.2, 0.9), self_replace_steps=1.0),
    dict(equalizer=(("cat", 1.0),)),
], ids=["replace", "refine", "reweight_1"])
def test_identity_edit_equals_the_reconstruction_and_the_controller_acts(flux, inv, spec_kw, blocks):
    """The source prompt as the edited prompt with the source's maps injected changes nothing (up to the explicit
    softmax's rounding), in every block choice; the same spec with the word 'cat' zeroed (equalizer 0) changes the
    edited row and never the source row."""
    from attention_edit.attention.recipe import EditSpec
    from attention_edit.comfy_bridge.sampling import edit

    base = edit(flux["m"], inv, [])
    spec = EditSpec(target_prompts=(SOURCE,), mmdit_blocks=blocks, **spec_kw)
    out, ctrl = _run(flux, inv, spec)
    scale = float(base.abs().max())
    assert float((out[1] - out[0]).abs().max()) < 1e-5 * scale
    assert float((out[0] - base[0]).abs().max()) < 1e-5 * scale
    if blocks != "vital":  # the tiny model has 2 + 2 blocks: FLUX.1-dev's vital blocks 0, 1 (double) exist
        assert ctrl.store.resolutions() == [(4, 4)]  # the image->text maps of the 8x8 latent's 2x2 patches
    import dataclasses

    window = spec.cross_replace_steps if spec.mode != "refine" else (0.0, 0.9)
    zeroed, _ = _run(flux, inv, dataclasses.replace(spec, equalizer=(("cat", 0.0),), cross_replace_steps=window))
    assert float((zeroed[1] - out[1]).abs().max()) > 1e-3
    assert torch.equal(zeroed[0], out[0])


def test_word_swap_injects_the_mapped_source_maps_and_rows_stay_normalised(flux, inv):
    """Inside the window every token column of the edited row's image->text block is the source's (through the
    word-swap mapper: here the identity, 'cat' -> 'dog' have one T5 token each); the joint rows still sum to 1;
    text-query rows and the source row are untouched; image->image injection copies the source's block."""
    from attention_edit.attention.controllers import LayerInfo
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.attention.joint import joint_probs

    spec = EditSpec(target_prompts=("a photo of a dog",), cross_replace_steps=0.5, self_replace_steps=0.5)
    ctrl = build_controller(flux["clip"].tokenizer, SOURCE, spec, STEPS)
    T, hw = 256, (8, 8)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 2, T + 16, 32, generator=g), torch.randn(2, 2, T + 16, 32, generator=g)
    plain = torch.softmax(q @ k.transpose(-1, -2) * 32 ** -0.5, -1)
    for step, inside in ((0, True), (5, False)):
        info = LayerInfo(step, STEPS, True, (4, 4), hw)
        p = joint_probs(ctrl, q, k, T, info, self_on=inside)
        assert torch.allclose(p.sum(-1), torch.ones(2, 2, T + 16), atol=1e-5)
        assert torch.equal(p[:, :, :T], plain[:, :, :T])  # text queries
        assert torch.equal(p[0], plain[0])  # the source row
        if inside:
            src_text = plain[0, :, T:, :T]
            assert torch.allclose(p[1, :, T:, :T], src_text @ ctrl.edits[0].mapper, atol=1e-6)
            img = p[1, :, T:, T:]
            src_img = plain[0, :, T:, T:]
            # the image block is the source's, rescaled to what the injected text block leaves
            assert torch.allclose(img / img.sum(-1, keepdim=True), src_img / src_img.sum(-1, keepdim=True),
                                  atol=1e-5)
        else:
            assert torch.allclose(p[1], plain[1], atol=1e-6)


def test_stacks_with_another_packs_block_patch_and_leaks_nothing(flux, inv):
    """Another pack's double-block replace patch (patches_replace["dit"]) and the edit act together; afterwards the
    MODEL samples exactly as before and its options are unchanged."""
    import comfy.sample

    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge.sampling import edit

    m = flux["m"]
    before_opts = repr(m.model_options)

    def plain():
        noise = torch.randn((1, 16, 8, 8), generator=torch.Generator().manual_seed(3))
        c = flux["cond"]
        return comfy.sample.sample(m, noise, 4, 1.0, "euler", "simple", c, c, torch.zeros((1, 16, 8, 8)), seed=3)

    before = plain()

    def other_pack(args, extra):  # e.g. a guidance pack scaling one block's image stream
        out = extra["original_block"](args)
        return {"img": out["img"] * 1.05, "txt": out["txt"]}

    other = m.clone()
    other.set_model_patch_replace(other_pack, "dit", "double_block", 0)
    # a reweight, strong enough to see on a random model (whose maps are nearly flat over 256 T5 tokens)
    spec = EditSpec(target_prompts=("a photo of a dog",), self_replace_steps=0.5, equalizer=(("dog", 0.0),))
    dog = [_enc(flux, "a photo of a dog")]
    both = edit(other, inv, dog, build_controller(flux["clip"].tokenizer, SOURCE, spec, STEPS))
    ours = edit(m, inv, dog, build_controller(flux["clip"].tokenizer, SOURCE, spec, STEPS))
    theirs = edit(other, inv, dog, None)
    assert float((both - ours).abs().max()) > 1e-4, "the other pack's patch had no effect next to the edit"
    assert float((both[1] - theirs[1]).abs().max()) > 1e-4, "the edit had no effect next to the other pack's patch"
    assert float((both[0] - theirs[0]).abs().max()) < 1e-5 * float(theirs.abs().max())
    assert torch.equal(plain(), before) and repr(m.model_options) == before_opts


def test_local_blend_keeps_the_source_outside_the_mask(flux, inv):
    from attention_edit.attention.recipe import EditSpec, LocalBlendSpec

    def run_with(threshold):
        spec = EditSpec(target_prompts=("a photo of a dog",),
                        local_blend=LocalBlendSpec(("cat",), ("dog",), use="source", start=0.0, threshold=threshold))
        return _run(flux, inv, spec)

    _, probe = run_with(0.0)
    maps = probe.store.average((4, 4))[0][..., 6]
    out, ctrl = run_with(float((maps / maps.max()).median()))
    proc = flux["m"].model.process_latent_in
    mask = ctrl.local_blend.masks(ctrl.store, out.shape[-2:])[0, 0].bool()
    assert 0 < mask.float().mean() < 1, "degenerate mask"
    d = (proc(out[1:2]) - proc(out[0:1]))[0].abs().amax(0)
    assert d[~mask].max() < 1e-6 and d[mask].max() > 1e-4


def test_flux_word_swap_through_the_executor_with_save_load_and_preview(comfy):
    """The nodes on a Flux model (the loader's random Flux.1): Invert Image (rf_solver, the default scheduler meaning
    Flux's 'simple'), Save / Load Inversion (no null-text embeddings; the family recorded), Prompt-to-Prompt Edit
    (flux_blocks) -> Edit Sampler -> VAE Decode, and the attention-map preview of the T5 tokens."""
    from attention_edit.headless.photos import save_input_photo
    from support.edit_graphs import edit_graph, reload_graph

    img = save_input_photo("cat", 64)
    g = edit_graph("random Flux.1 (untrained test model)", img, SOURCE, "rf_solver", 1.0, "double", "flux_cat")
    res = comfy.run_workflow(g, outputs=["5", "7", "8", "9"])
    inv = res.value("4", 0)
    assert inv.method == "rf_solver" and inv.family == "flux" and inv.steps == 4 and inv.uncond == []
    assert res.value("8", 0).shape == (2, 64, 64, 3)
    assert res.value("9", 0).shape[2] == 7 * 32  # one cell per T5 piece of "a photo of a dog" (▁ a photo of ▁ a dog)
    saved = res["outputs"]["5"]["text"][0]
    g2 = reload_graph(g, saved)
    res2 = comfy.run_workflow(g2, outputs=["11"])
    assert torch.equal(res2.value("11", 0)["samples"], res.value("7", 0)["samples"])


def test_head_groups_give_the_same_edit(flux, inv, monkeypatch):
    """Computing the edited probabilities one head at a time (a small memory budget) gives the same edit and the
    same recorded maps as all heads at once."""
    from attention_edit.attention.recipe import EditSpec
    from attention_edit.comfy_bridge.joint_attention import JointAttentionControl, head_group

    assert head_group(2, 24, 4352, 1 << 30) == 6 and head_group(2, 24, 4352, 1) == 1  # 151 MB per head
    spec = EditSpec(target_prompts=("a photo of a dog",), self_replace_steps=0.5, equalizer=(("dog", 3.0),))
    whole, c1 = _run(flux, inv, spec)
    monkeypatch.setattr(JointAttentionControl, "max_bytes", 1)
    split, c2 = _run(flux, inv, spec)
    assert float((whole - split).abs().max()) < 1e-5 * float(whole.abs().max())
    assert torch.allclose(c1.store.average((4, 4)), c2.store.average((4, 4)), atol=1e-6)


def test_schnell_architecture_inverts_and_edits_at_few_steps(comfy):
    """Flux.1-schnell's architecture (no guidance embedding, ComfyUI's FluxSchnell config and its flow model
    sampling): a 4-step RF-Solver inversion and a word swap run; the inversion advice applies (few steps)."""
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge.flux_models import build_flux
    from attention_edit.comfy_bridge.families import family_key as model_family, prediction_type
    from attention_edit.comfy_bridge.sampling import edit, invert, replay_schedule
    from attention_edit.headless.photos import photo
    from attention_edit.inversion.core import inversion_advice

    m, clip, vae = build_flux("tiny_flux_schnell", seed=0)
    assert (model_family(m), prediction_type(m)) == ("flux", "flow")
    enc = lambda p: clip.encode_from_tokens_scheduled(clip.tokenize(p))  # noqa: E731
    with torch.no_grad():
        latent = vae.encode(photo("cat", 64)[..., :3])
    inv = invert(m, latent, enc(SOURCE), enc(SOURCE), replay_schedule(m, "simple", 4), method="rf_solver",
                 source_prompt=SOURCE)
    ctrl = build_controller(clip.tokenizer, SOURCE, EditSpec(target_prompts=("a photo of a dog",)), 4)
    out = edit(m, inv, [enc("a photo of a dog")], ctrl)
    assert out.shape == (2, 16, 8, 8) and torch.isfinite(out).all()
    assert any("is coarse" in n for n in inversion_advice(4, 1.0, "rf_solver"))


#: a source prompt of about 300 T5 tokens (over ComfyUI's default 256-token T5 sequence)
LONG = SOURCE + " " + " ".join(f"beside the old stone wall number {k}" for k in range(40))


def test_long_t5_prompts_share_a_512_token_sequence(flux):
    """Prompts of up to 255 T5 tokens keep ComfyUI's own 256-token sequence (bit for bit what CLIP Text Encode
    gives); a longer prompt makes every prompt of the edit 512 long (mappers, windows, equalizer too); over 511 is
    refused, saying the count and the limit."""
    from attention_edit.attention import align
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.nodes.common import encode

    clip = flux["clip"]
    tok = clip.tokenizer
    n = align.token_count(tok, LONG)
    assert 255 < n < 512
    assert align.common_length(tok, [SOURCE, "a photo of a dog"]) == 256
    assert align.common_length(tok, [SOURCE, LONG]) == 512
    assert torch.equal(encode(clip, SOURCE)[0][0], flux["cond"][0][0])
    assert encode(clip, LONG)[0][0].shape[1] == 512
    assert encode(clip, SOURCE, seq_len=512)[0][0].shape[1] == 512
    a = align.align_prompts(tok, SOURCE, LONG)
    assert a.mode == "refine" and a.mapper.shape == (512,) and int(a.mapper[0]) == 0
    dog = LONG.replace(" cat ", " dog ", 1)
    ctrl = build_controller(tok, LONG, EditSpec(target_prompts=(dog,), equalizer=(("number", 2.0),)), 6)
    e = ctrl.edits[0]
    assert e.kind == "replace" and e.mapper.shape == (512, 512) and e.cross_alpha.shape == (7, 512)
    assert e.equalizer.shape == (512,) and int((e.equalizer == 2.0).sum()) == 40
    too_long = LONG + " " + LONG
    with pytest.raises(ValueError, match=r"T5 tokens but the limit is 511"):
        align.align_prompts(tok, SOURCE, too_long)
    with pytest.raises(ValueError, match=r"is \d+ T5 tokens long; Prompt-to-Prompt needs at most 511"):
        encode(clip, too_long, "edited prompt")


def test_long_prompts_invert_and_edit_on_the_nodes(flux, caplog):
    """Invert Image and the Edit Sampler's glue with a ~300-token source: the inversion's conditioning is 512 long,
    an identity edit equals the reconstruction, a word swap inside the long prompt changes the edited image; a
    short inversion edited with a long prompt re-encodes the source at 512 and says so in the log."""
    import logging

    from attention_edit.attention.recipe import EditSpec
    from attention_edit.nodes.edit_nodes import run_edit
    from attention_edit.nodes.inversion_nodes import invert_image

    m, clip = flux["m"], flux["clip"]
    inv = invert_image(m, clip, flux["latent"], LONG, method="rf_solver", steps=4, cfg=1.0, scheduler="simple")
    assert inv.source_cond[0][0].shape[1] == 512
    same, _, _ = run_edit(m, clip, inv, EditSpec(target_prompts=(LONG,)))
    scale = float(same.abs().max())
    assert float((same[1] - same[0]).abs().max()) < 1e-5 * scale
    dog, _, _ = run_edit(m, clip, inv, EditSpec(target_prompts=(LONG.replace(" cat ", " dog ", 1),)))
    assert torch.equal(dog[0], same[0]) and float((dog[1] - same[1]).abs().max()) > 1e-4
    short = invert_image(m, clip, flux["latent"], SOURCE, method="rf_solver", steps=4, cfg=1.0, scheduler="simple")
    assert short.source_cond[0][0].shape[1] == 256
    with caplog.at_level(logging.WARNING):
        out, maps, _ = run_edit(m, clip, short, EditSpec(target_prompts=(LONG,), mode="refine"))
    assert "re-encoded at 512" in caplog.text
    assert out.shape[0] == 2 and bool(torch.isfinite(out).all())
    assert short.source_cond[0][0].shape[1] == 256  # the inversion itself is unchanged


def test_a_text_encoder_with_its_own_t5_length_edits_at_that_length(flux):
    """A Flux text encoder built with ComfyUI's ``t5xxl_min_length`` tokenizer setting (FluxConfig.t5_min_length; the
    ToyWorld MM-DiT's 32): the edit glue encodes, aligns and controls at that length (not ComfyUI's default 256),
    a prompt longer than it goes to 512 for every prompt of the edit, and the nodes invert and edit with it."""
    import dataclasses

    from attention_edit.attention import align
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge.flux_models import TINY_FLUX, build_flux
    from attention_edit.nodes.common import encode
    from attention_edit.nodes.edit_nodes import run_edit
    from attention_edit.nodes.inversion_nodes import invert_image

    m, clip, _ = build_flux(dataclasses.replace(TINY_FLUX, t5_min_length=16), seed=0)
    tok = clip.tokenizer
    assert align.t5_min_length(tok) == 16 and align.t5_min_length(flux["clip"].tokenizer) == 256
    st = align.stream_of(tok)
    assert (st.seq_len, st.lengths, st.limit) == (16, (16, 512), 511)
    assert clip.encode_from_tokens_scheduled(clip.tokenize(SOURCE))[0][0].shape[1] == 16  # ComfyUI's own encode
    assert encode(clip, SOURCE)[0][0].shape[1] == 16
    assert align.common_length(tok, [SOURCE, "a photo of a dog"]) == 16
    wordy = SOURCE + " on a soft blue blanket beside a window"
    assert align.token_count(tok, wordy) > 15 and align.common_length(tok, [SOURCE, wordy]) == 512
    ctrl = build_controller(tok, SOURCE, EditSpec(target_prompts=("a photo of a dog",)), 4)
    assert ctrl.edits[0].mapper.shape == (16, 16) and ctrl.edits[0].cross_alpha.shape == (5, 16)
    inv = invert_image(m, clip, flux["latent"], SOURCE, method="rf_solver", steps=4, cfg=1.0, scheduler="simple")
    assert inv.source_cond[0][0].shape[1] == 16
    same, _, _ = run_edit(m, clip, inv, EditSpec(target_prompts=(SOURCE,)))
    assert float((same[1] - same[0]).abs().max()) < 1e-5 * float(same.abs().max())
    dog, _, _ = run_edit(m, clip, inv, EditSpec(target_prompts=("a photo of a dog",)))
    assert torch.equal(dog[0], same[0]) and float((dog[1] - same[1]).abs().max()) > 1e-4


def test_local_blend_says_when_its_mask_covers_everything(flux, inv, caplog):
    """A local-blend mask over the whole image (threshold 0) or none of it is a blend that does nothing useful: the
    Edit Sampler's glue logs which, and which setting to move."""
    import logging

    from attention_edit.attention.recipe import EditSpec, LocalBlendSpec
    from attention_edit.nodes.edit_nodes import run_edit

    def run(threshold):
        caplog.clear()
        spec = EditSpec(target_prompts=("a photo of a dog",),
                        local_blend=LocalBlendSpec(("cat",), ("dog",), start=0.0, threshold=threshold))
        with caplog.at_level(logging.WARNING):
            _, maps, _ = run_edit(flux["m"], flux["clip"], inv, spec)
        return caplog.text, maps.store

    text, store = run(0.0)
    assert "the mask covers 100% of the image" in text and "raise 'threshold'" in text
    assert "lower 'threshold'" in run(1.0)[0]
    cat = store.average((4, 4))[0][..., 6]  # the map of 'cat' (T5 pieces: ▁ a photo of ▁ a cat)
    assert "Local Blend" not in run(float((cat / cat.max()).median()))[0]


def test_the_full_size_entry_runs_at_a_small_size(comfy, capsys):
    """bench_flow_inversion.py --full-size (the Flux.1-width block stack: hidden 3072, 24 heads, T5 width 4096; for
    1024x1024 on a lent GPU) runs here at 64x64 and one step, and prints time and peak memory per step for core
    sampling and for the P2P word swap, and their ratio."""
    from attention_edit.bench import bench_flow_inversion

    assert bench_flow_inversion.main(["--full-size", "--size", "64", "--steps", "1",
                                      "--threads", str(torch.get_num_threads())]) == 0
    out = capsys.readouterr().out
    assert "Flux.1 width (1 double + 1 single blocks" in out and "64x64, 1 steps" in out
    assert "| core sampling, 2 prompts as a batch |" in out and "| P2P word swap (every block controlled) |" in out
    assert "P2P / plain time per step:" in out
