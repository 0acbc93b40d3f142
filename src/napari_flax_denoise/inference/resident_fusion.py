"""Pixel fusion on the device (the accelerator profile's route): :func:`.fusion.fuse_images`' twin.

Everything :mod:`.fusion` does runs where the prediction is, and nothing
waits for the host: the divergence probe on a few patches; for a large
image, the choice of weights from its crops (the noise line of
:mod:`..noise.resident_line`, the table per intensity bin, and SURE of
every candidate, in one compiled program for every image of that crop
size); and the weights, the fused value and the spread scaled by ``1 - w``
for every pixel, in one compiled call per image and channel that updates the
device's arrays in place. Smaller images (up to 512 x 512, or under 256
pixels along an axis), whose crops take their own shapes, are chosen for on
the host from copies of their crops, as :func:`.fusion.choose` does. It computes what the host route computes
(scipy's Gaussian filter with its ``reflect`` edges, ``np.interp``), in
float32, so a choice between two nearly equal candidates may differ.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage

from ..noise.line import BINS, PER_BIN, bin_ends
from ..noise.resident_line import noise_line
from .fusion import _CROP, _MIN_BIN_WIDTH, _NO_TABLE, _WIDTHS, _crops, _risk, choose, divergence

# What fuse_plane may do, by index: -1 leaves the prediction unchanged.
CANDIDATES = ("bins", *_WIDTHS)


def gaussian_filter(a, sigma: float, axes):
    """``scipy.ndimage.gaussian_filter(a, sigma, mode="reflect")`` along ``axes`` (truncated at 4 sigma)."""
    radius = int(4.0 * sigma + 0.5)
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    for axis in axes:
        size = a.shape[axis]
        padded = jnp.pad(a, [(radius, radius) if i == axis else (0, 0) for i in range(a.ndim)], mode="symmetric")
        a = sum(w * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k, w in enumerate(taps))
    return a


def fuse_on_device(network, images, predictions, std=None, blind: bool = True, noisy=None, units=1.0,
                   noise=None, recurring: bool = False):
    """:func:`.fusion.fuse_images` for JAX arrays, on their device.

    ``predictions`` and ``std`` are donated: use the returned arrays. Takes
    and returns what :func:`.fusion.fuse_images` does, except that the mean
    weight is a device scalar: reading it waits for the work, so the caller
    reads it once everything is dispatched. The weights are chosen on the
    device for large images, and for small ones that are ``recurring`` (see
    :func:`~napari_flax_denoise.noise.level.noise_features`); other small
    images send their crops to the host.
    """
    noisy = images if noisy is None else noisy
    units = np.broadcast_to(np.asarray(units, np.float64), (images.shape[-1],))
    spatial = images.shape[1:-1]
    crops = _crops(spatial)
    on_device = recurring or (len(crops) > 1 and min(spatial) >= _CROP[len(spatial)])  # several full-size crops
    weights = []
    for n in range(images.shape[0]):
        centre = divergence(network, images[n:n + 1], noise=None if noise is None else noise[n:n + 1])
        for c in range(images.shape[-1]):
            if on_device:
                cut = [(n, *crop, c) for crop in crops]
                best, line, keep, table = choose_on_device(
                    jnp.stack([noisy[at] for at in cut]), jnp.stack([predictions[at] for at in cut]),
                    centre * units[c], blind=blind)
                known = None
            else:
                best, line, keep, table = _chosen(choose(noisy[n, ..., c], predictions[n, ..., c],
                                                         float(centre) * units[c], blind))
                known = int(best)
                if known < 0:  # the prediction stays as it is
                    weights.append(0.0)
                    continue
            predictions, std, weight = fuse_plane(predictions, std, noisy, np.array([n, c], np.int32), best, line,
                                                  keep, table, known=known)
            weights.append(weight)
    return predictions, std, jnp.mean(jnp.stack([jnp.asarray(w, jnp.float32) for w in weights]))


def _chosen(chosen):
    """:func:`.fusion.choose`'s answer as :func:`fuse_plane` takes it."""
    if chosen is None:
        return np.int32(-1), (np.float32(0), np.float32(0)), np.float32(1), _padded(*_NO_TABLE)
    best, line, keep, table = chosen
    return np.int32(CANDIDATES.index(best)), line, np.float32(keep), _padded(*table)


def _padded(centres, weights):
    """A bin table padded to :data:`BINS` entries that interpolate the same (one program for every table)."""
    centres, weights = (np.asarray(v, np.float32) for v in (centres, weights))
    extra = BINS - len(centres)
    return (np.concatenate([centres, centres[-1] + np.arange(1, extra + 1, dtype=np.float32)]),
            np.concatenate([weights, np.full(extra, weights[-1], np.float32)]))


@partial(jax.jit, static_argnames="blind")
def choose_on_device(noisy, prediction, centre_weight, *, blind):
    """:func:`.fusion.choose` for stacked crops ``(K, *crop)`` of one image: ``(best, line, keep, table)``,
    with ``best`` an index of :data:`CANDIDATES` (-1: leave the prediction unchanged)."""
    keep = 1.0 - jnp.clip(centre_weight, 0.0, 0.9)
    line = noise_line(noisy, prediction)
    r, dims = noisy - prediction, noisy.ndim - 1
    count = noisy.size >> dims
    if not blind and count < 2 * PER_BIN:
        return jnp.int32(-1), line, keep, _padded(*_NO_TABLE)
    caution = 1.0 + 4.7 / np.sqrt(count)
    table = _bin_table(r, prediction, line, keep) if blind else _padded(*_NO_TABLE)
    v = jnp.maximum(line[0] * prediction + line[1], 0.0) * caution
    unchanged = _risk(r, v, 0.0, 0.0, keep)
    best, best_risk = jnp.int32(-1), jnp.float32(0)
    for index, choice in enumerate(CANDIDATES):
        if choice == "bins" and not blind:
            continue
        weight, slope = _weights(r, prediction, line, keep, choice, table, slope=True)
        gain = _risk(r, v, weight, slope, keep) - unchanged
        risk, error = gain.mean(), gain.std() / np.sqrt(gain.size)
        better = (risk < best_risk) & (risk < -2.0 * error)  # better, and not by chance
        best, best_risk = jnp.where(better, index, best), jnp.where(better, risk, best_risk)
    return best, line, keep, table


def _bin_table(r, mu, line, keep):
    """:func:`.fusion._bin_table` on the device, padded (see :func:`_padded`)."""
    mu, r = mu.ravel(), r.ravel()
    v = jnp.maximum(line[0] * mu + line[1], 0.0)
    order = jnp.argsort(mu)
    key, r2, v = mu[order], (r * r)[order], v[order]
    ends = bin_ends(key.size)
    width = _MIN_BIN_WIDTH * (1.0 - keep) * jnp.sqrt(v.mean())
    start_key, flags = key[0], []  # flags[i]: a new group starts after part i
    for end in ends[:-1]:
        flags.append(key[end - 1] - start_key >= width)
        start_key = jnp.where(flags[-1], key[end], start_key)
    flags = jnp.stack(flags) if flags else jnp.zeros(0, bool)
    if flags.size:  # a last group narrower than the width joins the one before it
        last = jnp.max(jnp.where(flags, jnp.arange(flags.size), -1))
        short = key[-1] - start_key < width
        flags = flags & ~(short & (jnp.arange(flags.size) == last))
    group = jnp.concatenate([jnp.zeros(1, jnp.int32), jnp.cumsum(flags, dtype=jnp.int32)])
    parts = [(key[a:b].sum(), r2[a:b].sum(), v[a:b].sum(), b - a) for a, b in zip([0, *ends[:-1]], ends)]
    sums = [jax.ops.segment_sum(jnp.stack(column).astype(jnp.float32), group, num_segments=len(ends))
            for column in zip(*parts)]
    key_sum, r2_sum, v_sum, size = sums
    size = jnp.maximum(size, 1)
    centres = key_sum / size
    weights = jnp.clip(1.0 - keep * (v_sum / size) / jnp.maximum(r2_sum / size, 1e-12), 0.0, 1.0)
    groups = group[-1] + 1
    index = jnp.arange(len(ends))
    centres = jnp.where(index < groups, centres, centres[groups - 1] + (index - groups + 1))
    weights = jnp.where(index < groups, weights, weights[groups - 1])
    extra = BINS - len(ends)
    return (jnp.concatenate([centres, centres[-1] + jnp.arange(1, extra + 1, dtype=jnp.float32)]),
            jnp.concatenate([weights, jnp.full(extra, weights[-1])]))


def _weights(r, mu, line, keep, choice, table, slope: bool):
    """:func:`.fusion._weights` for arrays ``(K, *spatial)`` (the Gaussian window per image)."""
    if choice == "bins":
        return jnp.interp(mu, *table), jnp.float32(0)
    v = jnp.maximum(line[0] * mu + line[1], 0.0)
    local = jnp.maximum(gaussian_filter(r * r, choice, range(1, r.ndim)), 1e-12)
    weight = 1.0 - keep * v / local
    if not slope:
        return jnp.clip(weight, 0.0, 1.0), None
    reach = int(4 * choice) + 1  # d w / d y through the window's own centre term
    centre = ndimage.gaussian_filter1d(np.pad([1.0], reach), choice)[reach] ** (r.ndim - 1)
    slope = jnp.where((weight > 0) & (weight < 1), 2 * keep * keep * np.float32(centre) * v / local**2, 0.0)
    return jnp.clip(weight, 0.0, 1.0), slope


@partial(jax.jit, donate_argnums=(0, 1), static_argnames="known")
def fuse_plane(predictions, std, noisy, at, best, line, keep, table, *, known=None):
    """Fuse image ``at[0]``'s channel ``at[1]`` of ``predictions`` (and scale its ``std``) in place.

    Parameters
    ----------
    predictions, std : jax.Array, shape (N, *spatial, C)
        The network's predictions and their spread (``std`` may be None);
        both donated, and returned updated.
    noisy : jax.Array, shape (N, *spatial, C)
        The noisy images on the predictions' scale.
    at : array of int32, shape (2,)
        The image and the channel.
    best : int
        Index of the weights' source in :data:`CANDIDATES`; -1 leaves the plane unchanged.
    line : (float, float)
        The noise variance line ``a * mu + b``.
    keep : float
        ``1 - D`` (see :func:`.fusion.fuse`).
    table : (array, array)
        The weights per intensity bin, padded to :data:`BINS` entries.
    known : int, optional
        ``best``, when the host knows it: only that kind of weight is then
        compiled (a fifth of the program: 0.65 s of compilation per image
        shape on a CPU for all of them), else every kind, switched on ``best``.

    Returns
    -------
    predictions, std : jax.Array
    mean_weight : jax.Array
        The plane's mean weight of the noisy image.
    """
    start = (at[0], *[0] * (predictions.ndim - 2), at[1])
    size = (1, *predictions.shape[1:-1], 1)
    mu = jax.lax.dynamic_slice(predictions, start, size)
    r = jax.lax.dynamic_slice(noisy, start, size) - mu
    branches = [lambda: jnp.zeros_like(mu)] + [
        partial(lambda choice: _weights(r[..., 0], mu[..., 0], line, keep, choice, table, slope=False)[0][..., None],
                choice) for choice in CANDIDATES]
    weight = jax.lax.switch(best + 1, branches) if known is None else branches[known + 1]()
    predictions = jax.lax.dynamic_update_slice(predictions, mu + weight * r, start)
    if std is not None:
        std = jax.lax.dynamic_update_slice(std, jax.lax.dynamic_slice(std, start, size) * (1.0 - weight), start)
    return predictions, std, weight.mean()
