"""Per-channel intensity normalisation, saved with the model and undone on output."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError

PERCENTILES = (1.0, 99.8)
_MAX_SAMPLES = 4_000_000


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
            a regular stride, so memory stays bounded.
        method : {'percentile', 'meanstd'}
            ``percentile`` maps the 1st / 99.8th percentiles to 0 / 1;
            ``meanstd`` maps mean / standard deviation to 0 / 1.
        """
        channels = images[0].shape[-1]
        samples = []
        for image in images:
            if not isinstance(image, np.ndarray):  # lazy: read a few planes, never the whole array
                image = _some_planes(image, _MAX_SAMPLES // len(images))
            flat = image.reshape(-1, channels)
            stride = max(1, flat.shape[0] * len(images) // _MAX_SAMPLES)
            samples.append(np.asarray(flat[::stride], np.float64))
        values = np.concatenate(samples)
        if not np.all(np.isfinite(values)):
            raise UserInputError(
                "The image contains NaN or infinite values; replace them (e.g. with the median) first."
            )
        if method == "percentile":
            low, high = np.percentile(values, PERCENTILES, axis=0)
            offset, scale = low, high - low
            # Sparse images (mostly background) can have equal percentiles.
            spread = values.max(axis=0) - values.min(axis=0)
            scale = np.where(scale > 0, scale, spread)
        elif method == "meanstd":
            offset, scale = values.mean(axis=0), values.std(axis=0)
        else:
            raise UserInputError(f"normalization must be 'percentile' or 'meanstd', not {method!r}.")
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
        """Normalise a channels-last array to float32."""
        offset, scale = self._arrays(image.shape[-1])
        return ((np.asarray(image, np.float32) - offset) / scale).astype(np.float32, copy=False)

    def undo(self, image: np.ndarray, *, shift: bool = True) -> np.ndarray:
        """Map a normalised channels-last array back to the original intensities.

        ``shift=False`` scales only, for spreads such as a standard deviation.
        """
        offset, scale = self._arrays(image.shape[-1])
        out = np.asarray(image, np.float32) * scale
        if shift:
            out += offset
        return out

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


def _some_planes(image, budget: int) -> np.ndarray:
    """Evenly spaced ``(Y, X, C)`` planes of a lazy model-layout array, about ``budget`` values in all."""
    leading = image.shape[:-3]
    count = int(np.prod(leading, dtype=np.int64))
    plane = int(np.prod(image.shape[-3:], dtype=np.int64))
    take = int(np.clip(budget // max(plane, 1), 1, count))
    picks = np.unique(np.linspace(0, count - 1, take).round().astype(np.int64))
    return np.stack([np.asarray(image[np.unravel_index(i, leading)]) for i in picks])
