"""The backend profile: chosen from the device, forced by the environment or a context manager,
and the accelerator path gives the CPU path's results (it runs here, on a CPU)."""

import json
import os
import subprocess
import sys

import jax
import dask.array as da
import numpy as np
import pytest

from napari_flax_denoise import Config, denoise, train_iter, use_backend
from napari_flax_denoise.runtime.devices import default_batch_size
from napari_flax_denoise.models.checkpoint import TrainedModel, build_network
from napari_flax_denoise.models.normalization import Normalization
from napari_flax_denoise.progress import drive
from napari_flax_denoise.runtime.backend import ENV, active, detected

pytestmark = pytest.mark.float32


def test_the_profile_follows_the_environment_and_the_context_manager(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert active().name == detected()
    monkeypatch.setenv(ENV, "Accelerator ")
    assert active().name == "accelerator"
    with use_backend("cpu") as profile:
        assert active() is profile and profile.name == "cpu"
        with use_backend("accelerator"):
            assert active().name == "accelerator"
        assert active().name == "cpu"
    assert active().name == "accelerator"
    monkeypatch.setenv(ENV, "gpu")
    with pytest.raises(ValueError, match="'cpu' or 'accelerator'"):
        active()
    with pytest.raises(ValueError, match="'cpu' or 'accelerator'"):
        with use_backend("tpu"):
            pass


def _model(algorithm, dims, channels=1):
    config = Config(algorithm=algorithm, dims=dims, features=8, in_channels=channels, out_channels=channels)
    norm = Normalization("meanstd", (100.0,) * channels, (20.0,) * channels)
    return TrainedModel(config, build_network(config, seed=2), norm, norm)


@pytest.mark.slow  # sets its profiles itself: a second run repeats it
@pytest.mark.parametrize("algorithm, axes, shape", [("n2v2", "YX", (1250, 150)), ("care", "ZYX", (20, 40, 36))])
def test_the_accelerator_profile_denoises_like_the_cpu_profile(algorithm, axes, shape):
    model = _model(algorithm, len(axes))
    image = np.random.default_rng(0).normal(100, 20, shape).astype(np.float32)
    results = {}
    for name in ("cpu", "accelerator"):
        with use_backend(name):
            results[name] = denoise(image, model, axes=axes, fusion=False)
    assert np.abs(results["cpu"] - image).max() > 1  # the network does something
    np.testing.assert_allclose(results["accelerator"], results["cpu"], atol=1e-4 * np.ptp(image))


def test_the_profiles_take_their_own_routes():
    """Tiles per call, the inference route and the convolution differ, so the equivalence above compares two paths."""
    config = Config(features=8)
    with use_backend("cpu") as cpu:
        assert default_batch_size(1000, 8) == 1
    with use_backend("accelerator") as accelerator:
        assert default_batch_size(1000, 8) == 8  # this CPU states no memory: the profile's number
    assert not cpu.resident_inference and accelerator.resident_inference
    network = build_network(config)
    x = np.zeros((2, 32, 32, 1), np.float32)
    programs = {p.name: str(jax.make_jaxpr(lambda x, p=p: p.training_forward(network, x))(x))
                for p in (cpu, accelerator)}
    # The CPU convolution is a custom gradient named after its function; pooling has one on both.
    assert "_conv_cpu" in programs["cpu"] and "_conv_cpu" not in programs["accelerator"]
    assert programs["cpu"].count("conv_general_dilated") != programs["accelerator"].count("conv_general_dilated")


def _losses(profile, algorithm):
    rng = np.random.default_rng(1)
    clean = np.kron(rng.normal(100, 20, (24, 24)), np.ones((4, 4))).astype(np.float32)
    noisy = clean + rng.normal(0, 10, clean.shape).astype(np.float32)
    targets = clean if algorithm == "care" else None
    config = Config(algorithm=algorithm, features=8, patch_size=32, batch_size=4, epochs=2, steps_per_epoch=3, seed=5)
    losses = []
    lazy = da.from_array(noisy, chunks=noisy.shape)  # cut on the host in both profiles: only the routes differ
    with use_backend(profile):
        drive(train_iter(lazy, axes="YX", targets=targets, config=config),
              lambda event: losses.append(event.train_loss))
    return losses


@pytest.mark.slow  # sets its profiles itself: a second run repeats it
@pytest.mark.parametrize("algorithm", ["n2v2", "care"])
def test_the_accelerator_profile_trains_like_the_cpu_profile(algorithm):
    cpu, accelerator = _losses("cpu", algorithm), _losses("accelerator", algorithm)
    assert len(cpu) == 6 and cpu != pytest.approx([cpu[0]] * 6)
    assert accelerator == pytest.approx(cpu, rel=1e-3)


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.mark.slow  # sets its profiles itself: a second run repeats it
def test_importing_and_using_the_package_changes_no_jax_setting():
    """Only processes we own (the command line, the training child) change JAX's settings."""
    code = """
import json, jax, numpy as np
before = dict(jax.config.values)
import napari_flax_denoise as nfd
image = np.random.default_rng(0).normal(100, 20, (64, 64)).astype(np.float32)
result = nfd.train(image, axes="YX", features=8, patch_size=32, batch_size=4, epochs=1, steps_per_epoch=2)
nfd.denoise(image, result.model, axes="YX")
nfd.denoise(image, "general-2d", axes="YX")
changed = {k: [str(before.get(k)), str(v)] for k, v in jax.config.values.items() if before.get(k) != v}
print(json.dumps(changed))
"""
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == {}


@pytest.mark.slow  # sets its profiles itself: a second run repeats it
def test_info_reports_versions_devices_and_the_forced_profile():
    out = subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", "info"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, ENV: "accelerator"})
    assert out.returncode == 0, out.stderr
    assert "napari-flax-denoise 0.1.0" in out.stdout and f"JAX {jax.__version__}" in out.stdout
    assert "device 0: " in out.stdout
    assert "backend profile: accelerator" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", "info"], capture_output=True, text=True,
                         timeout=120, env={**os.environ, ENV: "gpus"})
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == ("flax-denoise info: error: NAPARI_FLAX_DENOISE_BACKEND must be 'cpu' or "
                                  "'accelerator', not 'gpus'; fix it or leave it unset.")
