"""The figures behind two defaults: the inversion schedule's last level and the maps local blend reads.

1. Schedule ("schedule"): the pack's ``p2p_ddim`` (the reference's DDIM timesteps 980 ... 0, then a last step to
   sigma 0: a full denoise) against ``p2p_ddim_reference`` (the same timesteps, the last step going to
   alphas_cumprod[0], the model's smallest sigma, as google/prompt-to-prompt's notebook does). For each input
   (four ToyWorld renders and four scikit-image photos at 64x64 on the ToyWorld model; with --full-size the cat at
   512x512 on the random SD1.5-layout UNet as well) and each inversion method: the replayed reconstruction's
   latent MSE and pixel PSNR against the input. Then the ToyWorld colour-swap benchmark on both schedules.
2. Local blend ("local_blend"): the edited row's mask from its own attention maps (``maps='own'``) or from the maps
   after the source's are injected (``maps='injected'``, the reference's AttentionStore). ToyWorld colour swap with
   local blend, both ways: success (the judge reads the new colour), structure IoU with the source object,
   background PSNR outside both objects, and the largest latent difference between the two edits.

    python bench/bench_defaults.py             # both, ToyWorld: reconstructions at 50 steps, swaps at 20 (24 seeds)
    python bench/bench_defaults.py local_blend --seeds 12
    python bench/bench_defaults.py schedule --full-size --only-full-size --steps 5 --inner 3   # 512x512, CPU
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RENDERS = ["a red circle on the left", "a big blue square on the right", "a small green triangle at the top",
           "a yellow circle in the centre"]
PHOTOS = [("cat", "a photo of a cat"), ("astronaut", "a photo of an astronaut"),
          ("coffee", "a photo of a cup of coffee"), ("rocket", "a photo of a rocket")]
SCHEDULES = ("p2p_ddim", "p2p_ddim_reference")


def _mean(xs):
    return sum(xs) / max(len(xs), 1)


def _swap_table(tm, st, seeds, label):
    from attention_edit.bench import editbench as eb

    rows = {"p2p": [], "p2p_blend": []}
    for seed in range(seeds):
        r = eb.swap_case(tm, seed, st, "colour")
        for k in rows:
            rows[k].append(r[k])
    for k, v in rows.items():
        print(f"  {label:28s} {k:10s} success {_mean([x['success'] for x in v]):.2f}  IoU "
              f"{_mean([x['iou'] for x in v]):.3f}  background PSNR {_mean([x['bg_psnr'] for x in v]):.2f} dB",
              flush=True)
    return rows


def schedule(args):
    from attention_edit.bench import editbench as eb
    from attention_edit.comfy_bridge import text
    from attention_edit.comfy_bridge.sampling import invert, replay_schedule
    from attention_edit.comfy_bridge.training import encode_image
    from attention_edit.headless.photos import photo
    from attention_edit.toyworld import scenes
    from bench_foundation import build
    from bench_inversion import quality

    models = ([] if args.only_full_size else [build(False)]) + ([build(True)] if args.full_size else [])
    for model, clip, vae, size, label in models:
        print(f"\n== schedule: {label}, {args.steps} steps, null-text inner {args.inner} ==", flush=True)
        empty = text.encode(clip, "")
        cases = []
        if size == 64:
            for i, c in enumerate(RENDERS):
                sc = scenes.render_spec(scenes.spec_from_caption(c), seed=i)
                cases.append(("render", torch.from_numpy(sc.image).float()[None] / 255.0, c))
            cases += [("photo", photo(n, 64), p) for n, p in PHOTOS]
        else:
            cases = [("photo", photo("cat", size), "a photo of a cat")]
        for sched in SCHEDULES:
            sig = replay_schedule(model, sched, args.steps)
            for method in ("null_text", "negative_prompt", "ddim"):
                got = {}
                for kind, img, prompt in cases:
                    lat = encode_image(vae, img[..., :3])
                    inv = invert(model, lat, text.encode(clip, prompt), empty, sig, method=method,
                                 num_inner_steps=args.inner, source_prompt=prompt)
                    got.setdefault(kind, []).append(quality(model, vae, inv, lat, img))
                line = "  ".join(f"{k}s ({len(v)}) latent MSE {_mean([q[0] for q in v]):.4f} PSNR "
                                 f"{_mean([q[1] for q in v]):.2f} dB" for k, v in got.items())
                print(f"  {sched:20s} {method:16s} {line}", flush=True)
    if args.only_full_size:
        return
    print(f"\n== schedule: ToyWorld colour swap, {args.seeds} seeds, {args.swap_steps} steps ==", flush=True)
    tm = eb.load_model()
    for sched in SCHEDULES:
        _swap_table(tm, eb.Settings(steps=args.swap_steps, scheduler=sched), args.seeds, sched)


def local_blend(args):
    from attention_edit.bench import editbench as eb

    tm = eb.load_model()
    print(f"\n== local blend maps: ToyWorld colour swap, {args.seeds} seeds, {args.swap_steps} steps ==", flush=True)
    got = {}
    for maps in ("own", "injected"):
        st = eb.Settings(steps=args.swap_steps, blend_maps=maps)
        got[maps] = _swap_table(tm, st, args.seeds, f"maps={maps}")["p2p_blend"]
    won = sum(a["success"] and not b["success"] for a, b in zip(got["own"], got["injected"]))
    lost = sum(b["success"] and not a["success"] for a, b in zip(got["own"], got["injected"]))
    print(f"  seeds where only 'own' succeeds: {won}, only 'injected': {lost}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", nargs="?", default="both", choices=["both", "schedule", "local_blend"])
    ap.add_argument("--steps", type=int, default=50, help="reconstruction steps (default 50, the reference's)")
    ap.add_argument("--swap-steps", type=int, default=20,
                    help="colour-swap steps (default 20, the ToyWorld benchmark's)")
    ap.add_argument("--inner", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=24, help="ToyWorld colour-swap scenes (default 24)")
    ap.add_argument("--full-size", action="store_true", help="also the SD1.5-layout UNet at 512x512 (schedule)")
    ap.add_argument("--only-full-size", action="store_true", help="with --full-size: only the SD1.5-layout UNet")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from attention_edit.headless import host

    host.init_comfy(threads=args.threads)
    t0 = time.time()
    if args.what in ("both", "local_blend"):
        local_blend(args)
    if args.what in ("both", "schedule"):
        schedule(args)
    print(f"\ndone in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
