"""Benchmark: speed against the machine's own matmul peak, and denoising quality
against the noisy input and scikit-image's classical denoisers, in one run.

    python bench/run.py            # full run, writes bench/results.json and bench/results.md
    python bench/run.py --quick    # a smaller smoke run of the same code
    python bench/run.py --long 1200 --images camera   # only n2v2 from scratch with a longer budget

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
from napari_flax_denoise.models.checkpoint import TrainedModel, build_network  # noqa: E402
from napari_flax_denoise.config import FINE_TUNE_LEARNING_RATE  # noqa: E402
from napari_flax_denoise.runtime.backend import active, configure_process  # noqa: E402
from napari_flax_denoise.training import start_run  # noqa: E402
from napari_flax_denoise.models.normalization import Normalization  # noqa: E402
from napari_flax_denoise.network.unet import halo as network_halo  # noqa: E402
from napari_flax_denoise.inference.tiling import _TILE_STEP, default_tile_shape, edge_margin  # noqa: E402

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
    """The network's own FLOPs per pixel, counted by XLA on its plain convolutions (the network's
    default; the CPU route's packed 3D layout computes a few padding planes that are not useful work)."""
    graphdef, state = nnx.split(model.network)
    x = jnp.zeros((1, *tile_shape, model.config.in_channels))
    compiled = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return cost["flops"] / np.prod(tile_shape)


def inference(config, shape, axes, repeats=2):
    """End-to-end ``denoise`` throughput and its FLOP rate as a fraction of the matmul peak.

    The peak is measured before and after every timed run and the highest is used: this
    machine's speed drifts by 20% within minutes, and a peak measured once, minutes
    away, flattered or penalised the fraction."""
    model = random_model(config)
    image = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    denoise(image, model, axes=axes)  # compiles
    times, peaks = [], [matmul_peak()]
    for _ in range(repeats):
        start = time.perf_counter()
        denoise(image, model, axes=axes)
        times.append(time.perf_counter() - start)
        peaks.append(matmul_peak())
    seconds, peak = min(times), max(peaks)
    spatial = tuple(s for s, a in zip(shape, axes) if a in "ZYX")
    tile = default_tile_shape(spatial, config)
    fpp = flops_per_pixel(model, tile)
    pixels = image.size
    return {"algorithm": config.algorithm, "dims": config.dims, "shape": list(shape), "tile_shape": list(tile),
            "kflop_per_pixel": fpp / 1e3, "seconds": seconds, "mpix_per_s": pixels / seconds / 1e6,
            "useful_gflops": fpp * pixels / seconds / 1e9, "matmul_gflops": peak, "matmul_gflops_all": peaks,
            "fraction_of_matmul_peak": fpp * pixels / seconds / 1e9 / peak}


def tiling_speed(config, shapes, rounds=3):
    """End-to-end ``denoise`` time with the default tiles against full-size tiles
    (the cap on every axis, what the default was before), alternating, best of
    ``rounds`` each; images whose sides fall between the caps show the difference."""
    model = random_model(config)
    axes = "ZYX"[-config.dims:]
    rows = []
    for shape in shapes:
        image = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
        tiles = {"default": default_tile_shape(shape, config), "full": full_tiles(shape, config)}
        times = {k: [] for k in tiles}
        for tile in tiles.values():  # compile both first
            denoise(image, model, axes=axes, tile_shape=tile)
        for _ in range(rounds):
            for name, tile in tiles.items():
                start = time.perf_counter()
                denoise(image, model, axes=axes, tile_shape=tile)
                times[name].append(time.perf_counter() - start)
        best = {k: min(v) for k, v in times.items()}
        rows.append({"dims": config.dims, "shape": list(shape), "tile_shape": list(tiles["default"]),
                     "full_tile_shape": list(tiles["full"]), "mpix_per_s": image.size / best["default"] / 1e6,
                     "full_mpix_per_s": image.size / best["full"] / 1e6, "speedup": best["full"] / best["default"]})
    return rows


def full_tiles(shape, config):
    """The old default tile shape: per axis the whole side (margins added, rounded
    up to the step) or, if longer, the CPU cap."""
    halo = network_halo(config)
    margin = edge_margin(halo, 2**config.depth)
    caps = [c + 2 * halo if config.dims == 2 else c for c in active().tile_cap[config.dims]]
    step = _TILE_STEP[config.dims]
    return tuple(min(cap, -(-(s + 2 * margin) // step) * step) for s, cap in zip(shape, caps))


def all_tiling_speeds(quick):
    """:func:`tiling_speed` of the n2v2 network on 2D images and 3D stacks whose sides fall between the caps."""
    if quick:
        return tiling_speed(Config(), [(512, 512)], rounds=1)
    return (tiling_speed(Config(), [(1200, 1200), (2304, 2304), (2560, 2160)])
            + tiling_speed(Config(dims=3), [(64, 256, 256), (300, 128, 128)], rounds=2))


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


PEERS_PYTHON = HERE / ".venv-peers" / "bin" / "python"


def torch_reference(steps):
    """Run bench/torch_peer.py in the peers' venv (bench/setup_peers.sh), if present."""
    if not PEERS_PYTHON.exists():
        print("no peers: run bench/setup_peers.sh to add PyTorch, CAREamics and BM3D", flush=True)
        return None
    out = subprocess.run([str(PEERS_PYTHON), str(HERE / "torch_peer.py"), str(steps)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_peers(noisy_sets, noise_names, steps, marks, careamics_noises):
    """BM3D on every image and noise, CAREamics N2V2 on ``careamics_noises``, in the
    peers' venv; returns (denoised arrays by key, timings and versions) or (None, None)."""
    if not PEERS_PYTHON.exists():
        return None, None
    folder = HERE / "tmp_peers"
    folder.mkdir(exist_ok=True)
    spec = {"noises": {k: NOISES[k] for k in noise_names}, "steps": steps, "marks": sorted(marks),
            "patch": Config().patch_size, "batch": Config().batch_size, "careamics_noises": careamics_noises}
    arrays = {f"{image}/{noise}": noisy_sets[image][noise] for image in noisy_sets for noise in noise_names}
    np.savez(folder / "inputs.npz", spec=np.array(json.dumps(spec)), **arrays)
    subprocess.run([str(PEERS_PYTHON), str(HERE / "peers.py"), str(folder / "inputs.npz"), str(folder / "out")],
                   check=True, stdout=subprocess.DEVNULL)
    return dict(np.load(folder / "out.npz")), json.loads((folder / "out.json").read_text())


def tile_speed(config, tile=512):
    """Forward MPix/s of the bare network on one tile (no tiling overhead), called as
    ``denoise`` calls it (upsampling inside the decoder's convolutions, memory kept)."""
    model = random_model(config)
    graphdef, state = nnx.split(model.network)
    conv = active().convolution
    f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x, conv=conv, upsample_in_conv=True))
    x = jnp.zeros((1, tile, tile, 1))
    with active().memory():
        return tile * tile / best_time(lambda: f(state, x).block_until_ready(), 3) / 1e6


def layer_speeds(peak, tile=1088):
    """Each 3x3 convolution of the default 2D U-Net on its own, at its level's size in a
    ``tile`` x ``tile`` tile, through the route the network takes on this backend (a
    decoder's first convolution is one per part of its input, as in the network).

    The FLOP-weighted rate of them all is what the network would reach with no other
    work (bias, ReLU, pooling, upsampling, head) and no tile overlap: a ceiling for
    inference."""
    config = Config()
    net = build_network(config)
    widths = [config.features * 2**i for i in range(config.depth)]
    layers = []  # (level, input channels of each part, output channels)
    for level, block in enumerate(net.encoders):
        layers += [(level, [block.conv1.in_features], block.conv1.out_features),
                   (level, [block.conv2.in_features], block.conv2.out_features)]
    block = net.bottleneck
    layers += [(config.depth, [block.conv1.in_features], block.conv1.out_features),
               (config.depth, [block.conv2.in_features], block.conv2.out_features)]
    for level, block in zip(reversed(range(config.depth)), net.decoders):
        skip = 0 if (level == 0 and config.use_blurpool) else widths[level]
        parts = [block.conv1.in_features - skip] + ([skip] if skip else [])
        layers += [(level, parts, block.conv1.out_features), (level, [block.conv2.in_features], block.conv2.out_features)]
    f = jax.jit(active().convolution)
    rng = np.random.default_rng(0)
    rows, total_flops, total_seconds = [], 0.0, 0.0
    for level, parts, out in layers:
        size = tile >> level
        seconds = 0.0
        for c in parts:
            x = jnp.asarray(rng.normal(size=(1, size, size, c)), jnp.float32)
            k = jnp.asarray(rng.normal(size=(3, 3, c, out)), jnp.float32)
            with active().memory():  # as denoise does: an output's pages are reused, not faulted in afresh
                seconds += best_time(lambda: f(x, k).block_until_ready(), 5)
        flops = 2 * 9 * sum(parts) * out * size * size
        rows.append({"level": level, "in": sum(parts), "parts": len(parts), "out": out, "size": size,
                     "ms": 1e3 * seconds, "gflops": flops / seconds / 1e9})
        total_flops, total_seconds = total_flops + flops, total_seconds + seconds
        print(json.dumps(rows[-1]), flush=True)
    together = total_flops / total_seconds / 1e9
    return {"tile": tile, "rows": rows, "gflops": together, "fraction_of_matmul_peak": together / peak,
            "matmul_gflops": peak}


NOISES = {**{f"gauss{s}": {"kind": "gauss", "sigma": s} for s in (15, 25, 50)},
          "poisson30": {"kind": "poisson", "photons": 30.0, "read": 2.0, "scale": 255.0 / 30.0}}


def noisy_versions(clean, rng):
    """Gaussian sigma 15/25/50 on 0-255, and Poisson-Gaussian: 30 photons at the
    brightest pixel, read noise of 2 counts, scaled back to 0-255."""
    out = {}
    for name, noise in NOISES.items():
        if noise["kind"] == "gauss":
            out[name] = clean + rng.normal(0, noise["sigma"], clean.shape)
        else:
            counts = rng.poisson(clean / 255.0 * noise["photons"]) + rng.normal(0, noise["read"], clean.shape)
            out[name] = counts * noise["scale"]
    return {k: v.astype(np.float32) for k, v in out.items()}


def train_with_curve(images, noisy, clean, config, marks, targets=None, init=None):
    """Train on ``images`` (and ``targets``), scoring the denoised ``noisy``
    against ``clean`` at the steps in ``marks``; returns (model, curve).

    The curve's seconds count training only, not the scoring.
    """
    run = start_run(images, axes="YX", targets=targets, config=config, init=init)
    steps, curve, training = run.steps(), [], 0.0
    while True:
        start = time.perf_counter()
        try:
            event = next(steps)
        except StopIteration as stop:  # timed by hand: the scoring between steps is not training
            return stop.value.model, curve
        training += time.perf_counter() - start
        if event.done in marks:
            psnr = evaluate(denoise(noisy, run.model(), axes="YX"), clean, data_range=255)["psnr"]
            curve.append({"step": event.done, "train_seconds": round(training, 2), "psnr": psnr})


def quality(images, noise_names, steps, curve_every, careamics_noises):
    """PSNR / SSIM against the clean image of: the noisy input; scikit-image NLM and
    J-invariance-calibrated NLM; BM3D (and BM3D after the Anscombe transform for
    Poisson-Gaussian noise) and CAREamics N2V2, from the peers' venv; our n2v2
    trained on the noisy image itself (with and without 8-fold TTA); the embedded
    general-2d with no training and fine-tuned by n2v2 on the noisy image; and care
    trained on the *other* images with the same noise.

    Returns the rows, the peers' versions and timings, and example crops."""
    # Each image draws its noise from its own seed, so a run on one image gives the same curves as a run on several.
    noisy_sets = {name: noisy_versions(clean, np.random.default_rng(0)) for name, clean in images.items()}
    base = Config(epochs=1, steps_per_epoch=steps, val_fraction=0.0, learning_rate=2e-3)
    marks = set(range(curve_every, steps + 1, curve_every))
    peer_arrays, peers = run_peers(noisy_sets, noise_names, steps, marks, careamics_noises)
    rows, crops = [], {}
    for noise in noise_names:
        for name, clean in images.items():
            noisy = noisy_sets[name][noise]
            score = lambda x: evaluate(x, clean, data_range=255)  # noqa: E731
            row = {"image": name, "noise": noise, "noisy": score(noisy)}
            outputs = {"noisy": noisy}
            for method in ("nlm", "jinv"):
                start = time.perf_counter()
                outputs[method] = classical_denoise(noisy, method)
                row[method] = {**score(outputs[method]), "seconds": time.perf_counter() - start}
            key = f"{name}/{noise}"
            for method in ("bm3d", "bm3d_vst", "careamics"):
                if peer_arrays is not None and f"{key}/{method}" in peer_arrays:
                    outputs[method] = peer_arrays[f"{key}/{method}"]
                    row[method] = score(outputs[method])
            if "careamics" in row:
                timing = peers["timings"][f"{key}/careamics"]
                row["careamics"].update(steps=timing["steps"], steps_per_s=timing["steps_per_s"], curve=[
                    {"step": s, "train_seconds": round(t, 2), "psnr": score(peer_arrays[f"{key}/careamics@{s}"])["psnr"]}
                    for s, t in timing["curve"]])
            model, curve = train_with_curve(noisy, noisy, clean, base, marks)
            outputs["n2v2"] = denoise(noisy, model, axes="YX")
            row["n2v2"] = {**score(outputs["n2v2"]), "steps": steps, "curve": curve}
            row["n2v2_plain"] = score(denoise(noisy, model, axes="YX", fusion=False))
            row["n2v2_tta"] = score(denoise(noisy, model, axes="YX", tta=True))
            outputs["default"] = denoise(noisy, "general-2d", axes="YX")  # embedded, no training
            row["default"] = score(outputs["default"])
            row["default_plain"] = score(denoise(noisy, "general-2d", axes="YX", fusion=False))
            row["default_tta"] = score(denoise(noisy, "general-2d", axes="YX", tta=True))
            tuned, curve = train_with_curve(noisy, noisy, clean, base.replace(learning_rate=FINE_TUNE_LEARNING_RATE),
                                            marks, init="general-2d")
            outputs["n2v2_from_default"] = denoise(noisy, tuned, axes="YX")
            row["n2v2_from_default"] = {**score(outputs["n2v2_from_default"]), "steps": steps, "curve": curve}
            row["n2v2_from_default_plain"] = score(denoise(noisy, tuned, axes="YX", fusion=False))
            others = [k for k in images if k != name]
            if others:
                care, curve = train_with_curve(
                    [noisy_sets[k][noise] for k in others], noisy, clean, base.replace(algorithm="care"),
                    marks, targets=[images[k] for k in others])
                outputs["care"] = denoise(noisy, care, axes="YX")
                row["care"] = {**score(outputs["care"]), "steps": steps, "curve": curve, "trained_on": others}
                care_tuned, curve = train_with_curve(
                    [noisy_sets[k][noise] for k in others], noisy, clean,
                    base.replace(algorithm="care", learning_rate=FINE_TUNE_LEARNING_RATE), marks,
                    targets=[images[k] for k in others], init="general-2d")
                row["care_from_default"] = {**score(denoise(noisy, care_tuned, axes="YX")), "steps": steps,
                                            "curve": curve, "trained_on": others}
            rows.append(row)
            if noise in careamics_noises:
                crops.update({f"{key}/{k}": v[64:192, 64:192] for k, v in {**outputs, "clean": clean}.items()})
            print(f"{name:8s} {noise:10s} " + "  ".join(
                f"{k} {v['psnr']:.2f}" for k, v in row.items() if isinstance(v, dict) and "psnr" in v), flush=True)
    return rows, peers, crops


def long_curves(images, noise_names, steps):
    """Our n2v2 trained from scratch on each noisy image for ``steps`` steps (one
    warm-up + cosine schedule over all of them), scored at eight points, with
    non-local means on the same noisy image for comparison (the same noise as
    :func:`quality` draws for these images)."""
    # Each image draws its noise from its own seed, so a run on one image gives the same curves as a run on several.
    noisy_sets = {name: noisy_versions(clean, np.random.default_rng(0)) for name, clean in images.items()}
    config = Config(epochs=1, steps_per_epoch=steps, val_fraction=0.0, learning_rate=2e-3)
    rows = []
    for noise in noise_names:
        for name, clean in images.items():
            noisy = noisy_sets[name][noise]
            nlm = evaluate(classical_denoise(noisy, "nlm"), clean, data_range=255)["psnr"]
            model, curve = train_with_curve(noisy, noisy, clean, config,
                                            set(range(steps // 8, steps + 1, max(steps // 8, 1))))
            tta = evaluate(denoise(noisy, model, axes="YX", tta=True), clean, data_range=255)["psnr"]
            above = [c["step"] for c in curve if c["psnr"] > nlm]
            rows.append({"image": name, "noise": noise, "nlm": nlm, "steps": steps, "curve": curve, "tta": tta,
                         "first_step_above_nlm": above[0] if above else None})
            print(f"{name:8s} {noise:10s} nlm {nlm:.2f} " + " ".join(
                f"{c['step']}:{c['psnr']:.2f}" for c in curve) + f" tta {tta:.2f}", flush=True)
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
    after = speed.get("matmul_gflops_after")
    lines.append(f"Measured {when} on {results['machine']} (CPU only); "
                 f"float32 matmul peak in the same run: {speed['matmul_gflops']:.0f} GFLOP/s at its start"
                 + (f", {after:.0f} at its end" if after else "") + ".\n")
    lines.append("| inference | kFLOP/px | MPix/s | GFLOP/s | matmul peak beside it (highest of before and after "
                 "each timed run) | of that peak |")
    lines.append("|---|---|---|---|---|---|")
    for r in speed["inference"]:
        shape = "x".join(map(str, r["shape"]))
        peaks = r.get("matmul_gflops_all", [speed["matmul_gflops"]])
        lines.append(f"| {r['algorithm']} {r['dims']}D, {shape} | {r['kflop_per_pixel']:.0f} | {r['mpix_per_s']:.3f} "
                     f"| {r['useful_gflops']:.0f} | {max(peaks):.0f} ({min(peaks):.0f}-{max(peaks):.0f}) "
                     f"| {100 * r['fraction_of_matmul_peak']:.0f}% |")
    if speed.get("layers"):
        layers = speed["layers"]
        lines.append("")
        lines.append(f"Each 3x3 convolution of the n2v2 network on its own, at its size in a {layers['tile']}x"
                     f"{layers['tile']} tile (best of 5; matmul peak {layers['matmul_gflops']:.0f} GFLOP/s when "
                     f"measured). Together, weighted by their FLOPs, they run at {layers['gflops']:.0f} GFLOP/s, "
                     f"{100 * layers['fraction_of_matmul_peak']:.0f}% of the peak: the ceiling for the whole network "
                     "with no other work and no tile overlap.\n")
        lines.append("| level | channels in -> out | size | ms | GFLOP/s |")
        lines.append("|---|---|---|---|---|")
        for r in layers["rows"]:
            parts = f" (in {r['parts']} parts)" if r["parts"] > 1 else ""
            lines.append(f"| {r['level']} | {r['in']} -> {r['out']}{parts} | {r['size']} | {r['ms']:.1f} "
                         f"| {r['gflops']:.0f} |")
    if speed.get("tiling"):
        lines.append("")
        lines.append(f"Default tiles against the full-size tiles that were the default before (same process, "
                     f"alternating, best of 2-3 each{', measured ' + speed['tiling_date'] if speed.get('tiling_date') else ''}):\n")
        lines.append("| n2v2, image | default tiles | MPix/s | full-size tiles (the old default) | "
                     "MPix/s | speed-up |")
        lines.append("|---|---|---|---|---|---|")
        for r in speed["tiling"]:
            lines.append(f"| {r.get('dims', 2)}D, {'x'.join(map(str, r['shape']))} | "
                         f"{'x'.join(map(str, r['tile_shape']))} | "
                         f"{r['mpix_per_s']:.3f} | {'x'.join(map(str, r['full_tile_shape']))} | "
                         f"{r['full_mpix_per_s']:.3f} | {r['speedup']:.2f}x |")
    lines.append("")
    lines.append("| training (default net) | patch | batch | steps/s |")
    lines.append("|---|---|---|---|")
    for r in speed["training"]:
        lines.append(f"| {r['algorithm']} | {r['patch']} | {r['batch']} | {r['steps_per_s']:.2f} |")
    if speed.get("torch"):
        t = speed["torch"]
        lines.append("")
        rounds = "" if results.get("quick") else " (best of 3 rounds alternating with ours)"
        lines.append(f"Same U-Net in PyTorch {t['torch']} ({t['threads']} threads), same run: training "
                     f"{t['train_steps_per_s']:.2f} steps/s{rounds} (ours, care: {t['train_ratio']:.2f}x), "
                     f"forward on a 512x512 "
                     f"tile {t['forward_mpix_per_s_512']:.3f} MPix/s (ours {t['ours_forward_mpix_per_s_512']:.3f}, "
                     f"{t['forward_ratio']:.2f}x).")
    peers = results.get("peers")
    if peers:
        sp = peers["speed"]
        lines.append("")
        # A --quality-only run times CAREamics; our rates then come from the last speed run.
        when = "timed in the quality run, ours in the speed run" if results.get("quality_date") else "same run"
        lines.append(f"CAREamics {peers['careamics']} (PyTorch {peers['torch']}, {peers['threads']} threads), {when}: "
                     f"its default tiled prediction ({sp['tile']}-pixel tiles, {sp['overlap']}-pixel overlap) of the same "
                     f"U-Net on 2048x2048 ran at {sp['predict_mpix_per_s_2048']:.3f} MPix/s; ours "
                     f"{sp['ours_mpix_per_s']:.3f} MPix/s ({sp['ratio']:.1f}x).")
        if "train_ratio" in sp:
            lines.append("")
            lines.append(f"Its N2V2 training on one 256x256 image ran {sp['train_steps_per_s']:.2f} steps/s (a batch of "
                         f"15 patches of 64x64 a step, over {sp['train_steps']} steps); our n2v2 "
                         f"{sp['ours_train_steps_per_s']:.2f} steps/s with batches of 16 ({sp['train_ratio']:.2f}x).")
    if results.get("quality"):
        rows = results["quality"]
        columns = [("noisy", "noisy"), ("nlm", "NLM"), ("jinv", "J-inv NLM"), ("bm3d", "BM3D"),
                   ("bm3d_vst", "BM3D + Anscombe"), ("careamics", "CAREamics N2V2"),
                   ("n2v2_plain", "n2v2 without fusion"), ("n2v2", "n2v2"),
                   ("n2v2_tta", "n2v2 + TTA"), ("default_plain", "general-2d without fusion"),
                   ("default", "general-2d (no training)"),
                   ("default_tta", "general-2d + TTA"),
                   ("n2v2_from_default_plain", "n2v2 from general-2d without fusion"),
                   ("n2v2_from_default", "n2v2 from general-2d"), ("care", "care"),
                   ("care_from_default", "care from general-2d")]
        columns = [(k, title) for k, title in columns if any(k in r for r in rows)]
        lines.append("")
        lines.append("PSNR in dB (SSIM) against the clean image. BM3D is given the true sigma for Gaussian noise and "
                     "an estimated one otherwise; BM3D + Anscombe is given the true photon scale and read noise. "
                     "CAREamics N2V2 and our n2v2 are trained on the noisy image itself, our care (from scratch, or "
                     "fine-tuned from general-2d) on the other images with the same noise and their clean "
                     f"versions, all for {rows[0]['n2v2']['steps']} steps of the same patches and batch. "
                     "Outputs are fused with the noisy pixels where that is the default of denoise (n2v2 "
                     "models, and general-2d and its fine-tunes, which normalise each image) unless marked "
                     "'without fusion'; care from scratch is not fused.\n")
        lines.append("| image | noise | " + " | ".join(title for _, title in columns) + " |")
        lines.append("|---|---|" + "---|" * len(columns))
        for r in rows:
            cell = lambda s: f"{s['psnr']:.2f} ({s['ssim']:.3f})" if s else "-"  # noqa: E731
            lines.append(f"| {r['image']} | {r['noise']} | " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |")
        for key, title in (("careamics", "CAREamics N2V2"), ("n2v2", "Our n2v2 from scratch"),
                           ("n2v2_from_default", "Our n2v2 fine-tuned from general-2d")):
            for r in rows:
                if key in r and r[key].get("curve"):
                    lines.append("")
                    lines.append(f"{title}, PSNR against training time ({r['image']}, {r['noise']}): " + ", ".join(
                        f"{c['step']} steps / {c['train_seconds']:.0f} s: {c['psnr']:.2f} dB" for c in r[key]["curve"]))
                    break
    if results.get("long"):
        long = results["long"]
        marks = [c["step"] for c in long["rows"][0]["curve"]]
        lines.append("")
        lines.append(f"Our n2v2 trained from scratch on the noisy image with a longer budget ({long['steps']} steps, "
                     f"one schedule over all of them; measured {long['date']}): PSNR in dB after so many steps "
                     "(training seconds), against non-local means on the same image; the last column adds 8-fold "
                     "TTA to the final model.\n")
        lines.append("| image | noise | NLM | " + " | ".join(f"{m} steps" for m in marks) + " | + TTA |")
        lines.append("|---|---|---|" + "---|" * (len(marks) + 1))
        for r in long["rows"]:
            lines.append(f"| {r['image']} | {r['noise']} | {r['nlm']:.2f} | " + " | ".join(
                f"{c['psnr']:.2f} ({c['train_seconds']:.0f} s)" for c in r["curve"]) + f" | {r['tta']:.2f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--quality-only", action="store_true",
                        help="keep the speed section of the existing results file and redo the quality part")
    parser.add_argument("--speed-only", action="store_true",
                        help="keep the quality section of the existing results file and redo the speed part "
                             "(with CAREamics' prediction speed, measured again)")
    parser.add_argument("--steps", type=int, default=150, help="training steps of n2v2 and care per image")
    parser.add_argument("--images", nargs="+", default=["camera", "cell"], choices=["camera", "cell", "coins"])
    parser.add_argument("--tiling-only", action="store_true",
                        help="only redo the tiling comparison, keeping the rest of the existing results file")
    parser.add_argument("--long", type=int, metavar="STEPS",
                        help="only redo the longer-budget curves of n2v2 from scratch (this many steps), keeping "
                             "the rest of the existing results file")
    parser.add_argument("--layers-only", action="store_true",
                        help="only redo the convolution-by-convolution speeds, keeping the rest of the results file")
    parser.add_argument("--output", default=str(HERE / "results.json"))
    args = parser.parse_args()
    configure_process("train")  # this process is ours, as the command line's is
    quick = args.quick
    if args.tiling_only:
        results = json.loads(Path(args.output).read_text())
        results["speed"]["tiling"] = all_tiling_speeds(quick)
        results["speed"]["tiling_date"] = time.strftime("%Y-%m-%d %H:%M")
        write(results, args.output)
        return
    if args.layers_only:
        results = json.loads(Path(args.output).read_text())
        results["speed"]["layers"] = layer_speeds(matmul_peak())
        write(results, args.output)
        return
    if args.long:
        results = json.loads(Path(args.output).read_text())
        images = {k: v for k, v in test_images(256).items() if k in args.images}
        rows = long_curves(images, ["gauss25", "gauss15", "gauss50", "poisson30"], args.long)
        old = results.get("long") or {}
        if old.get("steps") == args.long:  # keep the other images' curves of the same budget
            rows = [r for r in old["rows"] if r["image"] not in images] + rows
        results["long"] = {"steps": args.long, "date": time.strftime("%Y-%m-%d"), "rows": rows}
        write(results, args.output)
        return
    if args.quality_only:
        results = json.loads(Path(args.output).read_text())
        add_quality(results, args)
        results["quality_date"] = time.strftime("%Y-%m-%d")
        write(results, args.output)
        return
    peak = matmul_peak()
    print(f"matmul peak {peak:.0f} GFLOP/s", flush=True)
    n2v2, n2v = Config(), Config(algorithm="n2v")
    size2d = 512 if quick else 2048
    inference_rows = [inference(n2v2, (size2d, size2d), "YX"), inference(n2v, (size2d, size2d), "YX"),
                      inference(Config(dims=3), (16, 64, 64) if quick else (32, 128, 128), "ZYX", 1)]
    for r in inference_rows:
        print(json.dumps(r), flush=True)
    tiling_rows = all_tiling_speeds(quick)
    layers = layer_speeds(matmul_peak(), 256 if quick else 1088)  # the peak beside them
    for r in tiling_rows:
        print(json.dumps(r), flush=True)
    # Ours and PyTorch alternate over a few rounds and each keeps its best: this machine's
    # speed drifts by 5-10% within minutes, and one slow moment should not decide the ratio.
    training_rows, peer = None, None
    for _ in range(1 if quick else 3):
        rows = [training_speed(c, 5 if quick else 40) for c in (n2v2, Config(algorithm="care"))]
        training_rows = rows if training_rows is None else [max(a, b, key=lambda r: r["steps_per_s"])
                                                            for a, b in zip(training_rows, rows)]
        fresh = torch_reference(5 if quick else 40)
        if fresh is not None and (peer is None or fresh["train_steps_per_s"] > peer["train_steps_per_s"]):
            peer = fresh
    for r in training_rows:
        print(json.dumps(r), flush=True)
    speed = {"matmul_gflops": peak, "inference": inference_rows, "tiling": tiling_rows, "training": training_rows,
             "layers": layers}
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
    if args.speed_only:
        old = json.loads(Path(args.output).read_text())
        results.update(quality=old.get("quality"), quality_date=old.get("quality_date", old["date"]))
        if old.get("long"):
            results["long"] = old["long"]
        if old.get("peers"):
            _, fresh = run_peers({}, [], 0, [], [])  # no images: CAREamics' prediction speed only
            results["peers"] = {**old["peers"], "speed": fresh["speed"]} if fresh else old["peers"]
            add_peer_ratio(results)
    elif not args.skip_quality:
        add_quality(results, args)
    write(results, args.output)


def add_peer_ratio(results):
    """CAREamics' prediction speed against ours, both from this run."""
    ours = next(r for r in results["speed"]["inference"] if r["algorithm"] == "n2v2" and r["dims"] == 2)
    speed = results["peers"]["speed"]
    speed["ours_mpix_per_s"] = ours["mpix_per_s"]
    speed["ratio"] = ours["mpix_per_s"] / speed["predict_mpix_per_s_2048"]
    if "train_steps_per_s" in speed:
        n2v2 = next(r for r in results["speed"]["training"] if r["algorithm"] == "n2v2")
        speed["ours_train_steps_per_s"] = n2v2["steps_per_s"]
        speed["train_ratio"] = n2v2["steps_per_s"] / speed["train_steps_per_s"]


def add_quality(results, args):
    """Add the quality part (and the peers' inference speed) at the sizes the command
    line asks for; save example crops and draw the plots."""
    images = {k: v for k, v in test_images(128 if args.quick else 256).items() if k in args.images}
    noises = ["gauss25"] if args.quick else ["gauss25", "gauss15", "gauss50", "poisson30"]
    careamics_noises = ["gauss25"] if args.quick else ["gauss25", "poisson30"]  # the target noises
    steps = 20 if args.quick else args.steps
    results["quality"], peers, crops = quality(images, noises, steps, max(steps // 5, 1), careamics_noises)
    if peers is None:
        return
    results["peers"] = peers
    add_peer_ratio(results)
    np.savez_compressed(HERE / "tmp_peers" / "crops.npz", **crops)


def write(results, output):
    """Write the results file and its markdown table, print the table, and draw the
    plots beside the results file when the peers ran."""
    Path(output).write_text(json.dumps(results, indent=1))
    table = markdown(results)
    Path(output).with_suffix(".md").write_text(table)
    print(table)
    crops = HERE / "tmp_peers" / "crops.npz"
    if results.get("peers") and crops.exists():
        subprocess.run([str(PEERS_PYTHON), str(HERE / "plots.py"), str(output), str(crops),
                        str(Path(output).parent)], check=True)


if __name__ == "__main__":
    main()
