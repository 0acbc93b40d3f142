"""BioImage Model Zoo export, checked by the zoo's own validator and ONNX runtime (the bmz extra)."""

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import yaml

from napari_flax_denoise import Config, denoise
from napari_flax_denoise.models.checkpoint import save_model
from test_cli import flax_denoise

pytest.importorskip("jax2onnx", reason="the bmz extra (jax2onnx) is not installed")
pytest.importorskip("bioimageio.core", reason="the bmz extra (bioimageio.core) is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the bmz extra (onnxruntime) is not installed")


def zoo_test(*packages):
    """``bioimageio test`` on packages (at once): the zoo's format checks, then ONNX runtime against the test output."""
    runs = [subprocess.Popen([sys.executable, "-m", "bioimageio.core", "test", str(package)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for package in packages]
    return [(run.wait(), run.stdout.read()) for run in runs]


def _description(package):
    with zipfile.ZipFile(package) as archive:
        return yaml.safe_load(archive.read("rdf.yaml")), archive


def _card_of(package):
    with zipfile.ZipFile(package) as archive:
        return archive.read("README.md").decode()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_model, noisy):
    """Three packages and the zoo's test of each, run at once (each test is seconds of importing):
    ``tiny`` exported by the command line with a test image larger than the zoo's tile, ``volume`` a 3D
    model and ``per_image`` a per-image noise-aware one, exported from Python."""
    from napari_flax_denoise.models.bmz import export_bmz
    from napari_flax_denoise.models.checkpoint import TrainedModel, build_network
    from napari_flax_denoise.models.normalization import Normalization
    from napari_flax_denoise.models.widening import with_noise_input

    folder = tmp_path_factory.mktemp("zoo")
    save_model(tiny_model, folder / "model")
    tifffile.imwrite(folder / "image.tif", np.tile(noisy, (3, 3))[:300, :280])
    command = subprocess.Popen([sys.executable, "-m", "napari_flax_denoise.cli", "export", str(folder / "model"),
                                "--bmz", str(folder / "tiny.zip"), "--test-image", str(folder / "image.tif"),
                                "--author", "Test Author"], stderr=subprocess.PIPE, text=True)
    volume = np.random.default_rng(0).normal(100, 10, (24, 48, 48)).astype(np.float32)
    config = Config(dims=3, features=4, depth=1)
    statistics = Normalization("meanstd", (100.0,), (10.0,))
    model = TrainedModel(config, build_network(config), statistics, statistics, {"name": "volume"})
    export_bmz(model, folder / "volume.zip", author="Test", test_image=volume, test_axes="ZYX")
    # Normalised per image and noise-aware, as general-2d is: the zoo's percentile step, no way back, and the
    # noise level fixed in the graph (weighed in, so that the zoo's test sees whether it is the right one).
    per_image = with_noise_input(TrainedModel(tiny_model.config.replace(normalize_per_image=True),
                                              tiny_model.network, tiny_model.input_norm, tiny_model.output_norm,
                                              {"name": "per image"}))
    conv = per_image.network.encoders[0].conv1
    conv.kernel[...] = conv.kernel[...].at[..., 1:, :].set(0.5)
    export_bmz(per_image, folder / "per_image.zip", author="Test")
    _, stderr = command.communicate()
    assert command.returncode == 0, stderr
    names = ("tiny", "volume", "per_image")
    return folder, dict(zip(names, zoo_test(*[folder / f"{name}.zip" for name in names])))


def test_a_2d_model_exports_from_the_cli_and_onnx_reproduces_denoise(zoo, tiny_model):
    folder, tests = zoo
    status, report = tests["tiny"]
    assert status == 0, report[-3000:]
    rdf, _ = _description(folder / "tiny.zip")
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_linear"  # fixed statistics: exact in the zoo
    assert rdf["authors"] == [{"name": "Test Author"}] and rdf["weights"]["onnx"]["opset_version"] >= 11
    with zipfile.ZipFile(folder / "tiny.zip") as archive:
        session = onnxruntime.InferenceSession(archive.read("weights.onnx"))
    # ONNX with the zoo's processing, on a tile of the user's image, against our own denoise (no fusion):
    # equal away from the tile's edges, where the zoo's tiling drops the halo.
    crop = tifffile.imread(folder / "image.tif")[:256, :256]
    gain, offset = 1 / np.float32(tiny_model.input_norm.scale[0]), -np.float32(tiny_model.input_norm.offset[0])
    x = ((crop + offset) * gain).astype(np.float32)[None, ..., None]
    y = session.run(None, {session.get_inputs()[0].name: x})[0][0, ..., 0]
    y = y * tiny_model.output_norm.scale[0] + tiny_model.output_norm.offset[0]
    ours = denoise(crop, tiny_model, axes="YX", fusion=False)
    inner = (slice(32, -32),) * 2
    np.testing.assert_allclose(y[inner], ours[inner], atol=1e-3 * float(np.ptp(ours)))


def test_a_3d_model_and_a_per_image_model_pass_the_zoos_test(zoo):
    folder, tests = zoo
    for name in ("volume", "per_image"):
        status, report = tests[name]
        assert status == 0, report[-3000:]
    rdf, _ = _description(folder / "volume.zip")
    assert [axis["type"] for axis in rdf["inputs"][0]["axes"]] == ["batch", "space", "space", "space", "channel"]
    rdf, _ = _description(folder / "per_image.zip")
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_range"
    assert rdf["outputs"][0]["postprocessing"] == []
    assert "Noise level: fixed when exported" in _card_of(folder / "per_image.zip")


def test_an_export_that_cannot_be_written_says_why(tmp_path, tiny_model):
    save_model(tiny_model, tmp_path / "model")
    run = flax_denoise("export", tmp_path / "model", "--bmz", tmp_path / "tiny.tif")
    assert run.returncode == 2 and ".zip" in run.stderr and "Traceback" not in run.stderr
    run = flax_denoise("export", tmp_path / "nothing", "--bmz", tmp_path / "x.zip")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert not (tmp_path / "x.zip").exists()
