"""The image's own noise: its variance as a line in the intensity, ``a * intensity + b``.

Measured from the finest Haar wavelet details of the noisy image in
equal-count intensity bins (photon noise grows with the signal, so ``a`` is
positive for it and 0 for noise of constant variance), then scaled down by
what fine texture adds to those details (see :func:`_texture_scale`).
:mod:`.fusion` weighs the noisy pixel back into a prediction with it.
"""

from __future__ import annotations

import numpy as np
from scipy import special  # not scipy.stats: 0.4 s more of every command's start

BINS = 12  # intensity bins for the noise line and the weights
PER_BIN = 2000  # fewest wavelet coefficients per bin
_INSIDE_3_SIGMA = 0.9733  # E[d^2 | |d| < 3 sigma] / sigma^2 for Gaussian d
_TEXTURE_BLOCK = 64  # finest details per block (8x8 in 2D, 4x4x4 in 3D) in the texture check
_TEXTURE_QUANTILE = 0.1
_TEXTURE_FLOOR = 0.75  # the most it may lower fusion's line (camera and coins at sigma 15 took 0.93)
# The most it may lower the level a noise-aware network is given. At weak noise fine texture outweighs the
# noise: camera and coins at sigma 2 read 2.4 times their sigma under 0.75, 1.5 times under 0.3, and
# general-2d gained 1.1 dB there and 0.2 dB at sigma 5 (none of the other held-out images and noises moved).
# Fusion's line keeps 0.75: under 0.3 it lost 0.1 dB on coins at sigma 5.
INPUT_TEXTURE_FLOOR = 0.3


def _blocks(image: np.ndarray, dims: int, sign: bool) -> np.ndarray:
    """The finest Haar coefficients of ``image`` (``sign``: the all-detail one,
    whose variance equals a white noise's; else the block means), on the half-size grid."""
    image = image[tuple(slice(0, s - s % 2) for s in image.shape)]
    for axis in range(dims):
        even = np.take(image, np.arange(0, image.shape[axis], 2), axis)
        odd = np.take(image, np.arange(1, image.shape[axis], 2), axis)
        image = (even - odd) / np.sqrt(2) if sign else (even + odd) / 2
    return image


def noise_line(noisy, reference, floor: float = _TEXTURE_FLOOR) -> tuple[float, float]:
    """Noise variance as a line ``a * intensity + b`` fitted over intensity bins,
    corrected for fine texture.

    Parameters
    ----------
    noisy : ndarray or list of ndarray
        One image (any number of spatial dimensions, no channel axis), or
        several crops of one.
    reference : ndarray or list of ndarray
        A denoised version of it (of each crop), giving each pixel's intensity.
    floor : float
        The most the texture correction may scale the line down by.

    Returns
    -------
    (a, b) : tuple of float
        ``a`` is 0 for noise of constant variance, positive for photon noise.
    """
    pairs = list(zip(*(noisy, reference) if isinstance(noisy, list) else ([noisy], [reference])))
    grids = [(_blocks(y.astype(np.float64), y.ndim, sign=True), _blocks(mu.astype(np.float64), y.ndim, sign=False))
             for y, mu in pairs]
    a, b = _fitted_line(np.concatenate([d.ravel() for d, _ in grids]), np.concatenate([m.ravel() for _, m in grids]))
    scale = _texture_scale(grids, a, b, floor)
    return a * scale, b * scale


def _fitted_line(detail, level):
    """The line through the robust variances of ``detail`` in intensity bins of ``level``."""
    intensity, variance = binned(level, detail, _robust_variance)
    if len(intensity) < 2 or np.ptp(intensity) == 0:
        return 0.0, float(np.mean(variance))
    a, b = np.polyfit(intensity, variance, 1)
    if a < 0:  # noise does not fall with the signal; read it as constant
        return 0.0, float(np.mean(variance))
    return float(a), float(b)


def _texture_scale(grids, a, b, floor: float = _TEXTURE_FLOOR) -> float:
    """Factor (at most 1) that takes fine texture out of the noise line.

    Texture (grass, fur, granules) adds to the finest details wherever it is, so
    the line reads high on textured images (15-19% on ``camera`` at sigma 15).
    Measured against the line, the details' variance in small blocks follows
    ``chi2(n) / n`` where only noise is; texture only raises it. So a low quantile
    of the blocks' ratios, divided by the same quantile of ``chi2(n) / n``, is the
    factor by which the line is too high; dividing by the line first keeps dark
    and bright blocks on one scale under photon noise. Blocks of a constant image
    (clipped background) are left out, and the factor is at least ``floor``, so
    partly clipped blocks cannot talk the noise away.
    """
    edge = round(_TEXTURE_BLOCK ** (1 / grids[0][0].ndim))
    ratios = []
    for detail, level in grids:
        keep = tuple(slice(0, s - s % edge) for s in detail.shape)
        if any(s < edge for s in detail.shape):
            continue
        variance = np.maximum(a * level[keep] + b, 1e-12)
        ratio = detail[keep] ** 2 / variance
        shape = [n for s in ratio.shape for n in (s // edge, edge)]
        order = list(range(0, 2 * ratio.ndim, 2)) + list(range(1, 2 * ratio.ndim, 2))
        ratios.append(ratio.reshape(shape).transpose(order).reshape(-1, edge**ratio.ndim).mean(1))
    ratios = np.concatenate(ratios) if ratios else np.empty(0)
    ratios = ratios[ratios > 0]  # blocks where the image is constant (clipped, saturated) say nothing
    if ratios.size < 10 / _TEXTURE_QUANTILE:
        return 1.0
    expected = white_noise_quantile(edge ** grids[0][0].ndim)
    return float(np.clip(np.quantile(ratios, _TEXTURE_QUANTILE) / expected, floor, 1.0))


def white_noise_quantile(n: int) -> float:
    """The ``_TEXTURE_QUANTILE`` quantile of the mean of ``n`` squared standard normal values (a chi-square
    with ``n`` degrees of freedom, over ``n``): the texture check's block ratio for pure white noise."""
    return 2 * float(special.gammaincinv(n / 2, _TEXTURE_QUANTILE)) / n


def _robust_variance(detail):
    """Variance of white noise from wavelet details, robust to the few that hold edges.

    The median absolute deviation starts it; the mean square of the details
    within 3 of its standard deviations (corrected for that cut) refines it,
    since in a bin of mixed intensities photon noise is a mixture of
    variances, which the median alone underestimates.
    """
    spread = np.median(np.abs(detail)) / 0.6745
    if spread == 0:  # mostly-equal values
        return float(np.mean(detail**2))
    for _ in range(3):
        spread = np.sqrt(np.mean(detail[np.abs(detail) < 3 * spread] ** 2) / _INSIDE_3_SIGMA)
    return float(spread**2)


def bin_ends(count: int) -> np.ndarray:
    """Where :func:`binned`'s equal-count bins of ``count`` sorted values end (sizes as ``np.array_split``'s)."""
    bins = max(1, min(BINS, count // PER_BIN))
    sizes = np.full(bins, count // bins)
    sizes[:count % bins] += 1
    return np.cumsum(sizes)


def binned(key, values, statistic, min_width: float = 0.0):
    """A statistic of ``values`` in equal-count bins of ``key``.

    Parameters
    ----------
    key : ndarray, shape (n,)
        What the bins divide (an intensity); at most :data:`BINS` bins, each of
        at least :data:`PER_BIN` values where there are that many.
    values : ndarray, shape (n, ...)
        The values binned with their keys.
    statistic : callable
        Maps a bin's values to one number (or array).
    min_width : float
        Neighbouring bins are merged until each spans at least this much of
        ``key`` (the last, short one joins the one before it).

    Returns
    -------
    keys, statistics : ndarray
        Each bin's mean key (a variance linear in the intensity has the bin's
        mean intensity, not its median) and its statistic.

    Notes
    -----
    numpy's default sort: 6x faster than a stable one on 262,144 values;
    equal keys still fall in a fixed order.
    """
    order = np.argsort(key)
    parts = np.split(order, bin_ends(len(key))[:-1])
    if min_width > 0:  # each group starts where the last one reached min_width; a short rest joins the last
        sorted_key, starts, start = key[order], [0], 0
        for end in np.cumsum([len(p) for p in parts])[:-1]:
            if sorted_key[end - 1] - sorted_key[start] >= min_width:
                starts.append(end)
                start = end
        if sorted_key[-1] - sorted_key[start] < min_width and len(starts) > 1:
            starts.pop()
        parts = np.split(order, starts[1:])
    return (np.array([np.mean(key[p]) for p in parts]),
            np.array([statistic(values[p]) for p in parts]))
