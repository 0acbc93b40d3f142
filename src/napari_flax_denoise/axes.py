"""One axes vocabulary (``S T C Z Y X``) and the conversions to the model layout.

Every public function takes an ``axes`` string such as ``"YX"``, ``"ZYX"``,
``"TYX"``, ``"SCZYX"`` or ``"YXC"``. Internally images are handled in the
*model layout* ``(N, [Z,] Y, X, C)``: channels last (what Flax convolutions
expect) and every sample/time point folded into the leading batch axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserInputError

VOCABULARY = "STCZYX"
_BATCH_AXES = "ST"


def validate_axes(axes: str, ndim: int | None = None) -> str:
    """Check an axes string and return it upper-cased.

    Parameters
    ----------
    axes : str
        Letters from ``S T C Z Y X``, one per array dimension, in array order.
    ndim : int, optional
        Number of dimensions of the image the axes describe.

    Returns
    -------
    str
        The validated, upper-case axes string.

    Raises
    ------
    UserInputError
        If a letter is unknown or repeated, Y or X is missing, or the length
        differs from ``ndim``.
    """
    if not isinstance(axes, str) or not axes:
        raise UserInputError(
            "Axes must be a non-empty string of letters from S T C Z Y X, e.g. 'YX' or 'ZYX'."
        )
    axes = axes.upper()
    unknown = sorted(set(axes) - set(VOCABULARY))
    if unknown:
        raise UserInputError(
            f"Axes '{axes}' contain unknown letter(s) {', '.join(unknown)}; "
            "use only S (sample), T (time), C (channel), Z, Y and X."
        )
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    if repeated:
        raise UserInputError(f"Axes '{axes}' repeat {', '.join(repeated)}; give each axis once.")
    if "Y" not in axes or "X" not in axes:
        raise UserInputError(f"Axes '{axes}' must contain both Y and X.")
    if ndim is not None and len(axes) != ndim:
        raise UserInputError(
            f"Axes '{axes}' name {len(axes)} dimension(s) but the image has {ndim}; "
            "give one letter per image dimension."
        )
    return axes


def spatial_dims(axes: str) -> int:
    """Return 3 when ``axes`` contains Z, else 2."""
    return 3 if "Z" in axes.upper() else 2


@dataclass(frozen=True)
class Layout:
    """How an image in user axes maps to the model layout and back.

    Attributes
    ----------
    axes : str
        The user's axes, validated.
    shape : tuple of int
        The user's array shape.
    """

    axes: str
    shape: tuple

    @property
    def _order(self) -> list[int]:
        # S T [Z] Y X C: batch axes first, channels last.
        wanted = [a for a in "STZYXC" if a in self.axes]
        return [self.axes.index(a) for a in wanted]

    @property
    def batch_shape(self) -> tuple:
        return tuple(self.shape[self.axes.index(a)] for a in _BATCH_AXES if a in self.axes)

    @property
    def spatial_shape(self) -> tuple:
        return tuple(self.shape[self.axes.index(a)] for a in "ZYX" if a in self.axes)

    @property
    def dims(self) -> int:
        return len(self.spatial_shape)

    @property
    def channels(self) -> int:
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    def to_model(self, image: np.ndarray) -> np.ndarray:
        """Return ``image`` as ``(N, [Z,] Y, X, C)`` (a view where possible)."""
        moved = np.transpose(image, self._order)
        n = int(np.prod(self.batch_shape, dtype=np.int64))
        return moved.reshape((n, *self.spatial_shape, self.channels))

    def from_model(self, array: np.ndarray) -> tuple[np.ndarray, str]:
        """Return a model-layout array in the user's layout.

        Parameters
        ----------
        array : ndarray, shape (N, [Z,] Y, X, C_out)
            Model output; ``C_out`` may differ from the input's channel count.

        Returns
        -------
        image : ndarray
            The array in the user's axes order.
        axes : str
            Its axes: the user's, plus a trailing ``C`` when the input had no
            channel axis but the output has several channels.
        """
        c_out = array.shape[-1]
        axes = self.axes
        if "C" not in axes and c_out > 1:
            axes = axes + "C"
        order = [a for a in "STZYX" if a in axes] + ["C"]
        sizes = {a: self.shape[self.axes.index(a)] for a in self.axes}
        out = array.reshape([sizes[a] for a in order[:-1]] + [c_out])
        if "C" not in axes:
            out, order = out[..., 0], order[:-1]
        out = np.transpose(out, [order.index(a) for a in axes])
        return out, axes


def is_lazy(image) -> bool:
    """True for arrays read on demand (dask, zarr, h5py, memory-mapped files), which are
    indexed piece by piece instead of being loaded whole."""
    if isinstance(image, np.memmap):
        return True
    return not isinstance(image, np.ndarray) and all(hasattr(image, a) for a in ("shape", "dtype", "__getitem__"))


def as_dask(image):
    """A lazy array as a dask array (so transposes and reshapes stay lazy)."""
    import dask.array as da

    if isinstance(image, da.Array):
        return image
    chunks = getattr(image, "chunks", None)  # zarr's and h5py's own chunks, so each read is one stored chunk
    if not (isinstance(chunks, tuple) and len(chunks) == len(image.shape)):
        chunks = "auto"
    return da.from_array(image, chunks=chunks, asarray=True)


def check_image(image, axes: str, *, name: str = "image", min_size: int = 4, lazy: bool = False,
                values: bool = True) -> tuple[np.ndarray, Layout]:
    """Validate an image and its axes before any work is done.

    Parameters
    ----------
    image : array_like
        Real-valued image (integers or floats).
    axes : str
        Its axes.
    name : str
        How messages refer to the image.
    min_size : int
        Smallest accepted extent of Z, Y and X.
    lazy : bool
        Keep a lazy ``image`` (see :func:`is_lazy`) lazy: it comes back as a
        dask array, and NaN / Inf are left to whoever reads its pieces.
    values : bool
        Check the values here (see :func:`check_finite`). The accelerator
        route leaves float32 and narrower images to the device, which reads
        them anyway (64-bit ones are still checked here).

    Returns
    -------
    image : ndarray or dask.array.Array
        The same data as an array (never a modified copy).
    layout : Layout
    """
    lazy = lazy and is_lazy(image)
    image = as_dask(image) if lazy else np.asarray(image)
    if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
        raise UserInputError(
            f"The {name} has data type {image.dtype}; give a real-valued integer or float image "
            "(convert complex data to magnitudes and masks to numbers first)."
        )
    if image.size == 0:
        raise empty(image.shape, name)
    axes = validate_axes(axes, image.ndim)
    layout = Layout(axes, tuple(image.shape))
    small = [f"{a}={image.shape[axes.index(a)]}" for a in "ZYX" if a in axes and image.shape[axes.index(a)] < min_size]
    if small:
        raise UserInputError(
            f"The {name} is too small along {', '.join(small)}; give at least {min_size} pixels along Z, Y and X."
        )
    if not lazy and (values or image.dtype.itemsize > 4):
        check_finite(image, name)
    return image, layout


def empty(shape, name: str = "image") -> UserInputError:
    """The error for an image with no pixels (an axis of length 0)."""
    return UserInputError(f"The {name} is empty (shape {tuple(shape)}); give an image with pixels.")


def not_finite(name: str = "image") -> UserInputError:
    """The error for an image with NaN or infinite values."""
    return UserInputError(
        f"The {name} contains NaN or infinite values; replace them (e.g. with the median) before denoising.")


def check_range(low, high, finite) -> None:
    """Refuse an image with NaN / infinite values (``finite`` false), or a constant one (``low == high``)."""
    if not finite:
        raise not_finite()
    if low == high:
        raise UserInputError("The image is constant (every pixel has the same value), so there is no noise "
                             "to remove; check that the right image or channel was chosen.")


def check_finite(image: np.ndarray, name: str = "image") -> None:
    """Refuse NaN and infinite values, and values that float32 (what the network computes in) cannot hold."""
    if not np.issubdtype(image.dtype, np.floating):
        return
    if not np.all(np.isfinite(image)):
        raise not_finite(name)
    limit = np.finfo(np.float32).max
    if image.dtype.itemsize > 4 and np.max(np.abs(image)) > limit:
        raise UserInputError(f"The {name} holds values beyond float32's range (±{limit:.3g}); rescale it "
                             "(e.g. divide by a power of ten) first.")
