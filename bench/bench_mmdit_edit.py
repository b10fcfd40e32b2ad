"""MM-DiT Prompt-to-Prompt overhead per family: the edit's time per step against plain sampling of the same prompts.

For each MM-DiT family's tiny test model (Flux.1: comfy_bridge.flux_models TINY_FLUX; SD3: comfy_bridge.sd3_models
TINY_SD3), the cat photo (64x64) is inverted with rf_euler, then

* edit: the replay of [source, edited] ("a photo of a cat" -> "a photo of a dog", word swap, the default
  cross_replace_steps 0.8 and self_replace_steps 0.4) with the controller on every joint block;
* plain: ComfyUI's own euler sampler (comfy_bridge.sampling.core_sample: SamplerCustom) on the same two prompts as
  one batch, from the same x_T and sigmas, at the same CFG (:data:`CFG`; no controller).

The two alternate, median of --repeats each; the ratio edit / plain is the figure (issue 27 target <= 1.15x). A step
of these tiny models takes about 10 ms, so the controller's fixed per-call costs weigh more than at real sizes (on
Flux.1-width blocks bench_flow_inversion.py --full-size measured 1.06x).

Usage:
    python bench/bench_mmdit_edit.py                 # both families, 10 steps, 7 repeats
    python bench/bench_mmdit_edit.py --family sd3 --steps 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
#: the CFG scale each family is sampled at: Flux.1 takes its guidance as an embedding (cfg 1); SD3.5 is sampled with
#: classifier-free guidance (4.5, the SD3.5 Medium default), so the edit and the plain sampling both run the
#: unconditional rows (negative: the empty prompt)
CFG = {"flux": 1.0, "sd3": 4.5}


def _setup(threads: int):
    from attention_edit.headless import host as comfy_env

    comfy_env.configure_cpu()
    comfy_env.init_comfy(threads=threads)


def _build(family: str):
    if family == "flux":
        from attention_edit.comfy_bridge.flux_models import build_flux

        return build_flux("tiny_flux", seed=0)
    from attention_edit.comfy_bridge.sd3_models import build_sd3

    return build_sd3("tiny_sd3", seed=0)


def measure(family: str, steps: int, repeats: int) -> dict:
    from attention_edit.attention.recipe import EditSpec, build_controller
    from attention_edit.comfy_bridge.sampling import core_sample, edit, invert, replay_schedule
    from attention_edit.headless.photos import photo

    m, clip, vae = _build(family)
    enc = lambda p: clip.encode_from_tokens_scheduled(clip.tokenize(p))  # noqa: E731
    src, tgt, empty = enc(SOURCE), enc(TARGET), enc("")
    cfg = CFG[family]
    with torch.no_grad():
        latent = vae.encode(photo("cat", 64)[..., :3]).detach()
    inv = invert(m, latent, src, empty, replay_schedule(m, "simple", steps), method="rf_euler", source_prompt=SOURCE,
                 guidance_scale=cfg)
    spec = EditSpec(target_prompts=(TARGET,))
    two = lambda a, b: [[torch.cat([a[0][0], b[0][0]]), {**a[0][1], "pooled_output": torch.cat(  # noqa: E731
        [a[0][1]["pooled_output"], b[0][1]["pooled_output"]])}]]
    batch, negative = two(src, tgt), two(empty, empty)
    noise = m.model.process_latent_in(inv.x_T.clone()).repeat(2, 1, 1, 1)

    def run_edit():
        ctrl = build_controller(clip.tokenizer, SOURCE, spec, inv.steps, text_len=int(tgt[0][0].shape[1]))
        return edit(m, inv, [tgt], ctrl)

    def run_plain():
        return core_sample(m, batch, negative, torch.zeros_like(noise), inv.steps, cfg, sampler="euler", noise=noise,
                           sigmas=inv.sigmas.clone())

    run_edit(), run_plain()  # warm-up
    t_edit, t_plain = [], []
    for _ in range(repeats):
        for fn, acc in ((run_edit, t_edit), (run_plain, t_plain)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    e, p = statistics.median(t_edit), statistics.median(t_plain)
    return {"family": family, "cfg": cfg, "text_tokens": int(tgt[0][0].shape[1]), "edit_step": e / steps,
            "plain_step": p / steps, "ratio": e / p}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--family", choices=("flux", "sd3", "all"), default="all")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    _setup(a.threads)
    fams = ("flux", "sd3") if a.family == "all" else (a.family,)
    rows = [measure(f, a.steps, a.repeats) for f in fams]
    print(f"\nMM-DiT P2P edit vs plain sampling (tiny models, 64x64, {a.steps} steps, median of {a.repeats}, "
          f"{a.threads} thread(s), CPU)\n")
    print("| family | cfg | text tokens | edit per step | plain per step | edit / plain |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['family']} | {r['cfg']:g} | {r['text_tokens']} | {r['edit_step'] * 1000:.1f} ms | "
              f"{r['plain_step'] * 1000:.1f} ms | {r['ratio']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
