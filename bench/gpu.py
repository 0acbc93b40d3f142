"""GPU benchmark: end-to-end denoise against our bare network and the same U-Net in PyTorch, one run.

    python bench/gpu.py            # on the GPU machine: about 3-5 minutes; writes bench/gpu.json and bench/gpu.md
    python bench/gpu.py --quick    # a smoke run of the same code at small sizes (any device, the CPU included)

Every figure is measured in this run on this device (ratios side by side):

* ``bare``: the network alone (jit, valid masks, upsampling inside the convolutions) on a batch of
  tiles already on the device;
* ``denoise()`` end to end on 2048², 4096² and a stack of 8 x 2048² (fusion on and off; and read
  lazily from zarr into zarr), with TTA,
  the embedded general-2d on 4096² and on a stack of 64 x 512²,
  in 3D on 64 x 512² and 256 x 1024² (n2v2 3D), each as a ratio to the bare network, with the share
  of its time that only copying the image in and a float32 result out takes;
* the same U-Net in PyTorch on the same device (fp32, TF32, bf16 autocast + channels-last), when
  PyTorch with CUDA is importable;
* the command line's first and second run on the nuclei sample (cold: empty compile cache);
* bfloat16's PSNR cost with the embedded model on scikit-image's camera and cell;
* training: steps/s against PyTorch, time to the first step, PSNR after a time budget (bench/gpu_training.py);
* peak device memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the CLI runs below share the device

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from napari_flax_denoise import Config, __version__, denoise, evaluate, load_model  # noqa: E402
from napari_flax_denoise.inference.resident import apply_network  # noqa: E402
from napari_flax_denoise.models.checkpoint import TrainedModel, build_network  # noqa: E402
from napari_flax_denoise.models.normalization import Normalization  # noqa: E402
from napari_flax_denoise.runtime.backend import active, describe  # noqa: E402
from gpu_training import markdown as training_markdown, torch_on_gpu, training  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent


def seconds(fn, repeats=3):
    """Best wall time of ``fn`` after one warm-up call (which compiles), and that first call's time."""
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), first


def random_model(config):
    norm = Normalization("meanstd", (0.0,) * config.in_channels, (1.0,) * config.in_channels)
    return TrainedModel(config, build_network(config), norm, norm)


def bare_rate(model, batch, tile, precision="float32"):
    """MPix/s of the network alone on ``batch`` tiles of ``tile`` already on the device."""
    graphdef, state = nnx.split(model.network)
    conv = active().convolution
    dims = model.config.dims
    x = jnp.asarray(np.random.default_rng(0).normal(size=(batch, *(tile,) * dims, 1)), jnp.float32)
    valid = jnp.full((batch, dims), tile, jnp.int32)
    f = jax.jit(lambda s, x, v: apply_network(graphdef, s, x, v, conv, precision))
    best, _ = seconds(lambda: f(state, x, valid).block_until_ready())
    return x.size / best / 1e6


def end_to_end(model, shape, axes, lazy=False, **options):
    """``denoise()``'s time on a random image, and the share of it that only copying the image to the
    device and a float32 result back takes (what overlapping transfers with compute could win).
    ``lazy``: the stack is an in-memory zarr array, read plane by plane, and the result goes to another
    (what the command line does for zarr -> zarr)."""
    image = np.random.default_rng(1).normal(0, 1, shape).astype(np.float32)
    source, out = image, None
    if lazy:
        import zarr

        chunks = (1, *shape[1:])
        source = zarr.zeros(shape=shape, chunks=chunks, dtype="float32")
        source[...] = image
        out = zarr.zeros(shape=shape, chunks=chunks, dtype="float32")
    best, first = seconds(lambda: denoise(source, model, axes=axes, out=out, **options), repeats=2)
    transfer, _ = seconds(lambda: np.array(jax.device_put(image)), repeats=2)
    return {"shape": list(shape), "axes": axes, **({"lazy": "zarr"} if lazy else {}), **options, "seconds": best,
            "first_call_seconds": first, "mpix_per_s": image.size / best / 1e6, "transfer_share": transfer / best}


def torch_rates(batch, tile):
    """The same U-Net (n2v architecture) in PyTorch on this GPU, or None without CUDA."""
    found = torch_on_gpu()
    if found is None:
        return None
    torch, UNet = found

    net = UNet().cuda().eval()
    x = torch.rand(batch, 1, tile, tile, device="cuda")
    rates = {"torch": torch.__version__}

    def run(model, data, autocast=False):
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=autocast):
            model(data)
        torch.cuda.synchronize()

    for name, tf32, autocast, channels_last in [("fp32", False, False, False), ("tf32", True, False, False),
                                                ("bf16", False, True, False), ("bf16_channels_last", False, True, True)]:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        model = net.to(memory_format=torch.channels_last) if channels_last else net
        data = x.to(memory_format=torch.channels_last) if channels_last else x
        best, _ = seconds(lambda: run(model, data, autocast))
        rates[name] = x.numel() / best / 1e6
    return rates


def cli_start(quick):
    """Seconds of ``flax-denoise denoise`` on the nuclei sample: first run on an empty compile cache, then again."""
    sample = ROOT / "sample_data" / "nuclei2d_noisy.tif"
    times = []
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "NAPARI_FLAX_DENOISE_CACHE": str(Path(folder) / "xla"),
               "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
        for run in range(2):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", "denoise", str(sample), "--output",
                            str(Path(folder) / f"out{run}.tif"), "--quiet"], check=True, env=env)
            times.append(time.perf_counter() - start)
    return {"cold_cli_s": times[0], "warm_cli_s": times[1]}


def bf16_cost(quick):
    """PSNR of the embedded model in float32 and bfloat16 on camera and cell (sigma 25)."""
    from skimage import data

    rows = []
    for name in ("camera", "cell"):
        clean = getattr(data, name)().astype(np.float32)
        clean = clean[:128, :128] if quick else clean
        noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32)
        scores = {p: evaluate(denoise(noisy, "general-2d", axes="YX", precision=p), clean, data_range=255)["psnr"]
                  for p in ("float32", "bfloat16")}
        rows.append({"image": name, **scores, "cost_db": scores["float32"] - scores["bfloat16"]})
    return rows


def peak_memory():
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def markdown(results):
    lines = [f"GPU run {results['measured']['date']} on {results['measured']['device']} "
             f"(jax {results['measured']['jax']}, profile {results['measured']['profile']}).", "",
             "| case | MPix/s | of the bare network | copying in and out | first call (s) |", "|---|---|---|---|---|"]
    for row in results["end_to_end"]:
        label = f"{row['axes']} {'x'.join(map(str, row['shape']))}" + "".join(
            f", {k}={v}" for k, v in row.items() if k in ("model", "lazy", "fusion", "tta", "precision"))
        share = "3D model" if row["over_bare"] is None else f"{row['over_bare']:.0%}"
        lines.append(f"| {label} | {row['mpix_per_s']:.1f} | {share} | {row['transfer_share']:.0%} of the time | "
                     f"{row['first_call_seconds']:.1f} |")
    lines += ["", f"Bare network: {results['bare_mpix_s']:.0f} MPix/s (float32), "
              f"{results['bare_bf16_mpix_s']:.0f} (bfloat16); 3D {results['mvox_s_3d']:.1f} MVox/s end to end."]
    if results.get("torch"):
        t = results["torch"]
        lines.append(f"PyTorch {t['torch']} same U-Net: fp32 {t['fp32']:.0f}, TF32 {t['tf32']:.0f}, bf16 {t['bf16']:.0f}, "
                     f"bf16 channels-last {t['bf16_channels_last']:.0f} MPix/s; our end to end (4096², fusion on) "
                     f"is {results['e2e_over_torch_best']:.2f}x its best.")
    lines.append(f"Command line on the nuclei sample: {results['cold_cli_s']:.1f} s cold, {results['warm_cli_s']:.1f} s warm.")
    lines.append("bfloat16 PSNR cost (general-2d, sigma 25): " + ", ".join(
        f"{r['image']} {r['cost_db']:+.3f} dB" for r in results["bf16"]))
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run on any device")
    parser.add_argument("--output", default=str(HERE / "gpu.json"))
    args = parser.parse_args()
    quick = args.quick
    n2v = random_model(Config(algorithm="n2v"))
    n2v2_3d = random_model(Config(dims=3))
    batch, tile = (2, 128) if quick else (8, 1024)
    results = {"bare_mpix_s": bare_rate(n2v, batch, tile), "bare_bf16_mpix_s": bare_rate(n2v, batch, tile, "bfloat16")}
    print(json.dumps(results), flush=True)
    side = 256 if quick else 2048
    big = 512 if quick else 4096
    cases = [((side, side), "YX", {}), ((side, side), "YX", {"fusion": False}),
             ((big, big), "YX", {}), ((big, big), "YX", {"fusion": False}),
             ((8, side, side), "SYX", {}), ((8, side, side), "SYX", {"fusion": False}),
             ((8, side, side), "SYX", {"lazy": True}),
             ((side, side), "YX", {"tta": True}), ((side, side), "YX", {"precision": "bfloat16"})]
    rows = []
    for shape, axes, options in cases:
        rows.append(end_to_end(n2v, shape, axes, **options))
        rows[-1]["over_bare"] = rows[-1]["mpix_per_s"] / results["bare_mpix_s"]
        print(json.dumps(rows[-1]), flush=True)
    # What a user runs by default: the embedded general-2d (normalised per image, noise level estimated on the
    # device), against the same bare rate (its network has the same depth and features).
    # And a time-lapse of small planes, whose noise levels and fusion's choices run on the device together.
    for shape, axes in [((big, big), "YX"), ((8, 128, 128) if quick else (64, 512, 512), "SYX")]:
        rows.append({"model": "general-2d", **end_to_end(load_model("general-2d"), shape, axes)})
        rows[-1]["over_bare"] = rows[-1]["mpix_per_s"] / results["bare_mpix_s"]
        print(json.dumps(rows[-1]), flush=True)
    for shape in ([(16, 64, 64)] if quick else [(64, 512, 512), (256, 1024, 1024)]):
        rows.append(end_to_end(n2v2_3d, shape, "ZYX", fusion=False))
        rows[-1]["over_bare"] = None
        print(json.dumps(rows[-1]), flush=True)
    results["end_to_end"] = rows
    e2e = rows[2]  # big x big, fusion on: the figure the targets name
    results["e2e_over_bare"] = e2e["mpix_per_s"] / results["bare_mpix_s"]
    results["mvox_s_3d"] = rows[-1]["mpix_per_s"]
    results["torch"] = torch_rates(batch, tile)
    if results["torch"]:
        best = max(v for k, v in results["torch"].items() if k != "torch")
        results["e2e_over_torch_best"] = e2e["mpix_per_s"] / best
    results.update(cli_start(quick))
    results["bf16"] = bf16_cost(quick)
    results.update(training(quick))
    results["peak_device_bytes"] = peak_memory()
    about = describe()
    results["measured"] = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": about["devices"][0],
                           "jax": about["jax"], "profile": about["profile"], "package": __version__,
                           "python": platform.python_version(), "quick": quick}
    Path(args.output).write_text(json.dumps(results, indent=1))
    table = markdown(results) + training_markdown(results)
    Path(args.output).with_suffix(".md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
