"""The embedded default model with no training against BM3D, and against the model it replaces.

    python bench/noise_aware.py                       # general-2d now, BM3D from the peers' venv
    python bench/noise_aware.py --model DIR --previous OLD_DIR
    python bench/noise_aware.py --bf16                # also in bfloat16: what --precision bf16 costs
    python bench/noise_aware.py --tta                 # also with test-time augmentation: what --tta gains

On the benchmark's held-out images (camera, cell, coins, centre 256 x 256,
never trained on) with the benchmark's noises (``bench/run.py``: Gaussian
sigma 15, 25, 50 on 0-255 and Poisson-Gaussian with 30 photons at the
brightest pixel) and two more photon levels (5 and 100), seeds fixed. BM3D
gets the true sigma; under photon noise, BM3D after the Anscombe transform
gets the true photon scale and read noise (``bench/peers.py``). Writes
``bench/noise_aware.json`` and ``bench/noise_aware.md``. The peers' venv is
made by ``bench/setup_peers.sh``; in it this file runs BM3D (``--bm3d``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"
IMAGES = ("camera", "cell", "coins")
EXTRA = {f"poisson{p}": {"kind": "poisson", "photons": float(p), "read": r, "scale": 255.0 / p}
         for p, r in ((5, 1.0), (100, 3.0))}


def noises():
    sys.path.insert(0, str(HERE))
    from run import NOISES

    return {**NOISES, **EXTRA}


def noisy_sets():
    """``{image: {noise: noisy}}`` and ``{image: clean}``, the benchmark's images and seeds."""
    sys.path.insert(0, str(HERE))
    from run import test_images

    clean = {k: v for k, v in test_images(256).items() if k in IMAGES}
    out = {}
    for name, image in clean.items():
        rng = np.random.default_rng(0)
        out[name] = {}
        for noise, spec in noises().items():
            if spec["kind"] == "gauss":
                out[name][noise] = image + rng.normal(0, spec["sigma"], image.shape)
            else:
                counts = rng.poisson(image / 255.0 * spec["photons"]) + rng.normal(0, spec["read"], image.shape)
                out[name][noise] = counts * spec["scale"]
            out[name][noise] = out[name][noise].astype(np.float32)
    return out, clean


def bm3d_outputs(sets):
    """BM3D (and BM3D + Anscombe) of every noisy image, run in the peers' venv."""
    if not PEERS_PYTHON.exists():
        print("no peers' venv: run bench/setup_peers.sh for BM3D", flush=True)
        return {}
    with tempfile.TemporaryDirectory() as work:
        inputs, outputs = Path(work) / "in.npz", Path(work) / "out.npz"
        np.savez(inputs, spec=np.array(json.dumps(noises())),
                 **{f"{image}/{noise}": v for image in sets for noise, v in sets[image].items()})
        subprocess.run([str(PEERS_PYTHON), __file__, "--bm3d", str(inputs), str(outputs)], check=True)
        return dict(np.load(outputs))


def run_bm3d(inputs: str, outputs: str) -> None:
    """(In the peers' venv.) BM3D with the true noise model on every array of ``inputs``."""
    sys.path.insert(0, str(HERE))
    from peers import bm3d_anscombe, bm3d_gauss

    data = np.load(inputs)
    spec = json.loads(str(data["spec"]))
    out = {}
    for key in data.files:
        if key == "spec":
            continue
        noise = spec[key.split("/")[1]]
        noisy = data[key].astype(np.float64)
        out[key] = (bm3d_gauss(noisy, noise["sigma"]) if noise["kind"] == "gauss" else
                    bm3d_anscombe(noisy, noise["photons"], noise["read"], noise["scale"]))
        print(key, flush=True)
    np.savez(outputs, **out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="general-2d", help="the model to measure (default: general-2d)")
    parser.add_argument("--previous", help="the model it replaces (a directory or embedded name)")
    parser.add_argument("--bf16", action="store_true", help="also denoise in bfloat16 and report its PSNR cost")
    parser.add_argument("--tta", action="store_true", help="also denoise with test-time augmentation (the mean "
                                                           "over 8 flips and turns) and report its PSNR gain")
    parser.add_argument("--bm3d", nargs=2, metavar=("INPUTS", "OUTPUTS"), help=argparse.SUPPRESS)
    parser.add_argument("--output", default=str(HERE / "noise_aware.json"))
    args = parser.parse_args(argv)
    if args.bm3d:
        return run_bm3d(*args.bm3d)
    import jax

    from napari_flax_denoise import __version__, denoise
    from napari_flax_denoise import evaluate as score

    sets, clean = noisy_sets()
    bm3d = bm3d_outputs(sets)
    rows = []
    for image in sets:
        for noise, noisy in sets[image].items():
            def psnr(result):
                return round(score(result, clean[image], data_range=255)["psnr"], 3)

            row = {"image": image, "noise": noise, "noisy": psnr(noisy),
                   "model": psnr(denoise(noisy, args.model, axes="YX"))}
            if args.previous:
                row["previous"] = psnr(denoise(noisy, args.previous, axes="YX"))
            if args.bf16:
                row["bf16"] = psnr(denoise(noisy, args.model, axes="YX", precision="bfloat16"))
            if args.tta:
                row["tta"] = psnr(denoise(noisy, args.model, axes="YX", tta=True))
            if f"{image}/{noise}" in bm3d:
                row["bm3d"] = psnr(bm3d[f"{image}/{noise}"])
            rows.append(row)
            print(json.dumps(row), flush=True)
    results = {"date": str(date.today()), "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
               "versions": {"napari-flax-denoise": __version__, "jax": jax.__version__}, "model": args.model,
               "previous": args.previous, "rows": rows}
    for key in ("previous", "bm3d"):
        if all(key in r for r in rows):
            results[f"mean_over_{key}"] = round(float(np.mean([r["model"] - r[key] for r in rows])), 3)
            results[f"worst_over_{key}"] = round(float(np.min([r["model"] - r[key] for r in rows])), 3)
    if args.tta and all("bm3d" in r for r in rows):
        over = [r["tta"] - r["bm3d"] for r in rows]
        results["tta_over_bm3d"] = {"mean": round(float(np.mean(over)), 3), "worst": round(float(np.min(over)), 3)}
    if args.bf16:
        costs = [r["model"] - r["bf16"] for r in rows]
        results["bf16_cost_db"] = {"mean": round(float(np.mean(costs)), 3), "max": round(float(np.max(costs)), 3)}
    Path(args.output).write_text(json.dumps(results, indent=1))
    Path(args.output).with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


def markdown(results) -> str:
    rows = results["rows"]
    columns = [k for k in ("noisy", "bm3d", "previous", "model", "bf16", "tta") if all(k in r for r in rows)]
    names = {"noisy": "noisy", "bm3d": "BM3D (true noise model)", "previous": "model replaced",
             "model": results["model"], "bf16": f"{results['model']} in bfloat16",
             "tta": f"{results['model']} with --tta"}
    lines = [f"Measured {results['date']} on {results['machine']}, CPU, PSNR in dB on 0-255 "
             f"(napari-flax-denoise {results['versions']['napari-flax-denoise']}, JAX {results['versions']['jax']}).",
             "", "| image | noise | " + " | ".join(names[c] for c in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    lines += [f"| {r['image']} | {r['noise']} | " + " | ".join(f"{r[c]:.2f}" for c in columns) + " |" for r in rows]
    for key in ("previous", "bm3d"):
        if f"mean_over_{key}" in results:
            lines.append(f"\n{results['model']} over {names[key]}: {results[f'mean_over_{key}']:+.2f} dB on average, "
                         f"{results[f'worst_over_{key}']:+.2f} dB at worst.")
    if "tta_over_bm3d" in results:
        over = results["tta_over_bm3d"]
        lines.append(f"\n{names['tta']} (8 passes: every flip and turn, averaged) over {names['bm3d']}: "
                     f"{over['mean']:+.2f} dB on average, {over['worst']:+.2f} dB at worst.")
    if "bf16_cost_db" in results:
        cost = results["bf16_cost_db"]
        lines.append(f"\nbfloat16 (`--precision bf16`) costs {cost['mean']:.3f} dB on average, {cost['max']:.3f} dB "
                     "at most (computed here on the CPU, which rounds at the places a GPU does: weights and activations "
                     "in bfloat16, sums in float32).")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
