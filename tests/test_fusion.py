"""Pixel fusion: its noise estimate, the network's centre weight, and fusion that
adds back detail where the prediction lacks it and changes nothing where it does not."""

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from napari_flax_denoise import Config, denoise, train
from napari_flax_denoise.noise import line as noise
from napari_flax_denoise.inference.fusion import divergence, fuse
from napari_flax_denoise.noise.line import noise_line
from napari_flax_denoise.models.checkpoint import build_network

pytestmark = pytest.mark.float32  # equivalences at float32 precision (accelerators' default is TF32)


@pytest.fixture(scope="module")
def camera():
    return data.camera()[:256, :256].astype(np.float64)


def test_noise_line_finds_constant_and_photon_noise(camera):
    rng = np.random.default_rng(1)
    smooth = ndimage.gaussian_filter(camera, 2)
    a, b = noise_line(camera + rng.normal(0, 20, camera.shape), smooth)
    assert abs(a * camera.mean() + b - 400) < 0.15 * 400  # texture adds a little, never much
    # Photon noise: variance = gain * signal + read variance (gain 4, read sigma 6).
    counts = rng.poisson(smooth / 4) * 4.0 + rng.normal(0, 6, smooth.shape)
    a, b = noise_line(counts, smooth)
    assert a == pytest.approx(4, rel=0.15) and b == pytest.approx(36, abs=25)


def test_noise_line_takes_fine_texture_out():
    # Left half flat, right half a fine texture the finest details also see; noise sigma 10.
    rng = np.random.default_rng(2)
    clean = np.full((256, 256), 100.0)
    clean[:, 128:] += 3 * ndimage.gaussian_filter(rng.normal(0, 10, (256, 128)), 0.6)
    noisy = clean + rng.normal(0, 10, clean.shape)
    detail, level = (noise._blocks(x, 2, sign) for x, sign in ((noisy, True), (clean, False)))
    a, b = noise._fitted_line(detail.ravel(), level.ravel())
    assert a * 100 + b > 1.25 * 100  # the texture alone would read as noise
    a, b = noise_line(noisy, clean)
    assert a * 100 + b == pytest.approx(100, rel=0.1)
    pure = 100 + rng.normal(0, 10, clean.shape)  # and pure noise is left as it is
    assert noise._texture_scale([(noise._blocks(pure, 2, True), np.full((128, 128), 100.0))], 0.0, 100.0) > 0.9
    # Background clipped to 0 over a third of the image (common in microscopy) does not
    # read as "no noise": the noise estimate stays within the factor's floor.
    clipped = np.where(np.arange(256)[None, :] < 85, 0.0, pure)
    reference = np.where(np.arange(256)[None, :] < 85, 0.0, 100.0) * np.ones_like(pure)
    a, b = noise_line(clipped, reference)
    assert a * 100 + b > 0.75 * 100


def network(**overrides):
    return build_network(Config(features=8, **overrides))


def test_divergence_is_one_for_identity_and_zero_for_a_constant():
    images = np.random.default_rng(0).normal(size=(1, 100, 120, 1)).astype(np.float32)
    passing = network(algorithm="care", residual=True)  # input + a correction
    passing.head.kernel[...] = jnp.zeros_like(passing.head.kernel[...])  # ... that is zero
    assert divergence(passing, images) == pytest.approx(1.0, abs=1e-5)
    constant = network()
    constant.head.kernel[...] = jnp.zeros_like(constant.head.kernel[...])
    assert divergence(constant, images) == pytest.approx(0.0, abs=1e-6)
    assert 0 < abs(divergence(network(), images)) < 1  # a random network lies between


@pytest.mark.parametrize("size", [256, 1100])  # a large image chooses its weights on crops
def test_fusion_restores_detail_a_blurred_prediction_lost(camera, size):
    camera = np.pad(camera, [(0, size - 256)] * 2, mode="reflect")
    noisy = camera + np.random.default_rng(2).normal(0, 15, camera.shape)
    blurred = ndimage.gaussian_filter(camera, 1.5)  # a blind-spot network's typical loss of edges
    fused, weight = fuse(noisy, blurred, 0.0)
    error = lambda x: np.mean((x - camera) ** 2)  # noqa: E731
    assert error(fused) < 0.8 * error(blurred)
    assert weight.min() >= 0 and weight.max() <= 1 and fused.dtype == np.float32


def test_fusion_leaves_a_perfect_prediction_alone(camera):
    noisy = camera + np.random.default_rng(3).normal(0, 25, camera.shape)
    fused, weight = fuse(noisy, camera, 0.0)
    assert np.mean((fused - camera) ** 2) < 0.02 * 25**2


@pytest.mark.parametrize("seed", [0, 1])
def test_fusion_does_not_read_noise_leaking_into_the_prediction_as_its_error(seed):
    # A nearly blind prediction of a flat background and a bright band: it moves with its pixel's
    # noise by 2% (D = 0.02). Narrow intensity bins at the background's edges would select the
    # pixels with the largest noise, whose R exceeds the noise line, and weigh that noise back in.
    noise = np.random.default_rng(seed).normal(0, 10, (256, 256))
    clean = np.full((256, 256), 100.0)
    clean[:, 192:] = 160.0
    prediction = clean + 0.02 * noise
    fused, weight = fuse(clean + noise, prediction, centre_weight=0.02)
    assert np.mean((fused - clean) ** 2) <= 1.01 * np.mean((prediction - clean) ** 2)
    assert weight.mean() < 0.01


def test_denoise_fuses_blind_spot_models_by_default(noisy, clean, tiny_model):
    plain = denoise(noisy, tiny_model, axes="YX", fusion=False)
    fused = denoise(noisy, tiny_model, axes="YX")
    np.testing.assert_array_equal(fused, denoise(noisy, tiny_model, axes="YX", fusion=True))
    assert not np.allclose(fused, plain)
    error = lambda x: np.mean((x - clean) ** 2)  # noqa: E731
    assert error(fused) < error(plain)
    mean, std = denoise(noisy, tiny_model, axes="YX", tta=True, return_std=True)
    _, plain_std = denoise(noisy, tiny_model, axes="YX", tta=True, return_std=True, fusion=False)
    assert np.all(std <= plain_std + 1e-5)  # the noisy pixels' share carries no model uncertainty


def test_denoise_fuses_a_supervised_model_where_it_smoothed_detail():
    # The embedded model (supervised) told a noise level above the truth (8 where it is 5) smooths the grass
    # and the coat's weave; fusion gives the detail back (error 15.7 -> 13.7). At the level estimated from the
    # image it smooths little, and fusion leaves its result about as it is (13.1 -> 13.0).
    clean = data.camera()[128:384, 128:384].astype(np.float32)
    noisy = clean + np.random.default_rng(4).normal(0, 5, clean.shape).astype(np.float32)
    error = lambda x: np.mean((x - clean) ** 2)  # noqa: E731
    plain = denoise(noisy, "general-2d", axes="YX", fusion=False, noise_level=8)
    assert error(denoise(noisy, "general-2d", axes="YX", noise_level=8)) < 0.95 * error(plain)
    plain = denoise(noisy, "general-2d", axes="YX", fusion=False)
    assert error(denoise(noisy, "general-2d", axes="YX")) < 1.02 * error(plain)


def test_fusion_does_not_worsen_a_supervised_model_under_photon_noise():
    # 5 photons at the brightest pixel: weights per intensity bin, which SURE judged a gain
    # here, raised the error by 40%; a network that sees the pixel does not get them.
    expected = 100 + data.cell()[74:586, 19:531].astype(np.float64) / 255 * 5
    rng = np.random.default_rng(0)
    noisy = (rng.poisson(expected - 100) + 100 + rng.normal(0, 1, expected.shape)).astype(np.float32)
    error = lambda x: np.mean((x - expected) ** 2)  # noqa: E731
    plain = denoise(noisy, "general-2d", axes="YX", fusion=False)
    assert error(denoise(noisy, "general-2d", axes="YX")) <= 1.02 * error(plain)


def test_a_supervised_model_on_a_tiny_image_is_left_alone():
    # 64x64 pixels give too few details for the noise line; fused, this slice lost 1.3 dB.
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    mr = dcmread(get_testdata_file("MR_small.dcm")).pixel_array.astype(np.float64)
    expected = 100 + (mr - mr.min()) / np.ptp(mr) * 30
    rng = np.random.default_rng(0)
    noisy = (rng.poisson(expected - 100) + 100 + rng.normal(0, 2, mr.shape)).astype(np.float32)
    plain = denoise(noisy, "general-2d", axes="YX", fusion=False)
    np.testing.assert_array_equal(denoise(noisy, "general-2d", axes="YX"), plain)


def test_a_care_model_is_fused_only_when_asked_and_on_its_output_scale():
    # Its targets have their own normalisation: fused on the input's scale, the error tripled.
    rng = np.random.default_rng(0)
    camera = data.camera()[128:384, 128:384].astype(np.float32)
    cell = data.cell()[200:456, 150:406].astype(np.float32)
    config = Config(algorithm="care", features=16, patch_size=32, batch_size=8, epochs=1, steps_per_epoch=60,
                    val_fraction=0.0)
    model = train(camera + rng.normal(0, 50, camera.shape).astype(np.float32), axes="YX", targets=camera,
                  config=config).model
    assert model.input_norm != model.output_norm
    noisy = cell + rng.normal(0, 50, cell.shape).astype(np.float32)
    plain = denoise(noisy, model, axes="YX", fusion=False)
    np.testing.assert_array_equal(denoise(noisy, model, axes="YX"), plain)  # not by default
    error = lambda x: np.mean((x - cell) ** 2)  # noqa: E731
    assert error(denoise(noisy, model, axes="YX", fusion=True)) <= 1.02 * error(plain)


def test_a_stack_fuses_the_same_whole_or_plane_by_plane(noisy, tiny_model):
    stack = np.stack([noisy[:96, :96], noisy[32:, 32:][:96, :96]])
    whole = denoise(stack, tiny_model, axes="SYX")
    for plane, result in zip(stack, whole):
        np.testing.assert_allclose(result, denoise(plane, tiny_model, axes="YX"), atol=1e-4)


@pytest.mark.parametrize("sigma", [1.5, 5.0])
def test_weights_computed_by_slabs_equal_the_whole_image(sigma):
    from concurrent.futures import ThreadPoolExecutor

    from napari_flax_denoise.inference.fusion import _by_slabs

    rng = np.random.default_rng(0)
    r, mu = (rng.normal(size=(400, 90)).astype(np.float32) for _ in range(2))
    smooth = lambda r_, mu_: ndimage.gaussian_filter(r_ * r_, sigma, mode="reflect") + mu_  # noqa: E731
    reach = int(4.0 * sigma + 0.5)
    with ThreadPoolExecutor(2) as pool:
        np.testing.assert_array_equal(_by_slabs(smooth, (r, mu), reach, pool, 2), smooth(r, mu))
        assert not np.array_equal(_by_slabs(smooth, (r, mu), reach // 3, pool, 2), smooth(r, mu))  # the reach matters
