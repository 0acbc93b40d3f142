"""Test-time augmentation: the 8 symmetries of the YX square, predicted and averaged.

The same code serves both inference routes: NumPy arrays on the host route
(sums in float64), JAX arrays on the device-resident route (the images
never leave the device; sums in float32, shifted by the first prediction so
the standard deviation does not cancel away).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..progress import Progress, relay

# (quarter turns, flip X)
SYMMETRIES = [(k, flip) for k in range(4) for flip in (False, True)]


def turn(x, k: int, flip: bool, *, inverse: bool = False):
    """Flip X (if ``flip``), then turn the YX plane ``k`` quarter turns, of a batch ``(N, [Z,] Y, X, C)``; or undo it."""
    xp = jnp if isinstance(x, jax.Array) else np
    dims = x.ndim - 2
    yx = (dims - 1, dims)
    if not inverse:
        return xp.rot90(xp.flip(x, dims) if flip else x, k, axes=yx)
    x = xp.rot90(x, -k, axes=yx)
    return xp.flip(x, dims) if flip else x


def tta_mean_std(predict, x, tile_shape, with_std: bool):
    """Mean (and standard deviation, if ``with_std``) of ``predict`` over the 8 symmetries of ``x``.

    ``predict(images, tile_shape)`` is a generator of :class:`Progress` that
    returns the prediction; its events are passed on as one count over all
    eight passes. Quarter turns swap the tile's Y and X sizes.
    """
    on_host = isinstance(x, np.ndarray)
    total = squares = first = None
    for number, (k, flip) in enumerate(SYMMETRIES):
        turned = turn(x, k, flip)
        shape = tile_shape if k % 2 == 0 else (*tile_shape[:-2], tile_shape[-1], tile_shape[-2])
        prediction = yield from relay(predict(np.ascontiguousarray(turned) if on_host else turned, shape),
                                      lambda e, number=number: Progress(number * e.total + e.done,
                                                                        len(SYMMETRIES) * e.total))
        prediction = turn(prediction, k, flip, inverse=True)
        if on_host:
            prediction = prediction.astype(np.float64)
        first = prediction if first is None else first
        shifted = prediction - first
        total = shifted if total is None else total + shifted
        if with_std:
            squares = shifted**2 if squares is None else squares + shifted**2
    count = len(SYMMETRIES)
    mean = first + total / count
    std = None
    if with_std:
        xp = np if on_host else jnp
        std = xp.sqrt(xp.maximum(squares / count - (total / count) ** 2, 0)).astype(np.float32)
    return mean.astype(np.float32), std
