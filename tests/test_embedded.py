"""The embedded default model: listed, used without --model, fine-tunable, small, documented."""

import json

import numpy as np
import pytest
import tifffile
from skimage import data

from napari_flax_denoise import denoise, load_model, psnr, train
from napari_flax_denoise.config import FINE_TUNE_LEARNING_RATE
from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.inference.batch import open_input
from napari_flax_denoise.models.checkpoint import load_embedded
from napari_flax_denoise.models.embedded import MIN_PLANES, default_model_for, embedded_models, embedded_path
from napari_flax_denoise.io.samples import sample_path

from test_cli import flax_denoise


def test_models_command_lists_each_embedded_model_with_a_description():
    run = flax_denoise("models")
    assert run.returncode == 0, run.stderr
    lines = dict(line.split("\t") for line in run.stdout.strip().splitlines())
    assert lines == embedded_models() and "general-2d" in lines
    assert all(len(description) > 10 for description in lines.values())


def test_embedded_models_are_small_documented_and_self_describing():
    sizes = []
    for name in embedded_models():
        directory = embedded_path(name)
        sizes.append(sum(f.stat().st_size for f in directory.iterdir()))
        card = (directory / "README.md").read_text()
        assert "Measured" in card and "Licence" in card and "scripts/train_embedded" in card
        assert not (directory / "last").exists()  # no resume state shipped
    assert sum(sizes) < 10e6


def test_load_model_takes_an_embedded_name_and_a_folder_of_that_name_wins(tmp_path, monkeypatch):
    model = load_model("general-2d")
    assert model.info["path"] == str(embedded_path("general-2d"))
    assert model.config == load_embedded("general-2d").config
    monkeypatch.chdir(tmp_path)
    (tmp_path / "general-2d").mkdir()  # a user's own folder of that name is never shadowed
    with pytest.raises(Exception, match="not a model directory"):
        load_model("general-2d")


def test_default_model_beats_the_noisy_input_on_unseen_images():
    model = load_embedded("general-2d")
    assert model.config.normalize_per_image
    rng = np.random.default_rng(5)
    for clean in (data.camera()[:256, :256], data.coins()[:256, :256]):
        clean = clean.astype(np.float32)
        for noisy in (clean + rng.normal(0, 25, clean.shape), 3 * rng.poisson(clean / 8.0) + 500.0):
            reference = clean if noisy.mean() < 400 else 3 * clean / 8.0 + 500.0
            span = float(reference.max() - reference.min())
            out = denoise(noisy.astype(np.float32), "general-2d", axes="YX")
            assert psnr(out, reference, data_range=span) > psnr(noisy, reference, data_range=span) + 4


@pytest.mark.slow  # the command line's choice: test_prediction and test_resident cover the profile
def test_denoise_without_model_uses_the_default_for_the_inputs_dimensionality(tmp_path):
    run = flax_denoise("denoise", sample_path("nuclei2d_noisy.tif"), "--output", tmp_path / "n.tif")
    assert run.returncode == 0, run.stderr
    assert tifffile.imread(tmp_path / "n.tif").shape == (512, 512)
    run = flax_denoise("denoise", sample_path("fmri3d_noisy.tif"), "--output", tmp_path / "f.tif", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "with the embedded 3D model 'general-3d'" in run.stderr  # it sees the neighbouring planes
    with tifffile.TiffFile(tmp_path / "f.tif") as tif:
        assert tif.series[0].axes == "ZYX" and tif.series[0].shape == (24, 96, 128)
    tifffile.imwrite(tmp_path / "thin.tif", tifffile.imread(sample_path("fmri3d_noisy.tif"))[:MIN_PLANES - 1],
                     photometric="minisblack")
    thin = open_input(tmp_path / "thin.tif", axes="ZYX")  # what the command line opens it as
    assert (thin.model, thin.axes) == ("general-2d", "SYX") and "plane by plane" in thin.note  # too few planes


def test_inputs_with_z_get_the_3d_default_and_others_the_2d_one():
    assert default_model_for("ZYX", (24, 96, 128)) == ("general-3d", "ZYX")
    assert default_model_for("TCZYX") == ("general-3d", "TCZYX")
    assert default_model_for("ZYX", (MIN_PLANES - 1, 64, 64)) == ("general-2d", "SYX")
    assert default_model_for("SYX") == ("general-2d", "SYX") and default_model_for("YXC")[0] == "general-2d"
    config = load_embedded("general-3d").config
    assert (config.dims, config.noise_input, config.normalize_per_image) == (3, True, True)
    assert MIN_PLANES == 2 ** config.depth


def _volume(shape=(24, 64, 64), seed=0):
    """Blurred spheres of random size and brightness: neighbouring planes alike, as in a microscope's stack."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    zz, yy, xx = np.indices(shape)
    volume = np.zeros(shape)
    for _ in range(12):
        centre, radius = rng.uniform(0, 1, 3) * shape, rng.uniform(3, 9)
        inside = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2
        volume = np.maximum(volume, inside * rng.uniform(80, 220))
    return ndimage.gaussian_filter(volume, (2.5, 1, 1)) + 20


@pytest.mark.slow  # the model's quality: test_resident checks that both routes give the same noise-aware 3D result
def test_the_3d_default_beats_the_2d_default_plane_by_plane_with_no_training():
    clean = _volume()
    noisy = (clean + np.random.default_rng(1).normal(0, 25, clean.shape)).astype(np.float32)
    span = float(clean.max() - clean.min())
    deep = denoise(noisy, axes="ZYX")  # the API's default model for a Z axis
    np.testing.assert_array_equal(deep, denoise(noisy, "general-3d", axes="ZYX"))
    flat = denoise(noisy, "general-2d", axes="SYX")
    assert psnr(deep, clean, data_range=span) > psnr(flat, clean, data_range=span) + 1
    np.testing.assert_array_equal(denoise(noisy[0], axes="YX"), denoise(noisy[0], "general-2d", axes="YX"))


@pytest.mark.slow  # the models' quality: test_noise_level checks that a given level reaches the network
def test_told_there_is_no_noise_the_defaults_leave_a_clean_image_nearly_as_it_is():
    import os

    import nibabel

    # Real structure they never trained on: a photograph and nibabel's MR volume (2 mm voxels, fine anatomy).
    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    volume = np.asarray(nibabel.load(path).dataobj, np.float32).transpose(2, 1, 0)
    for image, model, axes in ((data.camera()[:256, :256].astype(np.float32), "general-2d", "YX"),
                               (volume, "general-3d", "ZYX")):
        out = denoise(image, model, axes=axes, noise_level=0, fusion=False)  # the network's own answer
        assert psnr(out, image, data_range=float(np.ptp(image))) > 45, model


def test_unknown_model_name_is_a_clear_error(tmp_path):
    run = flax_denoise("denoise", sample_path("ct2d.tif"), "--output", tmp_path / "x.tif", "--model", "no-such")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "general-2d" in run.stderr and not (tmp_path / "x.tif").exists()


@pytest.mark.slow  # the CLI / fine-tuning path: test_prediction and test_training cover the profile
def test_fine_tuning_from_the_default_keeps_its_architecture(noisy):
    result = train(noisy, axes="YX", init="general-2d", algorithm="n2v2", epochs=1, steps_per_epoch=2,
                   batch_size=4, patch_size=32)
    base = load_embedded("general-2d").config
    config = result.model.config
    assert (config.features, config.depth, config.normalize_per_image) == (base.features, base.depth, True)
    assert result.model.info["fine_tuned_from"] == "general-2d"
    assert json.dumps(result.model.config.to_dict())  # still a plain, saveable config
    assert config.learning_rate == FINE_TUNE_LEARNING_RATE  # gentle unless asked otherwise
    chosen = train(noisy, axes="YX", init="general-2d", epochs=1, steps_per_epoch=1, batch_size=4, patch_size=32,
                   learning_rate=1e-3)
    assert chosen.model.config.learning_rate == 1e-3


@pytest.mark.slow  # saving and loading: the same on both routes
def test_a_model_fine_tuned_from_the_default_denoises_the_same_after_saving(noisy, tmp_path):
    # general-2d is residual; n2v2 fine-tuning keeps that, and so must the saved config.
    result = train(noisy, axes="YX", init="general-2d", algorithm="n2v2", epochs=1, steps_per_epoch=2,
                   batch_size=4, patch_size=32, output=tmp_path / "tuned")
    assert result.model.config.use_residual
    image = noisy[:64, :64]
    np.testing.assert_allclose(denoise(image, tmp_path / "tuned", axes="YX"),
                               denoise(image, result.model, axes="YX"), atol=1e-4)


def test_blind_spot_training_refuses_a_residual_network_from_scratch(noisy):
    with pytest.raises(UserInputError, match="residual"):
        train(noisy, axes="YX", algorithm="n2v2", residual=True, epochs=1, steps_per_epoch=1)


def test_widget_registry_offers_embedded_models_and_prefers_the_default():
    from napari_flax_denoise.plugin.registry import ModelRegistry

    registry = ModelRegistry()
    assert registry.names()[0] == "general-2d" and registry.preferred() == "general-2d"
    assert registry.get("general-2d") is load_embedded("general-2d")
    with pytest.raises(Exception, match="Choose a model"):
        registry.get("nothing")
