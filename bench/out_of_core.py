"""Peak memory while denoising a zarr stack larger than the memory budget.

    python bench/out_of_core.py               # 8 GiB stack (512 x 2048 x 2048 float32), ~15 min
    python bench/out_of_core.py --planes 16   # a quick run

Writes an OME-Zarr stack of noise, denoises it zarr -> zarr with the real
``flax-denoise`` CLI in a subprocess (a small random-weight network: memory,
not quality, is measured here), and reads the child's peak resident memory
from the kernel. Results go to ``bench/out_of_core.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planes", type=int, default=512)
    parser.add_argument("--size", type=int, default=2048)
    args = parser.parse_args()
    from napari_flax_denoise import Config
    from napari_flax_denoise.checkpoint import TrainedModel, build_network, save_model
    from napari_flax_denoise.normalization import Normalization
    from napari_flax_denoise.zarr_store import zarr_output

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
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", "denoise", str(work / "in.zarr"), "--output",
                        str(work / "out.zarr"), "--model", str(work / "model"), "--quiet"], check=True)
        seconds = time.perf_counter() - start
        peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 2**30  # ru_maxrss is KiB
        result = {"date": time.strftime("%Y-%m-%d"), "stack": [args.planes, args.size, args.size],
                  "stack_gib": round(size_gib, 2), "peak_rss_gib": round(peak_gib, 3),
                  "peak_over_stack": round(peak_gib / size_gib, 4), "denoise_seconds": round(seconds, 1),
                  "write_input_seconds": round(written, 1)}
    print(json.dumps(result))
    (HERE / "out_of_core.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
