"""ToyWorld AdapEdit benchmark: AdapEdit (FWT + DPS) vs plain P2P refine on a size edit and a position-bound edit.

    python bench/bench_adapedit.py                  # 100 seeded cases of each type (about 75 min on 1 CPU thread)
    python bench/bench_adapedit.py --cases 10       # a quick look
    python bench/bench_adapedit.py --variants p2p,adapedit --plot out/adap.png

Issue "AdapEdit" (ToyWorld requirement): a size edit ('a small red circle' -> 'a big red circle') and a
position-bound edit, measured by the judge, against plain P2P refine on the same cases. The cases, methods and
measures are defined in bench/adapbench.py (its docstring says what success and structure mean). Every method
of a case edits the same null-text inversion; AdapEdit uses the paper's defaults; ``no_fwt`` / ``no_dps`` are
the paper's ablations and ``no_mask`` is AdapEdit without the alpha_m pixel mask ('w/o DPS*').

Prints markdown tables (the command in the header) and writes a plot PNG (matplotlib Agg): success bars per
method and edit type, and example rows source | reconstruction | P2P | AdapEdit. Cases are seeded: the same
command gives the same figures on the same machine.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex
import sys
import time

import numpy as np

LABELS = {"p2p": "P2P refine", "adapedit": "AdapEdit (FWT + DPS)", "no_fwt": "AdapEdit w/o FWT (DPS only)",
          "no_dps": "AdapEdit w/o DPS (FWT only)", "no_mask": "AdapEdit w/o alpha_m mask"}


def mean(xs):
    xs = [float(x) for x in xs if x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))]
    return float(np.mean(xs)) if xs else float("nan")


def pct(x):
    return "n/a" if math.isnan(x) else f"{x:.0%}"


def paired(res, a, b, key):
    """(cases where a succeeds and b does not, the reverse)."""
    return (sum(bool(r[a][key]) and not bool(r[b][key]) for r in res),
            sum(bool(r[b][key]) and not bool(r[a][key]) for r in res))


def size_table(res, variants):
    ok = [r for r in res if r["reconstruction"]["faithful"]]
    lines = [f"#### Size edit: 'a small X' -> 'a big X' on a one-object scene ({len(res)} cases)", "",
             "| method | judged big | kept colour, shape, position | big and kept | centre kept (<= 4 px) | "
             "centre shift | source covered | area ratio | background PSNR | big and kept, faithful "
             f"reconstructions (n={len(ok)}) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        lines.append(
            f"| {LABELS.get(v, v)} | {pct(mean([r[v]['success'] for r in res]))} | "
            f"{pct(mean([r[v]['kept'] for r in res]))} | {pct(mean([r[v]['success_kept'] for r in res]))} | "
            f"{pct(mean([r[v]['centre_kept'] for r in res]))} | {mean([r[v]['centre_shift'] for r in res]):.1f} px | "
            f"{mean([r[v]['coverage'] for r in res]):.2f} | {mean([r[v]['area_ratio'] for r in res]):.2f} | "
            f"{mean([r[v]['bg_psnr'] for r in res]):.1f} dB | {pct(mean([r[v]['success_kept'] for r in ok]))} |")
    lines += _footer(res, variants, "success_kept", "big and kept")
    return lines


def position_table(res, attribute, variants):
    rs = [r[attribute] for r in res]
    ok = [r[attribute] for r in res if r["reconstruction"]["faithful"]]
    what = {"size": "its size word 'small' -> 'big'", "colour": "its colour word -> a colour neither object has"}
    struct = {"size": "centre shift / source covered", "colour": "mask IoU"}[attribute]
    lines = [f"#### Position-bound {attribute} edit: a two-object scene, the object at one position changes "
             f"{what[attribute]} ({len(rs)} cases)", "",
             f"| method | edited object changed | other object kept | both | edited object: {struct} | "
             f"other object IoU | background PSNR | both, faithful reconstructions (n={len(ok)}) |",
             "|---|---|---|---|---|---|---|---|"]
    for v in variants:
        if attribute == "size":
            st = f"{mean([r[v]['centre_shift'] for r in rs]):.1f} px / {mean([r[v]['coverage'] for r in rs]):.2f}"
        else:
            st = f"{mean([r[v]['iou'] for r in rs]):.2f}"
        lines.append(
            f"| {LABELS.get(v, v)} | {pct(mean([r[v]['success'] for r in rs]))} | "
            f"{pct(mean([r[v]['other_kept'] for r in rs]))} | {pct(mean([r[v]['success_other_kept'] for r in rs]))} | "
            f"{st} | {mean([r[v]['other_iou'] for r in rs]):.2f} | {mean([r[v]['bg_psnr'] for r in rs]):.1f} dB | "
            f"{pct(mean([r[v]['success_other_kept'] for r in ok]))} |")
    lines += _footer(rs, variants, "success_other_kept", "both")
    return lines


def _footer(rs, variants, key, name):
    out = [""]
    if "p2p" in variants:
        for v in variants:
            if v != "p2p":
                w, l = paired(rs, v, "p2p", key)
                out.append(f"- {LABELS.get(v, v)} vs P2P on the same cases ({name}): better on {w}, worse on {l}")
    deg = mean([r["fwt_degenerate"] for r in rs])
    out.append(f"- FWT degenerate (the keyword's map under alpha_m everywhere: every word gets tau = 1 - 1/e): "
               f"{pct(deg)} of the cases")
    out.append("")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100, help="cases per type")
    ap.add_argument("--weights", default=None, help="a ToyWorld safetensors (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--inner", type=int, default=10, help="null-text inner steps (reference default 10)")
    ap.add_argument("--only", default="size,position", help="case types: size, position")
    ap.add_argument("--position-attrs", default="size,colour", help="what the position-bound edit changes")
    ap.add_argument("--variants", default="p2p,adapedit,no_fwt,no_dps,no_mask",
                    help="methods (p2p always runs: it is AdapEdit's first pass)")
    ap.add_argument("--no-size-word", action="store_true",
                    help="size edit: invert the caption without 'small' (editbench.refine_case's convention)")
    ap.add_argument("--examples", type=int, default=3, help="example rows per case type in the plot")
    ap.add_argument("--plot", default="out/toyworld_adapedit.png")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.bench import adapbench as ab
    from attention_edit.bench import editbench as eb

    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in ab.VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(ab.VARIANTS)}")
    variants = {"p2p": ab.VARIANTS["p2p"], **{v: ab.VARIANTS[v] for v in names}}
    only = set(args.only.split(","))
    attrs = tuple(a for a in args.position_attrs.split(",") if a)
    tm = eb.load_model(args.weights)
    st = eb.Settings(steps=args.steps, num_inner_steps=args.inner)
    seeds = range(1000, 1000 + args.cases)
    t0 = time.time()
    size_res, pos_res, examples = [], [], []
    for i, s in enumerate(seeds):
        keep = i < args.examples
        if "size" in only:
            r = ab.size_case(tm, s, st, variants, source_size_word=not args.no_size_word, keep_images=keep)
            if keep:
                examples.append(("size", r.pop("images"), r))
            size_res.append(r)
        if "position" in only:
            r = ab.position_case(tm, s, st, attrs, variants, keep_images=keep)
            for a in attrs:
                if keep:
                    examples.append((f"position {a}", r[a].pop("images"), r[a]))
            pos_res.append(r)
        print(f"case {i + 1}/{args.cases} done, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    cmd = "python bench/bench_adapedit.py" + "".join(" " + shlex.quote(a) for a in (argv if argv is not None
                                                                                    else sys.argv[1:]))
    print(f"\n### ToyWorld AdapEdit benchmark: {tm.label}; `{cmd}`\n")
    print(f"{args.cases} cases per type (seeds 1000..{999 + args.cases}), {st.steps} steps, cfg {st.cfg}, inversion "
          f"{st.inversion} ({st.num_inner_steps} inner steps), P2P refine cross_replace_steps "
          f"{st.cross_replace_steps}, self_replace_steps {st.self_replace_steps}; AdapEdit lambda_tau 1.0, "
          f"alpha_m 0.03, lambda_S 0.9, lambda_S[V] 1.0; {time.time() - t0:.0f} s\n")
    variant_names = list(variants)
    if size_res:
        rec = [r["reconstruction"] for r in size_res]
        print("\n".join(size_table(size_res, variant_names)))
        print(f"Reconstruction (the source row of the same runs): judge reads the object faithfully in "
              f"{pct(mean([r['faithful'] for r in rec]))}, PSNR {mean([r['psnr'] for r in rec]):.1f} dB. "
              f"Source caption: {'without' if args.no_size_word else 'with'} 'small'.\n")
    if pos_res:
        for a in attrs:
            print("\n".join(position_table(pos_res, a, variant_names)))
        rec = [r["reconstruction"] for r in pos_res]
        print(f"Reconstruction of the two-object scenes: judge reads both objects faithfully in "
              f"{pct(mean([r['faithful'] for r in rec]))}, PSNR {mean([r['psnr'] for r in rec]):.1f} dB.\n")
    if args.plot:
        write_plot(size_res, pos_res, attrs, variant_names, examples, args.plot, tm.label)
        print(f"plot: {args.plot}")
    return 0


def write_plot(size_res, pos_res, attrs, variants, examples, path, label) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []
    if size_res:
        groups.append(("size edit\n(big and kept)", [mean([r[v]["success_kept"] for r in size_res]) for v in variants]))
    for a in attrs if pos_res else ():
        groups.append((f"position-bound {a}\n(changed and other kept)",
                       [mean([r[a][v]["success_other_kept"] for r in pos_res]) for v in variants]))
    cols = ["source", "reconstruction", "p2p", "adapedit"]
    n_ex = len(examples)
    fig = plt.figure(figsize=(max(8.0, 2.2 * len(groups) + 4), 3.4 + 1.3 * n_ex))
    gs = fig.add_gridspec(1 + n_ex, len(cols), height_ratios=[3.0] + [1.3] * n_ex)
    ax = fig.add_subplot(gs[0, :])
    w = 0.8 / max(1, len(variants))
    for j, v in enumerate(variants):
        xs = [i + (j - (len(variants) - 1) / 2) * w for i in range(len(groups))]
        ax.bar(xs, [g[1][j] for g in groups], w, label=LABELS.get(v, v))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g[0] for g in groups], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("success (judge)")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title(label, fontsize=9)
    for i, (kind, imgs, r) in enumerate(examples):
        for c, col in enumerate(cols):
            a = fig.add_subplot(gs[1 + i, c])
            if col in imgs:
                a.imshow(imgs[col], interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            if c == 0:
                a.set_ylabel(kind, fontsize=7)
            if col in ("p2p", "adapedit") and col in r:
                key = "success_kept" if "success_kept" in r[col] else "success_other_kept"
                a.set_title(f"{LABELS[col]}: {'ok' if r[col][key] else 'fail'}", fontsize=6)
            elif col == "source":
                a.set_title(r["target"][:48], fontsize=5)
            else:
                a.set_title(col, fontsize=6)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
