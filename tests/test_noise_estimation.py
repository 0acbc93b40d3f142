"""The noise level a noise-aware network is given: estimated from the image, or read from the user's words.

Pure NumPy, the same on every backend (the models that take it: test_noise_level)."""

import numpy as np
import pytest

from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.noise.level import estimate_line, features, variance_line


def _smooth_scene(shape=(384, 384)):
    """A test image with structure and a wide intensity range: blobs and ramps, 10-240."""
    y, x = np.mgrid[:shape[0], :shape[1]] / shape[0]
    scene = 0.5 + 0.3 * np.sin(7 * x) * np.cos(5 * y) + 0.2 * (np.hypot(x - 0.5, y - 0.5) < 0.2)
    return (10 + 230 * (scene - scene.min()) / np.ptp(scene)).astype(np.float64)


@pytest.mark.parametrize("sigma", [5, 25, 60])
def test_the_sigma_of_gaussian_noise_is_recovered_within_10_percent(sigma):
    clean = _smooth_scene()
    noisy = clean + np.random.default_rng(sigma).normal(0, sigma, clean.shape)
    a, b = estimate_line(noisy)
    estimated = np.sqrt(a * clean.mean() + b)
    assert estimated == pytest.approx(sigma, rel=0.1)


@pytest.mark.parametrize("photons, read", [(10, 1.0), (100, 3.0)])
def test_the_line_of_poisson_gaussian_noise_is_recovered_within_10_percent(photons, read):
    expected = _smooth_scene() / 255 * photons
    gain = 4.0  # intensity units per photon
    noisy = gain * np.random.default_rng(photons).poisson(expected) + np.random.default_rng(1).normal(
        0, read * gain, expected.shape)
    a, b = estimate_line(noisy)
    assert a == pytest.approx(gain, rel=0.1)
    # The variance itself, at the dark and bright ends of the image, within 10%.
    for level in np.percentile(gain * expected, [10, 90]):
        assert a * level + b == pytest.approx(gain * level + (read * gain) ** 2, rel=0.1)


def test_weak_noise_under_fine_texture_reads_closer_to_the_truth_for_the_network_than_for_fusion():
    # camera at sigma 2: its fine texture fills the finest details, which read its sigma 2.4 times too high;
    # the network's level may take more of that texture out than fusion's line does.
    from skimage import data

    from napari_flax_denoise.noise.line import noise_line

    clean = data.camera().astype(np.float64)
    noisy = clean + np.random.default_rng(0).normal(0, 2, clean.shape)
    a, b = estimate_line(noisy)
    given = np.sqrt(a * clean.mean() + b)
    a, b = noise_line(noisy, noisy)
    fusions = np.sqrt(a * clean.mean() + b)
    assert 2 <= given < 1.7 * 2 and fusions > 1.4 * given


def test_a_users_noise_level_reads_as_a_line_and_a_bad_one_is_refused():
    assert variance_line(25) == (0.0, 625.0)
    assert variance_line("2.5,-80") == (2.5, -80.0)
    assert variance_line((1, 4)) == (1.0, 4.0)
    for bad in (-1, "loud", float("nan"), (1, 2, 3), (-1, 4)):
        with pytest.raises(UserInputError, match="noise level must be"):
            variance_line(bad)
    # On the network's normalised scale (x - 100) / 50, sigma 25 is 0.5 at both ends.
    assert features((0.0, 625.0), 100.0, 50.0) == pytest.approx((0.5, 0.5))
    assert features((2.0, 0.0), 0.0, 100.0) == pytest.approx((0.0, np.sqrt(2.0 / 100)))
