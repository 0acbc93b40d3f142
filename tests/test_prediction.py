import numpy as np
import pytest

from napari_flax_denoise import Config, denoise, psnr
from napari_flax_denoise.models.checkpoint import TrainedModel, build_network
from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.models.normalization import Normalization
from napari_flax_denoise.network.unet import halo
from napari_flax_denoise.inference.host_tiles import _forward
from napari_flax_denoise.inference.tiling import check_tiling, default_tile_shape, edge_margin, tile_spans
from napari_flax_denoise.runtime.backend import active

from conftest import RecordingArray

pytestmark = pytest.mark.float32  # equivalences at float32 precision (accelerators' default is TF32)


def _random_model(**settings):
    config = Config(features=4, patch_size=16, **settings)
    channels = config.in_channels
    norm = Normalization("meanstd", (10.0,) * channels, (3.0,) * channels)
    return TrainedModel(config, build_network(config, seed=1), norm, norm)


@pytest.mark.parametrize("algorithm", ["n2v", "n2v2"])
def test_tiled_equals_untiled(algorithm):
    model = _random_model(algorithm=algorithm)
    image = np.random.default_rng(0).normal(10, 3, (150, 190)).astype(np.float32)
    whole = denoise(image, model, axes="YX", tile_shape=(256, 256))
    tiled = denoise(image, model, axes="YX", tile_shape=(96, 80), batch_size=3)
    assert np.abs(whole - image).max() > 0.1  # the network does something
    np.testing.assert_allclose(tiled, whole, atol=1e-4)


def test_new_image_size_does_not_recompile():
    model = _random_model()
    denoise(np.random.rand(100, 90).astype(np.float32), model, axes="YX", tile_shape=(96, 96))
    compiled = _forward._cache_size()
    denoise(np.random.rand(130, 70).astype(np.float32), model, axes="YX", tile_shape=(96, 96))
    assert _forward._cache_size() == compiled


@pytest.mark.parametrize("shape,dims,waste", [
    ((2048, 2048), 2, 1.09), ((1200, 1200), 2, 1.15), ((2304, 2304), 2, 1.14), ((2560, 2160), 2, 1.14),
    ((1392, 1040), 2, 1.12), ((5000, 300), 2, 1.13),
    ((32, 128, 128), 3, 1.91), ((64, 256, 256), 3, 2.91), ((300, 128, 128), 3, 2.84), ((48, 1024, 1024), 3, 2.94)])
def test_default_tiles_cover_the_image_with_little_to_spare(shape, dims, waste):
    # Full-size tiles computed 3.3x the pixels of a 1200x1200 image (equal tiles: 1.14x) and 3.9x the
    # voxels of a 48x1024x1024 stack, where 3D tiles of the same volume but another shape compute 2.9x.
    # Rounding several tiles' size to 64 pixels computed 1.13x 2048x2048 (to the pooling grid: 1.08x).
    config = Config(dims=dims)
    tile_shape = default_tile_shape(shape, config)
    h, margin = halo(config), edge_margin(halo(config), 2**config.depth)
    computed = np.prod([len(tile_spans(size + 2 * margin, tile, h)) * tile for size, tile in zip(shape, tile_shape)])
    assert computed / np.prod(shape) < waste
    cap = tuple(c + 2 * h for c in active().tile_cap[2]) if dims == 2 else active().tile_cap[3]
    assert np.prod(tile_shape) <= np.prod(cap)  # no more voxels than the cap: memory stays bounded
    if dims == 2:
        assert all(t <= c for t, c in zip(tile_shape, cap))


def test_deep_3d_model_on_a_large_stack_asks_for_tiles():
    # Depth 4 needs a halo of 160 voxels on every side, more than a 3D tile under the cap can hold.
    config = Config(dims=3, depth=4)
    shape = (200, 400, 400)
    with pytest.raises(UserInputError, match="Tile size"):
        check_tiling(default_tile_shape(shape, config), None, shape, config)


@pytest.mark.parametrize("axes,shape", [("YX", (40, 50)), ("TYX", (3, 40, 50)), ("YXT", (40, 50, 2)),
                                        ("SCYX", (2, 3, 40, 36)), ("YXC", (40, 36, 3))])
def test_layouts_and_stacks_keep_shape_and_match_planes(axes, shape):
    model = _random_model()
    image = np.random.default_rng(1).normal(10, 3, shape).astype(np.float32)
    before = image.copy()
    out = denoise(image, model, axes=axes)
    np.testing.assert_array_equal(image, before)  # input untouched
    assert out.shape == image.shape and out.dtype == np.float32
    # Every plane equals denoising that plane alone.
    first = tuple(0 if a not in "YX" else slice(None) for a in axes)
    np.testing.assert_allclose(out[first], denoise(image[first], model, axes="YX"), atol=1e-4)


def test_3d_and_multichannel_models():
    model3d = _random_model(dims=3)
    volume = np.random.default_rng(2).normal(10, 3, (12, 30, 34)).astype(np.float32)
    assert denoise(volume, model3d, axes="ZYX").shape == volume.shape
    model2c = _random_model(in_channels=2, out_channels=2)
    image = np.random.default_rng(3).normal(10, 3, (2, 30, 34)).astype(np.uint16)
    assert denoise(image, model2c, axes="CYX").shape == image.shape


def test_tta_mean_and_uncertainty(tiny_model, noisy, clean):
    plain = denoise(noisy, tiny_model, axes="YX")
    mean, std = denoise(noisy, tiny_model, axes="YX", tta=True, return_std=True)
    assert mean.shape == std.shape == noisy.shape
    assert std.min() >= 0 and std.mean() > 0
    assert psnr(plain, clean, data_range=255) > psnr(noisy, clean, data_range=255) + 1  # n2v2 learned
    assert psnr(mean, clean, data_range=255) > psnr(plain, clean, data_range=255)  # averaging helps
    assert not np.allclose(mean, plain)
    np.testing.assert_array_equal(denoise(noisy, tiny_model, axes="YX", tta=True), mean)  # same mean without the map


def test_output_keeps_intensity_range(tiny_model, noisy):
    image = np.clip(noisy, 0, None).astype(np.uint16)
    out = denoise(image, tiny_model, axes="YX")
    assert abs(out.mean() - image.mean()) < 0.1 * image.std()


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(axes="ZYX", image=np.ones((4, 32, 32))), "2D model"),
    (dict(tile_shape=(30, 30)), "multiple"),
    (dict(return_std=True), "tta"),
    (dict(axes="CYX", image=np.ones((3, 32, 32))), None),  # one-channel model: channels denoised separately
])
def test_model_and_image_mismatch(tiny_model, noisy, kwargs, fragment):
    kwargs = {"image": noisy, "axes": "YX", **kwargs}
    image = kwargs.pop("image")
    if image.min() == image.max():
        image = image + np.random.default_rng(0).random(image.shape)
    if fragment is None:
        assert denoise(image, tiny_model, **kwargs).shape == image.shape
    else:
        with pytest.raises(UserInputError, match=fragment):
            denoise(image, tiny_model, **kwargs)


def test_lazy_stack_is_read_plane_by_plane_and_matches_eager(tiny_model, noisy):
    stack = np.stack([np.stack([noisy, noisy.T[: noisy.shape[0], : noisy.shape[1]]]), np.stack([noisy[::-1]] * 2)])
    lazy = RecordingArray(stack)  # axes T C Y X
    eager_mean, eager_std = denoise(stack, tiny_model, axes="TCYX", tta=True, return_std=True)
    mean, std = denoise(lazy, tiny_model, axes="TCYX", tta=True, return_std=True)
    assert lazy.reads == [noisy.shape] * 4  # one Y X plane per (T, C), never the whole stack
    np.testing.assert_allclose(mean, eager_mean, atol=1e-4)
    np.testing.assert_allclose(std, eager_std, atol=1e-4)


def test_an_empty_lazy_stack_is_refused_in_words(tiny_model):
    with pytest.raises(UserInputError, match="empty"):
        denoise(RecordingArray(np.zeros((0, 32, 32), np.float32)), tiny_model, axes="TYX")


def test_a_blank_frame_in_a_lazy_stack_stays_blank(tiny_model, noisy):
    stack = np.stack([noisy, np.full_like(noisy, 7.0)])
    out = denoise(RecordingArray(stack), tiny_model, axes="TYX")
    np.testing.assert_array_equal(out[1], 7.0)
    np.testing.assert_allclose(out[0], denoise(noisy, tiny_model, axes="YX"), atol=1e-4)


def test_out_receives_a_lazy_stack_plane_by_plane(tiny_model, noisy):
    stack = np.stack([noisy, noisy[::-1], noisy.T])
    out = np.full(stack.shape, np.nan, np.float32)
    returned = denoise(RecordingArray(stack), tiny_model, axes="TYX", out=out)
    assert returned is out
    np.testing.assert_allclose(out, denoise(stack, tiny_model, axes="TYX"), atol=1e-4)


def test_a_per_image_model_sees_each_plane_of_a_stack_as_it_would_alone():
    """Normalised plane by plane: a dim frame of a time-lapse (or a dim channel) is denoised in a stack as
    alone, a stack read lazily gives what it gives in memory, and a blank frame stays blank."""
    model = _random_model(algorithm="care", normalize_per_image=True, noise_input=True)
    rng = np.random.default_rng(5)
    stack = (rng.normal(10, 3, (3, 40, 48)) * np.array([1.0, 0.05, 1.0])[:, None, None]).astype(np.float32)
    stack[2] = 4.0
    together = denoise(stack, model, axes="TYX", fusion=True)
    lazily = denoise(RecordingArray(stack), model, axes="TYX", fusion=True)
    for plane in range(2):
        np.testing.assert_allclose(together[plane], denoise(stack[plane], model, axes="YX", fusion=True),
                                   rtol=1e-5, atol=1e-5 * np.ptp(stack[plane]))
    np.testing.assert_allclose(lazily, together, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(together[2], 4.0)
    channels = denoise(np.moveaxis(stack, 0, -1), model, axes="YXC", fusion=True)  # one channel at a time
    np.testing.assert_allclose(np.moveaxis(channels, -1, 0), together, rtol=1e-5, atol=1e-5)
