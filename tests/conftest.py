import os
import shutil
import tempfile

import numpy as np
import pytest
from skimage import data

from napari_flax_denoise import Config, train


# Test files whose code paths depend on the backend profile (inference route, training forward,
# tiles per call): CI runs them a second time with NAPARI_FLAX_DENOISE_BACKEND=accelerator, so
# that the accelerator path runs on the CPU too (README: the test command). The network's own
# tests (test_model) call it with XLA's convolution or the CPU route directly, on any backend;
# test_resident runs both routes itself in every test, so a second run would only repeat it.
CORE = {"test_backend", "test_prediction", "test_training", "test_fusion", "test_embedded", "test_noise_level"}


def pytest_configure(config):
    """The command lines and training children the tests start keep compiled programs in one folder
    of this session (see runtime.compile_cache), not in the user's cache."""
    config.addinivalue_line("markers", "core: tests whose path depends on the backend profile (run twice in CI)")
    config.addinivalue_line("markers", "float32: compare at float32 precision (no TF32 on accelerators)")
    config.addinivalue_line("markers", "slow: left out of the accelerator profile's second run")
    config.xla_cache = tempfile.mkdtemp(prefix="flax-denoise-tests-xla-")
    os.environ["NAPARI_FLAX_DENOISE_CACHE"] = config.xla_cache
    from napari_flax_denoise.runtime.compile_cache import enable_compilation_cache

    enable_compilation_cache()


def pytest_ignore_collect(collection_path, config):
    """A run of the core tests only (``-m "core ..."``, CI's second run) does not import the other files
    (the viewer's import napari and Qt: seconds of collection for tests it would deselect)."""
    if (config.getoption("markexpr", "").startswith("core") and collection_path.suffix == ".py"
            and collection_path.stem.startswith("test_") and collection_path.stem not in CORE):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.stem in CORE:
            item.add_marker(pytest.mark.core)


@pytest.fixture(autouse=True)
def _own_settings(tmp_path_factory, monkeypatch):
    """Every test starts with no remembered widget settings (plugin.settings), and keeps none."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config")))


@pytest.fixture(autouse=True)
def _float32_precision(request):
    """Tests marked ``float32`` compare at float32 precision: an accelerator's default (TF32 on an
    NVIDIA GPU) missed 1e-5 tolerances by up to 4e-3, which says nothing about the code."""
    if request.node.get_closest_marker("float32") is None:
        yield
        return
    import jax

    with jax.default_matmul_precision("float32"):
        yield


def pytest_unconfigure(config):
    shutil.rmtree(getattr(config, "xla_cache", ""), ignore_errors=True)


TINY = dict(features=8, depth=2, patch_size=32, batch_size=4, epochs=2, steps_per_epoch=4, patience=100)


@pytest.fixture(scope="session")
def clean():
    return data.camera()[128:256, 192:320].astype(np.float32)


@pytest.fixture(scope="session")
def noisy(clean):
    return clean + np.random.default_rng(0).normal(0, 25, clean.shape).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_config():
    return Config(**TINY)


@pytest.fixture(scope="session")
def tiny_model(noisy, tiny_config, tmp_path_factory):
    """A briefly trained 2D n2v2 model, saved to disk."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    config = tiny_config.replace(features=16, batch_size=16, epochs=4, steps_per_epoch=15,
                                 learning_rate=3e-3, mask_fraction=0.04)
    # Always by the CPU profile: the same model for both runs of the suite, made in a few seconds (the
    # accelerator profile's training route, 7x slower on a CPU, is tested by test_training itself).
    from napari_flax_denoise import use_backend

    with use_backend("cpu"):
        return train(noisy, axes="YX", config=config, output=out).model


class RecordingArray:
    """A lazy array like zarr's (shape, dtype, chunks, indexing) that records the shape of every read."""

    def __init__(self, array, chunks=None):
        self.array, self.shape, self.dtype, self.ndim = array, array.shape, array.dtype, array.ndim
        self.chunks = chunks
        self.reads = []

    def __getitem__(self, index):
        block = self.array[index]
        self.reads.append(block.shape)
        return block
