"""Fusion's per-pixel step on the device (the accelerator profile's route).

:func:`.fusion.fuse` decides how to weigh the noisy pixel back in from a
few crops (a fixed amount of work whatever the image's size, done on the
host); what it then does to every pixel (the weights from the noise line and
a Gaussian window of the squared residual, or from the table per intensity
bin; the fused value; the spread scaled by ``1 - w``) runs here, in one
compiled call per image and channel that updates the device's arrays in
place. It computes what the host route computes (scipy's Gaussian filter with
its ``reflect`` edges, ``np.interp``), up to float rounding.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..noise.line import BINS


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


def padded_table(table):
    """A bin table ``(centres, weights)`` padded to :data:`BINS` entries that interpolate the same,
    so that one compiled program serves every table."""
    centres, weights = (np.asarray(v, np.float32) for v in table)
    extra = BINS - len(centres)
    centres = np.concatenate([centres, centres[-1] + np.arange(1, extra + 1, dtype=np.float32)])
    return centres, np.concatenate([weights, np.full(extra, weights[-1], np.float32)])


@partial(jax.jit, static_argnames="choice", donate_argnums=(0, 1))
def fuse_plane(predictions, std, noisy, at, line, keep, table, *, choice):
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
    line : (float, float)
        The noise variance line ``a * mu + b``.
    keep : float
        ``1 - D`` (see :func:`.fusion.fuse`).
    table : (ndarray, ndarray)
        :func:`padded_table` of the weights per intensity bin.
    choice : "bins" or float
        The weights' source: the table, or a Gaussian window of this sigma.

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
    if choice == "bins":
        weight = jnp.interp(mu, *table)
    else:
        v = jnp.maximum(line[0] * mu + line[1], 0.0)
        local = jnp.maximum(gaussian_filter(r * r, choice, range(1, mu.ndim - 1)), 1e-12)
        weight = jnp.clip(1.0 - keep * v / local, 0.0, 1.0)
    predictions = jax.lax.dynamic_update_slice(predictions, mu + weight * r, start)
    if std is not None:
        std = jax.lax.dynamic_update_slice(std, jax.lax.dynamic_slice(std, start, size) * (1.0 - weight), start)
    return predictions, std, weight.mean()
