"""Null-text inversion's two modes on the shipped ToyWorld model (a render and a real photo): the reference mode is
the reference loop (Mokady et al. Algorithm 1 as the public notebook runs it, bench/bench_inversion.py) with the host's
kernel, the fast mode the same loop at its best (frozen weights, fused attention); on these 10-step cases both take
the reference's Adam steps; neither computes a weight gradient.
Times are the benchmark's business (bench/bench_inversion.py); these tests check behaviour."""
import pytest
import torch

from attention_edit.bench import bench_inversion as bi
from attention_edit.comfy_bridge import text
from attention_edit.comfy_bridge.models import load_weights
from attention_edit.comfy_bridge.sampling import invert, invert_batch, replay_schedule
from attention_edit.comfy_bridge.training import encode_image

STEPS = 10


@pytest.fixture(scope="module")
def toy(comfy):
    from attention_edit.bench.editbench import SHIPPED

    return load_weights(SHIPPED)


@pytest.fixture(scope="module", params=[0, 2], ids=["render", "photo"])
def case(request, toy):
    model, clip, vae = toy
    name, image, prompt = bi.inputs(False, 64)[request.param]
    return dict(model=model, clip=clip, vae=vae, image=image, prompt=prompt, src=text.encode(clip, prompt),
                empty=text.encode(clip, ""), latent=encode_image(vae, image[..., :3]),
                sigmas=replay_schedule(model, "p2p_ddim", STEPS))


def _run(c, mode):
    return invert(c["model"], c["latent"], c["src"], c["empty"], c["sigmas"], method="null_text", guidance_scale=7.5,
                  num_inner_steps=10, source_prompt=c["prompt"], null_text_mode=mode)


def test_reference_mode_is_the_reference_loop(case):
    tb, tb_iters, _ = bi.run_textbook(case["model"], case["latent"], case["src"], case["empty"], case["sigmas"], 7.5, 10,
                                      best=False)
    ref = _run(case, "reference")
    assert sum(len(x) for x in ref.losses) == tb_iters
    diff = max(float((a - b).abs().max()) for a, b in zip(ref.uncond, tb.uncond))
    assert diff < 1e-3, diff  # the same embeddings (weight gradients in the textbook only change rounding)
    assert torch.allclose(ref.x_T, tb.x_T)


def test_fast_mode_is_the_reference_loop_at_its_best(case):
    """The benchmark's baseline (the reference loop with frozen weights and fused attention) and the fast mode are one
    loop: the same Adam steps and embeddings here."""
    tb, tb_iters, _ = bi.run_textbook(case["model"], case["latent"], case["src"], case["empty"], case["sigmas"], 7.5, 10)
    fast = _run(case, "fast")
    assert sum(len(x) for x in fast.losses) == tb_iters
    assert bi.embedding_gap(fast, tb) < 1e-3


def test_fast_mode_takes_the_reference_steps(case):
    """The fast mode changes the attention kernel, not the loop: the same Adam steps per step, the same embeddings
    and reconstruction to float rounding."""
    ref, fast = _run(case, "reference"), _run(case, "fast")
    assert [len(x) for x in fast.losses] == [len(x) for x in ref.losses]
    diff = max(float((a - b).abs().max()) for a, b in zip(ref.uncond, fast.uncond))
    assert diff < 1e-3, diff
    q_ref = bi.quality(case["model"], case["vae"], ref, case["latent"], case["image"])
    q_fast = bi.quality(case["model"], case["vae"], fast, case["latent"], case["image"])
    assert abs(q_fast[0] - q_ref[0]) <= 0.01 * q_ref[0], (q_fast, q_ref)


def test_fast_mode_runs_pytorch_sdpa_on_the_inner_passes(case, monkeypatch):
    """The kernel lever is real: in the fast mode the cross-attention of the optimised passes runs through PyTorch's
    scaled_dot_product_attention (forward and backward), in the reference mode through the host's kernel (ComfyUI's sub-quadratic one on the
    CPU, where the tests run)."""
    import torch.nn.functional as F

    calls = {"n": 0}
    real = F.scaled_dot_product_attention

    def counting(*a, **k):
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    _run(case, "fast")
    fast_calls = calls["n"]
    calls["n"] = 0
    _run(case, "reference")
    assert fast_calls > 0 and fast_calls > calls["n"], (fast_calls, calls["n"])


def test_no_weight_gradient_is_ever_computed(case):
    params = list(case["model"].model.diffusion_model.parameters())
    _run(case, "fast")
    assert all(p.grad is None and not p.requires_grad for p in params)


def test_a_batch_is_each_image_inverted_alone(toy):
    """The batching lever changes nothing but speed: a render and a photo inverted as one batch get, each, the Adam
    steps, embeddings and x_T of their inversion alone (rows leave the batch at their own early stop)."""
    model, clip, vae = toy
    picks = [bi.inputs(False, 64)[k] for k in (0, 2)]
    srcs = [text.encode(clip, p) for _, _, p in picks]
    latents = [encode_image(vae, img[..., :3]) for _, img, _ in picks]
    empty, sigmas = text.encode(clip, ""), replay_schedule(model, "p2p_ddim", STEPS)
    eps = 5e-3  # a larger early-stop bound than the default, so that the two rows stop at different iterations
    together = invert_batch(model, torch.cat(latents), srcs, empty, sigmas, method="null_text", guidance_scale=7.5,
                            num_inner_steps=10, early_stop_epsilon=eps, source_prompts=[p for _, _, p in picks])
    assert len(together) == 2
    counts = []
    for (_, _, prompt), src, lat, inv in zip(picks, srcs, latents, together):
        alone = invert(model, lat, src, empty, sigmas, method="null_text", guidance_scale=7.5, num_inner_steps=10,
                       early_stop_epsilon=eps, source_prompt=prompt)
        assert [len(x) for x in inv.losses] == [len(x) for x in alone.losses]
        assert inv.source_prompt == prompt and inv.uncond[0].shape == alone.uncond[0].shape
        diff = max(float((a - b).abs().max()) for a, b in zip(inv.uncond, alone.uncond))
        assert diff < 1e-3, diff
        assert torch.allclose(inv.x_T, alone.x_T, atol=1e-4) and torch.equal(inv.latent, lat)
        counts.append([len(x) for x in inv.losses])
    # the two rows really stopped at different iterations somewhere (so the shrinking batch was exercised)
    assert counts[0] != counts[1], counts


def test_a_batch_with_the_wrong_number_of_prompts_is_refused(toy):
    model, clip, vae = toy
    _, img, prompt = bi.inputs(False, 64)[0]
    lat = encode_image(vae, img[..., :3]).repeat(2, 1, 1, 1)
    with pytest.raises(ValueError, match="2 images but 1 source prompts"):
        invert_batch(model, lat, [text.encode(clip, prompt)], text.encode(clip, ""),
                     replay_schedule(model, "p2p_ddim", 2), method="ddim")


def test_sdxl_null_text_optimises_the_pooled_vector_or_keeps_it_exactly(comfy):
    """SDXL: the null-text embedding is the whole negative conditioning, the token sequence of both encoders plus the
    pooled vector (its last row; comfy_bridge.sampling.text_embedding). Optimised with the sequence (the default),
    the pooled row moves; with optimise_pooled=False it stays the empty prompt's pooled vector bit for bit while the
    sequence is optimised. A raw 77-row embedding is refused instead of being misread."""
    import pytest as _pytest

    from attention_edit.comfy_bridge.models import CONFIGS, build_unet
    from attention_edit.comfy_bridge.sampling import ComfyRunner, invert, replay_schedule, text_embedding
    from attention_edit.headless.photos import photo

    m, clip, vae = build_unet(CONFIGS["tiny_sdxl"], seed=0)
    enc = lambda p: clip.encode_from_tokens_scheduled(clip.tokenize(p))  # noqa: E731
    src, empty = enc("a photo of a cat"), enc("")
    with torch.no_grad():
        lat = vae.encode(photo("cat", 128)[..., :3])
    sig = replay_schedule(m, "p2p_ddim", 4)
    e0 = text_embedding(m, empty)
    assert e0.shape == (1, 78, 128) and torch.equal(e0[0, -1, :64], empty[0][1]["pooled_output"][0])
    kept = invert(m, lat, src, empty, sig, method="null_text", num_inner_steps=3, optimise_pooled=False)
    moved = invert(m, lat, src, empty, sig, method="null_text", num_inner_steps=3)
    for u in kept.uncond:
        assert torch.equal(u[0, -1], e0[0, -1]) and not torch.equal(u[0, :-1], e0[0, :-1])
    assert not torch.equal(moved.uncond[-1][0, -1], e0[0, -1])
    with _pytest.raises(ValueError, match="77 k . 1 rows"):
        ComfyRunner(m, src).run(lambda den, x, s: den.denoise(x, float(s[0]), src[0][0], None)[0], lat, sig)
