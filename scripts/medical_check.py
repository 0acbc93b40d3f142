"""Does a medical CT/MR model beat the embedded general-2d on medical images?

    apt-get install -y insighttoolkit5-examples   # brain MR and cryosection slices
    python scripts/medical_check.py               # about 15 minutes on 2 CPU cores

Fine-tunes ``general-2d`` supervised (``care``) with ``flax-denoise train`` on
four medical slices under the same synthetic noise as the embedded model's
training (Gaussian sigma 5-50, Poisson-Gaussian 5-100 photons), then scores
it, ``general-2d`` and non-local means on four other medical images: a brain
MR slice and a cryosection photo from ITK's example data, and pydicom's CT
and MR test slices. Writes ``bench/medical.json`` and ``bench/medical.md``.

The two brain slices of one subject (T1 and proton density) are both on the
training side, so no held-out image shares anatomy with a training image.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from train_embedded import pairs, train, training_record

ROOT = Path(__file__).resolve().parent.parent
ITK = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
TRAIN = ["BrainProtonDensitySlice", "BrainT1Slice", "FatMRISlice", "VisibleWomanHeadSlice"]
HELD_OUT = ["BrainMidSagittalSlice", "VisibleWomanEyeSlice", "CT_small.dcm", "MR_small.dcm"]


def medical(name: str) -> np.ndarray:
    """A medical slice as float64 on 0-255 (DICOM: min-max scaled; RGB PNG: mean of the channels)."""
    if name.endswith(".dcm"):
        import pydicom
        from pydicom.data import get_testdata_file

        image = pydicom.dcmread(get_testdata_file(name)).pixel_array.astype(np.float64)
        return (image - image.min()) / (image.max() - image.min()) * 255
    from skimage import io

    path = ITK / f"{name}.png"
    if not path.is_file():
        sys.exit(f"{path} is missing; install it with: apt-get install -y insighttoolkit5-examples")
    image = io.imread(path)
    return (image[..., :3].mean(axis=-1) if image.ndim == 3 else image).astype(np.float64)


def score(tuned: Path) -> list[dict]:
    from napari_flax_denoise import classical_denoise, denoise, evaluate

    rows = []
    for noisy, clean, label in pairs(HELD_OUT, seed=2, load=medical):
        span = clean.max() - clean.min()
        psnr = lambda x: evaluate(x, clean, data_range=span)["psnr"]  # noqa: E731
        row = {"image": label, "noisy": psnr(noisy), "nlm": psnr(classical_denoise(noisy, "nlm")),
               "general-2d without fusion": psnr(denoise(noisy, "general-2d", axes="YX", fusion=False)),
               "general-2d": psnr(denoise(noisy, "general-2d", axes="YX")),
               "medical": psnr(denoise(noisy, str(tuned), axes="YX"))}
        rows.append(row)
        print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else v for k, v in row.items()), flush=True)
    return rows


def report(rows: list[dict], steps: int, learning_rate: float) -> str:
    gain = lambda a, b: np.mean([r[a] - r[b] for r in rows])  # noqa: E731
    table = "\n".join(f"| {r['image']} | {r['noisy']:.2f} | {r['nlm']:.2f} | {r['general-2d without fusion']:.2f} | "
                      f"{r['general-2d']:.2f} | {r['medical']:.2f} |" for r in rows)
    return f"""# Medical images: general-2d against a medical fine-tune

Made by `python scripts/medical_check.py`. PSNR in dB against the clean image, on {len(HELD_OUT)} held-out
medical images ({', '.join(HELD_OUT)}) under {len(rows) // len(HELD_OUT)} synthetic noise models each.
"medical" is general-2d fine-tuned supervised for {steps} steps (peak learning rate {learning_rate:g})
on {', '.join(TRAIN)}. Both models' outputs are fused with the noisy pixels (the default of `denoise`);
general-2d's are also shown without.

* general-2d against non-local means: **{gain('general-2d', 'nlm'):+.2f} dB** on average,
  behind on {sum(r['general-2d'] < r['nlm'] for r in rows)} of {len(rows)}.
* medical fine-tune against general-2d: **{gain('medical', 'general-2d'):+.2f} dB** on average
  (from {min(r['medical'] - r['general-2d'] for r in rows):+.2f} to {max(r['medical'] - r['general-2d'] for r in rows):+.2f}).
* pixel fusion on general-2d: **{gain('general-2d', 'general-2d without fusion'):+.2f} dB** on average
  (from {min(r['general-2d'] - r['general-2d without fusion'] for r in rows):+.2f} to {max(r['general-2d'] - r['general-2d without fusion'] for r in rows):+.2f}).

| image and noise | noisy | non-local means | general-2d without fusion | general-2d | medical fine-tune |
|---|---|---|---|---|---|
{table}
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    args = parser.parse_args(argv)
    for name in TRAIN + HELD_OUT:
        medical(name)  # fail early when the ITK examples are missing
    with tempfile.TemporaryDirectory() as work:
        tuned = Path(work) / "medical"
        data = Path(work) / "data"
        data.mkdir()
        train(tuned, args.steps, data, "general-2d", args.learning_rate, names=TRAIN, load=medical)
        rows = score(tuned)
    out = ROOT / "bench"
    (out / "medical.json").write_text(json.dumps({"steps": args.steps, "learning_rate": args.learning_rate,
                                                  "train": TRAIN, "model_record": training_record("general-2d"),
                                                  "rows": rows}, indent=1))
    (out / "medical.md").write_text(report(rows, args.steps, args.learning_rate))
    print((out / "medical.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
