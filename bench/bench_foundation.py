"""Foundation benchmark: inversion quality and cost, P2P overhead, null-text memory.

Prints a markdown table. Figures (issue "Edit a real photo by editing its prompt"):
  * reconstruction error at cfg 7.5 of a real photo (skimage chelsea): DDIM inversion vs negative-prompt vs
    null-text inversion, and the ratio DDIM / null-text;
  * time of null-text inversion per image and per step (s), and its ratio to DDIM inversion;
  * time of one P2P edit (source + edited prompt, controller installed) and per step (s), relative to ComfyUI's own
    sampler (``core_sample``) on the same two prompts as a batch (target <= 1.3x; SDXL at full size <= 1.15x); the
    two alternate, median of --repeats each; on the CPU also the ratio of process CPU time (all threads), which
    another process on the same cores inflates less than wall time;
  * peak memory of null-text inversion, of the P2P edit and of the plain batched sampling, above the loaded model
    (GPU: torch.cuda.max_memory_allocated; CPU: growth of the process's peak RSS, sampled every 20 ms, over the RSS
    before the call; ComfyUI's CPU attention kernel sizes its chunks from the free memory, so CPU figures vary with
    what else runs) — with --full-size, on a random-weight full SD1.5 UNet at 512x512 (latent 64x64) or, with
    --family sdxl, a random-weight SDXL UNet at 1024x1024 (latent 128x128; 2.57 G parameters, 64-channel heads).

--family sdxl without --full-size: the tiny SDXL test model (``CONFIGS["tiny_sdxl"]``, 128x128 images, latent
16x16). At SDXL size the controller edits self-attention only on the 32x32 maps (at least 4x smaller than the
latent, the default); the 64x64 level's self-attention (4096 x 4096 per head) goes to ComfyUI's kernel. Few steps
change the mix: self-attention injection runs for int(0.4 * steps) steps, none at 2 steps.

--dtype: the weights' dtype, and the UNet then computes in it (:func:`compute_in`); ComfyUI alone would compute
bf16 weights in fp32 on a CPU. The full-size SDXL on a 2-core CPU: fp32 takes ~110 s per UNet pass at batch 1 (too
slow), bf16 (AMX) ~9 s; the fp32 weights are 10.3 GB, bf16 5.1 GB.

Usage:
    python bench/bench_foundation.py                      # tiny model (ToyWorld if shipped), CPU-friendly
    python bench/bench_foundation.py --full-size --steps 50   # SD1.5-size random UNet, 512x512 (use a GPU)
    python bench/bench_foundation.py --full-size --steps 2 --inner 2   # quick CPU memory estimate
    python bench/bench_foundation.py --family sdxl        # tiny SDXL test model, 128x128, CPU-friendly
    python bench/bench_foundation.py --family sdxl --full-size --steps 50   # SDXL-size random UNet, 1024x1024 (GPU)
    python bench/bench_foundation.py --family sdxl --full-size --dtype bf16 --steps 2 --inner 1 --repeats 1
        # the same on a 2-core CPU: ~6.5 min on an idle machine (peak RSS 13.6 GiB)
    python bench/bench_foundation.py --family sdxl --full-size --dtype bf16 --steps 5 --repeats 1 --edit-only
        # only P2P vs plain (self-attention injection in 2 of the 5 steps): 17 min with the other core busy
        # (--steps 3, OMP_NUM_THREADS=1: 10 min)
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


def _log(what: str, t0: float) -> None:
    """Progress on stderr (full-size runs take minutes per figure on a CPU): what, seconds since t0."""
    print(f"[bench_foundation] {what} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


#: --dtype names -> torch dtypes (None: comfy.model_management's choice, fp32 on the CPU)
DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sdxl_full_config(depth: int = 10):
    """SDXL's UNet layout (random weights) at 1024x1024 (latent 128x128): 320 channels x [1, 2, 4], 2 res blocks,
    transformer depth 0 / 2 / ``depth`` per level (SDXL: 10) and ``depth`` in the middle, context 2048 (CLIP-L 768
    + bigG 1280), ADM input 2816 (pooled bigG 1280 + 6 x 256 size / crop embeddings). The text encoders have the
    real widths and tokenizers but 3 layers each (what the UNet sees is their 2048-wide output; their depth does not
    change the cost of a sampling step); the VAE is a small one with the 8x downscale (the full-size runs take a
    random latent, no photo is encoded)."""
    from attention_edit.comfy_bridge import models as unet_models

    return unet_models.UNetConfig(name="sdxl_random_unet", family="sdxl", image_size=1024, model_channels=320,
                           channel_mult=[1, 2, 4], num_res_blocks=2, attention_levels=[False, True, True],
                           transformer_depth=[0, 2, depth], transformer_depth_middle=depth, num_heads=-1,
                           clip_width=768, clip_layers=3, clip_heads=12, clip_intermediate=3072,
                           clip_g_width=1280, clip_g_layers=3, clip_g_heads=20, clip_g_intermediate=5120,
                           clip_g_projection=1280, vae_ch=32, vae_ch_mult=[1, 2, 4, 4], vae_res_blocks=1)


def build_sdxl_full(dtype=None, depth: int = 10, seed: int = 0):
    """(model_patcher, clip, vae) of :func:`sdxl_full_config`, with SDXL's own attention heads: 64 channels each
    (10 heads at 640 channels, 20 at 1280), as ComfyUI's SDXL model config sets them (num_head_channels 64).

    ``build_unet`` gives every level one head count (``num_heads``), so the text encoders and VAE come from it
    with a small stand-in UNet (discarded), and the UNet is made here from ``comfy.supported_models.SDXL`` with
    its default head layout, seeded like ``build_unet``'s (``models.init_weights``). dtype: the UNet's weights
    (None: ``comfy.model_management.unet_dtype``'s choice, fp32 on the CPU; 2.57 G parameters = 10.3 GB fp32)."""
    import dataclasses

    from attention_edit.comfy_bridge import models as unet_models

    cfg = sdxl_full_config(depth)
    stand_in = dataclasses.replace(cfg, model_channels=32, transformer_depth=[0, 1, 1], transformer_depth_middle=1,
                                   num_heads=2)
    _, clip, vae = unet_models.build_unet(stand_in, seed=seed, dtype=dtype)
    m = unet_models.build_sdxl_unet(cfg, dtype=dtype, seed=seed)
    model = m.model
    for obj in (m, model, clip, vae):
        obj.toy_config = cfg
    return m, clip, vae


def compute_in(model_patcher, dtype) -> None:
    """Makes a UNet built with weights of ``dtype`` also compute in it. ComfyUI computes in float32 with such
    weights where it judges the device unfit for the dtype (``unet_manual_cast``: a CPU always, even one whose AMX
    units run bf16 matrix products about 8x faster than fp32; the weights are then cast op by op, and for a backward
    pass each cast copy is kept). An explicit --dtype asks for that dtype's arithmetic."""
    for obj in (model_patcher.model, model_patcher.model.model_config):
        obj.manual_cast_dtype = None


def build(full_size: bool, family: str = "sd1", dtype=None, sdxl_depth: int = 10):
    """(model, clip, vae, image_size, label). family "sd1" (the default) or "sdxl"; dtype: the weights' torch dtype
    (None: comfy.model_management's choice; given, the UNet also computes in it: :func:`compute_in`); sdxl_depth:
    SDXL's transformer depth at the 1/4 level and the middle (10, SDXL's; smaller only to fit a small machine, and
    the label says so)."""
    m, clip, vae, size, label = _build(full_size, family, dtype, sdxl_depth)
    if dtype is not None:
        compute_in(m, dtype)
    return m, clip, vae, size, label


def _build(full_size: bool, family: str, dtype, sdxl_depth: int):
    from attention_edit.comfy_bridge import models as unet_models

    if family == "sdxl":
        if full_size:
            m, clip, vae = build_sdxl_full(dtype, sdxl_depth)
            n = sum(p.numel() for p in m.model.diffusion_model.parameters())
            depth = "" if sdxl_depth == 10 else f", REDUCED transformer depth 0/2/{sdxl_depth} (SDXL: 0/2/10)"
            return m, clip, vae, 1024, (f"SDXL-size UNet (random weights, {n / 1e9:.2f} G parameters, "
                                        f"{m.model.get_dtype()}{depth}), 1024x1024 (latent 128x128)")
        m, clip, vae = unet_models.build_unet(unet_models.CONFIGS["tiny_sdxl"], seed=0, dtype=dtype)
        return m, clip, vae, 128, "tiny SDXL test model (random weights), 128x128 (latent 16x16)"
    if family != "sd1":
        raise ValueError(f"unknown family {family!r}: use 'sd1' or 'sdxl'")
    if full_size:
        cfg = unet_models.UNetConfig(name="sd15_random_unet", image_size=512, model_channels=320,
                              channel_mult=[1, 2, 4, 4], num_res_blocks=2,
                              attention_levels=[True, True, True, False], num_heads=8,
                              clip_width=768, clip_layers=2, clip_heads=12, clip_intermediate=3072,
                              vae_ch=32, vae_ch_mult=[1, 2, 4, 4], vae_res_blocks=1)
        m, clip, vae = unet_models.build_unet(cfg, seed=0, dtype=dtype)
        return m, clip, vae, 512, "SD1.5-size UNet (random weights), 512x512"
    weights = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "toyworld", "weights",
                           "toyworld.safetensors")
    if os.path.exists(weights):
        m, clip, vae = unet_models.load_weights(weights, dtype=dtype)
        return m, clip, vae, 64, "ToyWorld (trained), 64x64"
    m, clip, vae = unet_models.build_unet(unet_models.TINY_TEST, seed=0, dtype=dtype)
    return m, clip, vae, 64, "tiny test model (random weights), 64x64"


def _release() -> None:
    """Returns memory freed by an earlier figure before the next is measured: Python garbage, the device cache
    (comfy.model_management.soft_empty_cache) and, on glibc, the heap's free pages (malloc_trim), so the next call's
    RSS growth is not hidden in memory the allocator kept."""
    import gc

    from attention_edit.comfy_bridge.host import soft_empty_cache

    gc.collect()
    soft_empty_cache()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _device_memory(device):
    """torch's memory-statistics module of ``device`` (torch.cuda, torch.xpu, ...), None for the CPU or a device
    without peak statistics (then the process RSS is measured)."""
    mod = getattr(torch, getattr(device, "type", "cpu"), None) if getattr(device, "type", "cpu") != "cpu" else None
    if mod is None or not all(hasattr(mod, f) for f in ("max_memory_allocated", "memory_allocated",
                                                       "reset_peak_memory_stats", "synchronize")):
        return None
    return mod


class Peak:
    """Peak memory of a call, above what was allocated at entry (the loaded model stays out of the figure).

    Device with peak statistics (CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``):
    .above_gib = peak allocated - allocated at entry, .total_gib = peak allocated; otherwise (CPU) the process RSS
    sampled every 20 ms (:class:`RssPeak`): .above_gib = peak RSS - RSS at entry, .total_gib = peak RSS. GiB."""

    def __init__(self, device):
        self.device = device
        self.mod = _device_memory(device)

    def __enter__(self):
        _release()
        if self.mod is not None:
            self.mod.synchronize(self.device)
            self.base = self.mod.memory_allocated(self.device)
            self.mod.reset_peak_memory_stats(self.device)
        else:
            self._rss = RssPeak().__enter__()
        return self

    def __exit__(self, *exc):
        if self.mod is not None:
            self.mod.synchronize(self.device)
            peak = self.mod.max_memory_allocated(self.device)
            self.above_gib, self.total_gib = (peak - self.base) / 2 ** 30, peak / 2 ** 30
        else:
            self._rss.__exit__(*exc)
            self.above_gib, self.total_gib = self._rss.growth_gb, self._rss.peak / 1024.0

    def text(self) -> str:
        if self.mod is not None:
            return (f"{self.above_gib:.2f} GiB {self.device.type.upper()} above the loaded model "
                    f"({self.total_gib:.2f} total)")
        return (f"{self.above_gib:.2f} GiB CPU (peak RSS during the call minus RSS before it; process peak "
                f"{self.total_gib:.2f} GiB)")


def batched_conditioning(conds: list) -> list:
    """One CONDITIONING of several one-prompt CONDITIONINGs as a batch: token embeddings [N, T, D] and, where
    every prompt has one, the pooled outputs [N, P] (SDXL's ADM input takes each row's own pooled vector; SD1.x
    ignores it)."""
    opts = dict(conds[0][0][1] or {})
    pooled = [(c[0][1] or {}).get("pooled_output") for c in conds]
    if all(p is not None for p in pooled):
        opts["pooled_output"] = torch.cat(pooled)
    else:
        opts.pop("pooled_output", None)
    return [[torch.cat([c[0][0] for c in conds]), opts]]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=("sd1", "sdxl"), default="sd1",
                    help="sd1 (default): ToyWorld / tiny test model, --full-size SD1.5 at 512x512; sdxl: tiny SDXL "
                         "test model at 128x128, --full-size SDXL at 1024x1024")
    ap.add_argument("--full-size", action="store_true",
                    help="random-weight full-size UNet: SD1.5 at 512x512 (--family sd1), SDXL at 1024x1024 (sdxl)")
    ap.add_argument("--dtype", choices=tuple(DTYPES), default="auto",
                    help="weights' dtype (auto: comfy.model_management's choice, fp32 on the CPU; bf16 makes the "
                         "full-size SDXL run feasible on a CPU with AMX)")
    ap.add_argument("--sdxl-depth", type=int, default=10,
                    help="SDXL's transformer depth at the 1/4 level and the middle (10, SDXL's; fewer only where the "
                         "full-size model does not fit)")
    ap.add_argument("--steps", type=int, default=None, help="inversion steps (default 50 tiny / 50 full)")
    ap.add_argument("--inner", type=int, default=10, help="null-text inner steps (reference 10)")
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats (median)")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--memory-only", action="store_true",
                    help="only null-text inversion (its time and peak memory), e.g. --full-size --steps 1 --inner 1")
    ap.add_argument("--edit-only", action="store_true",
                    help="only the P2P edit vs plain sampling (after the DDIM inversion that gives its x_T)")
    args = ap.parse_args(argv)
    if args.memory_only and args.edit_only:
        ap.error("--memory-only and --edit-only exclude each other")
    t_start = time.perf_counter()

    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge import text
    from attention_edit.comfy_bridge.sampling import core_sample, edit, invert, latent_channels, replay_schedule
    from attention_edit.comfy_bridge.training import load_for_sampling
    from attention_edit.headless.photos import photo

    device = host.torch_device()
    m, clip, vae, size, label = build(args.full_size, args.family, DTYPES[args.dtype], args.sdxl_depth)
    t_build = time.perf_counter() - t_start
    _log(f"built {label}", t_start)
    steps = args.steps or 50
    enc = lambda p: text.encode(clip, p)  # noqa: E731
    src_p, tgt_p = "a photo of a cat", "a photo of a dog"
    src, empty, tgt = enc(src_p), enc(""), enc(tgt_p)
    img = photo("cat", size)
    with torch.no_grad():
        shape = (1, latent_channels(m) or 4, size // 8, size // 8)
        latent = vae.encode(img[..., :3]).detach().cpu() if not args.full_size else \
            torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.8
    sig = replay_schedule(m, "p2p_ddim", steps)
    rows = [("model build", f"{t_build:.1f} s")]

    def timed(fn, repeats=None):
        ts = []
        out = None
        for _ in range(repeats or args.repeats):
            _sync()
            t = time.perf_counter()
            out = fn()
            _sync()
            ts.append(time.perf_counter() - t)
        return out, sorted(ts)[len(ts) // 2]

    # --- inversion cost (and quality on a real photo)
    methods = ("null_text",) if args.memory_only else ("ddim",) if args.edit_only else \
        ("ddim", "negative_prompt", "null_text")
    invs, times = {}, {}
    load_for_sampling(m)  # the loaded model is not part of the memory figures
    # warm-up: a one-step inversion (null-text: one inner step, so forward and backward), so first-call costs
    # such as kernel selection and oneDNN primitives stay out of the figures
    invert(m, latent, src, empty, replay_schedule(m, "p2p_ddim", 1), method=methods[-1], guidance_scale=7.5,
           num_inner_steps=1, source_prompt=src_p)
    _log("warm-up", t_start)
    for method in methods:
        reps = 1 if (method == "null_text" and args.full_size) else args.repeats
        with Peak(device) as peak:
            invs[method], times[method] = timed(lambda: invert(m, latent, src, empty, sig, method=method,
                                                               guidance_scale=7.5, num_inner_steps=args.inner,
                                                               source_prompt=src_p), reps)
        if method == "null_text":
            mem = peak.text()
        _log(f"{method} inversion: {times[method]:.1f} s", t_start)
    if "ddim" in times:
        rows.append(("DDIM inversion time", f"{times['ddim']:.3f} s ({times['ddim'] / steps:.3f} s/step)"))
    if "negative_prompt" in times:
        rows.append(("negative-prompt inversion time", f"{times['negative_prompt']:.3f} s"))
    if "null_text" in times:
        inner_total = sum(len(x) for x in invs["null_text"].losses)
        rows.append(("null-text inversion time", f"{times['null_text']:.3f} s ({inner_total} inner steps)"))
        rows.append(("null-text inversion per step", f"{times['null_text'] / steps:.3f} s ({inner_total / steps:g} "
                                                     "inner steps per step; its DDIM inversion pass included)"))
        if "ddim" in times:
            rows.append(("null-text / DDIM inversion time", f"{times['null_text'] / times['ddim']:.1f}x"))
        rows.append(("null-text peak memory", mem))
    if args.memory_only:
        return _print(rows, label, steps, device, m, t_start)

    if not args.skip_quality and not args.full_size and not args.edit_only:
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

    pos = batched_conditioning([src, tgt])

    def plain(sigmas=sig):
        x = inv.x_T.repeat(2, 1, 1, 1)
        return core_sample(m, pos, empty, x, len(sigmas) - 1, 7.5, "euler", seed=0, noise=torch.zeros_like(x),
                           sigmas=sigmas.clone())

    plain(sig[:2])  # warm-up: one step
    _log("warm-up (batch of 2 prompts)", t_start)
    # the two alternate (plain, P2P, plain, P2P, ...), so a busy shared machine slows both alike; median of each
    runs = {"plain": ([], [], None), "p2p": ([], [], None)}
    for _ in range(args.repeats):
        for name, fn in (("plain", plain), ("p2p", p2p)):
            wall, cpu, peak = runs[name]
            with Peak(device) as pk:
                _sync()
                t, c = time.perf_counter(), time.process_time()
                fn()
                _sync()
                wall.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            if peak is None or pk.above_gib > peak.above_gib:
                runs[name] = (wall, cpu, pk)
            _log(f"{name}: {wall[-1]:.1f} s", t_start)
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    t_plain, t_p2p = med(runs["plain"][0]), med(runs["p2p"][0])
    target = 1.15 if args.family == "sdxl" else 1.3
    rows.append(("plain sampling (core_sample), 2 prompts as a batch",
                 f"{t_plain:.3f} s ({t_plain / steps:.3f} s/step)"))
    rows.append(("P2P edit (source + edit, controller on)", f"{t_p2p:.3f} s ({t_p2p / steps:.3f} s/step)"))
    rows.append(("P2P / plain", f"{t_p2p / t_plain:.2f}x (target <= {target}x"
                                + (" at SDXL size)" if args.family == "sdxl" else ")")))
    if _device_memory(device) is None:
        # process CPU time (all threads): what another process on the same cores does not inflate
        c_plain, c_p2p = med(runs["plain"][1]), med(runs["p2p"][1])
        rows.append(("P2P / plain, process CPU time", f"{c_p2p / c_plain:.2f}x ({c_p2p:.1f} s / {c_plain:.1f} s)"))
    rows.append(("plain sampling peak memory", runs["plain"][2].text()))
    rows.append(("P2P edit peak memory", runs["p2p"][2].text()))

    return _print(rows, label, steps, device, m, t_start)


def _print(rows, label, steps, device, model, t_start) -> int:
    print(f"\n### Foundation benchmark: {label}, {steps} steps, cfg 7.5, device {device}, UNet "
          f"{model.model.get_dtype()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.perf_counter() - t_start:.0f} s wall\n")
    print("| figure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
