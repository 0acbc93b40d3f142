""":func:`.line.noise_line` in JAX, for crops that are already on the device (the accelerator route).

The same estimate, step by step: the finest Haar details in equal-count
bins of the reference's intensity, each bin's robust variance, a line
through them, and the correction for fine texture. The crops come stacked
(all of one shape), so every shape and bin is known when the function is
traced and one compiled program serves every image of that crop size. It
computes in float32 (the host in float64) and its sort keeps ties in their
order (numpy's does not promise to), so its line agrees with the host's to
about 1e-5, not bit for bit.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .line import (_INSIDE_3_SIGMA, _TEXTURE_BLOCK, _TEXTURE_FLOOR, _TEXTURE_QUANTILE, INPUT_TEXTURE_FLOOR, bin_ends,
                   white_noise_quantile)


def haar(crops, sign: bool):
    """The finest Haar coefficients of stacked ``crops`` ``(K, *spatial)``, as :func:`.line._blocks`."""
    for axis in range(1, crops.ndim):
        size = crops.shape[axis] - crops.shape[axis] % 2
        even = jax.lax.slice_in_dim(crops, 0, size, 2, axis)
        odd = jax.lax.slice_in_dim(crops, 1, size, 2, axis)
        crops = (even - odd) / np.sqrt(2) if sign else (even + odd) / 2
    return crops


def noise_line(noisy, reference, floor: float = _TEXTURE_FLOOR):
    """Noise variance line ``(a, b)`` of stacked crops ``(K, *spatial)`` and their reference, as JAX scalars
    (``floor``: the most the texture correction may scale it down by)."""
    detail, level = haar(noisy, sign=True), haar(reference, sign=False)
    a, b = _fitted_line(detail.ravel(), level.ravel())
    scale = _texture_scale(detail, level, a, b, floor)
    return a * scale, b * scale


def _fitted_line(detail, level):
    order = jnp.argsort(level)
    level, detail = level[order], detail[order]
    ends = bin_ends(level.size)
    intensity, variance = [], []
    for start, end in zip([0, *ends[:-1]], ends):
        intensity.append(level[start:end].mean())
        variance.append(_robust_variance(detail[start:end]))
    intensity, variance = jnp.stack(intensity), jnp.stack(variance)
    constant = (jnp.float32(0), variance.mean())
    if len(ends) < 2:
        return constant
    x = intensity - intensity.mean()
    spread = jnp.sum(x * x)
    a = jnp.sum(x * (variance - variance.mean())) / jnp.where(spread > 0, spread, 1)
    b = variance.mean() - a * intensity.mean()
    sloped = (spread > 0) & (a >= 0)  # noise does not fall with the signal: read it as constant
    return jnp.where(sloped, a, constant[0]), jnp.where(sloped, b, constant[1])


def _robust_variance(detail):
    spread = jnp.median(jnp.abs(detail)) / 0.6745
    refined = spread
    for _ in range(3):
        inside = jnp.abs(detail) < 3 * refined
        refined = jnp.sqrt(jnp.sum(jnp.where(inside, detail**2, 0)) / jnp.maximum(inside.sum(), 1) / _INSIDE_3_SIGMA)
    return jnp.where(spread == 0, jnp.mean(detail**2), refined**2)


def _texture_scale(detail, level, a, b, floor):
    dims = detail.ndim - 1
    edge = round(_TEXTURE_BLOCK ** (1 / dims))
    if any(s < edge for s in detail.shape[1:]):
        return jnp.float32(1)
    keep = (slice(None), *(slice(0, s - s % edge) for s in detail.shape[1:]))
    ratio = detail[keep] ** 2 / jnp.maximum(a * level[keep] + b, 1e-12)
    shape = [detail.shape[0]] + [n for s in ratio.shape[1:] for n in (s // edge, edge)]
    order = [0] + list(range(1, 2 * dims, 2)) + list(range(2, 2 * dims + 1, 2))
    blocks = ratio.reshape(shape).transpose(order).reshape(-1, edge**dims).mean(1)
    counted = blocks > 0  # blocks where the image is constant say nothing
    quantile = jnp.nanquantile(jnp.where(counted, blocks, jnp.nan), _TEXTURE_QUANTILE)
    scale = jnp.clip(quantile / white_noise_quantile(edge**dims), floor, 1.0)
    return jnp.where(counted.sum() < 10 / _TEXTURE_QUANTILE, 1.0, scale)


@jax.jit
def estimated_line(crops):
    """The variance line ``(a, b)`` (a device array) of one image's stacked ``crops``, each its own reference:
    the level a noise-aware network is given."""
    crops = crops.astype(jnp.float32)
    return jnp.stack(noise_line(crops, crops, INPUT_TEXTURE_FLOOR))
