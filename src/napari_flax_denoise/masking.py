"""Blind-spot masking for Noise2Void (N2V) and N2V2, in JAX.

One pixel is masked in every cell of a regular grid (stratified sampling, as
in Noise2Void): its value is replaced by a random neighbour (``n2v``) or by
the median of its neighbourhood without the centre (``n2v2``, which removes
the identity shortcut that random replacement leaves). The loss is read at
the masked pixels only.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

RADIUS = 2


def grid_spacing(mask_fraction: float, dims: int) -> int:
    """Edge of the grid cell that holds one masked pixel."""
    return max(1, int(round((1.0 / mask_fraction) ** (1.0 / dims))))


def _neighbour_offsets(dims: int) -> np.ndarray:
    steps = range(-RADIUS, RADIUS + 1)
    offsets = [o for o in itertools.product(steps, repeat=dims) if any(o)]
    return np.array(offsets, np.int32)


def blind_spot_mask(key: jax.Array, batch: jax.Array, *, mask_fraction: float, median: bool):
    """Mask one pixel per grid cell of every patch.

    Parameters
    ----------
    key : jax.Array
        PRNG key.
    batch : jax.Array, shape (B, *spatial, C)
        Normalised noisy patches.
    mask_fraction : float
        Approximate fraction of pixels masked (sets the grid spacing).
    median : bool
        Replace by the neighbourhood median (N2V2) instead of a random neighbour.

    Returns
    -------
    masked : jax.Array, shape (B, *spatial, C)
        ``batch`` with the masked pixels replaced.
    index : jax.Array, shape (B, K)
        Flat spatial indices of the ``K`` masked pixels per patch, for
        :func:`gather_pixels`.
    """
    b, *spatial, c = batch.shape
    dims = len(spatial)
    spacing = grid_spacing(mask_fraction, dims)
    cells = [max(1, s // spacing) for s in spatial]
    key_pos, key_pick = jax.random.split(key)
    # Grid origin of every cell plus a random offset inside it.
    origins = np.stack(np.meshgrid(*[np.arange(n) * spacing for n in cells], indexing="ij"), -1)
    origins = origins.reshape(-1, dims)
    jitter = jax.random.randint(key_pos, (b, origins.shape[0], dims), 0, spacing)
    coords = jnp.minimum(origins[None] + jitter, np.array(spatial) - 1)
    # Neighbour coordinates, mirrored at the patch border.
    offsets = _neighbour_offsets(dims)
    near = coords[:, :, None, :] + offsets[None, None]
    size = np.array(spatial)
    near = jnp.abs(near)
    near = jnp.where(near >= size, 2 * (size - 1) - near, near)
    flat = batch.reshape(b, -1, c)
    strides = np.cumprod([1, *spatial[::-1]])[:-1][::-1].astype(np.int32)
    index = coords @ strides
    rows = jnp.arange(b)[:, None, None]
    values = flat[rows, near @ strides]  # (B, K, W, C)
    if median:
        replacement = jnp.median(values, axis=2)
    else:
        pick = jax.random.randint(key_pick, values.shape[:2], 0, values.shape[2])
        replacement = jnp.take_along_axis(values, pick[:, :, None, None], axis=2)[:, :, 0]
    masked = flat.at[jnp.arange(b)[:, None], index].set(replacement)
    return masked.reshape(batch.shape), index


def gather_pixels(batch: jax.Array, index: jax.Array) -> jax.Array:
    """Values of ``batch (B, *spatial, C)`` at flat spatial ``index (B, K)``: ``(B, K, C)``."""
    b, c = batch.shape[0], batch.shape[-1]
    return batch.reshape(b, -1, c)[jnp.arange(b)[:, None], index]
