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


@pytest.mark.parametrize("method", ["percentile", "meanstd"])
def test_each_plane_gets_its_own_statistics_on_the_host_and_the_device(method):
    """PlaneNormalization: plane n's statistics are those of plane n alone; a constant plane comes back as
    its constant, with no spread."""
    import jax

    from napari_flax_denoise.models.normalization import PlaneNormalization

    rng = np.random.default_rng(2)
    stack = rng.normal(100, 20, (3, 40, 30, 1)) * np.array([1.0, 0.05, 1.0])[:, None, None, None]
    stack[2] = 9.0
    stack = stack.astype(np.float32)
    host = PlaneNormalization.fit(stack, method)
    device = PlaneNormalization.fit(jax.device_put(stack), method)
    alone = Normalization.fit([stack[:1]], method), Normalization.fit([stack[1:2]], method)
    np.testing.assert_allclose(host.offset[:2, 0], [n.offset[0] for n in alone], rtol=1e-6)
    np.testing.assert_allclose(host.scale[:2, 0], [n.scale[0] for n in alone], rtol=1e-6)
    np.testing.assert_array_equal(host.flat[:, 0], [False, False, True])
    for norm in (host, device):
        np.testing.assert_allclose(np.asarray(norm.offset), host.offset, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(norm.scale), host.scale, rtol=1e-5)
        normed = norm.apply(stack if norm is host else jax.device_put(stack))
        spreads = np.asarray(normed[:2]).std(axis=(1, 2, 3))  # the dim plane on the same scale as the bright one
        assert normed.dtype == np.float32 and abs(spreads[1] / spreads[0] - 1) < 0.1
        back = np.asarray(norm.undo(normed + 0.5 * (norm is host)))  # a constant plane ignores what it is given
        np.testing.assert_array_equal(back[2], 9.0)
        np.testing.assert_array_equal(np.asarray(norm.undo(normed, shift=False))[2], 0.0)
        if norm is device:
            np.testing.assert_allclose(back, stack, rtol=1e-5, atol=1e-3)
