"""Benchmark: speed against the machine's own matmul peak, and denoising quality
against the noisy input and scikit-image's classical denoisers, in one run.

    python bench/run.py            # full run, writes bench/results.json and bench/results.md
    python bench/run.py --quick    # a smaller smoke run of the same code

Every ratio is measured in this run on this machine; nothing is quoted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from skimage import data as skdata  # noqa: E402

from napari_flax_denoise import Config, classical_denoise, denoise, evaluate, train_iter  # noqa: E402
from napari_flax_denoise.checkpoint import TrainedModel, build_network  # noqa: E402
from napari_flax_denoise.model import halo  # noqa: E402
from napari_flax_denoise.normalization import Normalization  # noqa: E402
from napari_flax_denoise.prediction import default_tile_shape  # noqa: E402

HERE = Path(__file__).parent


def best_time(fn, repeats=3):
    fn()  # warm-up / compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_peak(n=2048):
    """float32 GFLOP/s of an n^3 matmul through XLA: the machine's practical peak."""
    a = jnp.asarray(np.random.default_rng(0).random((n, n)), jnp.float32)
    f = jax.jit(lambda a: a @ a)
    return 2 * n**3 / best_time(lambda: f(a).block_until_ready(), 5) / 1e9


def random_model(config):
    norm = Normalization("meanstd", (0.0,) * config.in_channels, (1.0,) * config.in_channels)
    return TrainedModel(config, build_network(config), norm, norm)


def flops_per_pixel(model, tile_shape):
    graphdef, state = nnx.split(model.network)
    x = jnp.zeros((1, *tile_shape, model.config.in_channels))
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / np.prod(tile_shape)


def inference(config, shape, axes, peak, repeats=2):
    """End-to-end ``denoise`` throughput and its FLOP rate as a fraction of ``peak``."""
    model = random_model(config)
    image = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    seconds = best_time(lambda: denoise(image, model, axes=axes), repeats)
    spatial = tuple(s for s, a in zip(shape, axes) if a in "ZYX")
    tile = default_tile_shape(spatial, config.dims, halo(config))
    fpp = flops_per_pixel(model, tile)
    pixels = image.size
    return {"algorithm": config.algorithm, "dims": config.dims, "shape": list(shape), "tile_shape": list(tile),
            "kflop_per_pixel": fpp / 1e3, "seconds": seconds, "mpix_per_s": pixels / seconds / 1e6,
            "useful_gflops": fpp * pixels / seconds / 1e9, "fraction_of_matmul_peak": fpp * pixels / seconds / 1e9 / peak}


def training_speed(config, steps):
    image = np.random.default_rng(2).normal(100, 20, (512, 512)).astype(np.float32)
    targets = None if config.self_supervised else image  # supervised speed: any target will do
    run = train_iter(image, axes="YX", targets=targets,
                     config=config.replace(epochs=1, steps_per_epoch=steps + 1, val_fraction=0.0))
    next(run)  # compiles
    start = time.perf_counter()
    for _ in run:
        pass
    return {"algorithm": config.algorithm, "patch": config.patch_size, "batch": config.batch_size,
            "steps_per_s": steps / (time.perf_counter() - start)}


def torch_reference(steps):
    """Run bench/torch_peer.py in its own venv (bench/setup_torch.sh), if present."""
    python = HERE / ".venv-torch" / "bin" / "python"
    if not python.exists():
        print("no PyTorch reference: run bench/setup_torch.sh to add one", flush=True)
        return None
    out = subprocess.run([str(python), str(HERE / "torch_peer.py"), str(steps)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def tile_speed(config, tile=512):
    """Forward MPix/s of the bare network on one tile (no tiling overhead)."""
    model = random_model(config)
    graphdef, state = nnx.split(model.network)
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
    x = jnp.zeros((1, tile, tile, 1))
    return tile * tile / best_time(lambda: f(state, x).block_until_ready(), 3) / 1e6


def noisy_versions(clean, rng):
    """Gaussian sigma 15/25/50 on 0-255, and Poisson-Gaussian with ~30 photons at peak."""
    out = {f"gauss{s}": clean + rng.normal(0, s, clean.shape) for s in (15, 25, 50)}
    photons = 30.0
    counts = rng.poisson(clean / 255.0 * photons) + rng.normal(0, 2.0, clean.shape)
    out["poisson30"] = counts * 255.0 / photons
    return {k: v.astype(np.float32) for k, v in out.items()}


def train_with_curve(images, noisy, clean, config, marks, targets=None, init=None):
    """Train on ``images`` (and ``targets``), scoring the denoised ``noisy``
    against ``clean`` at the steps in ``marks``; returns (model, curve).

    The curve's seconds count training only, not the scoring.
    """
    run = train_iter(images, axes="YX", targets=targets, config=config, init=init)
    curve, training = [], 0.0
    while True:
        start = time.perf_counter()
        try:
            event = next(run)
        except StopIteration as stop:
            return stop.value.model, curve
        training += time.perf_counter() - start
        if event.step in marks:
            psnr = evaluate(denoise(noisy, event.snapshot(), axes="YX"), clean, data_range=255)["psnr"]
            curve.append({"step": event.step, "train_seconds": round(training, 2), "psnr": psnr})


def quality(images, noise_names, steps, curve_every):
    """PSNR / SSIM against the clean image of: the noisy input, scikit-image NLM and
    J-invariance-calibrated NLM, n2v2 trained on the noisy image itself (with and
    without 8-fold TTA), and care trained on the *other* images with the same noise."""
    rng = np.random.default_rng(0)
    noisy_sets = {name: noisy_versions(clean, rng) for name, clean in images.items()}
    base = Config(epochs=1, steps_per_epoch=steps, val_fraction=0.0, learning_rate=2e-3)
    marks = set(range(curve_every, steps + 1, curve_every))
    rows = []
    for noise in noise_names:
        for name, clean in images.items():
            noisy = noisy_sets[name][noise]
            score = lambda x: evaluate(x, clean, data_range=255)  # noqa: E731
            row = {"image": name, "noise": noise, "noisy": score(noisy)}
            for method in ("nlm", "jinv"):
                start = time.perf_counter()
                row[method] = {**score(classical_denoise(noisy, method)), "seconds": time.perf_counter() - start}
            model, curve = train_with_curve(noisy, noisy, clean, base, marks)
            row["n2v2"] = {**score(denoise(noisy, model, axes="YX")), "steps": steps, "curve": curve}
            row["n2v2_tta"] = score(denoise(noisy, model, axes="YX", tta=True))
            row["default"] = score(denoise(noisy, "general-2d", axes="YX"))  # embedded, no training
            tuned, curve = train_with_curve(noisy, noisy, clean, base, marks, init="general-2d")
            row["n2v2_from_default"] = {**score(denoise(noisy, tuned, axes="YX")), "steps": steps, "curve": curve}
            others = [k for k in images if k != name]
            if others:
                care, curve = train_with_curve(
                    [noisy_sets[k][noise] for k in others], noisy, clean, base.replace(algorithm="care"),
                    marks, targets=[images[k] for k in others])
                row["care"] = {**score(denoise(noisy, care, axes="YX")), "steps": steps, "curve": curve,
                               "trained_on": others}
            rows.append(row)
            print(f"{name:8s} {noise:10s} noisy {row['noisy']['psnr']:.2f}  nlm {row['nlm']['psnr']:.2f}  "
                  f"jinv {row['jinv']['psnr']:.2f}  n2v2 {row['n2v2']['psnr']:.2f}  "
                  f"n2v2+tta {row['n2v2_tta']['psnr']:.2f}  default {row['default']['psnr']:.2f}  "
                  f"n2v2 from default {row['n2v2_from_default']['psnr']:.2f}  care {row.get('care', {}).get('psnr', float('nan')):.2f}",
                  flush=True)
    return rows


def test_images(size):
    """Clean 8-bit images bundled with scikit-image, centre-cropped to ``size``."""
    images = {"camera": skdata.camera(), "cell": skdata.cell(), "coins": skdata.coins()}
    out = {}
    for name, image in images.items():
        y, x = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
        out[name] = image[y:y + size, x:x + size].astype(np.float32)
    return out


def markdown(results):
    speed, lines = results["speed"], []
    when = results["date"] + (f" (quality: {results['quality_date']})" if results.get("quality_date") else "")
    lines.append(f"Measured {when} on {results['machine']} (CPU only); "
                 f"float32 matmul peak in the same run: {speed['matmul_gflops']:.0f} GFLOP/s.\n")
    lines.append("| inference | kFLOP/px | MPix/s | GFLOP/s | of matmul peak |")
    lines.append("|---|---|---|---|---|")
    for r in speed["inference"]:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"| {r['algorithm']} {r['dims']}D, {shape} | {r['kflop_per_pixel']:.0f} | {r['mpix_per_s']:.3f} "
                     f"| {r['useful_gflops']:.0f} | {100 * r['fraction_of_matmul_peak']:.0f}% |")
    lines.append("")
    lines.append("| training (default net) | patch | batch | steps/s |")
    lines.append("|---|---|---|---|")
    for r in speed["training"]:
        lines.append(f"| {r['algorithm']} | {r['patch']} | {r['batch']} | {r['steps_per_s']:.2f} |")
    if speed.get("torch"):
        t = speed["torch"]
        lines.append("")
        lines.append(f"Same U-Net in PyTorch {t['torch']} ({t['threads']} threads), same run: training "
                     f"{t['train_steps_per_s']:.2f} steps/s (ours, care: {t['train_ratio']:.2f}x), forward on a 512x512 "
                     f"tile {t['forward_mpix_per_s_512']:.3f} MPix/s (ours {t['ours_forward_mpix_per_s_512']:.3f}, "
                     f"{t['forward_ratio']:.2f}x).")
    if results.get("quality"):
        lines.append("")
        lines.append("PSNR in dB (SSIM) against the clean image; n2v2 is trained on the noisy image itself, "
                     "care on the other images with the same noise, both for "
                     f"{results['quality'][0]['n2v2']['steps']} steps.\n")
        lines.append("| image | noise | noisy | NLM | J-inv NLM | n2v2 | n2v2 + TTA | care | general-2d (no training) "
                     "| n2v2 from general-2d |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|")
        for r in results["quality"]:
            cell = lambda s: f"{s['psnr']:.2f} ({s['ssim']:.3f})" if s else "-"  # noqa: E731
            lines.append(f"| {r['image']} | {r['noise']} | {cell(r['noisy'])} | {cell(r['nlm'])} | {cell(r['jinv'])} "
                         f"| {cell(r['n2v2'])} | {cell(r['n2v2_tta'])} | {cell(r.get('care'))} "
                         f"| {cell(r.get('default'))} | {cell(r.get('n2v2_from_default'))} |")
        lines.append("")
        lines.append("n2v2 PSNR against training time (first image, first noise): " + ", ".join(
            f"{c['step']} steps / {c['train_seconds']:.0f} s: {c['psnr']:.2f} dB"
            for c in results["quality"][0]["n2v2"]["curve"]))
        if "n2v2_from_default" in results["quality"][0]:
            lines.append("")
            lines.append("The same, fine-tuned from the embedded general-2d: " + ", ".join(
                f"{c['step']} steps / {c['train_seconds']:.0f} s: {c['psnr']:.2f} dB"
                for c in results["quality"][0]["n2v2_from_default"]["curve"]))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--quality-only", action="store_true",
                        help="keep the speed section of the existing results file and redo the quality part")
    parser.add_argument("--steps", type=int, default=150, help="training steps of n2v2 and care per image")
    parser.add_argument("--images", nargs="+", default=["camera", "cell"], choices=["camera", "cell", "coins"])
    parser.add_argument("--output", default=str(HERE / "results.json"))
    args = parser.parse_args()
    quick = args.quick
    if args.quality_only:
        results = json.loads(Path(args.output).read_text())
        results["quality"], results["quality_date"] = quality_for(args), time.strftime("%Y-%m-%d")
        write(results, args.output)
        return
    peak = matmul_peak()
    print(f"matmul peak {peak:.0f} GFLOP/s", flush=True)
    n2v2, n2v = Config(), Config(algorithm="n2v")
    size2d = 512 if quick else 2048
    inference_rows = [inference(n2v2, (size2d, size2d), "YX", peak), inference(n2v, (size2d, size2d), "YX", peak),
                      inference(Config(dims=3), (16, 64, 64) if quick else (32, 128, 128), "ZYX", peak, 1)]
    for r in inference_rows:
        print(json.dumps(r), flush=True)
    training_rows = [training_speed(c, 5 if quick else 20) for c in (n2v2, Config(algorithm="care"))]
    for r in training_rows:
        print(json.dumps(r), flush=True)
    speed = {"matmul_gflops": peak, "inference": inference_rows, "training": training_rows}
    peer = torch_reference(5 if quick else 20)
    if peer is not None:
        ours_tile = tile_speed(n2v)
        ours_care = next(r["steps_per_s"] for r in training_rows if r["algorithm"] == "care")
        speed["torch"] = {**peer, "ours_forward_mpix_per_s_512": ours_tile,
                          "forward_ratio": ours_tile / peer["forward_mpix_per_s_512"],
                          "train_ratio": ours_care / peer["train_steps_per_s"]}
        print(json.dumps(speed["torch"]), flush=True)
    speed["matmul_gflops_after"] = matmul_peak()
    results = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
               "jax": jax.__version__, "quick": quick, "speed": speed}
    if not args.skip_quality:
        results["quality"] = quality_for(args)
    write(results, args.output)


def quality_for(args):
    """The quality part of the benchmark at the sizes the command line asks for."""
    images = {k: v for k, v in test_images(128 if args.quick else 256).items() if k in args.images}
    noises = ["gauss25"] if args.quick else ["gauss25", "gauss15", "gauss50", "poisson30"]
    steps = 20 if args.quick else args.steps
    return quality(images, noises, steps, max(steps // 5, 1))


def write(results, output):
    """Write the results file and its markdown table, and print the table."""
    Path(output).write_text(json.dumps(results, indent=1))
    table = markdown(results)
    Path(output).with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
