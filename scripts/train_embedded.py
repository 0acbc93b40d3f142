"""Train the embedded default model ``general-2d`` with our own CLI, reproducibly.

    python scripts/train_embedded.py --rebuild  # the shipped model from scratch: about 4.5 hours on 2 CPU cores
    python scripts/train_embedded.py --steps 200 --output /tmp/try   # a quick try
    python scripts/train_embedded.py --init general-2d --learning-rate 5e-4 --output /tmp/longer
                                                # continue training a model (name or folder)
    python scripts/train_embedded.py --init general-2d --noise-input --output /tmp/aware
                                                # make a model noise-aware and train it on
    python scripts/train_embedded.py --init general-2d --realizations 2 --synthetic 16 --output /tmp/more
                                                # more noise draws, and synthetic fluorescence images
    python scripts/train_embedded.py --init general-2d --features 48 --realizations 3 --synthetic 16 --output /tmp/wide
                                                # widen a model (same function at first) and train it on
    python scripts/train_embedded.py --steps 8000 --settings '{"depth": 3, "features": 48, "noise_input": true}' \
        --realizations 2 --synthetic 16 --no-evaluate --output /tmp/large
                                                # a larger network from scratch (a GPU run: scripts/gpu_train.sh)
    python scripts/train_embedded.py --card-only   # rewrite the card from the saved metrics
    python scripts/train_embedded.py --evaluate-only --compare OLD   # measure again, beside OLD

The shipped ``general-2d`` is the runs of ``STAGES``, each continuing the one
before: 3000 steps at the CLI's peak learning rate, 3000 at 5e-4, then 4000
at 5e-4 after ``--noise-input`` made it noise-aware (the network also takes
the image's noise level, estimated from each image; it starts that run as
the model it widens, with zero weights on the new input), then 6000 at 4e-4,
then 6000 at 3e-4 with 16 synthetic fluorescence-like images added
(``--synthetic``, drawn by ``scripts/volumes.py``) and two noise draws per
image and noise, four for the weak noises (``--realizations``), then 6000
at 2e-4 with three draws (six for the weak noises).

Data: clean greyscale images bundled with scikit-image (natural photos,
textures, text, an astronomy field, a retina fundus, histology), each with
synthetic noise drawn from fixed seeds over a range of strengths: Gaussian
(sigma 2-75 on 0-255) and Poisson-Gaussian (2-200 photons at the brightest
pixel, read noise 1-4 counts; the first two runs saw sigma 5-50 and 5-100
photons). ``camera``, ``cell`` and ``coins`` (the
benchmark's images) and the CT sample are held out for evaluation. The model
is trained supervised (``care``), with every image normalised on its own
(``normalize_per_image``), so that it meets any image's intensity range. The
script then measures PSNR on the held-out images against non-local means and
writes the model card.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from skimage import color, data

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "src" / "napari_flax_denoise" / "models"
TRAIN_IMAGES = ["moon", "brick", "grass", "gravel", "text", "page", "clock", "astronaut", "chelsea", "coffee",
                "rocket", "hubble_deep_field", "retina", "immunohistochemistry"]
# Two more bundled scenes for later runs (``--more-images``): a street photograph and a smooth phantom.
MORE_IMAGES = ["stereo_motorcycle", "shepp_logan_phantom"]
HELD_OUT = ["camera", "cell", "coins"]
# The runs that made the shipped general-2d, each continuing the one before (``--rebuild``).
STAGES = (dict(steps=3000), dict(steps=3000, learning_rate=5e-4),
          dict(steps=4000, learning_rate=5e-4, noise_input=True), dict(steps=6000, learning_rate=4e-4),
          dict(steps=6000, learning_rate=3e-4, realizations=2, synthetic=16),
          dict(steps=6000, learning_rate=2e-4, realizations=3, synthetic=16))
GAUSSIAN = (2, 5, 10, 15, 25, 35, 50, 75)  # sigma on 0-255
POISSON = ((2, 1.0), (5, 1.0), (10, 2.0), (30, 2.0), (100, 3.0), (200, 4.0))  # (photons at peak, read-noise sigma)


def grey(name: str) -> np.ndarray:
    """A bundled image as float64 on 0-255, greyscale, at most 512 x 512 (centre crop)."""
    image = getattr(data, name)()
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity); the left view
        image = image[0]
    if image.ndim == 3:
        image = image[..., 1] if name == "retina" else color.rgb2gray(image[..., :3]) * 255
    elif image.dtype.kind == "f" and image.max() <= 1:  # shepp_logan_phantom: floats on 0-1
        image = image * 255
    y, x = max((image.shape[0] - 512) // 2, 0), max((image.shape[1] - 512) // 2, 0)
    return image[y:y + 512, x:x + 512].astype(np.float64)


def gaussian(clean, sigma, rng):
    return clean + rng.normal(0, sigma, clean.shape), clean


def poisson_gaussian(clean, photons, read, rng):
    """Photon counts (and the clean expected counts as target), plus a camera offset of 100."""
    expected = clean / 255.0 * photons
    return 100 + rng.poisson(expected) + rng.normal(0, read, clean.shape), 100 + expected


def pairs(names, seed, load=grey, realizations=1):
    """Every image (``load(name)``, on 0-255) under every noise model: (noisy, clean target, noise label).

    ``realizations``: noisy copies per image and noise model (each with its own noise draw); the weak
    noises (sigma <= 15, >= 100 photons), where the network's errors are smallest and so weigh least in
    the loss, get twice as many.
    """
    rng = np.random.default_rng(seed)
    draws = lambda weak: realizations * (2 if realizations > 1 and weak else 1)  # noqa: E731
    for name in names:
        clean = load(name)
        for sigma in GAUSSIAN:
            for _ in range(draws(sigma <= 15)):
                yield (*gaussian(clean, sigma, rng), f"{name} gauss{sigma}")
        for photons, read in POISSON:
            for _ in range(draws(photons >= 100)):
                yield (*poisson_gaussian(clean, photons, read, rng), f"{name} poisson{photons}")


def synthetic(name: str) -> np.ndarray:
    """A clean 384 x 384 fluorescence-like image (``scripts/volumes.py``, one plane) for a name ``synthetic-N``."""
    from volumes import volume

    return volume(int(name.split("-")[1]), shape=(1, 384, 384))[0]


def load_any(name: str) -> np.ndarray:
    """A training image by name: a scikit-image one, or ``synthetic-N``."""
    return synthetic(name) if name.startswith("synthetic-") else grey(name)


def train(output: Path, steps: int, work: Path, init=None, learning_rate=None, names=TRAIN_IMAGES, load=grey,
          data=None, axes="YX", settings=None, realizations=1) -> None:
    """Train a ``care`` model with ``flax-denoise train`` on every noisy version of ``names``
    (or on ``data``: (noisy, clean, label) triples with ``axes``); ``settings`` are more config values."""
    inputs, targets = [], []
    data = data if data is not None else pairs(names, seed=1, load=load, realizations=realizations)
    for i, (noisy, clean, _) in enumerate(data):
        np.save(work / f"noisy_{i:04d}.npy", noisy.astype(np.float32))
        np.save(work / f"clean_{i:04d}.npy", clean.astype(np.float32))
        inputs.append(str(work / f"noisy_{i:04d}.npy"))
        targets.append(str(work / f"clean_{i:04d}.npy"))
    config = {"normalize_per_image": True, "residual": True, "patience": 1000, "val_fraction": 0.1, "seed": 0,
              **(settings or {})}
    (work / "config.json").write_text(json.dumps(config))
    epochs = max(steps // 100, 1)
    subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", "train", *inputs, "--target", *targets, "--axes", axes, "--algorithm", "care",
                    "--config", str(work / "config.json"), "--epochs", str(epochs),
                    "--steps-per-epoch", str(steps // epochs), "--output", str(output),
                    *(["--init", init] if init else []),
                    *(["--learning-rate", str(learning_rate)] if learning_rate else [])], check=True)


def grown(model: str, folder: Path, noise_input=False, features=None) -> str:
    """Save in ``folder`` a copy of ``model`` that computes the same function, made noise-aware (zero weights on
    the noise channels) and / or widened to ``features`` (zero weights out of the added units)."""
    from napari_flax_denoise import load_model
    from napari_flax_denoise.models.checkpoint import save_model
    from napari_flax_denoise.models.widening import with_features, with_noise_input

    copy = load_model(model)
    copy = with_noise_input(copy) if noise_input else copy
    save_model(with_features(copy, features) if features else copy, folder)
    return str(folder)


def evaluate(output: Path, previous: str | None = None) -> list[dict]:
    from napari_flax_denoise import classical_denoise, denoise, load_model
    from napari_flax_denoise import evaluate as score

    model = load_model(output)
    rows = []
    for noisy, clean, label in pairs(HELD_OUT, seed=2):
        span = clean.max() - clean.min()
        ours = denoise(noisy, model, axes="YX")  # fused with the noisy pixels, the default
        plain = denoise(noisy, model, axes="YX", fusion=False)
        nlm = classical_denoise(noisy, "nlm")
        row = {} if previous is None else {"previous": score(denoise(noisy, previous, axes="YX"), clean,
                                                             data_range=span)["psnr"]}
        row |= {"image": label, "noisy": score(noisy, clean, data_range=span)["psnr"],
               "general-2d": score(ours, clean, data_range=span)["psnr"],
               "general-2d without fusion": score(plain, clean, data_range=span)["psnr"],
               "nlm": score(nlm, clean, data_range=span)["psnr"]}
        rows.append(row)
        print(f"{label:20s} noisy {row['noisy']:6.2f}  nlm {row['nlm']:6.2f}  general-2d {row['general-2d']:6.2f} "
              f"(without fusion {row['general-2d without fusion']:6.2f})"
              + (f"  previous {row['previous']:6.2f}" if previous else ""), flush=True)
    return rows


def stage(saved: dict) -> str:
    """One training run of a model, from its model.json: steps and peak learning rate."""
    return f"{saved['info']['steps']} steps at peak learning rate {saved['config']['learning_rate']:g}"


def training_record(model: str | Path) -> str:
    """How a model (embedded name or folder) was trained, all runs included."""
    from napari_flax_denoise.models.embedded import embedded_path

    folder = embedded_path(str(model)) or Path(model)
    saved = json.loads((folder / "model.json").read_text())
    return saved["info"].get("training_record") or stage(saved)


def medical_note() -> str:
    """The card's paragraph on medical images, from ``scripts/medical_check.py``'s results when it has run."""
    path = ROOT / "bench" / "medical.json"
    if not path.is_file():
        return ""
    saved = json.loads(path.read_text())
    rows = saved["rows"]
    over_nlm = np.mean([r["general-2d"] - r["nlm"] for r in rows])
    tuned = [r["medical"] - r["general-2d"] for r in rows]
    measured = saved.get("model_record") or "the version before it became noise-aware"
    if measured != training_record(MODELS / "general-2d"):  # made with another version of the model
        return (f"`scripts/medical_check.py` last measured an earlier general-2d ({measured}) on {len(rows)} "
                "held-out medical image / noise combinations; run it again for this one (`bench/medical.md` "
                "holds the earlier table).\n\n")
    return (f"On {len(rows)} held-out medical image / noise combinations (brain MR, cryosection, CT and MR slices, "
            f"made by `scripts/medical_check.py`) it beats non-local means by **{over_nlm:+.2f} dB** on average. "
            f"A medical model fine-tuned from it ({saved['steps']} supervised steps on four other medical slices) "
            f"scored {np.mean(tuned):+.2f} dB against it on average ({min(tuned):+.2f} to {max(tuned):+.2f}; "
            f"it gains at strong noise and loses at weak noise), so none is shipped: general-2d serves CT and MR "
            f"(table: `bench/medical.md`).\n\n")


def noise_note(info: dict) -> str:
    """The card's words on a noise-aware model's extra input."""
    if not info["config"].get("noise_input"):
        return ""
    return ("\n* **Noise-aware**: the network also takes the noise level, estimated from each image (the variance "
            "line of `noise/line.py`, so photon noise is covered); `--noise-level` (CLI), `noise_level=` (Python) "
            "or the Denoise widget's Noise level give it instead.")


def bm3d_note() -> str:
    """The card's sentence on BM3D, from ``bench/noise_aware.py``'s results when they are of general-2d."""
    path = ROOT / "bench" / "noise_aware.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("model") != "general-2d" or "mean_over_bm3d" not in saved:
        return ""
    return (f"Against BM3D given the true noise model, on the benchmark's images and noises "
            f"(`bench/noise_aware.md`, {saved['date']}): **{saved['mean_over_bm3d']:+.2f} dB** on average, "
            f"{saved['worst_over_bm3d']:+.2f} dB at worst.\n")


def synthetic_note(history: str) -> str:
    """The card's words on the synthetic images, when a run used them."""
    if "synthetic" not in history:
        return ""
    return ("\n  Runs marked so above also had synthetic fluorescence-like images (`scripts/volumes.py`: nuclei, "
            "filaments, puncta and tissue\n  under a point-spread function, one 384 x 384 plane each) under the same "
            "noises, and several noise draws per image.")


def card(output: Path, rows: list[dict]) -> None:
    """Write the model card."""
    info = json.loads((output / "model.json").read_text())
    history = info["info"].get("training_record") or stage(info)
    runs = history.count(", then ") + 1
    made_by = (f", in {runs} runs, each continuing the one before (`--init`); `--rebuild` runs them all"
               if runs > 1 else "")
    gain = np.mean([r["general-2d"] - r["nlm"] for r in rows])
    plain = "general-2d without fusion"
    columns = [("noisy", "noisy"), ("nlm", "non-local means"), ("previous", "the model it replaced"),
               (plain, plain), ("general-2d", "general-2d")]
    columns = [(key, name) for key, name in columns if all(key in r for r in rows)]  # older metrics lack some
    header = ("| image and noise | " + " | ".join(name for _, name in columns) + " |\n|---|"
              + "---|" * len(columns))
    table = "\n".join(f"| {r['image']} | " + " | ".join(f"{r[key]:.2f}" for key, _ in columns) + " |" for r in rows)
    fused = any(key == plain for key, _ in columns)
    replaced = (f"Mean gain over the model it replaced: **{np.mean([r['general-2d'] - r['previous'] for r in rows]):+.2f} "
                "dB**.\n\n" if all("previous" in r for r in rows) else "")
    losses = [r["image"] for r in rows if r["general-2d"] < r["nlm"]]
    worse = [r["image"] for r in rows if r["general-2d"] < r["noisy"]]
    limits = (f"Behind non-local means on: {', '.join(losses) or 'none'}. "
              f"Worse than the noisy input on: {', '.join(worse) or 'none'}. "
              "At very low noise the network smooths away fine detail; "
              + ("pixel fusion (on by default, see the last two columns) gives part of it back, "
                 f"{max(r['general-2d'] - r[plain] for r in rows):.2f} dB at most. " if fused else "")
              + "Fine-tune it on your images (`--init general-2d`) where that is not enough.")
    (output / "README.md").write_text(f"""# general-2d: the embedded default 2D denoiser

* **Use**: any 2D greyscale image (microscopy, medical, photographs) with
  Gaussian or Poisson-Gaussian noise of unknown strength; 3D stacks get
  general-3d by default, and this model plane by plane when chosen (or when a
  stack has fewer than 4 planes). Every image (every plane of a stack) is normalised on its own, so any
  intensity range works. `flax-denoise denoise IMAGE --output OUT` uses it
  when no `--model` is given; fine-tune it with `--init general-2d`.{noise_note(info)}
* **Network**: U-Net, depth {info['config']['depth']}, {info['config']['features']} features{
    ", residual (it predicts a correction added to the input)" if info['config']['residual'] else ""}, trained
  supervised (`care`, MSE) with batches of {info['config']['batch_size']} patches of
  {info['config']['patch_size']} x {info['config']['patch_size']} pixels: {history}.
* **Data**: {len(TRAIN_IMAGES)} clean images bundled with scikit-image ({', '.join(TRAIN_IMAGES)}),
  greyscale, centre-cropped to 512 x 512 at most, each with Gaussian noise (sigma
  {', '.join(map(str, GAUSSIAN))} on 0-255) and Poisson-Gaussian noise ({', '.join(f'{p} photons' for p, _ in POISSON)}
  at the brightest pixel, read noise {min(r for _, r in POISSON):g}-{max(r for _, r in POISSON):g} counts). Seeds fixed.
  The first two runs had sigma 5-50 and 5-100 photons only.{synthetic_note(history)}
* **Made by** `python scripts/train_embedded.py` (which calls `flax-denoise train`){made_by}.
* **Licence**: the weights are released with this package under BSD-3-Clause;
  the training images are scikit-image's (BSD-3-Clause / public domain / CC0){' and our own synthetic ones' if 'synthetic' in history else ''}.

## Measured (held-out images, PSNR in dB against the clean image)

Mean gain over non-local means (scikit-image, sigma estimated): **{gain:+.2f} dB**.
{replaced}{bm3d_note()}
{limits}

{medical_note()}{header}
{table}
""")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--output", type=Path, default=MODELS / "general-2d")
    parser.add_argument("--init", help="model (embedded name or directory) to continue training from")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default: the CLI's)")
    parser.add_argument("--noise-input", action="store_true",
                        help="make the model noise-aware: --init's network gets the noise-level channels "
                             "(with zero weights, so it starts as it was) and learns to use them")
    parser.add_argument("--features", type=int,
                        help="widen --init's network to this many features first (every level alike; the added "
                             "units start with zero weights out, so it starts as it was)")
    parser.add_argument("--realizations", type=int, default=1,
                        help="noisy copies of each image under each noise (own draws; twice as many for weak noise)")
    parser.add_argument("--more-images", action="store_true",
                        help=f"add {' and '.join(MORE_IMAGES)} to the bundled training images")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="add this many synthetic fluorescence-like images (scripts/volumes.py) to the data")
    parser.add_argument("--settings", type=json.loads, default={},
                        help="more training settings for a run from scratch, as JSON (e.g. depth, features, "
                             "noise_input, batch_size, patch_size)")
    parser.add_argument("--no-evaluate", action="store_true",
                        help="train only (measure later with --evaluate-only, e.g. on another machine)")
    parser.add_argument("--compare", help="also score this model (embedded name or directory) on the held-out "
                                          "images, as the model the new one replaces")
    parser.add_argument("--rebuild", action="store_true",
                        help="train the shipped model from scratch: every run of STAGES, each from the last")
    parser.add_argument("--card-only", action="store_true",
                        help="rewrite the model card of --output from its metrics.json (no training)")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="measure the model in --output again and rewrite its metrics and card (no training)")
    args = parser.parse_args(argv)
    if args.card_only:  # e.g. after scripts/medical_check.py has new results for the card
        return card(args.output, json.loads((args.output / "metrics.json").read_text()))
    if args.evaluate_only:  # e.g. after a change to denoise
        rows = evaluate(args.output, args.compare)
        (args.output / "metrics.json").write_text(json.dumps(rows, indent=1))
        return card(args.output, rows)
    if args.rebuild:
        rebuild(STAGES, args.output, train_stage)
    else:
        if (args.noise_input or args.features) and not args.init:
            parser.error("--noise-input and --features widen an existing model: give --init")
        if args.settings and args.init:
            parser.error("--settings shape a new network: leave --init out")
        train_stage(args.output, args.init, args.steps, args.learning_rate, args.noise_input, args.realizations,
                    args.synthetic, args.settings, args.features, args.more_images)
    if args.no_evaluate:
        return None
    rows = evaluate(args.output, args.compare)
    (args.output / "metrics.json").write_text(json.dumps(rows, indent=1))
    card(args.output, rows)


def rebuild(stages, output: Path, train_stage) -> None:
    """Train a model from scratch into ``output``: ``train_stage(folder, init, **settings)`` for every
    run's settings in ``stages``, each run continuing the one before (the earlier ones in a scratch folder)."""
    with tempfile.TemporaryDirectory() as work:
        init = None
        for number, settings in enumerate(stages, start=1):
            folder = output if number == len(stages) else Path(work) / f"stage{number}"
            train_stage(folder, init, **settings)
            init = str(folder)


def train_stage(output: Path, init: str | None, steps: int, learning_rate=None, noise_input=False,
                realizations=1, synthetic=0, settings=None, features=None, more_images=False) -> None:
    """One training run into ``output`` (from ``init``, grown first with ``noise_input`` and / or to
    ``features``; ``realizations`` noisy copies per image and noise, ``synthetic`` fluorescence-like images
    and, with ``more_images``, :data:`MORE_IMAGES` added; ``settings``: more config values); its
    ``training_record`` tells every run so far."""
    start = training_record(init) if init else None  # read before an output may replace it
    names = TRAIN_IMAGES + (MORE_IMAGES if more_images else []) + [f"synthetic-{i}" for i in range(synthetic)]
    with tempfile.TemporaryDirectory() as work:
        if noise_input or features:
            init = grown(init, Path(work) / "start", noise_input, features)
        train(output, steps, Path(work), init, learning_rate, names=names, load=load_any, realizations=realizations,
              settings=settings)
    shutil.rmtree(output / "last", ignore_errors=True)  # the resume state is not shipped
    info = json.loads((output / "model.json").read_text())
    added = ([f"{synthetic} synthetic fluorescence images"] if synthetic else []) + (MORE_IMAGES if more_images else [])
    data = ((f" (widened to {features} features first)" if features else "")
            + (f" on {realizations} noise draws per image and noise (twice as many for weak noise)"
               if realizations > 1 else "")
            + (f" with {' and '.join(added)} added" if added else ""))
    info["info"]["training_record"] = f"{start}, then {stage(info)}{data}" if start else stage(info) + data
    (output / "model.json").write_text(json.dumps(info, indent=2))


if __name__ == "__main__":
    sys.exit(main())
