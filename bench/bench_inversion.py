"""Null-text inversion: the pack's loop against the textbook loop, on the same weights, photo and steps.

The textbook loop (Mokady et al. 2022, Algorithm 1, as the public notebook null_text_w_ptp.ipynb runs it) is written
here, against the same model access as the pack (ComfyUI's sampler, the same attention kernel): per step one
conditional pass without gradient, then up to ``num_inner_steps`` Adam steps on the null embedding, each a forward
and backward of the unconditional pass, stopping early when the loss falls under epsilon + 1e-3 * i / N (the
notebook's epsilon + 2e-5 i at N = 50), then one more CFG pass (unconditional and conditional as a batch) with the
optimised embedding to advance the latent. Like the notebook, the UNet's weights require grad, so every backward
also computes (and accumulates) their gradients.

Both start from the same DDIM inversion (inversion.core.ddim_inversion_loop). Printed per input (a ToyWorld render
and scikit-image's cat photo; --full-size: the cat at 512x512 on a random-weight SD1.5-layout UNet): wall time,
inner iterations (the fastest of --repeats runs), the reconstruction's latent MSE (replayed at the same CFG scale) and pixel PSNR,
and the ratios. The last line reads ``speedup <x>x, error ratio <y>``: textbook time / pack time summed over the
inputs, and the largest pack latent MSE / textbook latent MSE over the inputs (<= 1: equal or lower error on every
input).

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


def run_textbook(model, latent, src, empty, sigmas, scale, inner):
    """DDIM inversion + the textbook loop in ComfyUI's sampler, the UNet's weights requiring grad as in the
    notebook. Returns (Inversion, inner iterations, UNet passes)."""
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
            params = list(den.guider.model_patcher.model.diffusion_model.parameters())
            for p in params:
                p.requires_grad_(True)
            try:
                traj = [t.clone() for t in traj]
                out["nulls"], out["iters"], out["passes"] = textbook_null_text(
                    den, traj, s, ce.clone(), ee.clone(), scale, inner)
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
    print("| input | loop | time s | inner iterations (Adam steps) | latent MSE | PSNR dB | vs textbook |\n"
          "|---|---|---|---|---|---|---|")

    def row(name, loop, t, iters, q, ref=None):
        rel = "" if ref is None else f"{ref[0] / t:.2f}x faster, error x{q[0] / ref[1]:.3f}"
        print(f"| {name} | {loop} | {t:.2f} | {iters} | {q[0]:.5f} | {q[1]:.2f} | {rel} |")
        sys.stdout.flush()

    # the pack's two modes, each one lever more than the last (inversion/core.py null_text_loop)
    variants = [("pack, reference mode (no weight gradients)", "reference"),
                ("pack, fast mode, the default (+ fused attention)", "fast")]
    batch = []
    for name, image, prompt in inputs(args.full_size, size):
        src = text.encode(clip, prompt)
        latent = encode_image(vae, image[..., :3])
        t_tb = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tb, tb_iters, _ = run_textbook(model, latent, src, empty, sigmas, args.cfg, args.inner)
            t_tb = min(t_tb, time.perf_counter() - t0)
        q_tb = quality(model, vae, tb, latent, image)
        row(name, "textbook", t_tb, tb_iters, q_tb)
        for label_v, mode in variants:
            t_pk = math.inf
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                inv = run_pack(model, latent, src, empty, sigmas, args.cfg, args.inner, prompt, mode)
                t_pk = min(t_pk, time.perf_counter() - t0)
            q_pk = quality(model, vae, inv, latent, image)
            row(name, label_v, t_pk, sum(len(x) for x in inv.losses), q_pk, (t_tb, q_tb[0]))
        batch.append((name, image, prompt, src, latent, t_tb, q_tb))
        t_total += t_tb
        t_pack += t_pk
        worst = max(worst, q_pk[0] / q_tb[0])
    one_by_one = t_total / t_pack
    if len(batch) > 1:
        # the inputs as one batch (the third lever: inversion.core.invert_batch, node Invert Images (Batch))
        t_b = math.inf
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            invs = run_pack_batch(model, batch, empty, sigmas, args.cfg, args.inner)
            t_b = min(t_b, time.perf_counter() - t0)
        worst = 0.0
        print(f"| all {len(batch)} inputs | pack, fast mode, the inputs as one batch (+ batching) | {t_b:.2f} | | | "
              f"| {t_total / t_b:.2f}x faster than the textbook loop on each in turn |")
        for (name, image, prompt, src, latent, t_tb, q_tb), inv in zip(batch, invs):
            q_b = quality(model, vae, inv, latent, image)
            print(f"| {name} | pack, fast mode, in the batch | | {sum(len(x) for x in inv.losses)} | {q_b[0]:.5f} | "
                  f"{q_b[1]:.2f} | error x{q_b[0] / q_tb[0]:.3f} |")
            worst = max(worst, q_b[0] / q_tb[0])
        t_pack = t_b
        print(f"\none image at a time: speedup {one_by_one:.2f}x (textbook / fast mode); the {len(batch)} inputs "
              f"as one batch: {t_total / t_b:.2f}x")
    print(f"\nspeedup {t_total / t_pack:.2f}x, error ratio {worst:.3f}")
    return 0


def sdxl_pooled(args) -> int:
    """The --sdxl-pooled table (see the module docstring)."""
    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.comfy_bridge import text
    from attention_edit.comfy_bridge.models import CONFIGS, build_sd1x
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule
    from attention_edit.comfy_bridge.training import encode_image

    model, clip, vae = build_sd1x(CONFIGS["tiny_sdxl"], seed=0)
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


def run_pack(model, latent, src, empty, sigmas, scale, inner, prompt, null_text_mode="fast"):
    from attention_edit.comfy_bridge.sampling import invert

    return invert(model, latent, src, empty, sigmas, method="null_text", guidance_scale=scale,
                  num_inner_steps=inner, source_prompt=prompt, null_text_mode=null_text_mode)


if __name__ == "__main__":
    sys.exit(main())
