"""ToyWorld Imagic benchmark: an attribute edit by Imagic against plain img2img (SDEdit), judged.

    python bench/bench_imagic.py                   # 100 colour edits (~21 CPU-s a case: ~35 min on one idle thread)
    python bench/bench_imagic.py --cases 5         # a quick look
    python bench/bench_imagic.py --attributes colour,shape,size --json out/imagic.json --plot out/imagic.png

Each case (bench/imagicbench.py) takes a rendered one-object scene as the photo and swaps one attribute word of
its caption (colour by default) for the target text. Imagic optimises e_opt from e_tgt, fine-tunes the model (LoRA
by default) and samples an eta sweep from one fixed noise; SDEdit denoises the photo's latent, noised to strength s,
with the target prompt (KSampler denoise = s) on the original model, over a strength sweep, with the same noise.
The judge reads every image: success (the new attribute on the main object), structure IoU (its mask vs the
expected object: the source object, re-rendered with the new attribute for shape/size edits), the other attributes
kept, background PSNR outside the objects; "faithful" counts an edit that
succeeds AND keeps the other attributes AND has IoU >= 0.5.

Matched strength: Imagic always re-samples the whole trajectory (its structure comes from the fine-tuned model), so
the same nominal trajectory fraction means nothing for SDEdit (s = 1 is plain text-to-image). The bench matches the
two sweeps on the structure they keep: for each eta, the SDEdit strength whose mean structure IoU is nearest to
Imagic's at that eta, and compares success there ("IoU-matched"); the equal-nominal reading (s = eta) is listed too.

Step counts (measured on this repo's 2-core CPU machine, one torch thread): an e_opt step costs about 0.03 CPU-s, a
LoRA fine-tuning step about 0.065, the sampling of the eta sweep about 1 and the SDEdit sweep about 3 CPU-s per
case. Imagic's reference settings (500 + 1000 steps in the diffusers community pipeline) would cost about 85 CPU-s per
case, 2.4 hours for 100 cases; the defaults, 100 e_opt steps at lr 3e-2 and 200 LoRA steps at lr 1e-3 (rank 8),
tuned on ToyWorld (bench/imagicbench.py, ImagicSettings), cost about 21 CPU-s per case, about 35 minutes for
the 100 cases on an idle thread (more wall time on a busy machine: the table reports both). Cases are seeded: the
same command gives the same figures on the same machine. Prints a markdown table and writes a plot PNG
(matplotlib).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

DEFAULT_CASES = 100


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=DEFAULT_CASES, help="cases per attribute (seeds 1000..)")
    ap.add_argument("--weights", default=None, help="a ToyWorld safetensors (default: the shipped one)")
    ap.add_argument("--attributes", default="colour", help="comma list of colour, shape, size (one Imagic run each)")
    ap.add_argument("--emb-steps", type=int, default=100, help="Imagic 1 (e_opt) Adam steps")
    ap.add_argument("--emb-lr", type=float, default=3e-2, help="Imagic 1 learning rate")
    ap.add_argument("--ft-steps", type=int, default=200, help="Imagic 2 (fine-tuning) Adam steps")
    ap.add_argument("--ft-lr", type=float, default=1e-3, help="Imagic 2 learning rate (0: training/imagic.py's "
                                                              "default for the mode)")
    ap.add_argument("--mode", default="lora", choices=("lora", "attention", "full"))
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps (ddim / ddim_uniform), both methods")
    ap.add_argument("--cfg", type=float, default=7.5)
    ap.add_argument("--etas", default="0.6,0.7,0.8,1.0,1.2", help="Imagic etas (1.2 extrapolates past the "
                                                                 "target, as the diffusers community pipeline's 1.2)")
    ap.add_argument("--strengths", default="0.1,0.2,0.3,0.4,0.5,0.6,0.8,1.0",
                    help="SDEdit strengths (KSampler denoise)")
    ap.add_argument("--examples", type=int, default=4, help="example rows in the plot (the first cases)")
    ap.add_argument("--plot", default="out/toyworld_imagic.png")
    ap.add_argument("--json", default=None, help="also write every case's figures to this JSON file")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.bench import editbench as eb
    from attention_edit.bench import imagicbench as ib
    from attention_edit.bench.imagicbench import mean

    tm = eb.load_model(args.weights)
    st = ib.ImagicSettings(steps=args.steps, cfg=args.cfg, emb_steps=args.emb_steps, emb_lr=args.emb_lr,
                           ft_steps=args.ft_steps, ft_lr=args.ft_lr or None, mode=args.mode, rank=args.rank,
                           etas=tuple(float(x) for x in args.etas.split(",")),
                           strengths=tuple(float(x) for x in args.strengths.split(",")))
    attributes = [a.strip() for a in args.attributes.split(",") if a.strip()]
    cmd = "python bench/bench_imagic.py " + " ".join(argv if argv is not None else sys.argv[1:])
    t0, c0 = time.time(), time.process_time()
    seeds = range(1000, 1000 + args.cases)
    per_attr, examples = {}, []
    for attr in attributes:
        res = []
        for i, s in enumerate(seeds):
            keep = len(examples) < args.examples and attr == attributes[0]
            w, c = time.time(), time.process_time()
            r = ib.imagic_case(tm, s, st, attr, keep_images=keep)
            r["times"]["case_wall"], r["times"]["case_cpu"] = time.time() - w, time.process_time() - c
            if keep:
                examples.append(r)
            res.append(r)
            print(f"[{attr} {i + 1}/{args.cases}] seed {s}: {r['source']!r} -> {r['new']}; imagic "
                  + " ".join(f"{e:g}:{'S' if f['success'] else '-'}{f['iou']:.2f}" for e, f in r["imagic"].items())
                  + f"; {r['times']['case_wall']:.0f} s", file=sys.stderr, flush=True)
        per_attr[attr] = res
    wall, cpu = time.time() - t0, time.process_time() - c0

    wpath = args.weights or (eb.SHIPPED if os.path.exists(eb.SHIPPED) else None)
    if wpath:
        import hashlib

        with open(wpath, "rb") as f:
            label = f"{tm.label}, sha256 {hashlib.sha256(f.read()).hexdigest()[:12]}"
    else:
        label = tm.label
    print(f"\n### ToyWorld Imagic benchmark: {label}; {args.cases} cases per attribute edit "
          f"({', '.join(attributes)}); {wall:.0f} s wall, {cpu:.0f} s CPU ({args.threads} thread)\n")
    print(f"`{cmd}`\n")
    ft_lr = st.ft_lr if st.ft_lr else "default"
    print(f"Imagic: e_opt {st.emb_steps} Adam steps at lr {st.emb_lr:g}; fine-tuning {st.mode}"
          f"{f' rank {st.rank}' if st.mode == 'lora' else ''}, {st.ft_steps} steps at lr {ft_lr}; sampling "
          f"{st.sampler}/{st.scheduler} {st.steps} steps, cfg {st.cfg:g}, one fixed noise per case for every eta and "
          f"every SDEdit strength. SDEdit: target prompt, KSampler denoise = s, original model.\n")
    plot = {}
    for attr, res in per_attr.items():
        im_s = {e: ib.summarise(res, "imagic", e) for e in st.etas}
        sd_s = {s: ib.summarise(res, "sdedit", s) for s in st.strengths}
        vae = {"iou": mean([r["vae"]["iou"] for r in res]), "kept": mean([r["vae"]["kept"] for r in res]),
               "bg_psnr": mean([r["vae"]["bg_psnr"] for r in res])}
        print(f"#### {attr} edit ({len(res)} cases)\n")
        print("| method | knob | success | structure IoU | other attributes kept | faithful edit | background PSNR |")
        print("|---|---|---|---|---|---|---|")
        print(f"| no edit: the photo through the VAE (IoU with the expected object; for colour the ceiling) | - | - | "
              f"{vae['iou']:.2f} | "
              f"{vae['kept']:.0%} | - | {vae['bg_psnr']:.1f} dB |")
        for e, f in im_s.items():
            print(f"| Imagic | eta {e:g} | {f['success']:.0%} | {f['iou']:.2f} | {f['kept']:.0%} | {f['faithful']:.0%} "
                  f"| {f['bg_psnr']:.1f} dB |")
        for s, f in sd_s.items():
            print(f"| SDEdit | strength {s:g} | {f['success']:.0%} | {f['iou']:.2f} | {f['kept']:.0%} | "
                  f"{f['faithful']:.0%} | {f['bg_psnr']:.1f} dB |")
        match = ib.iou_matched(im_s, sd_s)
        print("\nMatched strength (SDEdit at the strength whose mean structure IoU is nearest to Imagic's; and at the "
              "same nominal value s = eta where that strength was run):\n")
        print("| Imagic eta | Imagic success / IoU / faithful | IoU-matched SDEdit | SDEdit success / IoU / faithful | "
              "SDEdit at s = eta: success / IoU / faithful |")
        print("|---|---|---|---|---|")
        for e, s in match.items():
            a, b = im_s[e], sd_s[s]
            c = sd_s.get(e)
            same = f"{c['success']:.0%} / {c['iou']:.2f} / {c['faithful']:.0%}" if c else "(not run)"
            top, low = max(v["iou"] for v in sd_s.values()), min(v["iou"] for v in sd_s.values())
            note = (" (SDEdit's most structure-keeping strength: none keeps as much as Imagic)" if a["iou"] > top else
                    " (SDEdit's least structure-keeping strength)" if a["iou"] < low else "")
            print(f"| {e:g} | {a['success']:.0%} / {a['iou']:.2f} / {a['faithful']:.0%} | s = {s:g}{note} | "
                  f"{b['success']:.0%} / {b['iou']:.2f} / {b['faithful']:.0%} | {same} |")
        t = {k: mean([r["times"][k] for r in res]) for k in res[0]["times"]}
        d = {k: mean([r["distance"][k] for r in res]) for k in res[0]["distance"]}
        lo = {k: mean([r["losses"][k] for r in res]) for k in res[0]["losses"]}
        print("\n| figure | value |\n|---|---|")
        print(f"| faithful edit at the best eta per case (oracle pick, as the paper picks eta by eye) / at the best "
              f"SDEdit strength per case | {mean([any(ib.faithful(f) for f in r['imagic'].values()) for r in res]):.0%}"
              f" / {mean([any(ib.faithful(f) for f in r['sdedit'].values()) for r in res]):.0%} |")
        print(f"| Imagic reconstruction (eta 0) PSNR vs the photo | {mean([r['recon_psnr'] for r in res]):.1f} dB |")
        print(f"| e_opt - e_tgt: relative L2 / mean cosine / min cosine | {d['relative_l2']:.3f} / "
              f"{d['mean_cosine']:.4f} / {d['min_cosine']:.4f} |")
        print(f"| e_opt moved towards the source caption's encoding (fraction of e_tgt -> e_src) | "
              f"{d['toward_source']:.2f} |")
        print(f"| probe loss, embedding stage before -> after | {lo['embedding_before']:.4f} -> "
              f"{lo['embedding_after']:.4f} |")
        print(f"| probe loss, fine-tuning stage before -> after | {lo['finetune_before']:.4f} -> "
              f"{lo['finetune_after']:.4f} |")
        print(f"| wall time per case: Imagic 1 (embedding) / Imagic 2 (fine-tuning) / Imagic sampling "
              f"({len(st.etas) + 1} etas, one batch) | {t['embedding']:.1f} s / {t['finetune']:.1f} s / "
              f"{t['sample_imagic']:.1f} s |")
        print(f"| wall time per case: SDEdit ({len(st.strengths)} strengths) | {t['sample_sdedit']:.1f} s |")
        if "cpu_times" in res[0]:
            c = {k: mean([r["cpu_times"][k] for r in res]) for k in res[0]["cpu_times"]}
            print(f"| CPU time per case: Imagic 1 / Imagic 2 / Imagic sampling / SDEdit | {c['embedding']:.1f} s / "
                  f"{c['finetune']:.1f} s / {c['sample_imagic']:.1f} s / {c['sample_sdedit']:.1f} s |")
        print(f"| time per case, all: wall / CPU | {t['case_wall']:.1f} s / {t['case_cpu']:.1f} s |")
        print()
        plot[attr] = {"imagic": im_s, "sdedit": sd_s, "vae": vae}
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "cases": {a: [{k: v for k, v in r.items() if k != "images"} for r in res]
                                                 for a, res in per_attr.items()}}, f, indent=1, default=float)
        print(f"json: {args.json}")
    if args.plot and plot:
        write_plot(plot, examples, args.plot, f"{label}; {args.cases} cases; {cmd}")
        print(f"plot: {args.plot}")
    return 0


def _montage(examples: list) -> tuple:
    """One uint8 picture: per example a row photo | Imagic per eta | SDEdit per strength; and the column labels."""
    cols = ["photo"] + [f"Imagic {e:g}" for e in examples[0]["images"]["imagic"]] + \
           [f"SDEdit {s:g}" for s in examples[0]["images"]["sdedit"]]
    gap = 2
    rows = []
    for r in examples:
        ims = [r["images"]["photo"]] + list(r["images"]["imagic"].values()) + list(r["images"]["sdedit"].values())
        row = np.full((64, len(ims) * (64 + gap) - gap, 3), 255, np.uint8)
        for k, a in enumerate(ims):
            row[:, k * (64 + gap):k * (64 + gap) + 64] = a
        rows.append(row)
    sheet = np.full((len(rows) * (64 + gap) - gap, rows[0].shape[1], 3), 255, np.uint8)
    for k, row in enumerate(rows):
        sheet[k * (64 + gap):k * (64 + gap) + 64] = row
    return sheet, cols


def write_plot(plot: dict, examples: list, path: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    attrs = list(plot)
    n_ex = 1 if examples else 0
    fig = plt.figure(figsize=(13, 3.4 * len(attrs) + (0.9 * len(examples) + 0.8) * n_ex))
    gs = fig.add_gridspec(len(attrs) + n_ex, 3, height_ratios=[3.4] * len(attrs) + ([0.9 * len(examples) + 0.8]
                                                                                      if n_ex else []))
    for row, attr in enumerate(attrs):
        p = plot[attr]
        for col, (kind, xlabel) in enumerate((("imagic", "Imagic eta"), ("sdedit", "SDEdit strength s"))):
            ax = fig.add_subplot(gs[row, col])
            xs = list(p[kind])
            for key, lab in (("success", "success"), ("iou", "structure IoU"), ("faithful", "faithful edit")):
                ax.plot(xs, [p[kind][x][key] for x in xs], marker="o", label=lab)
            ax.axhline(p["vae"]["iou"], color="gray", ls=":", lw=1, label="no edit (VAE) IoU")
            ax.set_ylim(0, 1.02)
            ax.set_xlabel(xlabel)
            ax.set_title(f"{attr} edit: {kind}")
            ax.legend(fontsize=7, loc="lower left")
        ax = fig.add_subplot(gs[row, 2])
        for kind, marker, lab in (("imagic", "o", "Imagic (eta)"), ("sdedit", "s", "SDEdit (s)")):
            xs = list(p[kind])
            ax.plot([p[kind][x]["iou"] for x in xs], [p[kind][x]["success"] for x in xs], marker=marker, label=lab)
            for x in xs:
                ax.annotate(f"{x:g}", (p[kind][x]["iou"], p[kind][x]["success"]), fontsize=7,
                            textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("structure IoU")
        ax.set_ylabel("success")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{attr} edit: success vs structure")
        ax.legend(fontsize=7)
    if examples:
        sheet, cols = _montage(examples)
        ax = fig.add_subplot(gs[len(attrs), :])
        ax.imshow(sheet, interpolation="nearest")
        ax.set_xticks([k * 66 + 32 for k in range(len(cols))])
        ax.set_xticklabels(cols, fontsize=7)
        ax.set_yticks([k * 66 + 32 for k in range(len(examples))])
        ax.set_yticklabels([f"{r['seed']}: {r['old']}->{r['new']}" for r in examples],
                           fontsize=7)
        ax.set_title("examples (photo | Imagic per eta | SDEdit per strength)", fontsize=9)
    fig.suptitle(label, fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
