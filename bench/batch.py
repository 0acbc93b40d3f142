"""One ``flax-denoise denoise`` call for many images against one call per image.

    python bench/batch.py              # 40 images of 256x256, ~1 minute on 2 cores
    python bench/batch.py --count 10   # a quick run

Writes noisy 256x256 TIFFs (scikit-image's ``camera`` crops with Gaussian
noise), then times, with the real CLI in subprocesses and the embedded
default model: one call on one image, one call on all of them (a folder in,
a folder out), and a few calls of one image each. Issue 27's target: all
images in one call cost at most 3x one image in one call. Results go to
``bench/batch.json``.
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

import numpy as np

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "batch.json"


def cli(*args) -> float:
    """Seconds one ``flax-denoise`` process takes, start-up included."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", *map(str, args), "--quiet"], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--single-calls", type=int, default=3, help="one-image calls to time (their mean is used)")
    args = parser.parse_args()
    import tifffile
    from skimage import data

    camera = data.camera().astype(np.float32)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        (work / "in").mkdir()
        for i in range(args.count):
            y, x = rng.integers(0, camera.shape[0] - args.size, 2)
            crop = camera[y:y + args.size, x:x + args.size]
            tifffile.imwrite(work / "in" / f"img{i:03d}.tif", crop + rng.normal(0, 25, crop.shape).astype(np.float32))
        cli("denoise", work / "in" / "img000.tif", "--output", work / "warm.tif")  # fills the compile cache
        singles = [cli("denoise", work / "in" / f"img{i:03d}.tif", "--output", work / f"one{i}.tif")
                   for i in range(args.single_calls)]
        batch = cli("denoise", work / "in", "--output", work / "out")
        written = len(list((work / "out").iterdir()))
    one = float(np.mean(singles))
    result = {
        "date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "images": args.count, "size": args.size, "written": written,
        "one_image_one_call_s": round(one, 2), "one_image_calls_s": [round(s, 2) for s in singles],
        "all_images_one_call_s": round(batch, 2), "all_over_one": round(batch / one, 2),
        "one_call_each_estimated_s": round(one * args.count, 1),
        "speedup_over_one_call_each": round(one * args.count / batch, 1),
    }
    print(json.dumps(result, indent=1))
    print(f"{args.count} images of {args.size}x{args.size} in one call: {batch:.1f} s, {batch / one:.2f}x one image "
          f"in one call ({one:.1f} s); one call each would take ~{one * args.count:.0f} s.")
    OUTPUT.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
