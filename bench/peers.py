"""The peers of bench/run.py: CAREamics N2V2 and BM3D on the benchmark's own noisy images.

Runs in its own virtual environment (bench/setup_peers.sh), never the
project's, and is started by bench/run.py:

    .venv-peers/bin/python peers.py INPUTS.npz OUTPUT_PREFIX

INPUTS.npz holds ``<image>/<noise>`` noisy arrays and a ``spec`` entry (JSON:
the noise parameters, training steps, curve marks, patch and batch size, and
the noises CAREamics is trained on).
This script denoises and times; it scores nothing. It writes
OUTPUT_PREFIX.npz (every denoised image, and CAREamics' output at each curve
mark) and OUTPUT_PREFIX.json (versions, timings, speed), and bench/run.py
scores the arrays with the same metric code as our own results.
"""

import json
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import torch


def _allow_torchvision_without_its_ops():
    # The torchvision wheel that matches torch 2.13 here lacks its compiled CPU
    # ops; lightning imports it, and its import registers fake kernels for two of
    # them. Defining those operator names first lets that import succeed.
    from torch.library import Library

    library = Library("torchvision", "DEF")  # noqa: F841 (kept alive by the registry)
    for name in ("nms", "qnms"):  # the two it registers fake kernels for
        library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    return library


_LIBRARY = _allow_torchvision_without_its_ops()
warnings.filterwarnings("ignore")

import bm3d  # noqa: E402
import careamics  # noqa: E402
from careamics import CAREamist  # noqa: E402
from careamics.config import create_advanced_n2v_config  # noqa: E402
from lightning.pytorch.callbacks import Callback  # noqa: E402
from torch_peer import best  # noqa: E402 (beside this file, in the same venv)


class Snapshots(Callback):
    """Save a checkpoint at each curve mark (global step) with the training seconds
    so far, and stop training after the last mark.

    CAREamics ends an epoch when it has used every patch of its fixed grid (15
    of 64 x 64 in a 256 x 256 image, one batch), so the step budget is enforced
    here rather than through epochs.
    """

    def __init__(self, folder, marks):
        self.folder, self.marks = folder, sorted(marks)
        self.saved, self.started, self.paused = [], None, 0.0

    def on_train_start(self, trainer, module):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step not in self.marks or any(s == step for s, _, _ in self.saved):
            return
        pause = time.perf_counter()
        path = os.path.join(self.folder, f"step{step}.ckpt")
        trainer.save_checkpoint(path)
        self.saved.append((step, pause - self.started - self.paused, path))
        self.paused += time.perf_counter() - pause  # saving is not training
        if step >= self.marks[-1]:
            trainer.should_stop = True


def careamics_n2v2(noisy, steps, marks, patch, batch, work_dir):
    """Train CAREamics N2V2 (U-Net depth 2, 32 features) on ``noisy`` for ``steps``
    steps; return the final prediction, the predictions at the curve marks, and timings."""
    config = create_advanced_n2v_config(
        experiment_name="bench", data_type="array", axes="YX", patch_size=[patch, patch], batch_size=batch,
        num_epochs=steps, use_n2v2=True, n_val_patches=1,  # ours holds none out
        model_params={"depth": 2, "num_channels_init": 32}, logger="none")
    os.makedirs(work_dir, exist_ok=True)
    snapshots = Snapshots(work_dir, marks)
    careamist = CAREamist(config, work_dir=work_dir, callbacks=[snapshots], enable_progress_bar=False)
    start = time.perf_counter()
    careamist.train(train_data=noisy)
    seconds = time.perf_counter() - start - snapshots.paused
    curve = [(step, elapsed, predict(careamist, noisy, checkpoint=path)) for step, elapsed, path in snapshots.saved]
    steps_done = snapshots.saved[-1][0]
    loop = snapshots.saved[-1][1]  # from the first step to the last, without Lightning's set-up
    return curve[-1][2], curve, {"train_seconds": seconds, "steps": steps_done, "steps_per_s": steps_done / loop}


def predict(careamist, image, tile=256, overlap=48, checkpoint=None):
    """CAREamics' tiled prediction (256-pixel tiles, 48-pixel overlap), with the last
    weights or those of ``checkpoint``."""
    out = careamist.predict(image, tile_size=(tile, tile), tile_overlap=(overlap, overlap), axes="YX",
                            checkpoint=checkpoint)
    out = out[0] if isinstance(out, tuple) else out
    return np.asarray(out[0] if isinstance(out, list) else out, np.float32).squeeze()


def bm3d_gauss(noisy, sigma):
    """BM3D given the true noise standard deviation."""
    return np.asarray(bm3d.bm3d(noisy, sigma), np.float32)


def bm3d_anscombe(noisy, photons, read, scale):
    """BM3D after the generalised Anscombe transform (gain 1, Gaussian read noise
    ``read``), inverted with the closed-form approximation of the exact unbiased
    inverse (Makitalo and Foi)."""
    counts = noisy / scale
    stabilised = 2.0 * np.sqrt(np.maximum(counts + 3.0 / 8.0 + read**2, 0.0))
    d = np.maximum(np.asarray(bm3d.bm3d(stabilised, 1.0)), 0.8)
    inverse = (0.25 * d**2 + 0.25 * np.sqrt(1.5) / d - 11.0 / 8.0 / d**2 + 0.625 * np.sqrt(1.5) / d**3
               - 0.125 - read**2)
    return (np.maximum(inverse, 0.0) * scale).astype(np.float32)


def bm3d_estimated(noisy):
    """BM3D given a noise level estimated from the image (what a user without the noise model gets)."""
    from skimage.restoration import estimate_sigma

    return bm3d_gauss(noisy, float(estimate_sigma(noisy)))


def main():
    inputs, prefix = np.load(sys.argv[1]), sys.argv[2]
    spec = json.loads(str(inputs["spec"]))
    arrays, timings = {}, {}
    work_dir = tempfile.mkdtemp(prefix="careamics-")
    careamist = None
    for key in (k for k in inputs.files if k != "spec"):
        image, noise = key.split("/")
        noisy, params = inputs[key], spec["noises"][noise]
        start = time.perf_counter()
        if params["kind"] == "gauss":
            arrays[f"{key}/bm3d"] = bm3d_gauss(noisy, params["sigma"])
        else:
            arrays[f"{key}/bm3d"] = bm3d_estimated(noisy)
            arrays[f"{key}/bm3d_vst"] = bm3d_anscombe(noisy, params["photons"], params["read"], params["scale"])
        timings[f"{key}/bm3d"] = time.perf_counter() - start
        if noise not in spec["careamics_noises"]:
            continue
        final, curve, info = careamics_n2v2(noisy, spec["steps"], spec["marks"], spec["patch"], spec["batch"],
                                            os.path.join(work_dir, image + noise))
        arrays[f"{key}/careamics"] = final
        for step, _, prediction in curve:
            arrays[f"{key}/careamics@{step}"] = prediction
        timings[f"{key}/careamics"] = {**info, "curve": [[s, t] for s, t, _ in curve]}
        print(f"{key}: careamics {info['steps']} steps in {info['train_seconds']:.0f} s", flush=True)
    # Inference speed: CAREamics' default tiled prediction on 2048 x 2048, with the last model.
    big = np.random.default_rng(1).normal(100, 20, (2048, 2048)).astype(np.float32)
    careamist = CAREamist(create_advanced_n2v_config(
        experiment_name="speed", data_type="array", axes="YX", patch_size=[64, 64], batch_size=16, num_epochs=1,
        num_steps=1, use_n2v2=True, model_params={"depth": 2, "num_channels_init": 32}, logger="none"),
        work_dir=os.path.join(work_dir, "speed"), enable_progress_bar=False)
    careamist.train(train_data=big[:256, :256])
    seconds = best(lambda: predict(careamist, big), 2)
    speed = {"predict_mpix_per_s_2048": big.size / seconds / 1e6, "tile": 256, "overlap": 48}
    # Training speed: N2V2 on one 256 x 256 image, the quality runs' set-up (one batch of 15 patches a step).
    steps = spec.get("speed_steps", 60)
    *_, info = careamics_n2v2(big[:256, :256], steps, [steps], spec["patch"], spec["batch"],
                              os.path.join(work_dir, "train_speed"))
    speed.update(train_steps_per_s=info["steps_per_s"], train_steps=steps)
    np.savez_compressed(prefix + ".npz", **arrays)
    with open(prefix + ".json", "w") as f:
        json.dump({"careamics": careamics.__version__, "torch": torch.__version__, "bm3d": bm3d.__version__
                   if hasattr(bm3d, "__version__") else "4.0.3", "threads": torch.get_num_threads(),
                   "timings": timings, "speed": speed}, f, indent=1)
    print(json.dumps(speed), flush=True)


if __name__ == "__main__":
    main()
