"""Train the embedded 3D default ``general-3d`` with our own CLI, reproducibly.

    python scripts/train_embedded_3d.py --rebuild         # the shipped model from scratch: every run of STAGES,
                                                          # about 3 hours on 2 CPU cores
    python scripts/train_embedded_3d.py --steps 100 --output /tmp/try   # a quick try
    python scripts/train_embedded_3d.py --init general-3d --learning-rate 5e-4 --extruded 56 --output /tmp/more
    python scripts/train_embedded_3d.py --evaluate-only   # measure the shipped model again, rewrite its card

The 3D model has general-2d's design on Z Y X patches: a noise-aware
residual U-Net, trained supervised (``care``) with every volume normalised
on its own. Data: synthetic fluorescence-like volumes from
``scripts/volumes.py`` (nuclei, filaments, puncta, tissue; a Gaussian
point-spread function 2-4x longer along Z; voxels 1, 2, 3 or 5 times longer
along Z than across), each under one noise drawn from the same ranges as
general-2d's (Gaussian sigma 2-75 on 0-255, Poisson-Gaussian 2-200 photons;
from the fourth run also sigma 0 and 1, ``--weak``).
Training on volumes with anisotropic voxels is how it copes with them: it is
not told the spacing.

Held out: volumes from seeds the training never drew (each structure on its
own, isotropic and with Z spacing 4), and nibabel's small MR volume
``anatomical.nii``, at Gaussian sigma 25, at 30 photons and at sigma 2; and nibabel's
fMRI example with its real noise (two time points). The card compares the
model with general-2d applied plane by plane (what 3D stacks got before).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from train_embedded import (GAUSSIAN, POISSON, TRAIN_IMAGES, gaussian, grey, poisson_gaussian, rebuild, train,
                            training_record)
from volumes import KINDS, extruded, volume

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "src" / "napari_flax_denoise" / "models" / "general-3d"
SHAPE = (48, 96, 96)
Z_STEPS = (1, 2, 3, 5)
TRAIN_VOLUMES = 96
HELD_OUT_SEED = 1_000_000  # training volumes use seeds 0 .. TRAIN_VOLUMES - 1
HELD_OUT_NOISES = (("gauss25", "poisson30"), ("gauss2",))  # the two; weak noise (from the fourth run)
EXTRUDED = 56  # volumes made from general-2d's training images (``volumes.extruded``), from the second run
# Gaussian sigmas added to the noises from the fourth run: with none or almost none, the network must leave a
# volume as it is (before, told a level below its range, it still smoothed fine real structure away).
WEAK = (0, 1)
SETTINGS = {"noise_input": True, "depth": 2, "features": 16, "patch_size": 32, "batch_size": 4}
# The runs that made the shipped general-3d, each continuing the one before (``--rebuild``).
STAGES = (dict(steps=4500), dict(steps=3000, learning_rate=5e-4, extruded=EXTRUDED),
          dict(steps=3000, learning_rate=3e-4, extruded=EXTRUDED),
          dict(steps=3000, learning_rate=3e-4, extruded=EXTRUDED, weak=True),
          dict(steps=3000, learning_rate=2e-4, extruded=EXTRUDED, weak=True))


def noisy(clean: np.ndarray, noise: str, rng) -> tuple[np.ndarray, np.ndarray]:
    """``clean`` under ``noise`` ('gauss25', 'poisson30', ...): (noisy, clean target)."""
    if noise.startswith("gauss"):
        return gaussian(clean, float(noise[5:]), rng)
    photons = float(noise[7:])
    read = dict(POISSON).get(int(photons), 2.0)
    return poisson_gaussian(clean, photons, read, rng)


def training_data(count: int = TRAIN_VOLUMES, from_images: int = 0, weak: bool = False):
    """(noisy, clean, label) for ``count`` synthetic volumes and ``from_images`` volumes extruded from
    general-2d's training images (in turn), each under one noise of the ranges (and of ``WEAK`` with
    ``weak``), in turn."""
    rng = np.random.default_rng(1)
    noises = [f"gauss{s}" for s in GAUSSIAN + (WEAK if weak else ())] + [f"poisson{p}" for p, _ in POISSON]
    for seed in range(count):
        noise = noises[seed % len(noises)]
        yield (*noisy(volume(seed, SHAPE, z_step=Z_STEPS[seed % len(Z_STEPS)]), noise, rng), f"{seed} {noise}")
    for number in range(from_images):
        name, noise, z_step = TRAIN_IMAGES[number % len(TRAIN_IMAGES)], noises[number % len(noises)], 1 + number % 3
        yield (*noisy(extruded(grey(name), number, SHAPE, z_step), noise, rng), f"{name} {number} {noise}")


def nibabel_test_data(name: str) -> np.ndarray:
    """A NIfTI file of nibabel's own test data, as float64 in the file's axis order (x, y, z[, t])."""
    import nibabel

    return np.asarray(nibabel.load(os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", name)).dataobj,
                      np.float64)


def anatomical() -> np.ndarray:
    """nibabel's test MR volume (33 x 41 x 25, 2 mm voxels) as Z Y X on 0-255."""
    data = nibabel_test_data("anatomical.nii").transpose(2, 1, 0)
    low, high = np.percentile(data, (0.1, 99.9))
    return np.clip((data - low) / (high - low), 0, 1) * 255


def held_out():
    """(clean, label) held-out volumes: each structure isotropic and with Z spacing 4, and the MR volume."""
    for number, kind in enumerate(KINDS):
        for z_step in (1, 4):
            yield volume(HELD_OUT_SEED + 10 * number + z_step, SHAPE, z_step, kinds=[kind]), f"{kind} z{z_step}"
    yield anatomical(), "MR anatomical.nii"


def fmri_pair() -> tuple[np.ndarray, np.ndarray]:
    """nibabel's fMRI example (real noise): its two time points as Z Y X, two noisy views of one volume."""
    data = nibabel_test_data("example4d.nii.gz").transpose(3, 2, 1, 0)
    return data[0], data[1]


def evaluate(model: Path) -> list[dict]:
    from napari_flax_denoise import denoise, load_model
    from napari_flax_denoise import evaluate as score

    network, rows, rng = load_model(model), [], np.random.default_rng(2)
    outputs = {"general-2d per plane": lambda x: denoise(x, "general-2d", axes="SYX"),
               "general-3d": lambda x: denoise(x, network, axes="ZYX")}
    # The two noises on every volume first, then weak noise: the first rows keep their noise draws.
    for noises in HELD_OUT_NOISES:
        for (clean, label), noise in itertools.product(held_out(), noises):
            image, target = noisy(clean, noise, rng)
            span = target.max() - target.min()
            row = {"volume": f"{label} {noise}", "noisy": score(image, target, data_range=span)["psnr"]}
            row |= {name: score(run(image), target, data_range=span)["psnr"] for name, run in outputs.items()}
            rows.append(row)
            print("  ".join(f"{k} {v:.2f}" if isinstance(v, float) else v for k, v in row.items()), flush=True)
    # Real noise, no clean volume: the second time point's noise is independent of the first's, so the
    # squared error of a denoised first time point against the second is its error against the (unknown)
    # clean volume plus the noise variance, which is half the squared difference of the two time points.
    first, second = fmri_pair()
    variance, span = np.mean((first - second) ** 2) / 2, np.ptp((first + second) / 2)
    estimate = lambda x: 10 * np.log10(span**2 / (np.mean((x - second) ** 2) - variance))  # noqa: E731
    row = {"volume": "fMRI example4d.nii.gz, real noise (estimated)", "noisy": float(estimate(first))}
    row |= {name: float(estimate(run(first.astype(np.float32)))) for name, run in outputs.items()}
    rows.append(row)
    print(row, flush=True)
    return rows


def card(output: Path, rows: list[dict]) -> None:
    info = json.loads((output / "model.json").read_text())
    config = info["config"]
    scored = [r for r in rows if r["volume"].split()[-1] in HELD_OUT_NOISES[0]]  # the noises
    gain = [r["general-3d"] - r["general-2d per plane"] for r in scored]
    behind = [r["volume"] for r in rows if r["general-3d"] < r["general-2d per plane"]]
    worse = [r["volume"] for r in rows if r["general-3d"] < r["noisy"]]
    limits = (f"Behind general-2d plane by plane on: {', '.join(behind) or 'none'}. Worse than the noisy input on: "
              f"{', '.join(worse) or 'none'}. The training volumes are made, not measured; on real anatomy the 2D "
              "model, trained on real photographs, can keep its lead (choose it in the widget, or give "
              "`--model general-2d --axes SYX`). On small, coarse volumes with weak noise (the MR volume at sigma 2, "
              "the fMRI example) the noise level estimated from the volume reads much of the fine anatomy as "
              "noise, and both models then smooth it away: give the level when you know it (`--noise-level`), "
              "and compare the result with the input. Told there is no noise, the model leaves a volume almost "
              "as it is (tested). The fMRI example's noise is also correlated between neighbouring voxels (0.33 "
              "along Y and 0.18 along X, measured on the difference of its two time points), which neither model "
              "was trained for: for such data, train `n2n` on two acquisitions, or `care`.")
    extra = (f"\n  From the second run, also {EXTRUDED} volumes extruded from general-2d's training images (crops of "
             "scikit-image's\n  photographs whose planes drift, turn and zoom slowly along Z: real texture that "
             "continues from plane\n  to plane), under the same noises." if "extruded" in training_record(output) else "")
    extra += (f"\n  From the fourth run, Gaussian sigma {' and '.join(map(str, WEAK))} are among the noises too: "
              "with little or no noise\n  the network must leave a volume as it is." if "among the noises"
              in training_record(output) else "")
    table = "\n".join(f"| {r['volume']} | {r['noisy']:.2f} | {r['general-2d per plane']:.2f} | {r['general-3d']:.2f} |"
                      for r in rows)
    (output / "README.md").write_text(f"""# general-3d: the embedded default 3D denoiser

* **Use**: 3D greyscale stacks (Z Y X: confocal, light-sheet, MR, CT) with
  Gaussian or Poisson-Gaussian noise of unknown strength. The default for
  inputs whose axes contain Z (the CLI, the Python API's default model, the
  Denoise widget's preselection); general-2d plane by plane stays selectable.
  Every volume is normalised on its own.
* **Noise-aware**: the network also takes the noise level, estimated from each
  volume (or given: `--noise-level`, `noise_level=`, the widget's Noise level).
* **Network**: U-Net on Z Y X, depth {config['depth']}, {config['features']} features, residual, trained
  supervised (`care`, MSE) with batches of {config['batch_size']} patches of {config['patch_size']}^3 voxels:
  {training_record(output)}.
* **Data**: {TRAIN_VOLUMES} synthetic volumes of {SHAPE[0]} x {SHAPE[1]} x {SHAPE[2]} voxels from
  `scripts/volumes.py` (nuclei, filaments, puncta, tissue; Gaussian point-spread function 2-4x longer along
  Z; voxels {', '.join(map(str, Z_STEPS))} times longer along Z than across, so it copes with anisotropic
  stacks without being told the spacing), each under one noise: Gaussian sigma {', '.join(map(str, GAUSSIAN))}
  on 0-255, or Poisson-Gaussian {', '.join(f'{p}' for p, _ in POISSON)} photons at the brightest voxel. Seeds fixed.{extra}
* **Made by** `python scripts/train_embedded_3d.py --rebuild`, which runs `flax-denoise train` once per run
  (each continuing the one before).
* **Licence**: the weights are released with this package under BSD-3-Clause; the data is synthetic
  (and scikit-image's images: BSD-3-Clause / public domain / CC0).

## Measured (held-out volumes, PSNR in dB against the clean volume)

Volumes from seeds the training never drew, one structure each, with isotropic voxels (z1) and voxels four
times longer along Z (z4), and nibabel's MR test volume (`anatomical.nii`, 2 mm isotropic), under synthetic
noise; and nibabel's fMRI example (`example4d.nii.gz`, 2 x 2 x 2.2 mm) with its own, real noise: its first
time point is denoised and scored against the second, whose noise is independent (the clean volume's PSNR is
estimated from that error less the noise variance, half the mean squared difference of the two time points;
BOLD changes between them count as error). Both models denoise with their defaults (pixel fusion on).

Mean gain over general-2d plane by plane at Gaussian sigma 25 and 30 photons: **{np.mean(gain):+.2f} dB**
({min(gain):+.2f} to {max(gain):+.2f}).

{limits}

| volume and noise | noisy | general-2d per plane | general-3d |
|---|---|---|---|
{table}
""")


def hardware() -> str:
    """What trains here, in words: the GPU's name, or the CPU's core count."""
    import jax

    return jax.devices()[0].device_kind if jax.default_backend() != "cpu" else f"a {os.cpu_count()}-core CPU"


def train_stage(output: Path, init: str | None, steps: int, learning_rate=None, extruded=0, weak=False) -> None:
    """One training run into ``output`` (from ``init``); its ``training_record`` tells every run so far."""
    start = training_record(init) if init else None  # read before an output may replace it
    with tempfile.TemporaryDirectory() as work:
        train(output, steps, Path(work), init, learning_rate, data=training_data(TRAIN_VOLUMES, extruded, weak),
              axes="ZYX", settings=SETTINGS)
    shutil.rmtree(output / "last", ignore_errors=True)  # the resume state is not shipped
    info = json.loads((output / "model.json").read_text())
    minutes = info["info"]["history"][-1]["seconds"] / 60 if info["info"].get("history") else 0
    record = (f"{info['info']['steps']} steps at peak learning rate {info['config']['learning_rate']:g}"
              + (f" with {extruded} volumes extruded from images added" if extruded else "")
              + (f" and Gaussian sigma {' and '.join(map(str, WEAK))} among the noises" if weak else "")
              + f" ({minutes:.0f} minutes on {hardware()})")
    info["info"]["training_record"] = f"{start}, then {record}" if start else record
    (output / "model.json").write_text(json.dumps(info, indent=2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=STAGES[0]["steps"])
    parser.add_argument("--extruded", type=int, default=0, help="volumes made from 2D images to add to the data")
    parser.add_argument("--weak", action="store_true",
                        help=f"add Gaussian sigma {' and '.join(map(str, WEAK))} (on 0-255) to the noises")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--init", help="model (embedded name or directory) to continue training from")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: the CLI's)")
    parser.add_argument("--rebuild", action="store_true",
                        help="train the shipped model from scratch: every run of STAGES, each from the last")
    parser.add_argument("--evaluate-only", action="store_true", help="measure --output again, rewrite its card")
    args = parser.parse_args(argv)
    if args.rebuild:
        rebuild(STAGES, args.output, train_stage)
    elif not args.evaluate_only:
        train_stage(args.output, args.init, args.steps, args.learning_rate, args.extruded, args.weak)
    rows = evaluate(args.output)
    (args.output / "metrics.json").write_text(json.dumps(rows, indent=1))
    card(args.output, rows)


if __name__ == "__main__":
    sys.exit(main())
