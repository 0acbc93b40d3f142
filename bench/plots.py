"""Plots of a bench/run.py results file, drawn in the peers' venv (which has matplotlib):

    .venv-peers/bin/python plots.py results.json crops.npz OUTPUT_DIR

Writes psnr_vs_time.png (PSNR against training wall time: CAREamics N2V2, our
n2v2 from scratch and fine-tuned from general-2d, with the classical methods as
lines) and crops.png (the same crop denoised by each method).
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

CURVES = [("careamics", "CAREamics N2V2", "tab:red"), ("n2v2", "ours: n2v2 from scratch", "tab:blue"),
          ("n2v2_from_default", "ours: n2v2 fine-tuned from general-2d", "tab:green"),
          ("care", "ours: care (supervised)", "tab:purple")]
LINES = [("nlm", "non-local means", "0.5"), ("bm3d", "BM3D", "k"), ("bm3d_vst", "BM3D + Anscombe", "k"),
         ("default", "general-2d, no training", "tab:green")]
CROPS = [("clean", "clean"), ("noisy", "noisy"), ("nlm", "NLM"), ("bm3d", "BM3D"), ("bm3d_vst", "BM3D + Anscombe"),
         ("careamics", "CAREamics N2V2"), ("n2v2", "n2v2"), ("default", "general-2d"),
         ("n2v2_from_default", "n2v2 from general-2d"), ("care", "care")]


def psnr_vs_time(rows, path):
    rows = [r for r in rows if "careamics" in r]
    fig, axes = plt.subplots(1, len(rows), figsize=(4.2 * len(rows), 3.6), squeeze=False)
    for ax, row in zip(axes[0], rows):
        for key, label, colour in CURVES:
            if key in row and row[key].get("curve"):
                curve = row[key]["curve"]
                ax.plot([c["train_seconds"] for c in curve], [c["psnr"] for c in curve], "o-", color=colour,
                        label=label, ms=3)
        for key, label, colour in LINES:
            if key in row:
                ax.axhline(row[key]["psnr"], color=colour, ls="--" if key != "bm3d_vst" else ":", lw=1, label=label)
        ax.set_title(f"{row['image']}, {row['noise']}", fontsize=10)
        ax.set_xlabel("training wall time (s, 2 CPU cores)")
        ax.set_ylabel("PSNR (dB)")
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    for ax in axes[0][1:]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(seen.values(), seen.keys(), loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def crops(rows, arrays, path):
    cases = [(r["image"], r["noise"], r) for r in rows if f"{r['image']}/{r['noise']}/clean" in arrays]
    methods = [(k, t) for k, t in CROPS if any(f"{i}/{n}/{k}" in arrays for i, n, _ in cases)]
    fig, axes = plt.subplots(len(cases), len(methods), figsize=(1.6 * len(methods), 1.75 * len(cases)),
                             squeeze=False)
    for (image, noise, row), line in zip(cases, axes):
        for ax, (key, title) in zip(line, methods):
            ax.axis("off")
            array = arrays.get(f"{image}/{noise}/{key}")
            if array is None:
                continue
            ax.imshow(array, cmap="gray", vmin=0, vmax=255)
            score = f"\n{row[key]['psnr']:.2f} dB" if key in row else ""
            ax.set_title(f"{title}{score}", fontsize=7)
        line[0].text(-0.08, 0.5, f"{image}\n{noise}", transform=line[0].transAxes, ha="right", va="center",
                     fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    results = json.loads(Path(sys.argv[1]).read_text())
    arrays = dict(np.load(sys.argv[2]))
    out = Path(sys.argv[3])
    psnr_vs_time(results["quality"], out / "psnr_vs_time.png")
    crops(results["quality"], arrays, out / "crops.png")
    print(f"wrote {out / 'psnr_vs_time.png'} and {out / 'crops.png'}")


if __name__ == "__main__":
    main()
