"""The pack's DDIM inversion and CFG DDIM replay agree with diffusers, given identical (tiny) UNet weights.

Setup, per family: the tiny SD1.x model of ``build_unet(TINY_TEST, seed=0)``, the tiny SD2.x v-prediction model
``build_unet(TINY_SD2_V, seed=0)`` (ComfyUI's SD20 config, OpenCLIP-H tokenizer, linear transformer projections;
diffusers' schedulers then run with prediction_type="v_prediction" on the UNet's raw v output) and the tiny SDXL
model ``build_unet(TINY_SDXL, seed=0)`` (ComfyUI's SDXL config; diffusers gets the UNet StableDiffusionXLPipeline
builds, addition_embed_type "text_time", with the pooled bigG output and the time ids [h, w, 0, 0, h, w] ComfyUI's
CLIP Text Encode implies; latent scale 0.13025); its UNet weights are converted to
``diffusers.UNet2DConditionModel`` (testing/diffusers_bridge.py, diffusers' own ldm converter). Text embeddings
come from the tiny CLIP (one tensor used by both sides); the image is a real photo (skimage ``chelsea``, 64x64)
encoded by the tiny VAE.

Schedules: diffusers ``DDIMScheduler`` / ``DDIMInverseScheduler`` (scaled_linear 0.00085..0.012,
clip_sample=False, set_alpha_to_one=False, steps_offset=1, 'leading' spacing), N = 10: timesteps
901, 801, ..., 1 and a last step to final_alpha_cumprod = alphas_cumprod[0]. The pack is given the VE sigma
schedule of exactly those levels, sigma = sqrt((1 - alpha_bar) / alpha_bar) (11 values, ending at sigma(t=0));
ComfyUI maps each back to the same integer timestep (checked below).

What is compared (all in the 0.18215-scaled VP space of diffusers, x_VP = x_VE / sqrt(1 + sigma^2)):

* ``test_unet_conversion``: one UNet evaluation, eps_comfy = (x_VE - x0) / sigma vs diffusers' eps.
* ``test_ddim_inversion_agrees``: ``invert(..., method="ddim")`` vs diffusers' DDIMInverseScheduler loop with
  the same UNet weights (THE ASSERTION). Both step like the reference notebook's ``next_step``: the step from
  level a to the next level b uses eps(x_a, t_b), the noise predicted for the current sample at the target
  timestep. That the DDIMInverseScheduler loop equals an explicit eps(x_a, t_b) loop is also asserted, and the
  other discretisation, eps(x_a, t_a), is printed for the record.
  Both sides start from the same state: the pack's clean VE latent z*0.18215 lies at sigma(t=0), i.e.
  x_VP = z*0.18215*sqrt(alphas_cumprod[0]); a diffusers pipeline would instead start from z*0.18215 at the
  same level (a 0.04 % scale difference, also printed).
* ``test_cfg_replay_agrees``: ``edit(model, inversion, [])`` (CFG 7.5; for method "ddim" the unconditional
  embedding is the empty prompt's at every step) vs the DDIMScheduler.step loop with eps = eps_u + 7.5 (eps_c -
  eps_u) from the same x_T, same embeddings; the final samples (at alphas_cumprod[0]) are compared.

Target for both: max |difference| < 1e-3 (the measured value is printed and in the assertion message).
"""
from __future__ import annotations

import time

import pytest
import torch

import comfy.cli_args

comfy.cli_args.args.cpu = True

pytest.importorskip("diffusers", reason="diffusers is needed to cross-check against its DDIM schedulers")

from support import diffusers_bridge as B  # noqa: E402

STEPS = 10
GUIDANCE = 7.5
TOL = 1e-3
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module", params=["tiny_test", "tiny_sd2_v", "tiny_sdxl"], ids=["sd1", "sd2_v", "sdxl"])
def setup(request):
    # One intra-op thread: the UNet is tiny (8x8 latents), and on a busy 2-core machine torch's thread pool
    # makes every call 10-100x slower. Restored afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _setup(request.param)
    finally:
        torch.set_num_threads(threads)


def _setup(config):
    torch.manual_seed(0)
    t0 = time.time()
    from attention_edit.comfy_bridge.families import prediction_type
    from attention_edit.comfy_bridge.models import CONFIGS, build_unet
    from attention_edit.headless.photos import photo

    cfg = CONFIGS[config]
    mp, clip, vae = build_unet(cfg, seed=0)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize(PROMPT))
    empty = clip.encode_from_tokens_scheduled(clip.tokenize(""))
    image = photo("cat", cfg.image_size)  # [1, 64, 64, 3] in [0, 1]
    with torch.no_grad():
        latent = vae.encode(image[:, :, :, :3]).float()  # [1, 4, 8, 8], ComfyUI LATENT scale
    unet = B.to_diffusers_unet(mp)
    assert unet.ae_prediction_type == {"eps": "epsilon", "v": "v_prediction"}[cfg.prediction] == \
        {"eps": "epsilon", "v": "v_prediction"}[prediction_type(mp)]
    fwd, inv = B.make_schedulers(STEPS, steps_offset=1, prediction_type=unet.ae_prediction_type)
    sigmas = B.sigmas_from_scheduler(fwd)
    print(f"\n[diffusers agreement] setup {time.time() - t0:.1f}s; timesteps {fwd.timesteps.tolist()}; "
          f"sigmas {[round(float(s), 4) for s in sigmas]}")
    cond_emb, empty_emb = cond[0][0].float(), empty[0][0].float()
    if cfg.family == "sdxl":
        # StableDiffusionXLPipeline's conditioning: the sequence, the pooled bigG vector and the time ids
        # (original size, crop top-left, target size); ComfyUI's CLIP Text Encode leaves the sizes at the
        # latent's pixel size and the crop at 0, so the same numbers
        h, w = latent.shape[-2] * 8, latent.shape[-1] * 8
        unet.ae_time_ids = torch.tensor([h, w, 0, 0, h, w], dtype=torch.float32)
        cond_emb = (cond_emb, cond[0][1]["pooled_output"].float())
        empty_emb = (empty_emb, empty[0][1]["pooled_output"].float())
    return dict(cfg=cfg, mp=mp, cond=cond, empty=empty, latent=latent, unet=unet, fwd=fwd, inv=inv, sigmas=sigmas,
                cond_emb=cond_emb, empty_emb=empty_emb, scale=float(mp.model.latent_format.scale_factor))


@pytest.fixture(scope="module")
def inversion(setup):
    from attention_edit.comfy_bridge.sampling import invert

    s = setup
    return invert(s["mp"], s["latent"], s["cond"], s["empty"], s["sigmas"].clone(), method="ddim",
                  guidance_scale=GUIDANCE)


def test_schedule_maps_to_the_same_integer_timesteps(setup):
    """ComfyUI turns each sigma back into a timestep through its own (float64-built) sigma table: at the
    levels of diffusers' float32 alphas_cumprod it must land on exactly diffusers' integer timesteps."""
    s = setup
    ms = s["mp"].model.model_sampling
    got = ms.timestep(s["sigmas"]).tolist()
    abars, ts = B.alpha_bar_levels(s["fwd"])
    assert got == ts + [0], f"ComfyUI timesteps {got} vs diffusers {ts} + [0]"
    # the two alpha tables differ only by float32 rounding
    ac = s["fwd"].alphas_cumprod.double()
    comfy_sig = ms.sigmas.double()
    rel = float(((comfy_sig - ((1 - ac) / ac).sqrt()) / comfy_sig).abs().max())
    print(f"[diffusers agreement] ComfyUI vs diffusers sigma tables: max relative difference {rel:.2e}")
    assert rel < 1e-4


def test_unet_conversion(setup):
    s = setup
    model = s["mp"].model
    g = torch.Generator().manual_seed(0)
    x_vp = torch.randn(2, 4, 8, 8, generator=g)
    emb = B._cat([s["cond_emb"], s["empty_emb"]])
    extra = {}
    if isinstance(emb, tuple):  # SDXL: ComfyUI's ADM vector of the pooled outputs and sizes (the diffusers time ids)
        h, w = s["unet"].ae_time_ids[:2].tolist()
        extra["y"] = model.encode_adm(pooled_output=emb[1], width=int(w), height=int(h))
        emb = emb[0]
        x_vp = torch.randn(2, 4, 16, 16, generator=g)  # the model's own size, as the ADM's sizes say
    worst = 0.0
    for t in (0, 1, 301, 901, 999):
        a = float(s["fwd"].alphas_cumprod[t])
        sigma = B.sigma_of(a)
        x_ve = B.vp_to_ve(x_vp, sigma)
        sig = torch.full((2,), sigma)
        with torch.no_grad():
            x0 = model.apply_model(x_ve, sig, c_crossattn=emb, **extra)
        eps_comfy = (x_ve - x0) / sigma
        eps_diff = B.eps_diffusers(s["unet"], x_vp, t, B._cat([s["cond_emb"], s["empty_emb"]]))
        worst = max(worst, float((eps_comfy - eps_diff).abs().max()))
    print(f"[diffusers agreement] UNet eps max |comfy - diffusers| = {worst:.2e}")
    assert worst < 1e-4, f"converted UNet disagrees: max eps difference {worst:.3e}"


def test_ddim_inversion_agrees(setup, inversion):
    s = setup
    sig = s["sigmas"]
    sig_T, sig_0 = float(sig[0]), float(sig[-1])
    # pack: LATENT scale x_T -> VE -> VP at sigma_T
    ours = B.ve_to_vp(inversion.x_T.float() * s["scale"], sig_T)
    # the same starting state for diffusers: the pack's clean VE latent at sigma(t=0)
    x0_vp = B.ve_to_vp(s["latent"] * s["scale"], sig_0)
    source_conv = B.ddim_inversion_explicit(s["unet"], s["fwd"], x0_vp, s["cond_emb"], eps_at="source")[-1]
    source_vs_ours = float((ours - source_conv).abs().max())

    # diffusers' DDIMInverseScheduler (eps of the target level) == the notebook's next_step
    sched = B.ddim_inversion_scheduler(s["unet"], s["inv"], x0_vp, s["cond_emb"])
    ref = sched
    diff = float((sched - ours).abs().max())
    target = B.ddim_inversion_explicit(s["unet"], s["fwd"], x0_vp, s["cond_emb"], eps_at="target")[-1]
    sched_vs_target = float((sched - target).abs().max())
    naive = B.ddim_inversion_explicit(s["unet"], s["fwd"], s["latent"] * s["scale"], s["cond_emb"],
                                      eps_at="target")[-1]
    naive_vs_ours = float((naive - ours).abs().max())
    scale = float(ref.abs().max())
    print(f"[diffusers agreement] DDIM inversion x_T (VP, max |x_T| {scale:.3f}):\n"
          f"    pack vs DDIMInverseScheduler (eps(x_a, t_b)):             max |diff| = {diff:.3e}  (asserted)\n"
          f"    pack vs the other discretisation eps(x_a, t_a):           max |diff| = {source_vs_ours:.3e}\n"
          f"    DDIMInverseScheduler vs explicit eps(x_a, t_b) loop:      max |diff| = {sched_vs_target:.3e}\n"
          f"    pack vs same convention started from z*scale (VP):        max |diff| = {naive_vs_ours:.3e}")
    assert diff < TOL, f"DDIM inversion: pack vs diffusers max |x_T difference| = {diff:.3e} >= {TOL}"
    if s["unet"].ae_prediction_type == "epsilon":
        assert sched_vs_target < 1e-5, f"explicit next_step loop != DDIMInverseScheduler ({sched_vs_target:.3e})"
        return
    # v-prediction: diffusers' DDIMInverseScheduler turns v(x_a, t_b) into the noise with the alpha of the source
    # level a (the pack does the same: inversion.core.v_eps_at_source); the explicit loop above converts at t_b.
    # Both replayed with diffusers' own DDIMScheduler (guidance 1, the same UNet), for the record.
    rec = {name: B.cfg_ddim_sample(s["unet"], s["fwd"], xT, s["cond_emb"], s["cond_emb"], 1.0)
           for name, xT in (("pack = DDIMInverseScheduler", ours), ("v read at t_b", target))}
    err = {k: float((v - x0_vp).pow(2).mean()) for k, v in rec.items()}
    print(f"    v-prediction: reconstruction MSE after diffusers' DDIMScheduler replay: {err}")


def test_cfg_replay_agrees(setup, inversion):
    from attention_edit.comfy_bridge.sampling import edit

    s = setup
    sig = s["sigmas"]
    sig_T, sig_0 = float(sig[0]), float(sig[-1])
    out = edit(s["mp"], inversion, [])  # [1, C, H, W], LATENT scale, at sigma(t=0)
    assert out.shape == inversion.x_T.shape
    ours = B.ve_to_vp(out.float() * s["scale"], sig_0)
    x_T_vp = B.ve_to_vp(inversion.x_T.float() * s["scale"], sig_T)
    assert all(torch.equal(u, inversion.uncond[0]) for u in inversion.uncond)
    ref = B.cfg_ddim_sample(s["unet"], s["fwd"], x_T_vp, s["cond_emb"], s["empty_emb"], GUIDANCE)
    diff = float((ours - ref).abs().max())
    # what a diffusers pipeline would hand its VAE (sample / 0.18215) vs the pack's LATENT output: the same
    # state, but the pack's LATENT is VE (x / sqrt(alphas_cumprod[0])) -- printed, not asserted
    latent_level = float((out.float() - ref / s["scale"]).abs().max())
    print(f"[diffusers agreement] CFG {GUIDANCE} DDIM replay ({STEPS} steps), final sample (VP, max |x| "
          f"{float(ref.abs().max()):.3f}): pack vs DDIMScheduler max |diff| = {diff:.3e}  (asserted)\n"
          f"    LATENT-level (pack VE/scale vs diffusers sample/scale): max |diff| = {latent_level:.3e}")
    assert diff < TOL, f"CFG DDIM replay: pack vs diffusers max |final latent difference| = {diff:.3e} >= {TOL}"


def test_unet_head_count_follows_config(setup):
    cfg = setup["cfg"]
    heads = B.diffusers_unet_config(setup["mp"])["attention_head_dim"]
    assert set(heads) == {cfg.num_heads}, f"UNet heads per level {heads}, config says {cfg.num_heads}"
