import numpy as np
import pytest

from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.models.normalization import Normalization


@pytest.mark.parametrize("method", ["percentile", "meanstd"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_round_trip(method, dtype):
    rng = np.random.default_rng(0)
    image = (rng.random((3, 20, 20, 2)) * 200).astype(dtype)
    norm = Normalization.fit([image], method)
    normed = norm.apply(image)
    assert normed.dtype == np.float32
    np.testing.assert_allclose(norm.undo(normed), image.astype(np.float32), rtol=1e-5, atol=1e-3)
    assert Normalization.from_dict(norm.to_dict()) == norm


@pytest.mark.parametrize("method", ["percentile", "meanstd"])
def test_an_image_on_the_device_gets_the_hosts_statistics_and_stays_there(method):
    """The accelerator route fits, applies and undoes the normalisation where the image is."""
    import jax

    rng = np.random.default_rng(1)
    image = np.concatenate([rng.poisson(30, (1, 64, 80, 1)), np.full((1, 64, 80, 1), 4000)], axis=1).astype(np.uint16)
    host, device = Normalization.fit([image], method), Normalization.fit([jax.device_put(image)], method)
    np.testing.assert_allclose(device.offset, host.offset, rtol=1e-6)
    np.testing.assert_allclose(device.scale, host.scale, rtol=1e-6)
    normed = device.apply(jax.device_put(image))
    assert isinstance(normed, jax.Array) and normed.dtype == np.float32
    back = device.undo(normed)
    assert isinstance(back, jax.Array)
    np.testing.assert_allclose(np.asarray(back), image, rtol=1e-5, atol=1e-2)
    image = image.astype(np.float32)
    image[0, 3, 3] = np.nan
    with pytest.raises(UserInputError, match="NaN"):
        Normalization.fit([jax.device_put(image)], method)


def test_constant_image_is_refused():
    with pytest.raises(UserInputError, match="constant"):
        Normalization.fit([np.full((1, 8, 8, 1), 7.0)])


def test_per_image_normalisation_follows_each_image_scale(noisy, tiny_config):
    from napari_flax_denoise import denoise, train

    config = tiny_config.replace(normalize_per_image=True, algorithm="care")
    model = train([noisy, noisy * 40 + 1000], targets=[noisy, noisy * 40 + 1000], axes="YX", config=config).model
    assert model.input_norm.method == "identity"
    small = denoise(noisy, model, axes="YX")
    large = denoise(noisy * 40 + 1000, model, axes="YX")
    # The same picture at another intensity scale gives the same result at that scale.
    np.testing.assert_allclose(large, small * 40 + 1000, rtol=1e-4, atol=0.05 * 40)
