"""Rectified-flow inversion (Flux) and the cost of Prompt-to-Prompt on joint attention.

Part 1 (default): reconstruction error against steps, per method (inversion/flow.py: rf_euler, RF-Solver's
second-order step, FireFlow's midpoint reuse), on a Flux-architecture model built from ComfyUI's own classes: the
tiny random one (``--model tiny``), or the ToyWorld MM-DiT when its weights exist (``--model toyworld``; trained by
toyworld/train_mmdit.py). Per (method, steps): model evaluations, time, the latent MSE and pixel PSNR of the
reconstruction (invert, then replay without edit), on a ToyWorld render and a scikit-image photo; and, for the best
method, the effect of Flux's guidance embedding (invert and replay at the same guidance: what replaces null-text
optimisation on a model without CFG).

Part 2 (``--full-size``): time and peak memory per step of a P2P word swap (2 prompts, every block controlled)
against ComfyUI's own sampling of the same 2 prompts as a batch, on a random-weight Flux.1-width block stack
(hidden 3072, 24 heads, T5 width 4096, 256 text tokens) at 1024x1024 (4096 image tokens). ``--double`` /
``--single`` set the block counts (Flux.1: 19 / 38, about 12 B parameters: a GPU; the CPU default 1 / 1 gives the
per-block cost).

    python bench/bench_flow_inversion.py                         # tiny Flux, CPU
    python bench/bench_flow_inversion.py --model toyworld        # the ToyWorld MM-DiT
    python bench/bench_flow_inversion.py --full-size --steps 2   # 1 + 1 Flux.1-width blocks at 1024x1024 (slow on CPU)
    python bench/bench_flow_inversion.py --full-size --steps 2 --size 256   # the code path, quickly, on a CPU
    python bench/bench_flow_inversion.py --full-size --double 19 --single 38 --steps 28   # a GPU
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _inputs(size: int):
    from attention_edit.headless.photos import photo
    from attention_edit.toyworld import scenes

    sc = scenes.render_spec(scenes.spec_from_caption("a red circle on the left"), seed=0)
    render = torch.nn.functional.interpolate(torch.from_numpy(sc.image).float()[None].permute(0, 3, 1, 2) / 255.0,
                                             size=(size, size), mode="bilinear").permute(0, 2, 3, 1)
    return [("ToyWorld render", render, sc.caption), ("photo (scikit-image cat)", photo("cat", size), "a photo of a cat")]


def _model(name: str):
    from attention_edit.comfy_bridge.flux_models import build_flux

    if name == "toyworld":
        from attention_edit.toyworld.shipped import TOYWORLD_MMDIT_WEIGHTS as WEIGHTS, load_toyworld_mmdit

        if not os.path.exists(WEIGHTS):
            raise SystemExit(f"no ToyWorld MM-DiT weights at {WEIGHTS}; train them (toyworld/train_mmdit.py) or use "
                             "--model tiny")
        return load_toyworld_mmdit(WEIGHTS), "ToyWorld MM-DiT"
    return build_flux("tiny_flux", seed=0), "tiny Flux.1 (random weights)"


def reconstruction(args) -> int:
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.comfy_bridge.sampling import edit, invert, replay_schedule
    from attention_edit.inversion.flow import evaluations

    (m, clip, vae), label = _model(args.model)
    size = 64
    print(f"\n### Rectified-flow inversion: {label}, reconstruction (invert, replay without edit), "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| input | method | steps | model evaluations | time s | latent MSE | PSNR dB |\n|---|---|---|---|---|---|---|")
    best = {}
    for name, image, prompt in _inputs(size):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        with torch.no_grad():
            latent = vae.encode(image[..., :3])
        for method in ("rf_euler", "rf_solver", "fireflow"):
            for steps in args.steps_list:
                sig = replay_schedule(m, "simple", steps)
                t0 = time.perf_counter()
                inv = invert(m, latent, cond, cond, sig, method=method, source_prompt=prompt)
                rec = edit(m, inv, [])
                t = time.perf_counter() - t0
                with torch.no_grad():
                    pix = vae.decode(rec).clamp(0, 1)
                mse = float((rec - latent).pow(2).mean())
                psnr = -10 * math.log10(max(float((pix[0] - image[0, ..., :3]).pow(2).mean()), 1e-12))
                nfe = 2 * evaluations(method, steps)
                print(f"| {name} | {method} | {steps} | {nfe} | {t:.2f} | {mse:.3e} | {psnr:.2f} |")
                sys.stdout.flush()
                best[(name, method, steps)] = mse
    # guidance: what replaces null-text optimisation on a model without CFG
    if getattr(m.model.diffusion_model.params, "guidance_embed", False):
        print("\n| input | method | steps | guidance (inversion = replay) | latent MSE |\n|---|---|---|---|---|")
        from attention_edit.comfy_bridge.text import with_guidance

        for name, image, prompt in _inputs(size):
            with torch.no_grad():
                latent = vae.encode(image[..., :3])
            for g in (1.0, 3.5, 7.0):
                cond = with_guidance(clip.encode_from_tokens_scheduled(clip.tokenize(prompt)), g)
                steps = args.steps_list[len(args.steps_list) // 2]
                inv = invert(m, latent, cond, cond, replay_schedule(m, "simple", steps), method="rf_solver",
                             source_prompt=prompt)
                mse = float((edit(m, inv, []) - latent).pow(2).mean())
                print(f"| {name} | rf_solver | {steps} | {g} | {mse:.3e} |")
    return 0


def full_size(args) -> int:
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge.flux_models import FluxConfig, build_flux_model as flux_model
    from attention_edit.comfy_bridge.text import flux_tokenizer
    from attention_edit.comfy_bridge.sampling import core_sample, edit, replay_schedule
    from attention_edit.inversion.core import Inversion

    cfg = FluxConfig(name="flux1_width", hidden_size=3072, num_heads=24, depth=args.double,
                     depth_single_blocks=args.single, axes_dim=[16, 56, 56], clip_width=768, t5_width=4096)
    t0 = time.perf_counter()
    m = flux_model(cfg, 0)
    n = sum(p.numel() for p in m.model.diffusion_model.parameters())
    print(f"\n### P2P on joint attention, Flux.1 width ({args.double} double + {args.single} single blocks, "
          f"{n / 1e9:.2f} B parameters, built in {time.perf_counter() - t0:.0f} s), {args.size}x{args.size}, "
          f"{args.steps} steps, "
          f"device {host.torch_device()}\n")
    g = torch.Generator().manual_seed(0)
    src, tgt = "a photo of a cat", "a photo of a dog"
    conds = [[[torch.randn(1, 256, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g)}]]
             for _ in range(2)]
    latent = torch.randn(1, 16, args.size // 8, args.size // 8, generator=g)
    sig = replay_schedule(m, "simple", args.steps)
    inv = Inversion(x_T=latent, sigmas=sig, source_prompt=src, source_cond=conds[0], uncond=[], guidance_scale=1.0,
                    method="rf_euler", latent=latent, family="flux", prediction="flow")
    tok = flux_tokenizer()
    ctrl = build_controller(tok, src, EditSpec(target_prompts=(tgt,), self_replace_steps=0.4), args.steps)
    both = [[torch.cat([conds[0][0][0], conds[1][0][0]]), {"pooled_output": torch.cat(
        [conds[0][0][1]["pooled_output"], conds[1][0][1]["pooled_output"]])}]]

    def measure(fn):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        from bench_foundation import RssPeak

        with RssPeak() as rss:
            t = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter() - t
        peak = torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else rss.growth_gb
        return t / args.steps, peak

    plain = measure(lambda: core_sample(m, both, both, latent.repeat(2, 1, 1, 1), args.steps, 1.0,
                                        sampler="euler", scheduler="simple"))
    p2p = measure(lambda: edit(m, inv, [conds[1]], ctrl))
    where = "GPU max allocated" if torch.cuda.is_available() else "CPU RSS growth"
    print("| run | s / step | peak GB (" + where + ") |\n|---|---|---|")
    print(f"| core sampling, 2 prompts as a batch | {plain[0]:.2f} | {plain[1]:.2f} |")
    print(f"| P2P word swap (every block controlled) | {p2p[0]:.2f} | {p2p[1]:.2f} |")
    print(f"\nP2P / plain time per step: {p2p[0] / plain[0]:.2f}x")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=("tiny", "toyworld"), default="tiny")
    ap.add_argument("--steps-list", type=lambda s: [int(x) for x in s.split(",")], default=[4, 8, 16, 28, 50],
                    help="step counts of the reconstruction table (default 4,8,16,28,50)")
    ap.add_argument("--full-size", action="store_true", help="Flux.1-width block stack at 1024x1024")
    ap.add_argument("--double", type=int, default=1)
    ap.add_argument("--single", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2, help="--full-size: sampling steps")
    ap.add_argument("--size", type=int, default=1024, help="--full-size: image side in pixels (default 1024)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return full_size(args) if args.full_size else reconstruction(args)


if __name__ == "__main__":
    sys.exit(main())
