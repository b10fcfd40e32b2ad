"""ToyWorld concept benchmark: learn a shape the model has never seen (a cross) from 4 renders with textual
inversion and with Custom Diffusion; are images made with the learned word closer to the concept than images made
with the initializer words alone? (issue "concept training", its ToyWorld requirement)

    python bench/bench_concepts.py                    # 32 images per prompt (about 2.5 minutes on a CPU thread)
    python bench/bench_concepts.py --gen 8 --ti-steps 50 --cd-steps 50      # a quick look
    python bench/bench_concepts.py --weights runs/toyworld/export.safetensors --plot out/concepts.png

What it does (``bench/conceptbench.py``): 4 seeded renders of a big red cross train a textual-inversion word
(2 vectors initialised from "red square") and a Custom Diffusion concept (modifier token "<v1>", class noun
"red square", all of attn2, prior preservation on 8 rendered red squares); then for every seed, from the same
initial noise, the base model draws "a photo of a red square" (the initializer words alone), the base model draws
"a photo of a embedding:tw_cross" (TI), the Custom Diffusion model draws "a photo of a <v1> red square" (CD) and,
as a drift check, "a photo of a red square". Each image's object silhouette is fitted with shape templates over
a few alignments: "cross IoU" is the cross template's best IoU (a perfect square about 0.58, a perfect circle about
0.7, the references after the VAE round trip about 0.86); the closeness score, "cross margin", is that minus the
best IoU of circle / square / triangle (> 0: the cross explains the object better than any shape ToyWorld knows;
"recognised as cross" also needs the colour right). "Judged square": the judge (three shapes only) calls it a
square. "Closer than initializer": the fraction of seeds whose learned-word image has a higher margin (and IoU)
than the initializer image of the same seed.

Prints a markdown table (the command line in its header) and writes a plot PNG: a contact sheet (references |
initializer | TI | CD samples) and bar charts of the figures. Seeded: the same command gives the same figures on
the same machine.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gen", type=int, default=32, help="images per prompt (seeds 1000 .. 1000+N-1)")
    ap.add_argument("--ti-steps", type=int, default=None, help="textual-inversion steps (default: the tuned setting)")
    ap.add_argument("--cd-steps", type=int, default=None, help="Custom Diffusion steps (default: the tuned setting)")
    ap.add_argument("--ti-lr", type=float, default=None)
    ap.add_argument("--ti-vectors", type=int, default=None, help="textual-inversion vectors per word")
    ap.add_argument("--cd-lr", type=float, default=None)
    ap.add_argument("--cd-mode", default=None, choices=("crossattn_kv", "crossattn"))
    ap.add_argument("--cfg", type=float, default=None, help="sampling cfg of all three prompts")
    ap.add_argument("--weights", default=None, help="a ToyWorld safetensors (default: the shipped one)")
    ap.add_argument("--plot", default="out/toyworld_concepts.png")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    cmd = "python bench/bench_concepts.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None
                                                                                  else argv))

    import torch

    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.bench import conceptbench as cb
    from attention_edit.bench import editbench as eb

    cs = cb.ConceptSettings()
    for key in ("ti_steps", "cd_steps", "ti_lr", "cd_lr", "ti_vectors", "cd_mode", "cfg"):
        if getattr(args, key) is not None:
            setattr(cs, key, getattr(args, key))
    tm = eb.load_model(args.weights)
    t0 = time.time()
    res = cb.concept_bench(tm, range(1000, 1000 + args.gen), cs)
    total = time.time() - t0

    s, p, tr, rc = res["summary"], res["prompts"], res["train"], res["ref_closeness"]
    print(f"\n### ToyWorld concept learning: {tm.label}; a never-seen {cs.colour} cross from {cs.n_refs} renders; "
          f"{args.gen} images per prompt, {cs.steps} steps, cfg {cs.cfg}; {total:.0f} s\n\n`{cmd}`\n")
    print("| images | prompt | closeness (cross margin) | cross IoU | colour right | recognised as cross | "
          "judged square | closer than initializer (margin / IoU) |\n|---|---|---|---|---|---|---|---|")
    print(f"| the {cs.n_refs} references (renders) | | {rc['render']:+.3f} | {rc['render_iou']:.3f} | 100% | 100% | 0% "
          f"| |")
    print(f"| the references after the VAE round trip (ceiling) | | {rc['vae']:+.3f} | {rc['vae_iou']:.3f} | | "
          f"{rc['vae_recognised']:.0%} | | |")
    names = {"initializer": "initializer words, base model", "ti": "textual inversion, base model",
             "cd": "Custom Diffusion model", "cd_class": "Custom Diffusion model, initializer words (class drift)"}
    for v in cb.VARIANTS + cb.EXTRA:
        r = s[v]
        wins = (f"{r['wins']:.0%} / {r['wins_iou']:.0%}" + (f" (ties {r['ties']:.0%})" if r.get("ties") else "")
                if "wins" in r else "")
        print(f"| {names[v]} | `{p[v]}` | {r['margin']:+.3f} | {r['iou']:.3f} | {r['colour']:.0%} | "
              f"{r['recognised']:.0%} | {r['judged_initializer']:.0%} | {wins} |")
    print("\n| training | steps | learning rate | seconds | probe loss before -> after |\n|---|---|---|---|---|")
    print(f"| textual inversion ({cs.ti_vectors} vectors from '{cs.initializer}', batch {cs.ti_batch}) | "
          f"{tr['ti']['steps']} | {cs.ti_lr:g} | {tr['ti']['seconds']:.1f} | "
          f"{tr['ti']['probe_before']:.4f} -> {tr['ti']['probe_after']:.4f} |")
    print(f"| Custom Diffusion ({cs.cd_mode}, class '{cs.initializer}' x {cs.cd_class_images} renders, "
          f"batch {cs.cd_batch}) | {tr['cd']['steps']} | {cs.cd_lr:g} | {tr['cd']['seconds']:.1f} | "
          f"{tr['cd']['probe_before']:.4f} -> {tr['cd']['probe_after']:.4f} |")
    if args.plot:
        write_plot(res, args.plot, f"{tm.label}: {cmd}")
        print(f"\nplot: {args.plot}")
    return 0


def write_plot(res: dict, path: str, label: str, n_show: int = 8) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from attention_edit.bench import conceptbench as cb

    cases = [c for c in res["cases"] if "image" in c["initializer"]][:n_show]
    n = max(len(cases), len(res["refs"]))
    blank = np.full((64, 64, 3), 255, np.uint8)

    def row(imgs):
        imgs = list(imgs) + [blank] * (n - len(imgs))
        return np.concatenate([np.pad(a, ((2, 2), (2, 2), (0, 0)), constant_values=255) for a in imgs], 1)

    rows = [("references", res["refs"])] + [(v, [c[v]["image"] for c in cases]) for v in cb.VARIANTS + cb.EXTRA]
    sheet = np.concatenate([row(imgs) for _, imgs in rows], 0)
    fig = plt.figure(figsize=(4 + 1.0 * n, 5.4))
    gs = fig.add_gridspec(2, 2, width_ratios=[max(n, 4), 4], height_ratios=[1, 1])
    ax = fig.add_subplot(gs[:, 0])
    ax.imshow(sheet, interpolation="nearest")
    ax.set_yticks([68 * i + 34 for i in range(len(rows))])
    ax.set_yticklabels(["references", "initializer", "textual inv.", "Custom Diff.", "CD, 'red square'"])
    ax.set_xticks([])
    ax.set_title("seeds " + ", ".join(str(c["seed"]) for c in cases), fontsize=8)
    s = res["summary"]
    labels = ["init", "TI", "CD"]
    ax1 = fig.add_subplot(gs[0, 1])
    x = np.arange(3)
    ax1.bar(x - 0.2, [s[v]["iou"] for v in cb.VARIANTS], 0.4, label="cross IoU")
    ax1.bar(x + 0.2, [s[v]["margin"] for v in cb.VARIANTS], 0.4, label="margin (closeness)")
    ax1.axhline(res["ref_closeness"]["vae_iou"], ls="--", c="k", lw=1, label="refs via VAE (IoU)")
    ax1.axhline(0, c="k", lw=0.5)
    ax1.set_xticks(x)
    ax1.set_xticklabels(labels)
    ax1.set_ylim(-0.5, 1.35)
    ax1.set_title("closeness to the cross", fontsize=9)
    ax1.legend(fontsize=6, loc="upper center", ncol=3)
    ax2 = fig.add_subplot(gs[1, 1])
    ax2.bar(x - 0.2, [s[v]["recognised"] for v in cb.VARIANTS], 0.4, label="recognised as cross")
    ax2.bar(x + 0.2, [s[v].get("wins", 0.0) for v in cb.VARIANTS], 0.4, label="closer than init")
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels)
    ax2.set_ylim(0, 1.25)
    ax2.legend(fontsize=6, loc="upper center", ncol=2)
    fig.suptitle(label, fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
