"""Fidelity benchmark: "edited only where the words changed", measured (bench/fidelitybench.py has the cases).

On the ToyWorld UNet and the ToyWorld MM-DiT, side by side in one run: seeded colour swaps (with the scene's full caption, and with a plain one
naming only the object, as the main job's) and refines, each
inverted with every inversion method (UNet: DDIM, negative-prompt, null-text, Direct; MM-DiT: rf_euler, rf_solver,
fireflow, Direct) and edited with no mask, the attention mask, the prediction-difference mask, and the locked
background on each mask; judge success, structure IoU, background PSNR / SSIM outside the objects, seconds per edit.

    python bench/bench_fidelity.py                          # both models, 100 cases per kind (two processes)
    python bench/bench_fidelity.py --cases 8 --plot ""      # a quick look
    python bench/bench_fidelity.py --model unet --json out/fid_unet.json --plot ""
    python bench/bench_fidelity.py --merge out/fid_unet.json out/fid_mmdit.json --plot docs/fidelity.png

Prints one markdown table per model and kind, then the targets (issue "edit only where the words changed") with
the measured figures: Direct + P2P against null-text + P2P on the UNet colour swap (time per edit, background PSNR,
IoU), the MM-DiT colour swap's background with the prediction mask, and the locked background's identity.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

KINDS = ("swap", "swap_plain", "refine")
METRICS = ("success", "iou", "bg_psnr", "bg_ssim", "inversion_s", "edit_s", "seconds", "cover")


def mean(xs):
    xs = [float(x) for x in xs if x is not None and not (isinstance(x, float) and math.isnan(x))]
    return float(np.mean(xs)) if xs else float("nan")


def run_model(model: str, cases: int, kinds, steps: int, seed0: int) -> dict:
    """{"model": label, "kinds": {kind: {"method|variant": {metric: mean, "n": cases, "identical": share}}}}."""
    import torch

    from attention_edit.comfy_bridge import host

    host.configure(cpu=not torch.cuda.is_available())
    from attention_edit.bench import editbench as eb
    from attention_edit.bench import fidelitybench as fb

    tm = eb.load_mmdit() if model == "mmdit" else eb.load_model()
    st = fb.settings_for(model, steps=steps)
    invs = fb.MMDIT_INVERSIONS if model == "mmdit" else fb.UNET_INVERSIONS
    out = {"model": model, "label": tm.label, "steps": steps, "cfg": st.cfg, "cases": cases, "kinds": {}}
    for kind in kinds:
        t0 = time.time()
        rows = [fb.fidelity_case(tm, seed0 + i, kind, st, invs) for i in range(cases)]
        table = {}
        for key in rows[0]:
            if key == "case":
                continue
            rs = [r[key] for r in rows]
            cell = {m: mean([r[m] for r in rs]) for m in METRICS}
            cell["n"] = len(rs)
            if "identical" in rs[0]:
                cell["identical"] = mean([r["identical"] for r in rs])
            table[f"{key[0]}|{key[1]}"] = cell
        out["kinds"][kind] = {"table": table, "wall_s": time.time() - t0,
                              "per_case": [{f"{k[0]}|{k[1]}": v for k, v in r.items() if k != "case"} | {"case": r["case"]}
                                           for r in rows]}
        print(f"[bench_fidelity] {model} {kind}: {cases} cases in {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


MODEL_NAMES = {"unet": "ToyWorld UNet (SD1.x architecture, cfg 7.5)", "mmdit": "ToyWorld MM-DiT (Flux.1 architecture, cfg 1)"}
KIND_NAMES = {"swap": "colour swap", "swap_plain": "colour swap, plain caption (the object only)",
              "refine": "refine (add 'big')"}


def print_tables(results: list) -> None:
    for res in results:
        for kind, data in res["kinds"].items():
            t = data["table"]
            n = next(iter(t.values()))["n"]
            print(f"\n### {MODEL_NAMES.get(res['model'], res['model'])}: {KIND_NAMES[kind]}, {n} cases, {res['steps']} steps\n")
            print("| inversion | mask | success | structure IoU | background PSNR | background SSIM | inversion s | "
                  "edit s | s per edit |")
            print("|---|---|---|---|---|---|---|---|---|")
            for key, c in t.items():
                method, variant = key.split("|")
                psnr = f"{c['bg_psnr']:.1f} dB"
                if "identical" in c:
                    psnr += f" ({c['identical']:.0%} identical outside)"
                print(f"| {method} | {variant} | {c['success']:.0%} | {c['iou']:.2f} | {psnr} | {c['bg_ssim']:.3f} | "
                      f"{c['inversion_s']:.2f} | {c['edit_s']:.2f} | {c['seconds']:.2f} |")


def print_grids(results: list) -> None:
    """The README's compact form: per model and kind, a row per inversion and a column per mask, each cell
    "success / IoU / background PSNR / SSIM", and the seconds per edit without and with the prediction mask."""
    for res in results:
        for kind, data in res["kinds"].items():
            t = data["table"]
            methods = list(dict.fromkeys(k.split("|")[0] for k in t))
            variants = list(dict.fromkeys(k.split("|")[1] for k in t))
            n = next(iter(t.values()))["n"]
            print(f"\n{MODEL_NAMES.get(res['model'], res['model'])}, {KIND_NAMES[kind]} ({n} cases): success / "
                  "structure IoU / background PSNR / SSIM\n")
            print("| inversion | " + " | ".join(variants) + " | s per edit (none / prediction) |")
            print("|---" * (len(variants) + 2) + "|")
            for m in methods:
                cells = []
                for v in variants:
                    c = t[f"{m}|{v}"]
                    psnr = "identical" if c["bg_psnr"] >= 100 else f"{c['bg_psnr']:.1f}"
                    cells.append(f"{c['success']:.0%} / {c['iou']:.2f} / {psnr} / {c['bg_ssim']:.3f}")
                secs = f"{t[f'{m}|none']['seconds']:.2f} / {t[f'{m}|prediction']['seconds']:.2f}"
                print(f"| {m} | " + " | ".join(cells) + f" | {secs} |")


def targets(results: list) -> list:
    """(text, passed) per target of the issue that these results measure."""
    out = []
    by = {r["model"]: r for r in results}
    if "unet" in by and "swap" in by["unet"]["kinds"]:
        t = by["unet"]["kinds"]["swap"]["table"]
        for variant in ("none", "attention", "prediction"):
            d, n = t[f"direct|{variant}"], t[f"null_text|{variant}"]
            ratio = n["seconds"] / d["seconds"]
            ok = ratio >= 5 and d["bg_psnr"] >= n["bg_psnr"] and d["iou"] >= n["iou"]
            out.append((f"UNet colour swap, mask {variant}: Direct + P2P {ratio:.1f}x faster per edit than null-text + "
                        f"P2P ({d['seconds']:.2f} s vs {n['seconds']:.2f} s), background {d['bg_psnr']:.1f} vs "
                        f"{n['bg_psnr']:.1f} dB, IoU {d['iou']:.2f} vs {n['iou']:.2f} (target >= 5x at equal or "
                        "better background and IoU)", ok))
    if "unet" in by and "swap_plain" in by["unet"]["kinds"]:
        t = by["unet"]["kinds"]["swap_plain"]["table"]
        n, d, lk = t["null_text|none"], t["direct|none"], t["direct|locked (prediction)"]
        out.append((f"UNet colour swap with a plain caption (the main job's kind): background null-text + P2P "
                    f"{n['bg_psnr']:.1f} dB ({n['success']:.0%} judged right), Direct + P2P {d['bg_psnr']:.1f} dB "
                    f"({d['success']:.0%}), Direct + P2P + prediction mask + locked background {lk['bg_psnr']:.1f} dB "
                    f"({lk['success']:.0%}) (target >= 30 dB with the judge reading the edit right)",
                    lk["bg_psnr"] >= 30 and lk["success"] >= 0.9))
    if "mmdit" in by and "swap" in by["mmdit"]["kinds"]:
        t = by["mmdit"]["kinds"]["swap"]["table"]
        for m in ("direct", "rf_solver"):
            c = t[f"{m}|prediction"]
            out.append((f"MM-DiT colour swap, {m} + prediction-difference mask: background {c['bg_psnr']:.1f} dB "
                        f"outside the object, success {c['success']:.0%} (target >= 30 dB)", c["bg_psnr"] >= 30))
            a = t[f"{m}|attention"]
            out.append((f"MM-DiT colour swap, {m}: the prediction mask covers {c['cover']:.0%} of the image, the "
                        f"attention mask {a['cover']:.0%} (a local edit needs the first)", c["cover"] < 0.5))
    for r in results:
        for kind, data in r["kinds"].items():
            ident = [c["identical"] for c in data["table"].values() if "identical" in c]
            out.append((f"{r['model']} {kind}: locked background bit-identical outside the mask in "
                        f"{min(ident):.0%} of the cases (every variant; target 100%)", min(ident) == 1.0))
    return out


def plot(results: list, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(r, k) for r in results for k in r["kinds"]]
    fig, axes = plt.subplots(len(panels), 2, figsize=(13, 3.2 * len(panels)), squeeze=False)
    for row, (r, kind) in enumerate(panels):
        t = r["kinds"][kind]["table"]
        methods = list(dict.fromkeys(k.split("|")[0] for k in t))
        variants = list(dict.fromkeys(k.split("|")[1] for k in t))
        w = 0.8 / len(variants)
        for j, v in enumerate(variants):
            xs = np.arange(len(methods)) + j * w
            axes[row, 0].bar(xs, [min(t[f"{m}|{v}"]["bg_psnr"], 70) for m in methods], w, label=v)
            axes[row, 1].bar(xs, [t[f"{m}|{v}"]["success"] * 100 for m in methods], w, label=v)
        for ax, what in zip(axes[row], ("background PSNR (dB, capped at 70)", "judge success (%)")):
            ax.set_xticks(np.arange(len(methods)) + 0.4 - w / 2, methods)
            ax.set_title(f"{r['model']} {KIND_NAMES[kind]}: {what}", fontsize=9)
        axes[row, 0].axhline(30, color="k", lw=0.6, ls="--")
    handles, labels = axes[0, 1].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"\nplot: {path}")


def report(results: list, plot_path: str) -> int:
    print_tables(results)
    print("\n### The same, compact (README)")
    print_grids(results)
    print("\n### Targets\n")
    for text, ok in targets(results):
        print(f"- {'met' if ok else 'MISSED'}: {text}")
    if plot_path:
        plot(results, plot_path)
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("both", "unet", "mmdit"), default="both",
                    help="both: the UNet and the MM-DiT in two processes at once (one thread each), one report")
    ap.add_argument("--cases", type=int, default=100, help="seeded cases per kind (issue: at least 100)")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--seed0", type=int, default=1000, help="the first case's seed (the ToyWorld benchmark's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default="", help="write the results here (for --merge)")
    ap.add_argument("--plot", default="docs/fidelity.png")
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="instead: report the --json files of earlier runs")
    args = ap.parse_args(argv)
    if args.merge:
        results = []
        for p in args.merge:
            d = json.load(open(p))
            results.extend(d if isinstance(d, list) else [d])
        return report(results, args.plot)
    kinds = [k for k in args.kinds.split(",") if k]
    if args.model == "both":
        tmp = tempfile.mkdtemp(prefix="bench_fidelity_")
        procs, paths = [], []
        for m in ("unet", "mmdit"):
            p = os.path.join(tmp, f"{m}.json")
            paths.append(p)
            procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--model", m, "--cases",
                                           str(args.cases), "--kinds", ",".join(kinds), "--steps", str(args.steps),
                                           "--seed0", str(args.seed0), "--threads", str(args.threads),
                                           "--json", p, "--plot", ""], stdout=subprocess.DEVNULL))
        if any(p.wait() for p in procs):
            print("[bench_fidelity] a model's run failed", file=sys.stderr)
            return 1
        results = [json.load(open(p)) for p in paths]
        if args.json:
            json.dump(results, open(args.json, "w"))
        return report(results, args.plot)

    import torch

    torch.set_num_threads(args.threads)
    res = run_model(args.model, args.cases, kinds, args.steps, args.seed0)
    if args.json:
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        json.dump(res, open(args.json, "w"))
    return report([res], args.plot)


if __name__ == "__main__":
    sys.exit(main())
