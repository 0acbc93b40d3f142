"""Training patches cut on the device, for accelerators.

The training images, normalised once, live on the device as one flat buffer
(targets in a second). A batch is drawn inside the compiled training step
from a JAX key: which image, which plane, where the patch starts, its flips
and its 90 degree turn, then one gather of every patch pixel. Nothing
crosses from the host per step, so many steps can run in one dispatch
(:func:`.steps.make_dispatch`). Batches follow the same rules as the host's
:class:`~.patches.PatchSampler` (training rows only, patches inside the
image, flips along every spatial axis, turns in Y X for square patches); the
random stream is JAX's, derived from the run's seed and the step number.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ..noise.level import with_noise

# Flat indices are int32 (JAX's default): larger training sets stay on the host.
_MAX_ELEMENTS = 2**31 - 1


@dataclass(frozen=True)
class PatchPlan:
    """What a device batch is drawn from, as static numbers (hashable: part of the compiled step).

    Attributes
    ----------
    extents : tuple of tuple of int
        Per image, ``(N, *spatial)``.
    starts : tuple of int
        Per image, its first pixel in the flat buffers.
    rows : tuple of tuple of int
        Per image, the Y range ``[start, stop)`` patches come from.
    weights : tuple of float
        Per image, the chance a patch comes from it (its number of patch positions).
    patch_shape : tuple of int
    augment : bool
    """

    extents: tuple
    starts: tuple
    rows: tuple
    weights: tuple
    patch_shape: tuple
    augment: bool

    @property
    def dims(self) -> int:
        return len(self.patch_shape)

    def sample(self, buffers, key, batch_size: int):
        """``(inputs, targets)`` of ``batch_size`` patches, ``(B, *patch_shape, C)``; targets None without them.

        Parameters
        ----------
        buffers : tuple
            ``(inputs, targets or None)`` flat ``(pixels, C)`` device arrays.
        key : jax.Array
        batch_size : int
        """
        index = self.indices(key, batch_size)
        return tuple(None if b is None else b[index] for b in buffers)

    def indices(self, key, batch_size: int) -> jax.Array:
        """Flat pixel indices ``(B, *patch_shape)`` of a batch of patches."""
        dims, patch = self.dims, np.array(self.patch_shape, np.int32)
        k_image, k_plane, k_start, k_flip, k_turn = jax.random.split(key, 5)
        which = jax.random.choice(k_image, len(self.extents), (batch_size,), p=jnp.asarray(self.weights))
        extents = jnp.asarray(np.array(self.extents, np.int32))[which]  # (B, 1 + dims)
        plane = jax.random.randint(k_plane, (batch_size,), 0, extents[:, 0])
        low = np.zeros((len(self.extents), dims), np.int32)
        high = np.array([e[1:] for e in self.extents], np.int32)
        low[:, -2], high[:, -2] = [r[0] for r in self.rows], [r[1] for r in self.rows]
        low, high = jnp.asarray(low)[which], jnp.asarray(high)[which]
        start = jax.random.randint(k_start, (batch_size, dims), low, high - patch + 1)
        grid = jnp.stack(jnp.meshgrid(*[jnp.arange(p, dtype=jnp.int32) for p in self.patch_shape],
                                      indexing="ij"), -1)  # (*patch, dims)
        grid = jnp.broadcast_to(grid, (batch_size, *self.patch_shape, dims))
        if self.augment:
            grid = _augmented(grid, patch, k_flip, k_turn)
        coords = start.reshape(batch_size, *[1] * dims, dims) + grid
        flat = plane.reshape(batch_size, *[1] * dims)
        for axis in range(dims):
            flat = flat * extents[:, 1 + axis].reshape(batch_size, *[1] * dims) + coords[..., axis]
        return flat + jnp.asarray(np.array(self.starts, np.int32))[which].reshape(batch_size, *[1] * dims)


def _augmented(grid, patch, k_flip, k_turn):
    """Source coordinates of each patch turned by a random multiple of 90 degrees in Y X, then flipped."""
    batch, dims = grid.shape[0], grid.shape[-1]
    shape = (batch, *[1] * dims)
    if patch[-1] == patch[-2]:
        turns = jax.random.randint(k_turn, shape, 0, 4)
        y, x, last = grid[..., -2], grid[..., -1], patch[-1] - 1
        for k, (ny, nx) in enumerate([(y, x), (x, last - y), (last - y, last - x), (last - x, y)]):
            grid = jnp.where((turns == k)[..., None], jnp.stack([*jnp.moveaxis(grid[..., :-2], -1, 0), ny, nx], -1),
                             grid)
    flips = jax.random.bernoulli(k_flip, 0.5, (batch, dims)).reshape(*shape, dims)
    return jnp.where(flips, patch - 1 - grid, grid)


def device_patches(images, targets, *, rows, input_norms, target_norms, patch_shape, weights, augment,
                   budget: int | None, noise=None):
    """Normalise in-memory training images once and put them on the device, or return None.

    Parameters
    ----------
    images, targets : list of ndarray
        Model-layout ``(N, [Z,] Y, X, C)`` arrays (targets may be None).
    rows, input_norms, target_norms, patch_shape, weights, augment
        As the host sampler's.
    budget : int or None
        Bytes the buffers may take; None: no limit known.
    noise : ndarray, optional
        Per image, a noise-aware network's noise channels, stored with its pixels.

    Returns
    -------
    (PatchPlan, buffers) or None
        None when an input is lazy or memory-mapped, or the data do not fit
        (the host sampler serves those).
    """
    arrays = list(images) + list(targets or [])
    if any(type(a) is not np.ndarray for a in arrays):  # lazy, or a memory map: read patch by patch on the host
        return None
    pixels = sum(int(np.prod(a.shape[:-1], dtype=np.int64)) for a in images)
    extra = 0 if noise is None else noise.shape[-1]
    size = (sum(a.size for a in arrays) + pixels * extra) * 4
    if pixels * (max(a.shape[-1] for a in arrays) + extra) > _MAX_ELEMENTS or (budget is not None and size > budget):
        return None
    starts = np.cumsum([0] + [int(np.prod(a.shape[:-1])) for a in images])[:-1]
    plan = PatchPlan(tuple(tuple(int(s) for s in a.shape[:-1]) for a in images), tuple(int(s) for s in starts),
                     tuple(tuple(int(r) for r in row) for row in rows), tuple(float(w) for w in weights),
                     tuple(int(p) for p in patch_shape), bool(augment))

    def flat(arrays, norms, noise=None):
        parts = [n.apply(a) for a, n in zip(arrays, norms)]
        if noise is not None:  # every plane of an image gets the image's level
            parts = [with_noise(p, np.broadcast_to(level, (len(p), len(level)))) for p, level in zip(parts, noise)]
        return jnp.asarray(np.concatenate([p.reshape(-1, p.shape[-1]) for p in parts]))

    return plan, (flat(images, input_norms, noise), None if targets is None else flat(targets, target_norms))
