"""Per-channel intensity normalisation, saved with the model and undone on output.

:class:`Normalization` is one map for all images (a model's saved
statistics); :class:`PlaneNormalization` gives every image of a stack its own
(models that normalise each image on their own, such as general-2d).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np

from ..errors import UserInputError
from ..runtime.arrays import array_namespace

PERCENTILES = (1.0, 99.8)
_MAX_SAMPLES = 4_000_000
_NOT_FINITE = "The image contains NaN or infinite values; replace them (e.g. with the median) first."


@dataclass(frozen=True)
class Normalization:
    """An affine map ``(x - offset) / scale`` per channel.

    Attributes
    ----------
    method : {'percentile', 'meanstd'}
        How the statistics were computed.
    offset, scale : tuple of float
        One value per channel; ``scale`` is positive.
    """

    method: str
    offset: tuple
    scale: tuple

    @classmethod
    def fit(cls, images, method: str = "percentile") -> "Normalization":
        """Compute statistics from model-layout arrays ``(N, [Z,] Y, X, C)``.

        Parameters
        ----------
        images : sequence of ndarray
            All with the same channel count. Large inputs are subsampled with
            a regular stride, so memory stays bounded. JAX arrays (one image
            on the accelerator route) are reduced where they are, and only the
            statistics come back.
        method : {'percentile', 'meanstd'}
            ``percentile`` maps the 1st / 99.8th percentiles to 0 / 1;
            ``meanstd`` maps mean / standard deviation to 0 / 1.
        """
        if method not in ("percentile", "meanstd"):
            raise UserInputError(f"normalization must be 'percentile' or 'meanstd', not {method!r}.")
        channels = images[0].shape[-1]
        xp = array_namespace(images[0])
        samples = []
        for image in images:
            if xp is np and not isinstance(image, np.ndarray):  # lazy: read a few planes, never the whole array
                image = _some_planes(image, _MAX_SAMPLES // len(images))
            flat = image.reshape(-1, channels)
            stride = sample_stride(image.shape[:-1], len(images))
            # float64 on the host; float32 on a device (exact for integer images up to 2**24)
            samples.append(xp.asarray(flat[::stride], np.float64 if xp is np else np.float32))
        values = xp.concatenate(samples)
        finite = xp.all(xp.isfinite(values))
        if xp is np and not finite:  # before the statistics, which NaN would only spoil
            raise UserInputError(_NOT_FINITE)
        if method == "percentile":
            low, high = xp.percentile(values, xp.asarray(PERCENTILES), axis=0)
            # Sparse images (mostly background) can have equal percentiles.
            spread = values.max(axis=0) - values.min(axis=0)
            statistics = (low, xp.where(high > low, high - low, spread))
        else:
            statistics = (values.mean(axis=0), values.std(axis=0))
        if xp is not np:  # from a device, the few numbers come back in one transfer
            import jax

            finite, statistics = jax.device_get((finite, statistics))
            if not finite:
                raise UserInputError(_NOT_FINITE)
        offset, scale = (np.asarray(v, np.float64) for v in statistics)
        if np.any(scale <= 0):
            raise UserInputError(
                "The image is constant (every pixel has the same value), so there is no noise to "
                "learn or remove; choose an image with some structure."
            )
        return cls(method, tuple(map(float, offset)), tuple(map(float, scale)))

    @classmethod
    def identity(cls, channels: int) -> "Normalization":
        """The map that changes nothing (for data normalised beforehand)."""
        return cls("identity", (0.0,) * channels, (1.0,) * channels)

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Normalise a channels-last array to float32 (a JAX array stays on its device)."""
        xp = array_namespace(image)
        offset, scale = self._arrays(image.shape[-1])
        return ((xp.asarray(image, np.float32) - offset) / scale).astype(np.float32, copy=False)

    def undo(self, image: np.ndarray, *, shift: bool = True) -> np.ndarray:
        """Map a normalised channels-last array back to the original intensities.

        ``shift=False`` scales only, for spreads such as a standard deviation.
        A JAX array stays on its device.
        """
        xp = array_namespace(image)
        offset, scale = self._arrays(image.shape[-1])
        out = xp.asarray(image, np.float32) * scale
        if not shift:
            return out
        if xp is not np:
            return out + offset
        out += offset  # in place: a large stack's result is not copied again
        return out

    def per_image(self, count: int):
        """Channel 0's ``(offset, scale)`` for each of ``count`` images, as arrays ``(count,)``."""
        return np.full(count, self.offset[0]), np.full(count, self.scale[0])

    def _arrays(self, channels: int):
        if channels != len(self.offset):
            raise UserInputError(
                f"The image has {channels} channel(s) but the model's normalisation has "
                f"{len(self.offset)}; give the channel axis (C) in axes or use a matching model."
            )
        return np.float32(self.offset), np.float32(self.scale)

    def to_dict(self) -> dict:
        return {"method": self.method, "offset": list(self.offset), "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, values: dict) -> "Normalization":
        """Rebuild from :meth:`to_dict`'s output, refusing values that cannot be statistics.

        Raises
        ------
        UserInputError
            A method that is not a word, offsets or scales that are not finite
            numbers (scales positive), or lists of different lengths.
        """
        method, offset, scale = values["method"], values["offset"], values["scale"]
        numbers = (offset, scale)
        if (not isinstance(method, str) or not all(isinstance(v, list) and v for v in numbers)
                or len(offset) != len(scale)
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for v in numbers for x in v)
                or not all(np.isfinite(x) for v in numbers for x in v) or min(scale) <= 0):
            raise UserInputError(f"the normalisation {values!r} is not one (finite offsets and positive scales, "
                                 "one per channel)")
        return cls(method, tuple(map(float, offset)), tuple(map(float, scale)))


@dataclass(frozen=True, eq=False)
class PlaneNormalization:
    """Every image of a stack on its own scale: ``(x[n] - offset[n]) / scale[n]`` per channel.

    The planes of a stack (S, T, or the channels of a one-channel model) can
    differ in brightness: a time-lapse bleaches, and channels carry other
    dyes. A model trained on images normalised one by one sees each plane as
    it saw them in training (fitted over the whole stack instead, a plane 20
    times dimmer than the others lost 4 dB). A plane read alone, from a lazy
    stack, gets the same statistics as in a stack held in memory.

    Attributes
    ----------
    offset, scale : array
        ``(N, C)`` float32, where the stack is (NumPy on the host, JAX on a
        device). A constant plane has scale 1, and :meth:`undo` gives it back
        its constant (its spread: 0).
    flat : array
        ``(N, C)``: which planes (and channels) are constant.
    """

    offset: Any
    scale: Any
    flat: Any

    @classmethod
    def fit(cls, x, method: str = "percentile") -> "PlaneNormalization":
        """Statistics of each image of model-layout ``x`` ``(N, [Z,] Y, X, C)`` (host or device), from a
        regular sample of each (about 4 million values in all). Nothing is checked: the caller has
        refused NaN, infinities and a constant stack."""
        if method not in ("percentile", "meanstd"):
            raise UserInputError(f"normalization must be 'percentile' or 'meanstd', not {method!r}.")
        count, channels = len(x), x.shape[-1]
        stride = sample_stride(x.shape[1:-1], count)
        if array_namespace(x) is np:  # float64 on the host, as Normalization.fit
            values = x.reshape(count, -1, channels)[:, ::stride].astype(np.float64)
            offset, scale, flat = _plane_statistics(np, values, method)
            return cls(offset.astype(np.float32), scale.astype(np.float32), flat)
        return cls(*_device_statistics(x.reshape(count, -1, channels)[:, ::stride], method))

    def per_image(self, count: int):
        """Channel 0's ``(offset, scale)`` for each image, as arrays ``(N,)``."""
        return self.offset[:, 0], self.scale[:, 0]

    def apply(self, image):
        """Normalise ``image`` (this stack, or one like it) to float32, where it is."""
        xp = array_namespace(image)
        offset, scale = self._arrays(image.ndim)
        return ((xp.asarray(image, np.float32) - offset) / scale).astype(np.float32, copy=False)

    def undo(self, image, *, shift: bool = True):
        """Back to each plane's intensities (``shift=False``: scale only, for spreads)."""
        xp = array_namespace(image)
        offset, scale = self._arrays(image.ndim)
        flat = self.flat.reshape(offset.shape)
        if xp is not np:
            out = xp.asarray(image, np.float32) * scale
            return xp.where(flat, offset if shift else 0.0, out + offset if shift else out).astype(np.float32)
        out = np.multiply(image, scale, dtype=np.float32)  # then in place: a large stack is not copied again
        if shift:
            out += offset
        if flat.any():
            np.copyto(out, offset if shift else np.float32(0), where=np.broadcast_to(flat, out.shape))
        return out

    def _arrays(self, ndim: int):
        shape = (len(self.offset), *[1] * (ndim - 2), self.offset.shape[-1])
        return self.offset.reshape(shape), self.scale.reshape(shape)


def _plane_statistics(xp, values, method: str):
    """``(offset, scale, flat)`` of samples ``values`` ``(N, samples, C)`` along axis 1."""
    if method == "percentile":
        low, high = xp.percentile(values, xp.asarray(PERCENTILES), axis=1)
        # Sparse images (mostly background) can have equal percentiles.
        spread = values.max(axis=1) - values.min(axis=1)
        offset, scale = low, xp.where(high > low, high - low, spread)
    else:
        offset, scale = values.mean(axis=1), values.std(axis=1)
    flat = scale <= 0
    return offset, xp.where(flat, 1.0, scale), flat


def _device_statistics(values, method: str):
    """:func:`_plane_statistics` of device samples, in one compiled program (JAX is imported on first use)."""
    return _device_program()(values, method)


@cache
def _device_program():
    import jax
    import jax.numpy as jnp

    def statistics(values, method):
        offset, scale, flat = _plane_statistics(jnp, values.astype(jnp.float32), method)
        return offset.astype(jnp.float32), scale.astype(jnp.float32), flat

    return jax.jit(statistics, static_argnames="method")


def sample_stride(shape, images: int = 1) -> int:
    """Every how many pixels :meth:`Normalization.fit` reads of an image of ``shape`` (no channel axis),
    one of ``images``, so that all of them give about 4 million values at most."""
    return max(1, int(np.prod(shape, dtype=np.int64)) * images // _MAX_SAMPLES)


def _some_planes(image, budget: int) -> np.ndarray:
    """Evenly spaced ``(Y, X, C)`` planes of a lazy model-layout array, about ``budget`` values in all."""
    leading = image.shape[:-3]
    count = int(np.prod(leading, dtype=np.int64))
    plane = int(np.prod(image.shape[-3:], dtype=np.int64))
    take = int(np.clip(budget // max(plane, 1), 1, count))
    picks = np.unique(np.linspace(0, count - 1, take).round().astype(np.int64))
    return np.stack([np.asarray(image[np.unravel_index(i, leading)]) for i in picks])
