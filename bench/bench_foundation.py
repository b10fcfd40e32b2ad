"""Foundation benchmark: inversion quality and cost, P2P overhead, null-text memory.

Prints a markdown table. Figures (issue "Edit a real photo by editing its prompt"):
  * reconstruction error at cfg 7.5 of a real photo (skimage chelsea): DDIM inversion vs negative-prompt vs
    null-text inversion, and the ratio DDIM / null-text;
  * time of null-text inversion per image and its ratio to DDIM inversion;
  * time of one P2P edit (source + edited prompt, controller installed) relative to ComfyUI's own sampler on
    the same two prompts as a batch (target <= 1.3x);
  * peak memory of null-text inversion (GPU: torch.cuda.max_memory_allocated; CPU: growth of the process's
    peak RSS over the loaded model) — with --full-size, on a random-weight full SD1.5 UNet at 512x512.

Usage:
    python bench/bench_foundation.py                      # tiny model (ToyWorld if shipped), CPU-friendly
    python bench/bench_foundation.py --full-size --steps 50   # SD1.5-size random UNet, 512x512 (use a GPU)
    python bench/bench_foundation.py --full-size --steps 2 --inner 2   # quick CPU memory estimate
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time

import torch


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssPeak:
    """Samples the process RSS every 20 ms while active; .growth_gb = peak - RSS at entry (CPU memory figure)."""

    def __enter__(self):
        import threading

        self.base = _rss_mb()
        self.peak = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, _rss_mb())

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_mb())
        self.growth_gb = (self.peak - self.base) / 1024.0


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(full_size: bool):
    """(model, clip, vae, image_size, label)."""
    from attention_edit.comfy_bridge import models as sd1x

    if full_size:
        cfg = sd1x.SD1xConfig(name="sd15_random_unet", image_size=512, model_channels=320,
                              channel_mult=[1, 2, 4, 4], num_res_blocks=2,
                              attention_levels=[True, True, True, False], num_heads=8,
                              clip_width=768, clip_layers=2, clip_heads=12, clip_intermediate=3072,
                              vae_ch=32, vae_ch_mult=[1, 2, 4, 4], vae_res_blocks=1)
        m, clip, vae = sd1x.build_sd1x(cfg, seed=0)
        return m, clip, vae, 512, "SD1.5-size UNet (random weights), 512x512"
    weights = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toyworld", "weights",
                           "toyworld.safetensors")
    if os.path.exists(weights):
        m, clip, vae = sd1x.load_weights(weights)
        return m, clip, vae, 64, "ToyWorld (trained), 64x64"
    m, clip, vae = sd1x.build_sd1x(sd1x.TINY_TEST, seed=0)
    return m, clip, vae, 64, "tiny test model (random weights), 64x64"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full-size", action="store_true", help="random-weight SD1.5-size UNet at 512x512")
    ap.add_argument("--steps", type=int, default=None, help="inversion steps (default 50 tiny / 50 full)")
    ap.add_argument("--inner", type=int, default=10, help="null-text inner steps (reference 10)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--memory-only", action="store_true",
                    help="only null-text inversion (its time and peak memory), e.g. --full-size --steps 1 --inner 1")
    args = ap.parse_args(argv)

    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge import text
    from attention_edit.comfy_bridge.sampling import core_sample, edit, invert, replay_schedule
    from attention_edit.comfy_bridge.training import load_for_sampling
    from attention_edit.headless.photos import photo

    device = host.torch_device()
    m, clip, vae, size, label = build(args.full_size)
    steps = args.steps or 50
    enc = lambda p: text.encode(clip, p)  # noqa: E731
    src_p, tgt_p = "a photo of a cat", "a photo of a dog"
    src, empty, tgt = enc(src_p), enc(""), enc(tgt_p)
    img = photo("cat", size)
    with torch.no_grad():
        latent = vae.encode(img[..., :3]).detach().cpu() if not args.full_size else \
            torch.randn((1, 4, size // 8, size // 8), generator=torch.Generator().manual_seed(0)) * 0.8
    sig = replay_schedule(m, "p2p_ddim", steps)
    rows = []

    def timed(fn):
        ts = []
        out = None
        for _ in range(args.repeats):
            _sync()
            t = time.perf_counter()
            out = fn()
            _sync()
            ts.append(time.perf_counter() - t)
        return out, sorted(ts)[len(ts) // 2]

    # --- inversion cost (and quality on a real photo)
    invs, times = {}, {}
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        load_for_sampling(m)
        base_gpu = torch.cuda.memory_allocated()
    for method in (("null_text",) if args.memory_only else ("ddim", "negative_prompt", "null_text")):
        reps = 1 if (method == "null_text" and args.full_size) else args.repeats
        old = args.repeats
        args.repeats = reps
        with RssPeak() as rss:
            invs[method], times[method] = timed(lambda: invert(m, latent, src, empty, sig, method=method,
                                                               guidance_scale=7.5, num_inner_steps=args.inner,
                                                               source_prompt=src_p))
        args.repeats = old
        if method == "null_text":
            if torch.cuda.is_available():
                peak = (torch.cuda.max_memory_allocated() - base_gpu) / 2 ** 30
                mem = f"{peak:.2f} GiB GPU above the loaded model ({torch.cuda.max_memory_allocated() / 2**30:.2f} total)"
            else:
                mem = (f"{rss.growth_gb:.2f} GiB CPU (peak RSS during the inversion minus RSS before it; "
                       f"process peak {rss.peak / 1024:.2f} GiB)")
    inner_total = sum(len(x) for x in invs["null_text"].losses)
    if not args.memory_only:
        rows.append(("DDIM inversion time", f"{times['ddim']:.3f} s"))
        rows.append(("negative-prompt inversion time", f"{times['negative_prompt']:.3f} s"))
    rows.append(("null-text inversion time", f"{times['null_text']:.3f} s ({inner_total} inner steps)"))
    if not args.memory_only:
        rows.append(("null-text / DDIM inversion time", f"{times['null_text'] / times['ddim']:.1f}x"))
    rows.append(("null-text peak memory", mem))
    if args.memory_only:
        return _print(rows, label, steps, device)

    if not args.skip_quality and not args.full_size:
        errs = {}
        for method, inv in invs.items():
            with torch.no_grad():
                rec = edit(m, inv, [])
                pix = vae.decode(rec).clamp(0, 1)
            lat_mse = (rec[0] - latent[0]).pow(2).mean().item()
            psnr = -10 * math.log10(max((pix[0] - img[0, ..., :3]).pow(2).mean().item(), 1e-12))
            errs[method] = lat_mse
            rows.append((f"reconstruction {method}", f"latent MSE {lat_mse:.4g}, PSNR {psnr:.2f} dB"))
        rows.append(("reconstruction error ratio DDIM / null-text", f"{errs['ddim'] / max(errs['null_text'], 1e-12):.2f}x"))

    # --- P2P edit vs plain batched sampling of the same two prompts
    inv = invs["ddim"]
    spec = EditSpec(target_prompts=(tgt_p,), cross_replace_steps=0.8, self_replace_steps=0.4)

    def p2p():
        ctrl = build_controller(clip.tokenizer, src_p, spec, steps)
        return edit(m, inv, [tgt], ctrl)

    pos = [[torch.cat([src[0][0], tgt[0][0]]), dict(src[0][1])]]
    pos[0][1].pop("pooled_output", None)

    def plain():
        x = inv.x_T.repeat(2, 1, 1, 1)
        return core_sample(m, pos, empty, x, steps, 7.5, "euler", seed=0, noise=torch.zeros_like(x), sigmas=sig.clone())

    plain()  # warm-up
    _, t_plain = timed(plain)
    _, t_p2p = timed(p2p)
    rows.append(("plain sampling, 2 prompts as a batch", f"{t_plain:.3f} s"))
    rows.append(("P2P edit (source + edit, controller on)", f"{t_p2p:.3f} s"))
    rows.append(("P2P / plain", f"{t_p2p / t_plain:.2f}x (target <= 1.3x)"))

    return _print(rows, label, steps, device)


def _print(rows, label, steps, device) -> int:
    print(f"\n### Foundation benchmark: {label}, {steps} steps, cfg 7.5, device {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| figure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
