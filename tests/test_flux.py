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
    from attention_edit.comfy_bridge.models import model_family, prediction_type

    m, cond = flux["m"], flux["cond"]
    assert (model_family(m), prediction_type(m)) == ("Flux", "flow")
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
            assert inv.family == "Flux" and inv.prediction == "flow" and inv.uncond == []
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
    ("rf_euler", "p2p_ddim", "use 'simple'"),
])
def test_diffusion_methods_and_schedules_are_refused_on_flux(flux, method, scheduler, needle):
    with pytest.raises(ValueError, match=needle):
        _invert(flux, method, 4, scheduler)


def test_flow_methods_are_refused_on_a_diffusion_model(comfy):
    from attention_edit.comfy_bridge.models import TINY_TEST, build_sd1x
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule

    m, clip, vae = build_sd1x(TINY_TEST, seed=0)
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
