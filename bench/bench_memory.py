"""Training-memory benchmark: peak memory and time per step of the pack's training stages.

Model: a FULL-SIZE Stable Diffusion 1.5 architecture with random weights (``models/unet_models.build_unet``: UNet 320
channels x [1, 2, 4, 4], 2 res blocks, attention at the first three levels, 8 heads; CLIP text encoder 768 wide,
12 layers, 12 heads, MLP 3072; VAE 128 channels x [1, 2, 4, 4], 2 res blocks), trained at 512 x 512 on a real photo
(scikit-image's cat; a second photo as Custom Diffusion's class image). Random weights change nothing about memory
or time per step. ``--tiny`` uses the tiny test model (``unet_models.TINY_TEST``) at 64 x 64 instead, a smoke check for
a CPU.

Stages (a few optimisation steps each, ``--steps``; every stage is called through the same public function its
node calls, under ``torch.inference_mode()`` like ComfyUI's executor; each runs with gradient checkpointing off
and on):

  * Custom Diffusion (``nodes.training_nodes.custom_diffusion``): mode crossattn_kv (attn2 to_k/to_v
    deltas + the modifier token's embedding), batch 1, prior preservation with one class image;
  * textual inversion (``nodes.training_nodes.textual_inversion``): 1 vector, batch 1;
  * Imagic 1 (``training.imagic.encode_photo`` + ``optimize_embedding``): the text-embedding optimisation;
  * Imagic 2 (``training.imagic.finetune``): the low-rank adapter (mode lora, rank 8, the default) and full UNet
    fine-tuning (mode full, the paper's setting).

Figures per stage:

  * peak above the loaded model: GPU: ``torch.cuda.max_memory_allocated()`` during the whole call minus
    ``torch.cuda.memory_allocated()`` with the UNet, text encoder and VAE loaded on the device just before it (so
    it includes the VAE encoding of the pictures, the optimiser state and the activations); CPU (no CUDA device):
    growth of the process's resident memory (peak RSS sampled every 20 ms minus RSS before the call; memory the
    allocator kept from an earlier stage is not counted again, so later CPU rows can read low);
  * total peak: the absolute peak (GPU allocated bytes, or the process's peak RSS);
  * loop peak: the peak above the loaded model during optimisation steps 2..N only (after step 1 has allocated
    the optimiser state; without the VAE encoding before the loop); needs ``--steps`` >= 2;
  * seconds per step: median time between consecutive steps (steps 2..N; reported with --steps >= 2).

A stage that fails (e.g. out of memory) prints its error in its row; the other stages still run.

Usage:
    python bench/bench_memory.py --steps 3 --json out/bench_memory.json   # SD1.5 size, 512x512 (use a GPU)
    python bench/bench_memory.py --tiny --steps 1                          # smoke check on a CPU (~1 min)
    python bench/bench_memory.py --build-only                              # only build the full-size model
    python bench/bench_memory.py --only imagic2 --steps 3                  # a subset of the stages
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_foundation import RssPeak, _rss_mb, _sync  # noqa: E402

GIB = 2 ** 30
STAGE_KEYS = ("cd", "ti", "imagic1", "imagic2")


def full_config():
    """The SD1.5 architecture (random weights) at 512 x 512."""
    from attention_edit.comfy_bridge import models as unet_models

    return unet_models.UNetConfig(name="sd15_random_full", image_size=512, model_channels=320, channel_mult=[1, 2, 4, 4],
                           num_res_blocks=2, attention_levels=[True, True, True, False], transformer_depth_middle=1,
                           num_heads=8, clip_width=768, clip_layers=12, clip_heads=12, clip_intermediate=3072,
                           vae_ch=128, vae_ch_mult=[1, 2, 4, 4], vae_res_blocks=2)


def build(tiny: bool):
    """(model, clip, vae, image_size, label). Built under inference mode, as a loader node builds it."""
    from attention_edit.comfy_bridge import models as unet_models

    cfg, size = (unet_models.TINY_TEST, 64) if tiny else (full_config(), 512)
    with torch.inference_mode():
        m, clip, vae = unet_models.build_unet(cfg, seed=0)
    n = unet_models.count_parameters(m, clip, vae)
    label = ("tiny test model" if tiny else "SD1.5-size model") + \
        (f" (random weights), {size}x{size}; parameters: UNet {n['unet'] / 1e6:.1f} M, text encoder "
         f"{n['text_encoder'] / 1e6:.1f} M, VAE {n['vae'] / 1e6:.1f} M")
    return m, clip, vae, size, label


class _Rss(RssPeak):
    """RssPeak with ``mark()``: returns the peak so far and restarts the peak from the current RSS."""

    def mark(self) -> float:
        old = max(self.peak, _rss_mb())
        self.peak = _rss_mb()
        return old


class Meter:
    """Measures one call: peak memory (GPU allocator or process RSS) overall and after step 1, times per step."""

    def __init__(self, mm, models, on_gpu: bool):
        self.mm, self.models, self.on_gpu = mm, models, on_gpu

    def run(self, fn):
        self.times: list = []
        self.p_first = None  # peak up to the end of step 1 (absolute: bytes on GPU, MiB RSS on CPU)
        gc.collect()
        self.mm.soft_empty_cache()
        if self.on_gpu:
            self.mm.load_models_gpu(self.models, force_full_load=True)
            _sync()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            out = fn(self._progress)
            _sync()
            t1 = time.perf_counter()
            p_last = torch.cuda.max_memory_allocated()
            peak = max(p_last, self.p_first or 0)
            res = dict(peak_above_gib=(peak - base) / GIB, total_peak_gib=peak / GIB, base_gib=base / GIB,
                       loop_peak_above_gib=(p_last - base) / GIB if len(self.times) >= 2 else None)
        else:
            with _Rss() as self._rss:
                base = self._rss.base
                t0 = time.perf_counter()
                out = fn(self._progress)
                t1 = time.perf_counter()
            p_last = self._rss.peak
            peak = max(p_last, self.p_first or 0)
            res = dict(peak_above_gib=(peak - base) / 1024, total_peak_gib=peak / 1024, base_gib=base / 1024,
                       loop_peak_above_gib=(p_last - base) / 1024 if len(self.times) >= 2 else None)
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        res.update(seconds=t1 - t0, steps_done=len(self.times),
                   s_per_step=statistics.median(gaps) if gaps else None)
        return out, res

    def _progress(self, done, total):
        _sync()
        self.times.append(time.perf_counter())
        if done == 1:  # the loop peak (steps 2..N) starts here
            if self.on_gpu:
                self.p_first = torch.cuda.max_memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            else:
                self.p_first = self._rss.mark()


def _cleanup(mm):
    gc.collect()
    mm.soft_empty_cache()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny test model at 64x64 (CPU smoke check)")
    ap.add_argument("--steps", type=int, default=3, help="optimisation steps per stage (>= 2 for s/step)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON here")
    ap.add_argument("--only", default=",".join(STAGE_KEYS),
                    help=f"comma-separated subset of {','.join(STAGE_KEYS)} (imagic2 runs imagic1's embedding "
                         "first when imagic1 is not selected)")
    ap.add_argument("--checkpointing", default="off,on", help="gradient checkpointing settings to run: off,on")
    ap.add_argument("--rank", type=int, default=8, help="Imagic 2 LoRA rank (node default 8)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: 1 without a GPU, else torch's)")
    ap.add_argument("--build-only", action="store_true", help="build the model, print its size, exit")
    args = ap.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        torch.set_num_threads(1)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.comfy_bridge import text
    from attention_edit.headless.photos import photo
    from attention_edit.nodes import imagic_nodes as imagic_glue
    from attention_edit.nodes import training_nodes as training_glue
    from attention_edit.training import imagic as im

    mm = host
    device = host.torch_device()
    on_gpu = getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available()
    rss0 = _rss_mb()
    t = time.perf_counter()
    m, clip, vae, size, label = build(args.tiny)
    build_s = time.perf_counter() - t
    dtype = m.model.get_dtype()
    cast = getattr(m.model, "manual_cast_dtype", None)
    header = (f"Training memory: {label}; device {device}, UNet dtype {str(dtype).replace('torch.', '')}"
              f"{' (computes in ' + str(cast).replace('torch.', '') + ')' if cast else ''}, {args.steps} steps per "
              f"stage, torch {torch.__version__}, {torch.get_num_threads()} threads; memory: "
              f"{'GPU allocated bytes' if on_gpu else 'process RSS (no CUDA device)'}")
    if args.build_only:
        print(f"\n### {header}\n")
        print(f"built in {build_s:.1f} s; process RSS {_rss_mb() / 1024:.2f} GiB "
              f"(+{(_rss_mb() - rss0) / 1024:.2f} GiB for the model)")
        return 0

    only = {s.strip() for s in args.only.split(",") if s.strip()}
    bad = only - set(STAGE_KEYS)
    if bad:
        ap.error(f"unknown stages {sorted(bad)}; choose from {','.join(STAGE_KEYS)}")
    gcs = [{"off": False, "on": True}[s.strip()] for s in args.checkpointing.split(",") if s.strip()]
    steps = int(args.steps)
    image = photo("cat", size)
    class_image = photo("astronaut", size)  # a stand-in class picture (memory does not depend on its content)
    target_text = "a photo of a cat sitting with its mouth open"
    with torch.inference_mode():
        cond = text.encode(clip, target_text)
    meter = Meter(mm, [m, clip.patcher, vae.patcher], on_gpu)
    rows: list = []
    state: dict = {}

    def gc_name(g):
        return f"gradient checkpointing {'on' if g else 'off'}"

    def stage(key, name, setting, fn):
        row = dict(key=key, stage=name, setting=setting, steps=steps, peak_above_gib=None, total_peak_gib=None,
                   loop_peak_above_gib=None, s_per_step=None, seconds=None, error=None)
        out = None
        try:
            with torch.inference_mode():
                out, res = meter.run(fn)
            row.update(res)
        except Exception as exc:  # noqa: BLE001 - one failing stage (OOM) must not stop the others
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        _cleanup(mm)
        rows.append(row)
        _print_row(row)
        return out

    # ---- Custom Diffusion
    if "cd" in only:
        for g in gcs:
            stage("cd", "Custom Diffusion", f"crossattn_kv + modifier token, batch 1, prior preservation "
                                            f"(1 class image), {gc_name(g)}",
                  lambda p, g=g: training_glue.custom_diffusion(
                      m, clip, vae, image, modifier_token="<v1>", class_noun="cat", initializer="ktn",
                      class_images=class_image, prior_loss_weight=1.0, mode="crossattn_kv", steps=steps,
                      batch_size=1, seed=0, resolution=size, augment=True, gradient_checkpointing=g, progress=p))
    # ---- textual inversion
    if "ti" in only:
        for g in gcs:
            stage("ti", "Textual inversion", f"1 vector, batch 1, {gc_name(g)}",
                  lambda p, g=g: training_glue.textual_inversion(
                      m, clip, vae, image, "zqbenchcat", "cat", num_vectors=1, steps=steps, batch_size=1, seed=0,
                      templates="object", resolution=size, gradient_checkpointing=g, progress=p))

    # ---- Imagic
    def imagic1(p, g):
        return imagic_glue.optimize_embedding(m, vae, image, cond, "bench", steps=steps, seed=0,
                                              gradient_checkpointing=g, progress=p)

    if "imagic1" in only:
        for g in gcs:
            r = stage("imagic1", "Imagic 1: embedding", f"Adam on e_tgt [1, 77, d], {gc_name(g)}",
                      lambda p, g=g: imagic1(p, g))
            if r is not None and "stage1" not in state:
                state["stage1"] = r
    if "imagic2" in only:
        if "stage1" not in state:
            try:
                with torch.inference_mode():
                    state["stage1"] = imagic1(None, False)
            except Exception as exc:  # noqa: BLE001
                print(f"(Imagic 1 failed: {type(exc).__name__}: {exc}; Imagic 2 starts from e_opt = e_tgt)")
                with torch.inference_mode():
                    e_tgt, pooled = im.target_embedding(cond)
                    from attention_edit.comfy_bridge.training import encode_image

                    state["stage1"] = im.Imagic(e_tgt, e_tgt.clone(), encode_image(vae, image[..., :3]), pooled)
            _cleanup(mm)
        s1 = state["stage1"]
        for mode, what in (("lora", f"LoRA rank {args.rank} on every UNet linear/conv weight"),
                           ("full", "full UNet (a float32 delta per parameter)")):
            for g in gcs:
                stage("imagic2", "Imagic 2: fine-tune", f"{mode}: {what}, {gc_name(g)}",
                      lambda p, g=g, mode=mode: imagic_glue.finetune(m, s1, mode=mode, rank=args.rank, steps=steps,
                                                                     seed=0, gradient_checkpointing=g, progress=p))

    _print_table(rows, header)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        meta = dict(header=header, device=str(device), memory="gpu_allocated" if on_gpu else "process_rss",
                    unet_dtype=str(dtype), manual_cast_dtype=str(cast) if cast else None, steps=steps,
                    image_size=size, tiny=bool(args.tiny), torch=torch.__version__, threads=torch.get_num_threads(),
                    gpu=torch.cuda.get_device_name(device) if on_gpu else None)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0 if all(r["error"] is None for r in rows) else 1


def _fmt(v, unit=""):
    return "-" if v is None else f"{v:.2f}{unit}" if abs(v) >= 0.01 or v == 0 else f"{v:.3g}{unit}"


def _print_row(r) -> None:
    msg = r["error"] or (f"peak +{_fmt(r['peak_above_gib'])} GiB (total {_fmt(r['total_peak_gib'])}), "
                         f"{_fmt(r['seconds'])} s")
    print(f"[{r['stage']} | {r['setting']}] {msg}", flush=True)


def _print_table(rows, header) -> None:
    print(f"\n### {header}\n")
    print("| stage | setting | peak GiB above loaded model | total peak GiB | loop peak GiB above model (steps 2..N) "
          "| s/step | note |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        note = r["error"] or (f"{r['seconds']:.1f} s for the whole call ({r['steps_done']} step"
                              f"{'s' if r['steps_done'] != 1 else ''} + setup, encoding, probe losses)")
        print(f"| {r['stage']} | {r['setting']} | {_fmt(r['peak_above_gib'])} | {_fmt(r['total_peak_gib'])} | "
              f"{_fmt(r['loop_peak_above_gib'])} | {_fmt(r['s_per_step'])} | {note} |")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
