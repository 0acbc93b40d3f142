"""Training patches laid side by side along X, for XLA's CPU convolutions.

XLA's CPU convolutions (YNNPACK) ran a 3x3, 32-channel layer at about
330 GFLOP/s on images 512 to 1088 pixels wide but at about 170 on a batch of
16 patches 64 pixels wide. So a training batch is packed into few wide rows:
each patch followed by ``2**depth`` columns of zeros, which stand in for the
zero padding at its right edge and, after pooling, at every level below. The
network holds those columns at zero after every layer (its ``masks``), so each
patch's result is the same as on its own.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .convolution import conv_same

# Packed rows about this wide ran fastest (1088: 330 GFLOP/s; 2048: 235).
_TARGET_WIDTH = 1088


def per_row(batch: int, width: int, gap: int, groups: int = 1) -> int:
    """How many patches of ``width`` (+ ``gap``) go side by side, at most ~1088 pixels.

    A divisor of ``batch / groups`` (when that divides), so that a batch split
    over ``groups`` devices packs each device's share on its own.
    """
    share = batch // groups if batch % groups == 0 else batch
    fits = max(1, _TARGET_WIDTH // (width + gap))
    return max(k for k in range(1, share + 1) if share % k == 0 and k <= fits)


def pack(batch: jax.Array, count: int, gap: int) -> jax.Array:
    """``(B, ..., Y, X, C)`` -> ``(B / count, ..., Y, count * (X + gap), C)``, zeros after each patch."""
    b, *rest, x, c = batch.shape
    padded = jnp.pad(batch, [(0, 0)] * (batch.ndim - 2) + [(0, gap), (0, 0)])
    rows = padded.reshape(b // count, count, *rest, x + gap, c)
    rows = jnp.moveaxis(rows, 1, -3)  # (rows, ..., Y, count, X + gap, C)
    return rows.reshape(b // count, *rest, count * (x + gap), c)


def unpack(packed: jax.Array, count: int, gap: int) -> jax.Array:
    """Inverse of :func:`pack`."""
    rows, *rest, width, c = packed.shape
    x = width // count - gap
    split = packed.reshape(rows, *rest, count, x + gap, c)[..., :x, :]
    return jnp.moveaxis(split, -3, 1).reshape(rows * count, *rest, x, c)


def packed_masks(width: int, count: int, gap: int, depth: int, ndim: int) -> list[np.ndarray]:
    """Per U-Net level, a boolean mask over X (broadcastable to ``ndim``-D activations) of the patches' columns."""
    masks = []
    for level in range(depth + 1):
        period, inside = (width + gap) >> level, width >> level
        columns = (np.arange(count * period) % period) < inside
        masks.append(columns.reshape((1,) * (ndim - 2) + (-1, 1)))
    return masks


def packed_apply(network, batch: jax.Array) -> jax.Array:
    """``network(batch)`` computed on the patches packed side by side; same result up to float rounding.

    ``network`` is a U-Net (its ``depth`` and ``dims`` and a call that takes
    ``masks`` and ``conv``). It computes with the CPU convolution
    (:func:`.convolution.conv_same`); in 2D every packed row ends in a
    column that the masks hold at zero, which its kernel gradient uses.
    """
    gap = 2**network.depth
    width = batch.shape[-2]
    count = per_row(batch.shape[0], width, gap, jax.device_count())
    masks = packed_masks(width, count, gap, network.depth, batch.ndim)
    conv = partial(conv_same, zero_last_column=network.dims == 2)
    return unpack(network(pack(batch, count, gap), masks=masks, conv=conv), count, gap)
