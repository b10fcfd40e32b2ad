"""SD3 / SD3.5 (MM-DiT over [CLIP-L + CLIP-G ; T5-XXL] text tokens, rectified flow): the tiny SD3 model from
ComfyUI's own classes, its family record, rectified-flow inversion and replay against ComfyUI's own sampler, and
Prompt-to-Prompt on its joint attention with the block-diagonal token alignment of its two text streams.

The model (comfy_bridge.sd3_models.TINY_SD3): ComfyUI's SD3 config and MMDiT (2 joint blocks, hidden 128 with 2
heads of 64, SD3.5's MMDiT-X image-only attention in block 0 and RMS q/k norm), SD3ClipModel with narrow CLIP-L and
CLIP-G, a one-layer 4096-wide T5 and the real tokenizers, a 16-channel VAE; seeded random weights. The photo is
scikit-image's cat at 64x64 (latent 16 x 8 x 8, 16 image tokens)."""
from __future__ import annotations

import pytest
import torch

SOURCE = "a photo of a cat"
STEPS = 6


@pytest.fixture(scope="module")
def sd3(comfy):
    from attention_edit.comfy_bridge.sd3_models import build_sd3
    from attention_edit.headless.photos import photo

    m, clip, vae = build_sd3("tiny_sd3", seed=0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(SOURCE))
    with torch.no_grad():
        latent = vae.encode(photo("cat", 64)[..., :3]).detach()
    return dict(m=m, clip=clip, vae=vae, cond=cond, latent=latent)


def _invert(f, method, steps, scheduler="simple", cfg=1.0):
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule

    return invert(f["m"], f["latent"], f["cond"], _enc(f, ""), replay_schedule(f["m"], scheduler, steps),
                  method=method, source_prompt=SOURCE, guidance_scale=cfg)


@pytest.fixture(scope="module")
def inv(sd3):
    return _invert(sd3, "rf_solver", STEPS)


def _enc(f, p):
    return f["clip"].encode_from_tokens_scheduled(f["clip"].tokenize(p))


def _run(f, inv, spec):
    from attention_edit.attention.recipe import build_controller
    from attention_edit.comfy_bridge.sampling import edit

    conds = [_enc(f, p) for p in spec.target_prompts]
    ctrl = build_controller(f["clip"].tokenizer, SOURCE, spec, inv.steps, text_len=int(conds[0][0][0].shape[1]))
    return edit(f["m"], inv, conds, ctrl), ctrl


def test_the_tiny_model_is_comfyuis_sd3_and_its_record(sd3):
    from attention_edit.comfy_bridge.families import family_of, prediction_type, require

    m, cond = sd3["m"], sd3["cond"]
    fam = family_of(m)
    assert (fam.key, prediction_type(m), fam.sequence, fam.binder, fam.block_labels) == \
        ("sd3", "flow", "clip+t5", "joint", False)
    assert type(m.model.model_config).__name__ == "SD3"
    assert cond[0][0].shape == (1, 77 + 77, 4096) and cond[0][1]["pooled_output"].shape == (1, 64)
    assert require("Invert Image", m, "edit") is fam
    for group, node in (("train", "Train Textual Inversion"), ("imagic", "Imagic Optimize Embedding")):
        with pytest.raises(ValueError, match=r"an SD3 model.*does not support SD3.*For SD3, use an SD1\.x"):
            require(node, m, group)


def test_euler_replay_without_edit_is_bit_identical_to_core_euler(sd3):
    """Replaying an rf_euler inversion equals ComfyUI's own euler sampler started from the same x_T, bit for bit."""
    import comfy.sample
    import comfy.samplers

    from attention_edit.comfy_bridge.sampling import edit

    m, cond = sd3["m"], sd3["cond"]
    inv = _invert(sd3, "rf_euler", 6)
    assert (inv.family, inv.prediction, inv.uncond) == ("sd3", "flow", [])
    ours = edit(m, inv, [])
    noise = m.model.process_latent_in(inv.x_T.clone())
    core = comfy.sample.sample_custom(m, noise, 1.0, comfy.samplers.ksampler("euler"), inv.sigmas.clone(), cond, cond,
                                      torch.zeros_like(inv.x_T), seed=0)
    assert torch.equal(ours, core)


def test_second_order_inversion_reconstructs_better_than_euler(sd3):
    from attention_edit.comfy_bridge.sampling import edit

    err = {}
    for method in ("rf_euler", "rf_solver", "fireflow"):
        inv = _invert(sd3, method, 8)
        err[method] = float((edit(sd3["m"], inv, [])[0] - sd3["latent"][0]).pow(2).mean())
    print("\n[sd3 inversion, 8 steps] latent MSE " + ", ".join(f"{k} {v:.2e}" for k, v in err.items()))
    assert err["rf_solver"] < 0.5 * err["rf_euler"] and err["fireflow"] < 0.5 * err["rf_euler"]


def test_a_word_has_its_clip_and_its_t5_positions(sd3):
    """The alignment of SD3's joint sequence is block-diagonal: the CLIP stream (positions 0-76, start token
    first) and the T5 stream (positions 77 on, no start token), each from its own tokenizer; 'cat' -> 'dog' maps
    the source's CLIP 'cat' column and its T5 'cat' column."""
    from attention_edit.attention import align
    from attention_edit.attention.recipe import EditSpec, build_controller

    tok = sd3["clip"].tokenizer
    clip_part, t5_part = align.joint_sections(tok)
    assert align.word_token_indices(clip_part, SOURCE, "cat") == [5]
    t5_cat = align.word_token_indices(t5_part, SOURCE, "cat")
    ctrl = build_controller(tok, SOURCE, EditSpec(target_prompts=("a photo of a dog",), cross_replace_steps=0.5),
                            STEPS, text_len=154)
    e = ctrl.edits[0]
    assert e.mapper.shape == (154, 154) and e.cross_alpha.shape == (STEPS + 1, 154)
    assert torch.equal(e.mapper[:77, :77], torch.eye(77)) and not e.mapper[:77, 77:].any()
    assert torch.equal(e.mapper[77:, 77:], torch.eye(77))
    assert sorted(e.keyword_tokens) == sorted([5] + [77 + i for i in t5_cat])
    # a CLIP-only SD3 text encoder (77 text tokens): the CLIP stream alone
    only = build_controller(tok, SOURCE, EditSpec(target_prompts=("a photo of a dog",)), STEPS, text_len=77)
    assert only.edits[0].mapper.shape == (77, 77)
    with pytest.raises(ValueError, match="the conditioning has 100 text tokens"):
        build_controller(tok, SOURCE, EditSpec(target_prompts=("a photo of a dog",)), STEPS, text_len=100)


@pytest.mark.parametrize("spec_kw", [
    dict(mode="replace", cross_replace_steps=0.8, self_replace_steps=0.5),
    dict(mode="refine", cross_replace_steps=(0.2, 0.9), self_replace_steps=1.0),
    dict(equalizer=(("cat", 1.0),)),
], ids=["replace", "refine", "reweight_1"])
def test_identity_edit_equals_the_reconstruction_and_the_controller_acts(sd3, inv, spec_kw):
    """The source prompt as the edited prompt with the source's maps injected changes nothing (up to the explicit
    softmax's rounding); the same spec with 'cat' zeroed (equalizer 0, both streams) changes the edited row and
    never the source row; the image->text maps of the 4x4 patch grid are recorded."""
    import dataclasses

    from attention_edit.attention.recipe import EditSpec
    from attention_edit.comfy_bridge.sampling import edit

    base = edit(sd3["m"], inv, [])
    spec = EditSpec(target_prompts=(SOURCE,), **spec_kw)
    out, ctrl = _run(sd3, inv, spec)
    scale = float(base.abs().max())
    assert float((out[1] - out[0]).abs().max()) < 1e-5 * scale
    assert float((out[0] - base[0]).abs().max()) < 1e-5 * scale
    assert ctrl.store.resolutions() == [(4, 4)]
    window = spec.cross_replace_steps if spec.mode != "refine" else (0.0, 0.9)
    zeroed, _ = _run(sd3, inv, dataclasses.replace(spec, equalizer=(("cat", 0.0),), cross_replace_steps=window))
    assert float((zeroed[1] - out[1]).abs().max()) > 1e-4 * scale
    assert torch.equal(zeroed[0], out[0])


def test_word_swap_edits_and_the_vital_choice_is_refused(sd3, inv):
    from attention_edit.attention.recipe import EditSpec

    out, ctrl = _run(sd3, inv, EditSpec(target_prompts=("a photo of a dog",)))
    assert out.shape == (2, 16, 8, 8) and bool(torch.isfinite(out).all())
    assert float((out[1] - out[0]).abs().max()) > 1e-4
    with pytest.raises(ValueError, match="'vital' names FLUX.1-dev's vital layers"):
        _run(sd3, inv, EditSpec(target_prompts=("a photo of a dog",), mmdit_blocks="vital"))


def test_the_model_samples_as_before_after_an_edit(sd3, inv):
    import comfy.sample

    from attention_edit.attention.recipe import EditSpec

    m, cond = sd3["m"], sd3["cond"]
    noise = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(3))
    before = comfy.sample.sample(m, noise, 3, 4.5, "euler", "simple", cond, cond, torch.zeros(1, 16, 8, 8), seed=3)
    options = repr(m.model_options)
    _run(sd3, inv, EditSpec(target_prompts=("a photo of a dog",)))
    after = comfy.sample.sample(m, noise, 3, 4.5, "euler", "simple", cond, cond, torch.zeros(1, 16, 8, 8), seed=3)
    assert torch.equal(before, after) and repr(m.model_options) == options


# ---- agreement with diffusers on identical weights

def test_diffusers_sd3_transformer_gives_the_same_velocity(sd3):
    """ComfyUI's MMDiT (as the pack's loops call it) and diffusers' SD3Transformer2DModel with the same weights
    (ComfyUI's own key table) give the same velocity at every sigma of the schedule, for the source prompt's
    [CLIP ; T5] sequence and pooled vector. The worst relative difference is printed (README: SD3 agreement)."""
    pytest.importorskip("diffusers")
    from support import diffusers_bridge as B

    m, cond = sd3["m"], sd3["cond"]
    dit = B.to_diffusers_sd3(m)
    seq, pooled = cond[0][0].float(), cond[0][1]["pooled_output"].float()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    worst = 0.0
    ms = m.model.model_sampling
    with torch.no_grad():
        for sigma in (1.0, 0.75, 0.5, 0.25, 0.05):
            t = ms.timestep(torch.tensor([sigma]))
            ours = m.model.diffusion_model(x, t, context=seq, y=pooled)
            theirs = dit(hidden_states=x, encoder_hidden_states=seq, pooled_projections=pooled, timestep=t).sample
            worst = max(worst, float((ours - theirs).abs().max() / theirs.abs().max()))
    print(f"\n[sd3 agreement] worst relative velocity difference vs diffusers SD3Transformer2DModel: {worst:.1e}")
    assert worst < 1e-5


def test_direct_inversion_source_row_is_the_photo_latent(sd3):
    """Direct Inversion on SD3 (FireFlow's path, as on Flux): the edit's source row ends on the encoded photo to
    float precision while the edited row is the word swap; an rf_euler inversion does not reconstruct so well."""
    from attention_edit.attention.recipe import EditSpec

    inv = _invert(sd3, "direct", STEPS)
    assert inv.method == "direct" and inv.solver == "fireflow" and inv.path.shape[0] == STEPS + 1
    out, _ = _run(sd3, inv, EditSpec(target_prompts=("a photo of a dog",)))
    latent = sd3["latent"][0]
    err = float((out[0] - latent).abs().max())
    assert err <= 1e-5 * max(1.0, float(latent.abs().max()))
    assert float((out[1] - out[0]).abs().max()) > 1e-4
    base, _ = _run(sd3, _invert(sd3, "rf_euler", STEPS), EditSpec(target_prompts=("a photo of a dog",)))
    assert float((base[0] - latent).abs().max()) > 100 * err


# ---- classifier-free guidance (SD3 is sampled with it)

def test_cfg_replay_without_edit_is_bit_identical_to_core_euler_at_that_cfg(sd3):
    """An rf_euler inversion made for CFG 4.5 holds the empty prompt as every step's unconditional embedding; its
    replay without edit equals ComfyUI's euler sampler at cfg 4.5 (negative: the empty prompt) from the same x_T,
    bit for bit. At cfg 1 the inversion holds none."""
    import comfy.sample
    import comfy.samplers

    from attention_edit.comfy_bridge.sampling import edit

    m, cond, empty = sd3["m"], sd3["cond"], _enc(sd3, "")
    inv = _invert(sd3, "rf_euler", 6, cfg=4.5)
    assert len(inv.uncond) == 6 and inv.guidance_scale == 4.5
    # the loops' embedding: the token rows, then one row holding the pooled vector (sampling.text_embedding)
    assert torch.equal(inv.uncond[0][:, :-1], empty[0][0])
    assert torch.equal(inv.uncond[0][0, -1, :64], empty[0][1]["pooled_output"][0])
    assert _invert(sd3, "rf_euler", 2).uncond == []
    ours = edit(m, inv, [])
    noise = m.model.process_latent_in(inv.x_T.clone())
    core = comfy.sample.sample_custom(m, noise, 4.5, comfy.samplers.ksampler("euler"), inv.sigmas.clone(), cond,
                                      empty, torch.zeros_like(inv.x_T), seed=0)
    assert torch.equal(ours, core)


def test_direct_inversion_at_cfg_keeps_the_source_and_edits(sd3):
    """At CFG 4.5 the plain replay drifts from the photo (the inversion walked the conditional flow); Direct
    Inversion puts the source row back on the path and the edited row is the guided word swap."""
    from attention_edit.attention.recipe import EditSpec
    from attention_edit.comfy_bridge.sampling import edit

    latent = sd3["latent"][0]
    drift = float((edit(sd3["m"], _invert(sd3, "fireflow", STEPS, cfg=4.5), [])[0] - latent).abs().max())
    inv = _invert(sd3, "direct", STEPS, cfg=4.5)
    out, _ = _run(sd3, inv, EditSpec(target_prompts=("a photo of a dog",)))
    err = float((out[0] - latent).abs().max())
    assert err <= 1e-5 * max(1.0, float(latent.abs().max())) and drift > 100 * err
    assert float((out[1] - out[0]).abs().max()) > 1e-4


def test_null_text_is_refused_on_sd3_with_the_methods_it_has(sd3):
    with pytest.raises(ValueError, match="rectified-flow model \\(SD3\\).*choose one of rf_euler, rf_solver, "
                                         "fireflow, direct"):
        _invert(sd3, "null_text", 2, cfg=4.5)


def test_sd3_word_swap_through_the_executor_with_save_and_load(comfy):
    """The nodes on the loader's random SD3.5: Invert Image (direct at cfg 4.5: the empty prompt as unconditional),
    Save / Load Inversion (the family and the unconditional embeddings recorded), Prompt-to-Prompt Edit -> Edit
    Sampler -> VAE Decode, and the attention-map preview; the loaded inversion edits exactly as the live one."""
    from attention_edit.headless.photos import save_input_photo
    from support.edit_graphs import edit_graph, reload_graph

    img = save_input_photo("cat", 64)
    g = edit_graph("random SD3.5 (untrained test model)", img, SOURCE, "direct", 4.5, "all", "sd3_cat")
    res = comfy.run_workflow(g, outputs=["5", "7", "8", "9"])
    inv = res.value("4", 0)
    assert (inv.method, inv.family, inv.steps, inv.guidance_scale, len(inv.uncond)) == ("direct", "sd3", 4, 4.5, 4)
    assert res.value("8", 0).shape == (2, 64, 64, 3)
    saved = res["outputs"]["5"]["text"][0]
    g2 = reload_graph(g, saved)
    res2 = comfy.run_workflow(g2, outputs=["11"])
    assert torch.equal(res2.value("11", 0)["samples"], res.value("7", 0)["samples"])


def test_every_model_node_reads_the_record_for_sd3(sd3, comfy_server):
    """Every AE_* node that takes a MODEL, given an SD3 model: the training and Imagic nodes refuse it before any
    work, naming the family and what to use instead (the record's groups and ``instead``); the inversion and edit
    nodes accept it (whatever they then say about their other, here empty, inputs is not a family refusal)."""
    import nodes as comfy_nodes

    from test_hostile import _default_kwargs, _input_types

    info = comfy_server.object_info()
    refused, accepted = [], []
    for node_id, spec in sorted(info.items()):
        if not node_id.startswith("AE_") or "MODEL" not in _input_types(spec).values():
            continue
        cls = comfy_nodes.NODE_CLASS_MAPPINGS[node_id]
        kwargs = _default_kwargs(spec, cls, lambda n, t: sd3["m"] if t == "MODEL" else None)
        try:
            cls.execute(**kwargs)
            msg = ""
        except Exception as exc:  # noqa: BLE001 - what matters is whether it is the family refusal
            msg = str(exc)
        if "this MODEL is an SD3 model" in msg:
            short = spec["display_name"].split(" (")[0]
            assert msg.startswith(short) and "does not support SD3" in msg and "For SD3, use an SD1.x" in msg, msg
            refused.append(node_id)
        else:
            accepted.append(node_id)
    print(f"\n[sd3 record] refused: {refused}; accepted: {accepted}")
    assert {"AE_TrainTextualInversion", "AE_TrainCustomDiffusion", "AE_ImagicOptimizeEmbedding"} <= set(refused)
    assert {"AE_InvertImage", "AE_InvertImageBatch", "AE_P2PEditSampler"} <= set(accepted), (refused, accepted)
