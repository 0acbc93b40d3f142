"""Random training patches drawn on the fly, with a spatial validation split.

Patches are cut from the arrays at the moment a batch is requested, so memory
does not grow with the number of possible patches (a stack of a few hundred
megapixels offers millions of them). Arrays may be memory-mapped or lazy.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError
from ..noise.level import with_noise


def split_rows(height: int, patch: int, val_fraction: float) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Split ``height`` rows into a training and a validation range.

    The validation rows are the last ``val_fraction`` of the image, but at
    least one patch high; the training rows must also hold one patch.
    """
    if val_fraction <= 0:
        return (0, height), None
    val_rows = max(int(round(height * val_fraction)), patch)
    if height - val_rows < patch:
        raise UserInputError(
            f"The images are {height} pixels high, too few for a {patch}-pixel training patch and a "
            "separate validation patch; use a smaller patch size or set the validation fraction to 0."
        )
    return (0, height - val_rows), (height - val_rows, height)


def fit_patch_shape(spatial_shapes, patch_size: int, multiple: int) -> tuple[int, ...]:
    """Largest patch, at most ``patch_size`` per axis and a multiple of ``multiple``, fitting every array."""
    smallest = np.min(np.array(spatial_shapes), axis=0)
    shape = tuple(int(min(patch_size, s // multiple * multiple)) for s in smallest)
    if min(shape) < multiple:
        raise UserInputError(
            f"The images ({' x '.join(map(str, smallest))} pixels) are too small for this network, "
            f"which needs at least {multiple} pixels along every spatial axis; use larger images or a smaller depth."
        )
    return shape


class PatchSampler:
    """Draw random (augmented) patch batches from model-layout arrays.

    Parameters
    ----------
    images : list of ndarray, each (N, [Z,] Y, X, C)
        Noisy inputs, in the original intensities.
    targets : list of ndarray or None
        Clean or second noisy images aligned with ``images`` (``care``, ``n2n``).
    patch_shape : tuple of int
        Spatial patch shape.
    rows : list of tuple of int
        Per image, the Y range ``[start, stop)`` to sample from.
    input_norms, target_norms : list of Normalization
        Per image (and target), applied to each patch as it is cut.
    augment : bool
        Random flips along every spatial axis and 90 degree rotations in YX.
    seed : int
    noise : ndarray, optional
        Per image, the noise channels of a noise-aware network
        (:mod:`~napari_flax_denoise.noise.level`), appended to its patches.
    """

    def __init__(self, images, targets, *, patch_shape, rows, input_norms, target_norms=None,
                 augment=True, seed=0, noise=None):
        self.images, self.targets, self.noise = images, targets, noise
        self.patch_shape = tuple(patch_shape)
        self.rows = rows
        self.input_norms, self.target_norms = input_norms, target_norms
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        dims = len(self.patch_shape)
        weights = []
        for image, (lo, hi) in zip(images, rows):
            extents = list(image.shape[1:-1])
            extents[-2] = hi - lo
            free = [e - p + 1 for e, p in zip(extents, self.patch_shape)]
            if min(free) < 1:
                raise UserInputError(
                    f"A {' x '.join(map(str, self.patch_shape))} patch does not fit in an image region of "
                    f"{' x '.join(map(str, extents))} pixels; use a smaller patch size."
                )
            weights.append(image.shape[0] * np.prod(free, dtype=np.float64))
        self.weights = np.array(weights) / np.sum(weights)
        self.dims = dims

    def sample(self, batch_size: int):
        """Return ``(inputs, targets)`` float32 batches ``(B, *patch_shape, C)``; targets may be None."""
        inputs, targets, chosen = [], [], []
        for _ in range(batch_size):
            which = self.rng.choice(len(self.images), p=self.weights)
            chosen.append(which)
            image = self.images[which]
            n = self.rng.integers(image.shape[0])
            starts = []
            for axis, (extent, size) in enumerate(zip(image.shape[1:-1], self.patch_shape)):
                lo, hi = (self.rows[which] if axis == self.dims - 2 else (0, extent))
                starts.append(self.rng.integers(lo, hi - size + 1))
            window = (n, *[slice(s, s + p) for s, p in zip(starts, self.patch_shape)])
            flips = self.rng.random(self.dims) < 0.5 if self.augment else np.zeros(self.dims, bool)
            turns = self.rng.integers(4) if self.augment else 0
            inputs.append(self._augment(self.input_norms[which].apply(image[window]), flips, turns))
            if self.targets is not None:
                target = self.target_norms[which].apply(self.targets[which][window])
                targets.append(self._augment(target, flips, turns))
        x = np.stack(inputs)
        y = np.stack(targets) if targets else None
        for batch, name in ((x, "training image"), (y, "target")):
            if batch is not None and not np.all(np.isfinite(batch)):  # lazy inputs are checked as they are read
                raise UserInputError(f"A {name} contains NaN or infinite values; replace them (e.g. with the "
                                     "median) before training.")
        if self.noise is not None:
            x = with_noise(x, self.noise[chosen])
        return x, y

    def _augment(self, patch, flips, turns):
        for axis in np.flatnonzero(flips):
            patch = np.flip(patch, axis)
        if turns and self.patch_shape[-1] == self.patch_shape[-2]:
            patch = np.rot90(patch, turns, axes=(self.dims - 2, self.dims - 1))
        return np.ascontiguousarray(patch)
