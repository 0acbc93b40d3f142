"""Peak memory while training on, and denoising, a zarr stack larger than the memory budget.

    python bench/out_of_core.py                  # 8 GiB stack (512 x 2048 x 2048 float32), ~30 min
    python bench/out_of_core.py --planes 16      # a quick run
    python bench/out_of_core.py --skip-denoise   # training only (a few minutes)

Writes an OME-Zarr stack of noise, trains on it (20 n2v2 steps) and denoises
it zarr -> zarr with the real ``flax-denoise`` CLI in subprocesses (a small
network: memory, not quality, is measured here), and reads each child's peak
resident memory from the kernel. Results go to ``bench/out_of_core.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "out_of_core.json"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planes", type=int, default=512)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--skip-denoise", action="store_true", help="measure training only")
    args = parser.parse_args()
    from napari_flax_denoise import Config
    from napari_flax_denoise.models.checkpoint import TrainedModel, build_network, save_model
    from napari_flax_denoise.models.normalization import Normalization
    from napari_flax_denoise.io.zarr_store import zarr_output

    with tempfile.TemporaryDirectory(dir=HERE) as work:
        work = Path(work)
        config = Config(features=4)
        norm = Normalization("percentile", (0.0,), (1.0,))
        save_model(TrainedModel(config, build_network(config), norm, norm, {}), work / "model")
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        with zarr_output(work / "in.zarr", (args.planes, args.size, args.size), "TYX", {"Y": 0.1, "X": 0.1}) as array:
            for t in range(args.planes):
                array[t] = rng.normal(100, 10, (args.size, args.size)).astype(np.float32)
        written = time.perf_counter() - start
        size_gib = args.planes * args.size**2 * 4 / 2**30
        result = json.loads(OUTPUT.read_text()) if OUTPUT.exists() else {}
        result.update({"date": time.strftime("%Y-%m-%d"), "stack": [args.planes, args.size, args.size],
                       "stack_gib": round(size_gib, 2), "write_input_seconds": round(written, 1)})
        seconds, peak = cli("train", work / "in.zarr", "--output", work / "trained", "--epochs", "1",
                            "--steps-per-epoch", "20", "--val-fraction", "0", "--quiet")
        result.update({"train_steps": 20, "train_peak_rss_gib": round(peak, 3), "train_seconds": round(seconds, 1)})
        if not args.skip_denoise:
            seconds, peak = cli("denoise", work / "in.zarr", "--output", work / "out.zarr", "--model", work / "model",
                                "--quiet")
            result.update({"peak_rss_gib": round(peak, 3), "peak_over_stack": round(peak / size_gib, 4),
                           "denoise_seconds": round(seconds, 1)})
    print(json.dumps(result))
    OUTPUT.write_text(json.dumps(result, indent=1))


def cli(*args):
    """Run ``flax-denoise ARGS`` in a child process; return its seconds and its own peak RSS in GiB."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "napari_flax_denoise.cli", *map(str, args)])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"flax-denoise {args[0]} failed with exit code {child.returncode}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB


if __name__ == "__main__":
    main()
