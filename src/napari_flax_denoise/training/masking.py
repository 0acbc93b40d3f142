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
        replacement = median_of(values, axis=2)
    else:
        pick = jax.random.randint(key_pick, values.shape[:2], 0, values.shape[2])
        replacement = jnp.take_along_axis(values, pick[:, :, None, None], axis=2)[:, :, 0]
    masked = flat.at[jnp.arange(b)[:, None], index].set(replacement)
    return masked.reshape(batch.shape), index


def gather_pixels(batch: jax.Array, index: jax.Array) -> jax.Array:
    """Values of ``batch (B, *spatial, C)`` at flat spatial ``index (B, K)``: ``(B, K, C)``."""
    b, c = batch.shape[0], batch.shape[-1]
    return batch.reshape(b, -1, c)[jnp.arange(b)[:, None], index]


def median_of(values: jax.Array, axis: int) -> jax.Array:
    """Median along ``axis`` (the mean of the two middle values for an even count), as a sorting network.

    XLA's CPU sort calls a comparator per comparison; for the N2V2 mask it
    took about 4% of a training step. A network of elementwise minima and
    maxima over the slices along ``axis`` (Batcher's odd-even merge sort,
    padded to a power of two with slots known to sort first or last) runs as
    a few fused loops, and XLA drops the comparators that do not feed the
    middle values.
    """
    count = values.shape[axis]
    size = 1 << max(count - 1, 0).bit_length()
    low = (size - count) // 2  # slots that sort before every value; the rest of the padding sorts after
    slots = ["low"] * low + list(jnp.moveaxis(values, axis, 0)) + ["high"] * (size - count - low)
    for i, j in _merge_sort_pairs(size):
        a, b = slots[i], slots[j]
        if isinstance(a, str) or isinstance(b, str):
            if a == "high" or b == "low":  # out of order: swap
                slots[i], slots[j] = b, a
        else:
            slots[i], slots[j] = jnp.minimum(a, b), jnp.maximum(a, b)
    middle = low + count // 2
    return slots[middle] if count % 2 else 0.5 * (slots[middle - 1] + slots[middle])


def _merge_sort_pairs(size: int) -> list[tuple[int, int]]:
    """Comparator pairs ``(i, j)``, ``i < j``, of Batcher's odd-even merge sort of ``size`` (a power of 2) slots."""
    pairs, block = [], 1
    while block < size:
        gap = block
        while gap >= 1:
            for start in range(gap % block, size - gap, 2 * gap):
                for i in range(start, min(start + gap, size - gap)):
                    if i // (2 * block) == (i + gap) // (2 * block):
                        pairs.append((i, i + gap))
            gap //= 2
        block *= 2
    return pairs
