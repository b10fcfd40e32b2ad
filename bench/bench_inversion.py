"""Null-text inversion: the pack's loop against the reference loop, on the same weights, photo and steps.

The reference loop (Mokady et al. 2022, Algorithm 1, as the public notebook null_text_w_ptp.ipynb runs it) is written
here, against the same model access as the pack (ComfyUI's sampler): per step one conditional pass without gradient,
then up to ``num_inner_steps`` Adam steps on the null embedding, each a forward and backward of the unconditional
pass, stopping early when the loss falls under epsilon + 1e-3 * i / N (the notebook's epsilon + 2e-5 i at N = 50),
then one more CFG pass (unconditional and conditional as a batch) with the optimised embedding to advance the latent.
It runs in two forms:

* **at its best** (the baseline): the weights frozen (no weight gradient is computed) and PyTorch's fused attention
  (``scaled_dot_product_attention``), one thread: what anyone running the notebook's loop would do first;
* **as published**: the UNet's weights requiring grad as in the notebook (every backward also computes and
  accumulates their gradients) and the host's attention kernel (ComfyUI's CPU default, sub-quadratic attention).

Beside them: the pack's null-text inversion in its two modes (``reference``: the host's kernel; ``fast``: the
default, the fused kernel), the inputs as one batch (Invert Images (Batch)), and Direct Inversion (method
``direct``: a DDIM inversion whose path is kept; no optimisation at all). All start from the same DDIM inversion
(inversion.core.ddim_inversion_loop). Printed per input (two ToyWorld renders and two scikit-image photos at 64x64;
--full-size: the cat at 512x512 on a random-weight SD1.5-layout UNet): wall time (the fastest of --repeats runs),
Adam steps, the reconstruction's latent MSE (replayed at the same CFG scale) and pixel PSNR, the ratio to the
baseline, and for the pack's variants how far their Adam steps and embeddings are from the baseline's (the loops are
the same, but kernels and batch shapes round differently, and an early-stop test within rounding of its threshold
can then go the other way). The last line reads ``speedup <x>x (vs the reference at its best), error ratio <y>``:
baseline time / pack fast-mode time summed over the inputs, and the largest pack / baseline latent MSE.

    python bench/bench_inversion.py                 # ToyWorld, 50 steps, 1 thread
    python bench/bench_inversion.py --steps 20
    python bench/bench_inversion.py --full-size --steps 3 --inner 3 --repeats 1   # SD1.5 layout at 512x512, CPU
    python bench/bench_inversion.py --full-size --steps 50   # the same on a GPU
    python bench/bench_inversion.py --sdxl-pooled         # SDXL: null-text with / without the pooled vector

``--sdxl-pooled`` answers one question of SDXL null-text inversion: the unconditional conditioning there is both
encoders' token sequence and the pooled bigG vector (the ADM input); optimise the sequence only, or the pooled
vector with it? On the tiny SDXL-architecture model (random weights: no trained SDXL model fits this CPU; the
same command with --full-size is the SDXL-size figure for a GPU), per input: latent MSE and PSNR of the
reconstruction, Adam steps and time of both, and the ratio.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def textbook_null_text(den, trajectory, sigmas, cond_emb, uncond_init, guidance_scale, num_inner_steps=10,
                       early_stop_epsilon=1e-5, learning_rate=1e-2):
    """Mokady et al. Algorithm 1 as the notebook runs it (see the module docstring). Returns (nulls, iterations,
    UNet passes)."""
    from attention_edit.inversion.ddim import ddim_step, to_vp

    N = len(sigmas) - 1
    x = trajectory[N]
    uncond = uncond_init.detach().clone()
    nulls, iters, passes = [], 0, 0
    for i in range(N):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        target = to_vp(trajectory[N - i - 1], s_next)
        uncond = uncond.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([uncond], lr=learning_rate * (1.0 - i / (2.0 * N)))
        with torch.no_grad():
            c, _ = den.denoise(x, s, cond_emb, None)
        passes += 1
        for _ in range(num_inner_steps):
            den.check_interrupt()
            _, u = den.denoise(x, s, None, uncond)
            x_prev = ddim_step(x, den.cfg(c, u, x, s, guidance_scale), s, s_next)
            loss = F.mse_loss(to_vp(x_prev, s_next), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            iters += 1
            passes += 2  # forward + backward
            if loss.item() < early_stop_epsilon + 1e-3 * i / N:
                break
        nulls.append(uncond[:1].detach().clone())
        with torch.no_grad():  # the notebook's get_noise_pred: uncond and cond as one batch
            c2, u2 = den.denoise(x, s, cond_emb, uncond.detach())
            x = ddim_step(x, den.cfg(c2, u2, x, s, guidance_scale), s, s_next)
        passes += 2
    return nulls, iters, passes


def run_textbook(model, latent, src, empty, sigmas, scale, inner, best: bool = True):
    """DDIM inversion + the reference loop in ComfyUI's sampler. ``best``: the weights frozen and PyTorch's fused
    attention (the reference at its best, the baseline); else as published (the UNet's weights requiring grad, the
    host's kernel). Returns (Inversion, inner iterations, UNet passes)."""
    from attention_edit.comfy_bridge.sampling import ComfyRunner
    from attention_edit.inversion.core import Inversion, ddim_inversion_loop

    out = {}
    cond_emb, empty_emb = src[0][0].detach(), empty[0][0].detach()

    def loop(den, x, sig):
        s = sig.to(x.device)
        ce, ee = cond_emb.to(x.device, x.dtype), empty_emb.to(x.device, x.dtype)
        with torch.no_grad():
            traj = ddim_inversion_loop(den, x, s, ce)
        with torch.inference_mode(False), torch.enable_grad():
            den.enable_grad()
            params = [] if best else list(den.guider.model_patcher.model.diffusion_model.parameters())
            for p in params:
                p.requires_grad_(True)
            try:
                traj = [t.clone() for t in traj]
                out["nulls"], out["iters"], out["passes"] = textbook_null_text(
                    den.with_kernel("sdpa") if best else den, traj, s, ce.clone(), ee.clone(), scale, inner)
            finally:
                for p in params:
                    p.requires_grad_(False)
                    p.grad = None
        return traj[-1]

    with torch.inference_mode(False):
        x_T = ComfyRunner(model, src).run(loop, latent.clone(), sigmas.clone())
    inv = Inversion(x_T=x_T.detach().cpu(), sigmas=sigmas.cpu(), source_prompt="", source_cond=src,
                    uncond=[u.cpu() for u in out["nulls"]], guidance_scale=scale, method="null_text",
                    latent=latent.cpu(), losses=[])
    return inv, out["iters"], out["passes"] + len(sigmas) - 1


def embedding_gap(a, b) -> float:
    """The largest absolute difference between two inversions' per-step null embeddings."""
    return max(float((x.float() - y.float()).abs().max()) for x, y in zip(a.uncond, b.uncond))


def quality(model, vae, inv, latent, image):
    from attention_edit.comfy_bridge.sampling import edit

    with torch.no_grad():
        rec = edit(model, inv, [])
        pix = vae.decode(rec).clamp(0, 1)
    mse = (rec[0] - latent[0]).pow(2).mean().item()
    psnr = -10 * math.log10(max((pix[0] - image[0, ..., :3]).pow(2).mean().item(), 1e-12))
    return mse, psnr


def inputs(full_size: bool, size: int):
    """[(name, IMAGE [1, size, size, 3], source prompt)]: on ToyWorld two renders and two scikit-image photos (the
    batch of the third lever), at full size the cat photo."""
    from attention_edit.headless.photos import photo

    out = []
    if not full_size:
        from attention_edit.toyworld import scenes

        for caption in ("a red circle on the left", "a big yellow square on the right"):
            sc = scenes.render_spec(scenes.spec_from_caption(caption), seed=0)
            out.append((f"ToyWorld render '{caption}'", torch.from_numpy(sc.image).float()[None] / 255.0, sc.caption))
        out.append(("photo (scikit-image cat)", photo("cat", size), "a photo of a cat"))
        out.append(("photo (scikit-image coffee)", photo("coffee", size), "a photo of a cup of coffee"))
        return out
    out.append(("photo (scikit-image cat)", photo("cat", size), "a photo of a cat"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=50, help="inversion steps (default 50, the reference)")
    ap.add_argument("--inner", type=int, default=10, help="null-text inner steps at most (reference 10)")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--full-size", action="store_true", help="SD1.5-layout random UNet at 512x512")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3,
                    help="runs per loop; the fastest is reported (default 3; 1 for --full-size on a CPU)")
    ap.add_argument("--sdxl-pooled", action="store_true",
                    help="SDXL null-text: optimise the pooled vector with the sequence, or the sequence only")
    args = ap.parse_args(argv)
    if args.sdxl_pooled:
        return sdxl_pooled(args)

    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.comfy_bridge import text
    from attention_edit.comfy_bridge.sampling import replay_schedule
    from attention_edit.comfy_bridge.training import encode_image
    from bench_foundation import build

    model, clip, vae, size, label = build(args.full_size)
    sigmas = replay_schedule(model, "p2p_ddim", args.steps)
    empty = text.encode(clip, "")
    t_total, t_pack, worst = 0.0, 0.0, 0.0
    print(f"\n### Null-text inversion: {label}, {args.steps} steps, cfg {args.cfg}, up to {args.inner} inner steps, "
          f"{torch.get_num_threads()} thread(s), device {host.torch_device()}\n")
    print("| input | loop | time s | Adam steps | latent MSE | PSNR dB | vs the reference at its best |\n"
          "|---|---|---|---|---|---|---|")

    def row(name, loop, t, iters, q, ref=None, gap=None):
        rel = ""
        if ref is not None:
            rel = f"{ref[0] / t:.2f}x, error x{q[0] / ref[1]:.3f}"
            if gap is not None:
                rel += f", Adam steps {iters - ref[2]:+d}, embeddings up to {gap:.3f} apart"
        print(f"| {name} | {loop} | {t:.2f} | {iters} | {q[0]:.5f} | {q[1]:.2f} | {rel} |")
        sys.stdout.flush()

    def timed(fn):
        best, res = math.inf, None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            res = fn()
            best = min(best, time.perf_counter() - t0)
        return best, res

    variants = [("pack, reference mode (host kernel)", "reference"), ("pack, fast mode, the default", "fast")]
    batch, t_total, t_pack, worst, t_direct = [], 0.0, 0.0, 0.0, 0.0
    for name, image, prompt in inputs(args.full_size, size):
        src = text.encode(clip, prompt)
        latent = encode_image(vae, image[..., :3])
        t_ref, (ref, ref_iters, _) = timed(lambda: run_textbook(model, latent, src, empty, sigmas, args.cfg, args.inner))
        q_ref = quality(model, vae, ref, latent, image)
        row(name, "**reference loop at its best** (frozen weights, fused attention): the baseline", t_ref, ref_iters,
            q_ref)
        base = (t_ref, q_ref[0], ref_iters)
        t_pub, (pub, pub_iters, _) = timed(lambda: run_textbook(model, latent, src, empty, sigmas, args.cfg, args.inner,
                                                                best=False))
        row(name, "reference loop as published (weight gradients, host kernel)", t_pub, pub_iters,
            quality(model, vae, pub, latent, image), base, embedding_gap(pub, ref))
        for label_v, mode in variants:
            t_pk, inv = timed(lambda: run_pack(model, latent, src, empty, sigmas, args.cfg, args.inner, prompt, mode))
            q_pk = quality(model, vae, inv, latent, image)
            row(name, label_v, t_pk, sum(len(x) for x in inv.losses), q_pk, base, embedding_gap(inv, ref))
        t_d, d = timed(lambda: run_direct(model, latent, src, empty, sigmas, args.cfg, prompt))
        row(name, "Direct Inversion (method direct: no optimisation; the source row is exact when editing)", t_d, 0,
            quality(model, vae, d, latent, image), base)
        batch.append((name, image, prompt, src, latent, t_ref, q_ref, ref, inv))
        t_total += t_ref
        t_pack += t_pk
        t_direct += t_d
        worst = max(worst, q_pk[0] / q_ref[0])
    one_by_one = t_total / t_pack
    if len(batch) > 1:
        # the inputs as one batch (inversion.core.invert_batch, node Invert Images (Batch))
        t_b, invs = timed(lambda: run_pack_batch(model, batch, empty, sigmas, args.cfg, args.inner))
        print(f"| all {len(batch)} inputs | pack, fast mode, the inputs as one batch (Invert Images (Batch)) | "
              f"{t_b:.2f} | | | | {t_total / t_b:.2f}x the baseline on each in turn |")
        for (name, image, prompt, src, latent, t_ref, q_ref, ref, alone), inv in zip(batch, invs):
            q_b = quality(model, vae, inv, latent, image)
            n_b, n_alone = sum(len(x) for x in inv.losses), sum(len(x) for x in alone.losses)
            print(f"| {name} | pack, fast mode, in the batch | | {n_b} | {q_b[0]:.5f} | {q_b[1]:.2f} | error "
                  f"x{q_b[0] / q_ref[0]:.3f}; against the same photo alone: Adam steps {n_b - n_alone:+d}, embeddings "
                  f"up to {embedding_gap(inv, alone):.3f} apart |")
        print(f"\none image at a time: {one_by_one:.2f}x the reference at its best (fast mode); the {len(batch)} "
              f"inputs as one batch: {t_total / t_b:.2f}x; Direct Inversion: {t_total / t_direct:.1f}x")
    print(f"\nspeedup {one_by_one:.2f}x (vs the reference at its best), error ratio {worst:.3f}")
    return 0


def sdxl_pooled(args) -> int:
    """The --sdxl-pooled table (see the module docstring)."""
    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.comfy_bridge import text
    from attention_edit.comfy_bridge.models import CONFIGS, build_unet
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule
    from attention_edit.comfy_bridge.training import encode_image

    model, clip, vae = build_unet(CONFIGS["tiny_sdxl"], seed=0)
    size = CONFIGS["tiny_sdxl"].image_size
    sigmas = replay_schedule(model, "p2p_ddim", args.steps)
    empty = text.encode(clip, "")
    print(f"\n### SDXL null-text inversion: the pooled vector optimised or kept (tiny SDXL, random weights), "
          f"{args.steps} steps, cfg {args.cfg}, up to {args.inner} inner steps\n")
    print("| input | optimised | time s | Adam steps | latent MSE | PSNR dB |\n|---|---|---|---|---|---|")
    ratios = []
    for name, image, prompt in inputs(False, size):
        src = text.encode(clip, prompt)
        latent = encode_image(vae, image[..., :3])
        got = {}
        for pooled in (False, True):
            t0 = time.perf_counter()
            inv = invert(model, latent, src, empty, sigmas, method="null_text", guidance_scale=args.cfg,
                         num_inner_steps=args.inner, source_prompt=prompt, optimise_pooled=pooled)
            t = time.perf_counter() - t0
            q = quality(model, vae, inv, latent, image)
            got[pooled] = q
            what = "sequence + pooled vector" if pooled else "sequence only"
            print(f"| {name} | {what} | {t:.2f} | {sum(len(x) for x in inv.losses)} | {q[0]:.5f} | {q[1]:.2f} |")
            sys.stdout.flush()
        ratios.append(got[True][0] / got[False][0])
    print(f"\nlatent MSE, pooled optimised / sequence only: {', '.join(f'{r:.3f}' for r in ratios)} "
          f"(mean {sum(ratios) / len(ratios):.3f})")
    return 0


def run_pack_batch(model, batch, empty, sigmas, scale, inner):
    from attention_edit.comfy_bridge.sampling import invert_batch

    latent = torch.cat([b[4] for b in batch])
    return invert_batch(model, latent, [b[3] for b in batch], empty, sigmas, method="null_text",
                        guidance_scale=scale, num_inner_steps=inner, source_prompts=[b[2] for b in batch])


def run_direct(model, latent, src, empty, sigmas, scale, prompt):
    from attention_edit.comfy_bridge.sampling import invert

    return invert(model, latent, src, empty, sigmas, method="direct", guidance_scale=scale, source_prompt=prompt)


def run_pack(model, latent, src, empty, sigmas, scale, inner, prompt, null_text_mode="fast"):
    from attention_edit.comfy_bridge.sampling import invert

    return invert(model, latent, src, empty, sigmas, method="null_text", guidance_scale=scale,
                  num_inner_steps=inner, source_prompt=prompt, null_text_mode=null_text_mode)


if __name__ == "__main__":
    sys.exit(main())
