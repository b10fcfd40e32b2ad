"""ToyWorld benchmark: text-to-image faithfulness, inversion PSNR, P2P word swap / refine / reweight, judged.

    python bench/bench_toyworld.py                 # >= 100 seeded cases of each type (tens of minutes on a CPU)
    python bench/bench_toyworld.py --cases 10      # a quick look
    python bench/bench_toyworld.py --weights runs/toyworld/export.safetensors --plot out/toyworld.png
    # the same in two processes (two cores), then one table and plot:
    python bench/bench_toyworld.py --only t2i,inversion,swap --json out/tw_a.json --plot "" &
    python bench/bench_toyworld.py --only refine,reweight --json out/tw_b.json --plot "" ; wait
    python bench/bench_toyworld.py --merge out/tw_a.json out/tw_b.json --plot out/toyworld_bench.png
    # the ToyWorld MM-DiT (Flux architecture, toyworld/train_mmdit.py), for the UNet / MM-DiT side by side:
    python bench/bench_toyworld.py --model mmdit --only inversion,swap,refine --cases 16 --plot ""
    # side by side: one --json per model (and per --mmdit-blocks), then one table with a column each
    python bench/bench_toyworld.py --only t2i,inversion,swap,refine --cases 48 --plot "" --json out/cmp_unet.json
    python bench/bench_toyworld.py --model mmdit --only t2i,inversion,swap,refine --cases 48 --plot "" \
        --json out/cmp_mmdit_all.json
    python bench/bench_toyworld.py --compare out/cmp_unet.json out/cmp_mmdit_all.json

Prints a markdown table and writes a plot PNG (matplotlib). Cases are seeded: the same command gives the same
figures on the same machine. Targets (issue "ToyWorld"): faithfulness >= 90% per attribute; null-text PSNR >= DDIM
+ 5 dB; colour swap success >= 85% with structure IoU >= 0.8; background PSNR with local blend >= 30 dB.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np


def mean(xs):
    xs = [x for x in xs if x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))]
    return float(np.mean(xs)) if xs else float("nan")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100, help="cases per type (issue: at least 100)")
    ap.add_argument("--weights", default=None, help="a ToyWorld safetensors (default: the shipped one)")
    ap.add_argument("--model", choices=("unet", "mmdit"), default="unet",
                    help="unet: the SD1.x-architecture ToyWorld model; mmdit: the Flux-architecture ToyWorld MM-DiT "
                         "(rectified flow: RF-Solver inversion at CFG 1; run both for the side-by-side table)")
    ap.add_argument("--mmdit-weights", default=None, help="the ToyWorld MM-DiT weights (default: the shipped ones)")
    ap.add_argument("--mmdit-blocks", default="all", choices=("all", "double", "vital"),
                    help="--model mmdit: the blocks whose joint attention is controlled")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=None,
                    help="guidance scale of inversion, edits and text-to-image (default: 7.5 / 6 on the UNet, 1 on "
                         "the MM-DiT)")
    ap.add_argument("--inner", type=int, default=10, help="null-text inner steps (reference default 10)")
    ap.add_argument("--only", default="t2i,inversion,swap,refine,reweight")
    ap.add_argument("--plot", default="out/toyworld_bench.png")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="also write the rows and plot data here (for --merge)")
    ap.add_argument("--merge", nargs="+", metavar="JSON",
                    help="instead: merge the --json files of runs with different --only (run in parallel) into one "
                         "table and plot")
    ap.add_argument("--compare", nargs="+", metavar="JSON",
                    help="instead: one table with a column per --json file (runs of different models or block "
                         "choices on the same cases: the UNet / MM-DiT side by side)")
    args = ap.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.plot)
    if args.compare:
        return compare(args.compare)

    import torch

    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.bench import editbench as eb

    if args.model == "mmdit":
        tm = eb.load_mmdit(args.mmdit_weights)
        st = eb.Settings(steps=args.steps, num_inner_steps=args.inner, mmdit_blocks=args.mmdit_blocks,
                         **eb.MMDIT_SETTINGS)
    else:
        tm = eb.load_model(args.weights)
        st = eb.Settings(steps=args.steps, num_inner_steps=args.inner)
    if args.cfg is not None:
        st = dataclasses.replace(st, cfg=args.cfg, t2i_cfg=args.cfg)
    only = set(args.only.split(","))
    rows, plot = [], {}
    t0 = time.time()
    seeds = range(1000, 1000 + args.cases)

    if "t2i" in only:
        res = [eb.t2i_case(tm, s, st) for s in seeds]
        for k in ("shape", "colour", "size", "position"):
            rows.append((f"text-to-image faithfulness: {k}", f"{mean([r[k] for r in res]):.0%}", ">= 90%"))
        plot["t2i"] = {k: mean([r[k] for r in res]) for k in ("shape", "colour", "size", "position")}
    if "inversion" in only:
        methods = ("rf_euler", "fireflow", "rf_solver") if args.model == "mmdit" else ("ddim", "negative_prompt",
                                                                                       "null_text")
        res = [eb.inversion_case(tm, s, st, methods) for s in seeds]
        for k in ("vae",) + methods:
            rows.append((f"reconstruction PSNR, {k}" + (" (encode/decode only)" if k == "vae" else f", cfg {st.cfg}"),
                         f"{mean([r[k] for r in res]):.2f} dB", ""))
        gain = mean([r[methods[-1]] - r[methods[0]] for r in res])
        rows.append((f"{methods[-1]} minus {methods[0]} PSNR", f"{gain:+.2f} dB",
                     ">= +5 dB" if args.model == "unet" else ""))
        plot["inversion"] = {k: mean([r[k] for r in res]) for k in methods}
    if "swap" in only:
        for attr in ("colour", "shape"):
            res = [eb.swap_case(tm, s, st, attr) for s in seeds]
            for v in ("p2p", "p2p_blend", "regen"):
                rows.append((f"{attr} swap, {v}: success / structure IoU / background PSNR",
                             f"{mean([r[v]['success'] for r in res]):.0%} / {mean([r[v]['iou'] for r in res]):.2f} / "
                             f"{mean([r[v]['bg_psnr'] for r in res]):.1f} dB",
                             ">= 85% / >= 0.8 / >= 30 dB (blend)" if attr == "colour" else ""))
                plot[f"{attr}_{v}"] = mean([r[v]["success"] for r in res])
    if "maps" in only:
        res = [eb.map_case(tm, s, st) for s in seeds]
        for w in ("shape", "colour"):
            rows.append((f"attention map of the {w} word: localisation on the object (1 = flat) / local-blend mask "
                         f"cover at threshold {st.blend_threshold:g}",
                         f"{mean([r[w]['localisation'] for r in res]):.2f} / {mean([r[w]['mask_cover'] for r in res]):.0%}",
                         ""))
        rows.append(("attention maps: mass per token on the caption's words / on the padding (1 = no preference)",
                     f"{mean([r['word_vs_pad'] for r in res]):.2f}", ""))
    if "refine" in only:
        res = [eb.refine_case(tm, s, st) for s in seeds]
        rows.append(("refine (add 'big'): judged big / kept colour+shape / area ratio",
                     f"{mean([r['success'] for r in res]):.0%} / {mean([r['kept'] for r in res]):.0%} / "
                     f"{mean([r['area_ratio'] for r in res]):.2f}", ""))
    if "reweight" in only:
        res = [eb.reweight_case(tm, s, st) for s in seeds]
        factors = res[0]["factors"]
        areas = [mean([r["areas"][i] for r in res]) for i in range(len(factors))]
        rows.append(("reweight 'big': mean judged area per factor " + ",".join(f"{f:g}" for f in factors),
                     " / ".join(f"{a:.0f}" for a in areas), ""))
        rows.append(("reweight 'big': cases with a non-decreasing / non-increasing area",
                     f"{mean([r['monotonic'] for r in res]):.0%} / {mean([r['monotonic_down'] for r in res]):.0%}", ""))
        rows.append(("reweight 'big': mean Spearman rho of area vs factor", f"{mean([r['spearman'] for r in res]):+.2f}",
                     "monotonic"))
        plot["reweight"] = (factors, areas)

    header = (f"ToyWorld benchmark: {tm.label}; {args.cases} cases per type, {st.steps} steps, cfg {st.cfg}, "
              f"inversion {st.inversion} ({st.num_inner_steps} inner steps)")
    print_table(header + f"; {time.time() - t0:.0f} s", rows)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            column = (f"MM-DiT, {st.mmdit_blocks} blocks ({st.inversion}, cfg {st.cfg:g})" if args.model == "mmdit"
                      else f"UNet ({st.inversion}, cfg {st.cfg:g})")
            json.dump({"header": header, "only": args.only, "seconds": time.time() - t0, "rows": rows,
                       "plot": plot, "label": tm.label, "column": column, "cases": args.cases}, f, indent=1)
    if args.plot and plot:
        write_plot(plot, args.plot, tm.label)
        print(f"\nplot: {args.plot}")
    return 0


def print_table(header: str, rows) -> None:
    print(f"\n### {header}\n")
    print("| figure | value | target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


def merge(paths, plot_path: str) -> int:
    parts = [json.load(open(p)) for p in paths]
    rows, plot = [], {}
    for part in parts:
        rows += [tuple(r) for r in part["rows"]]
        plot.update(part["plot"])
    secs = " + ".join(f"{p['seconds']:.0f} s ({p['only']})" for p in parts)
    print_table(f"{parts[0]['header']}; {secs}", rows)
    if plot_path and plot:
        write_plot(plot, plot_path, parts[0]["label"])
        print(f"\nplot: {plot_path}")
    return 0


def compare(paths) -> int:
    """Prints one markdown table, a column per run (its "column" label), a row per figure. The inversion rows are
    matched by rank (the VAE alone, then each model's methods from the plainest to the best: ddim / negative_prompt
    / null_text on the UNet, rf_euler / fireflow / rf_solver on the MM-DiT), the method named in the cell."""
    parts = [json.load(open(p)) for p in paths]
    names, cells = [], {}
    for k, part in enumerate(parts):
        inv = [r for r in part["rows"] if r[0].startswith("reconstruction PSNR")]
        for r in part["rows"]:
            name, value = r[0], r[1]
            if r in inv:
                rank = inv.index(r)
                name = "reconstruction PSNR, VAE only" if rank == 0 else f"reconstruction PSNR, inversion method {rank}"
                if rank:
                    value = f"{value} ({r[0].split(', ')[1]})"
            elif "minus" in name and "PSNR" in name:
                name = "best minus plainest inversion, PSNR"
            if name not in cells:
                names.append(name)
                cells[name] = {}
            cells[name][k] = value
    cols = [p.get("column", p["label"]) for p in parts]
    print(f"\n### ToyWorld benchmark side by side ({' / '.join(str(p.get('cases', '?')) for p in parts)} cases "
          "per type; the same seeded cases in every column)\n")
    print("| figure | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for n in names:
        print(f"| {n} | " + " | ".join(cells[n].get(k, "") for k in range(len(parts))) + " |")
    return 0


def write_plot(plot: dict, path: str, label: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [k for k in ("t2i", "inversion", "swap", "reweight") if k in plot or (k == "swap" and any(
        x.startswith(("colour_", "shape_")) for x in plot))]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, p in zip(axes[0], panels):
        if p == "t2i":
            ax.bar(list(plot["t2i"]), list(plot["t2i"].values()))
            ax.set_ylim(0, 1)
            ax.set_title("text-to-image faithfulness")
        elif p == "inversion":
            ax.bar(list(plot["inversion"]), list(plot["inversion"].values()))
            ax.set_ylabel("PSNR (dB)")
            ax.set_title("reconstruction at cfg 7.5")
        elif p == "swap":
            keys = [k for k in plot if k.startswith(("colour_", "shape_"))]
            ax.bar(keys, [plot[k] for k in keys])
            ax.set_ylim(0, 1)
            ax.tick_params(axis="x", rotation=45)
            ax.set_title("word swap success")
        elif p == "reweight":
            f, a = plot["reweight"]
            ax.plot(f, a, marker="o")
            ax.set_xlabel("equalizer of 'big'")
            ax.set_ylabel("judged area (px)")
            ax.set_title("reweight sweep")
    fig.suptitle(label, fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    sys.exit(main())
