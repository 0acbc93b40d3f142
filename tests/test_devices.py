"""Several devices (simulated CPU devices): the same training and the same denoising as one device."""

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, jax, numpy as np
from skimage import data
from napari_flax_denoise import Config, denoise, train_iter, use_backend
from napari_flax_denoise.progress import drive
from napari_flax_denoise.runtime.devices import Placement
clean = data.camera()[:128, :128].astype(np.float32)
noisy = clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32)
config = Config(features=8, patch_size=32, batch_size=4, epochs=2, steps_per_epoch=4, seed=3)
stack = np.stack([noisy, noisy.T, noisy[::-1], noisy[:, ::-1]])
# Several devices are GPUs (the accelerator profile: patches and tiles cut on the device); a CPU is one
# device unless forced, so the CPU profile is left out.
with use_backend("accelerator"):
    losses = []
    model = drive(train_iter(noisy, axes="YX", config=config), lambda event: losses.append(event.train_loss)).model
    out = denoise(stack, model, axes="SYX", tile_shape=96)
print(json.dumps({"devices": Placement(config.batch_size).count, "losses": losses, "out": out.ravel()[::97].tolist()}))
"""


def _start(devices: int) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _result(process: subprocess.Popen) -> dict:
    stdout, stderr = process.communicate()
    assert process.returncode == 0, stderr
    return json.loads(stdout.strip().splitlines()[-1])


def test_two_devices_train_and_denoise_like_one():
    # Both processes run at once: most of their time is compiling, which uses one core each.
    one, two = map(_result, [_start(1), _start(2)])
    assert (one["devices"], two["devices"]) == (1, 2)
    assert one["losses"] == pytest.approx(two["losses"], rel=1e-3)  # each batch split over both devices
    assert one["out"] == pytest.approx(two["out"], rel=1e-3, abs=1e-2)


def test_split_hands_over_a_batch_already_on_the_device():
    """A step given a NumPy batch may run later on another thread, where its scratch memory is mapped afresh
    (see runtime.cpu.memory); so split returns device arrays whose copy is complete."""
    import jax
    import numpy as np

    from napari_flax_denoise.runtime.devices import Placement

    batch = np.random.default_rng(0).normal(size=(16, 64, 64, 1)).astype(np.float32)
    placed = Placement(16).split(batch)
    assert isinstance(placed, jax.Array) and placed.is_ready()
    np.testing.assert_array_equal(np.asarray(placed), batch)
    assert Placement(16).split(None) is None
