"""Noise-aware models: the noise level as the network's extra input, in denoising, training and fine-tuning
(the estimate itself: test_noise_estimation)."""

import jax
import numpy as np
import pytest

from napari_flax_denoise import Config, denoise, load_model, train
from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.inference.prediction import denoise_iter
from napari_flax_denoise.models.checkpoint import save_model
from napari_flax_denoise.models.widening import with_noise_input
from napari_flax_denoise.noise.level import noise_features
from napari_flax_denoise.progress import drive

from conftest import TINY


@pytest.fixture(scope="module")
def plain_and_aware(tiny_model):
    """The session's trained model (no noise input), and its noise-aware copy."""
    return tiny_model, with_noise_input(tiny_model)


def test_a_noise_aware_copy_starts_as_the_model_it_widens(plain_and_aware, noisy, tmp_path):
    plain, aware = plain_and_aware
    assert not plain.config.noise_input and aware.config.noise_input
    kernel = aware.network.encoders[0].conv1.kernel[...]
    assert kernel.shape[-2] == 3 and not np.any(np.asarray(kernel[..., 1:, :]))
    for fusion in (False, True):  # fusion probes the network too: with the noise channels
        np.testing.assert_allclose(denoise(noisy, aware, axes="YX", fusion=fusion),
                                   denoise(noisy, plain, axes="YX", fusion=fusion), atol=1e-3)
    # Saved and loaded, it stays noise-aware; the plain one (an old-style model) loads as it was.
    assert load_model(save_model(aware, tmp_path / "aware")).config.noise_input
    assert not load_model(save_model(plain, tmp_path / "plain")).config.noise_input


def test_a_given_noise_level_overrides_the_estimate(plain_and_aware, noisy):
    _, aware = plain_and_aware
    estimated, given = {}, {}
    drive(denoise_iter(noisy, aware, axes="YX", report=estimated))
    drive(denoise_iter(np.stack([noisy, noisy]), aware, axes="SYX", report=given, noise_level=50))
    norm = aware.input_norm
    level = estimated["noise_levels"][0]
    # camera's crop with sigma 25: the estimate is 25 on the normalised scale, the given level 50 on both planes.
    assert np.sqrt(np.mean(np.square(level))) * norm.scale[0] == pytest.approx(25, rel=0.1)
    np.testing.assert_allclose(given["noise_levels"], np.full((2, 2), 50 / norm.scale[0]), rtol=1e-5)
    with pytest.raises(UserInputError, match="does not take a noise level"):
        denoise(noisy, plain_and_aware[0], axes="YX", noise_level=25)
    with pytest.raises(UserInputError, match="noise level must be"):
        denoise(noisy, aware, axes="YX", noise_level=-3)


@pytest.mark.parametrize("algorithm", ["n2v2", "care"])
def test_noise_aware_training_gives_every_patch_its_images_level(algorithm, noisy, clean):
    from napari_flax_denoise.axes import check_image
    from napari_flax_denoise.training.data import TrainingData

    config = Config(**TINY, algorithm=algorithm, noise_input=True)
    images = [noisy, noisy[:, ::-1] * 2 + 7]  # the second one on another scale: the same level relative to it
    _, layout = check_image(noisy, "YX")
    data = TrainingData.build(images, None if algorithm != "care" else [clean, clean], [layout] * 2, config)
    inputs, targets = data.train.sample(8)
    assert inputs.shape[-1] == 3 and (targets is None) == (algorithm != "care")
    expected = noise_features(np.stack(images)[..., None], data.input_norm.offset[0], data.input_norm.scale[0])
    levels = {tuple(np.round(patch[0, 0, 1:], 5)) for patch in inputs}
    assert levels <= {tuple(np.round(e, 5)) for e in expected}
    if data.device is not None:  # the accelerator profile: patches cut on the device carry the level too
        plan, buffers = data.device
        drawn, _ = plan.sample(buffers, jax.random.key(0), 8)
        assert {tuple(np.round(np.asarray(p[0, 0, 1:]), 5)) for p in drawn} <= {tuple(np.round(e, 5)) for e in expected}
    if algorithm == "n2v2":  # the blind spot masks the image's channel, not its level
        model = train(images, axes="YX", config=config.replace(epochs=1)).model
        assert model.config.noise_input
        assert np.isfinite(denoise(noisy, model, axes="YX")).all()
