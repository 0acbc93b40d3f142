"""The accelerator's inference route: the image stays on the device, tiles are cut and stitched there.
It runs here on the CPU (the profile forced), and must give the host route's results."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import data, transform

from napari_flax_denoise import Config, denoise, use_backend
from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.inference.fusion import _bin_table, _crops, _weights, choose
from napari_flax_denoise.inference.resident import fitted_batch, tile_plan
from napari_flax_denoise.inference.resident_stack import chunk_planes
from napari_flax_denoise.inference.resident_fusion import (CANDIDATES, _padded, choose_on_device, fuse_plane,
                                                           gaussian_filter)
from napari_flax_denoise.models.checkpoint import TrainedModel, build_network
from napari_flax_denoise.models.normalization import Normalization
from napari_flax_denoise.noise.level import noise_features
from napari_flax_denoise.progress import drive
from napari_flax_denoise.runtime.devices import MEMORY_ENV
from napari_flax_denoise.inference.prediction import denoise_iter

pytestmark = pytest.mark.float32


def _model(algorithm="n2v2", dims=2, channels=1, features=8, noise_input=False, **settings):
    config = Config(algorithm=algorithm, dims=dims, features=features, in_channels=channels, out_channels=channels,
                    noise_input=noise_input, **settings)
    norm = Normalization("meanstd", (50.0,) * channels, (10.0,) * channels)
    network = build_network(config, seed=3)
    if noise_input:  # the noise channels weigh in strongly, so that a tile given another image's level shows
        conv = network.encoders[0].conv1
        conv.kernel[...] = conv.kernel[...].at[..., channels:, :].set(2.0)
    return TrainedModel(config, network, norm, norm)


@pytest.mark.parametrize("spatial, tile, halo, margin, count", [
    ((150, 190), (96, 80), (16, 16), 8, 1), ((37, 300), (64, 128), (16, 32), 8, 3), ((20, 40, 36), (16, 32, 32), (4, 8, 8), 4, 2)])
def test_the_tiles_keep_every_pixel_exactly_once(spatial, tile, halo, margin, count):
    plan, extent = tile_plan(spatial, tile, halo, margin, count)
    covered = np.zeros((count, *extent), np.int32)
    for n, start, low, high in zip(plan["image"], plan["start"], plan["low"], plan["high"]):
        assert all(s + t <= e for s, t, e in zip(start, tile, extent))  # every tile lies inside
        covered[(n, *(slice(s + lo, s + hi) for s, lo, hi in zip(start, low, high)))] += 1
    inside = (slice(None), *(slice(margin, margin + s) for s in spatial))
    assert (covered[inside] == 1).all() and covered.sum() == count * np.prod(spatial)


def test_a_few_tiles_take_a_small_batch_of_a_few_shapes():
    assert [fitted_batch(8, tiles, 1) for tiles in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 8, 8]
    assert [fitted_batch(16, tiles, 2) for tiles in (1, 3, 5, 40)] == [2, 4, 8, 16]  # a multiple of the devices
    assert fitted_batch(3, 10, 1) == 3 and fitted_batch(1, 10, 1) == 1


@pytest.mark.parametrize("axes, shape, tile, noise_input", [
    ("YX", (150, 190), (96, 80), False), ("SYX", (3, 130, 150), (96, 80), False), ("ZYX", (20, 40, 36), None, False),
    ("SYX", (3, 130, 150), (96, 80), True), ("ZYX", (20, 40, 36), None, True)])
def test_resident_tiles_equal_the_host_route_and_the_untiled_result(axes, shape, tile, noise_input):
    model = _model(dims=3 if "Z" in axes else 2, noise_input=noise_input)
    # Each image of a stack its own noise: a noise-aware model's tiles must carry their own image's level.
    strength = np.arange(1, shape[0] + 1).reshape(-1, *[1] * (len(shape) - 1)) if axes[0] == "S" else 1
    image = np.random.default_rng(0).normal(50, 10 * strength, shape).astype(np.float32)
    with use_backend("accelerator"):
        resident = denoise(image, model, axes=axes, tile_shape=tile, batch_size=3, fusion=False)
        whole = denoise(image, model, axes=axes, fusion=False)  # small: one tile
    with use_backend("cpu"):
        host = denoise(image, model, axes=axes, tile_shape=tile, batch_size=3, fusion=False)
    assert np.abs(host - image).max() > 1  # the network does something
    np.testing.assert_allclose(resident, host, atol=1e-4 * np.ptp(image))
    np.testing.assert_allclose(resident, whole, atol=1e-4 * np.ptp(image))


def test_resident_tta_mean_std_and_fusion_equal_the_host_route():
    model = _model()
    image = np.random.default_rng(1).normal(50, 10, (140, 120)).astype(np.float32)
    results = {}
    for name in ("cpu", "accelerator"):
        with use_backend(name):
            events = []
            results[name] = drive(denoise_iter(image, model, axes="YX", tile_shape=96, tta=True, return_std=True,
                                               fusion=True), events.append)
            assert [(e.done, e.total) for e in events] == [(i, len(events)) for i in range(1, len(events) + 1)]
            assert len(events) % 8 == 0  # the 8 passes report as one count
    for ours, reference in zip(results["accelerator"], results["cpu"]):
        np.testing.assert_allclose(ours, reference, atol=1e-4 * np.ptp(image))
    assert results["cpu"][1].max() > 0.01  # the 8 predictions differ: a real spread


@pytest.mark.parametrize("profile", ["cpu", "accelerator"])
def test_bfloat16_runs_close_to_float32_on_both_routes(profile):
    model = _model(features=16)
    image = np.random.default_rng(2).normal(50, 10, (96, 96)).astype(np.float32)
    with use_backend(profile):
        full = denoise(image, model, axes="YX", fusion=False)
        half = denoise(image, model, axes="YX", fusion=False, precision="bf16")
    error = np.abs(half - full)
    assert 0 < error.max() < 0.05 * np.ptp(full)  # bfloat16 keeps 8 bits of mantissa
    with pytest.raises(UserInputError, match="precision must be 'float32' or 'bfloat16'"):
        denoise(image, model, axes="YX", precision="half")


def test_a_lazy_stack_streams_through_the_device_into_out(monkeypatch):
    """The planes go through the device in chunks (two planes each here), read and written by threads: the
    same result as in memory, one read per plane, progress to the end, and bad values in a later chunk
    refused before it is denoised."""
    from conftest import RecordingArray

    model = _model()
    stack = np.random.default_rng(3).normal(50, 10, (4, 160, 150)).astype(np.float32)
    stack[2] = 7.0  # a blank frame stays blank
    lazy, out, events = RecordingArray(stack), np.full(stack.shape, np.nan, np.float32), []
    monkeypatch.setenv(MEMORY_ENV, "9.5MB")
    assert chunk_planes((4, 160, 150, 1), 9_500_000) == 2
    options = dict(axes="TYX", fusion=False, tile_shape=128)
    with use_backend("accelerator"):
        returned = drive(denoise_iter(lazy, model, out=out, **options), events.append)
        stack[3, 4, 4] = np.nan
        with pytest.raises(UserInputError, match="NaN or infinite"):
            denoise(RecordingArray(stack), model, **options)
    with use_backend("cpu"):
        expected = denoise(stack[:3], model, **options)
    assert returned is out and lazy.reads == [(160, 150)] * 4
    assert events[-1].done == events[-1].total and all(a.done <= b.done for a, b in zip(events, events[1:]))
    np.testing.assert_array_equal(out[2], 7.0)
    np.testing.assert_allclose(out[:3], expected, atol=1e-4 * np.ptp(stack[:3]))  # in memory, the blank frame too


def test_a_stack_is_cut_into_chunks_of_one_shape_that_fit_the_device():
    assert chunk_planes((3, 130, 150, 1), None) is None  # small: sent whole
    assert chunk_planes((8, 2048, 2048, 1), None) == 2  # four chunks, so that transfers overlap the work
    assert chunk_planes((1000, 256, 256, 1), None) == 250 and chunk_planes((1009, 256, 256, 1), None) == 253
    assert chunk_planes((1000, 2048, 2048, 1), None) == 8  # at most 32 Mi pixels: more only takes memory
    assert chunk_planes((7, 2048, 2048, 1), 2**30) == 1  # 64 bytes per value: half of 1 GiB holds 2 planes
    assert chunk_planes((12, 1024, 1024, 1), 600 * 2**20) == 4 and chunk_planes((9, 1024, 1024, 1), 600 * 2**20) == 3


def test_a_stack_over_the_device_budget_goes_in_chunks_with_the_host_routes_result(monkeypatch):
    """A budget whose half holds four planes: eight go in two chunks, with each plane's own normalisation,
    noise level, fusion and spread, as the host route gives. The planes are small but many,
    so their noise levels and fusion's choices are made on the device (one program for all), not the host."""
    model = _model(noise_input=True, normalize_per_image=True, features=4)
    rng = np.random.default_rng(6)
    stack = (rng.normal(0, 10, (8, 120, 120)) * np.arange(1, 9)[:, None, None] + 300).astype(np.float32)
    assert chunk_planes((8, 120, 120, 1), 9_500_000) == 4
    device = jnp.asarray(stack[..., None])
    assert isinstance(noise_features(device, 300.0, 10.0, recurring=True), jax.Array)
    assert isinstance(noise_features(device, 300.0, 10.0), np.ndarray)  # a few small ones: crops to the host
    results = {}
    for profile, budget in (("cpu", ""), ("accelerator", "9.5MB")):
        monkeypatch.setenv(MEMORY_ENV, budget)
        report, events = {}, []
        with use_backend(profile):
            results[profile] = drive(denoise_iter(stack, model, axes="TYX", tile_shape=128, batch_size=8, tta=True,
                                                  return_std=True, fusion=True, report=report), events.append), report
        assert [(e.done, e.total) for e in events] == [(i, len(events)) for i in range(1, len(events) + 1)]
    (host, host_report), (chunked, chunked_report) = results["cpu"], results["accelerator"]
    for ours, reference in zip(chunked, host):
        np.testing.assert_allclose(ours, reference, atol=1e-4 * np.ptp(stack))
    assert host[1].max() > 0 and len(chunked_report["noise_levels"]) == 8
    assert 0 < host_report["fusion_weights"][0] < 1
    for key in ("fusion_weights", "noise_levels"):
        np.testing.assert_allclose(chunked_report[key], host_report[key], rtol=1e-4, atol=1e-6)


def test_bad_values_in_a_later_chunk_are_refused_before_it_is_denoised(monkeypatch):
    model = _model()
    stack = np.random.default_rng(7).normal(50, 10, (3, 288, 288)).astype(np.float32)
    stack[1, 5, 5] = np.inf
    monkeypatch.setenv(MEMORY_ENV, "9.5MB")
    with use_backend("accelerator"), pytest.raises(UserInputError, match="NaN or infinite"):
        denoise(stack, model, axes="TYX", tile_shape=128, fusion=False)
    with use_backend("accelerator"), pytest.raises(UserInputError, match="constant"):
        denoise(np.full((3, 288, 288), 7, np.uint16), model, axes="TYX", tile_shape=128, fusion=False)


@pytest.mark.parametrize("shape", [(37, 300), (12, 9), (6, 20, 18)])
def test_the_device_gaussian_window_is_scipys_with_its_mirrored_edges(shape):
    """Windows wider than the image (radius 20 on 9 pixels) mirror again, as scipy's do."""
    a = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    window = jax.jit(gaussian_filter, static_argnums=(1, 2))  # as fusion runs it (eager: 4 s to dispatch)
    for sigma in (1.5, 5.0):
        ours = np.asarray(window(jnp.asarray(a), sigma, tuple(range(a.ndim))))
        np.testing.assert_allclose(ours, ndimage.gaussian_filter(a, sigma, mode="reflect"), atol=1e-5)


@pytest.mark.parametrize("choice", ["bins", 2.0])
def test_fusing_one_plane_on_the_device_uses_the_host_routes_weights(choice):
    """Image 1 of 2 is fused, image 0 is left as it was; the spread shrinks by 1 - w."""
    rng = np.random.default_rng(5)
    mu = rng.normal(0.5, 0.2, (2, 64, 48, 1)).astype(np.float32)
    noisy = (mu + rng.normal(0, 0.1, mu.shape) * (1 + np.arange(48) / 48)).astype(np.float32)
    std = np.full(mu.shape, 0.05, np.float32)
    line, keep = (np.float32(0.004), np.float32(0.006)), 0.9
    r, m = noisy[1, ..., 0] - mu[1, ..., 0], mu[1, ..., 0]
    table = _bin_table([(r, m)], line, keep)
    weight = _weights(r, m, line, keep, choice, table, slope=False)[0]
    assert 0.05 < weight.mean() < 0.95  # a real mixture
    fused, spread, mean = fuse_plane(jnp.asarray(mu), jnp.asarray(std), jnp.asarray(noisy), np.array([1, 0], np.int32),
                                     np.int32(CANDIDATES.index(choice)), line, np.float32(keep), _padded(*table))
    np.testing.assert_allclose(np.asarray(fused)[1, ..., 0], m + weight * r, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(fused)[0], mu[0])
    np.testing.assert_allclose(np.asarray(spread)[1, ..., 0], 0.05 * (1 - weight), atol=1e-6)
    np.testing.assert_allclose(float(mean), weight.mean(), rtol=1e-4)


@pytest.mark.parametrize("sigma, smooth, blind, centre", [
    (0.02, 0.5, False, 0.3), (0.1, 2.5, True, 0.01), (0.1, 1.0, True, 0.6), (0.1, 0.5, False, 0.3)])
def test_a_large_image_is_chosen_for_on_the_device_as_on_the_host(sigma, smooth, blind, centre):
    """The noise line, the table per intensity bin (bins merged when D is large) and the choice of weights
    (a Gaussian window, or none) from the crops of a large image."""
    clean = transform.resize(data.camera() / 255.0, (600, 640)).astype(np.float32)
    noisy = (clean + np.random.default_rng(6).normal(0, sigma, clean.shape)).astype(np.float32)
    prediction = ndimage.gaussian_filter(noisy, smooth)
    crops = _crops(noisy.shape)
    assert len(crops) == 4
    host = choose(noisy, prediction, centre, blind)
    best, line, keep, table = choose_on_device(jnp.stack([noisy[c] for c in crops]),
                                               jnp.stack([prediction[c] for c in crops]), centre, blind=blind)
    assert (None if int(best) < 0 else CANDIDATES[int(best)]) == (None if host is None else host[0])
    if host is not None:
        np.testing.assert_allclose(np.array(line), host[1], rtol=1e-4)
        np.testing.assert_allclose(float(keep), host[2], rtol=1e-6)
    if host is not None and blind:
        bins = len(host[3][0])
        np.testing.assert_allclose(np.array(table[0])[:bins], host[3][0], rtol=1e-5)
        np.testing.assert_allclose(np.array(table[1])[:bins], host[3][1], atol=1e-5)
        assert bins < 12 if centre > 0.5 else bins == 12  # a large D merges bins


def test_a_large_image_is_fused_on_the_device_as_on_the_host():
    """Normalisation, divergence, the choice from four crops and every pixel's weight on the device
    (the noise channels on the device: the test after this one)."""
    model = _model()
    rng = np.random.default_rng(7)
    clean = 50 + 20 * np.sin(np.arange(600)[:, None] / 9.0) * np.cos(np.arange(560)[None] / 13.0)
    image = (clean + rng.normal(0, 5, clean.shape)).astype(np.float32)
    results, reports = {}, {}
    for name in ("cpu", "accelerator"):
        with use_backend(name):
            reports[name] = {}
            results[name] = drive(denoise_iter(image, model, axes="YX", fusion=True, report=reports[name]))
    assert reports["cpu"]["fusion_weights"][0] > 0.05  # fusion did something
    np.testing.assert_allclose(reports["accelerator"]["fusion_weights"], reports["cpu"]["fusion_weights"], rtol=1e-4)
    np.testing.assert_allclose(results["accelerator"], results["cpu"], atol=1e-4 * np.ptp(image))


@pytest.mark.parametrize("shape", [(2, 1030, 1040), (1, 192, 200, 196)])
def test_the_noise_channels_of_a_large_image_are_estimated_on_its_device_as_on_the_host(shape):
    """The accelerator route: 16 (2D) or 8 (3D) crops cut and measured where the image is."""
    rng = np.random.default_rng(8)
    clean = rng.uniform(100, 3000, shape[:-2] + (1, 1)) * (1 + 0.5 * np.sin(np.arange(shape[-1]) / 7.0))
    images = (rng.poisson(clean * np.ones(shape)) * 2.0 + 100 + rng.normal(0, 5, shape))[..., None]
    images = images.astype(np.float32)
    host = noise_features(images, 300.0, 6000.0)
    device = noise_features(jax.device_put(images), 300.0, 6000.0)
    assert isinstance(device, jax.Array) and device.shape == (shape[0], 2)
    assert host[0, 1] > 1.5 * host[0, 0] > 0  # photon noise: stronger where it is bright
    np.testing.assert_allclose(np.asarray(device), host, rtol=1e-4)


def test_the_device_refuses_what_the_host_refuses():
    """The accelerator route reads NaN, infinities and a constant image on the device (float32 and narrower);
    64-bit images are checked on the host, which converts them anyway."""
    model = _model()
    image = np.random.default_rng(9).normal(50, 10, (48, 40)).astype(np.float32)
    nan, inf = image.copy(), image.copy()
    nan[5, 7], inf[40, 1] = np.nan, -np.inf
    cases = [(nan, "NaN"), (inf, "NaN"), (np.full((48, 40), 3, np.uint16), "constant"),
             (image.astype(np.float64) * 1e300, "beyond float32")]
    for bad, words in cases:
        for name in ("cpu", "accelerator"):
            with use_backend(name), pytest.raises(UserInputError, match=words):
                denoise(bad, model, axes="YX")
