"""The noise level a noise-aware network takes as input (``Config.noise_input``).

A noise-aware network gets, after the image's channel, two constant channels:
the noise's standard deviation at the bottom and at the top of the image's
normalised intensity range (0 and 1). Between them the variance is a line in
the intensity, which covers constant (Gaussian) noise and photon noise alike.
The level is estimated from the image itself (:func:`.line.noise_line` on a
few crops, with the noisy image as its own intensity reference), or given by
the user as a standard deviation or a line, in the image's intensity units.
Being constant over the image, the channels leave tiling exact and carry no
pixel's value, so blind-spot training can use them.
"""

from __future__ import annotations

import itertools

import jax.numpy as jnp
import numpy as np

from ..errors import UserInputError
from ..runtime.arrays import array_namespace
from .line import INPUT_TEXTURE_FLOOR, noise_line

_CROP = {2: 128, 3: 48}  # crop edge per spatial dimension
_CROPS_PER_AXIS = {2: 4, 3: 2}
# From this many images of one shape on (a stack, in memory or read plane by plane), small images share
# the device's compiled programs (noise level, fusion's choice) instead of sending crops to the host.
MANY_PLANES = 8


def variance_line(level) -> tuple[float, float]:
    """A user's noise level as the variance line ``(a, b)``: ``variance = a * intensity + b``.

    Parameters
    ----------
    level : float or (float, float)
        A standard deviation (constant noise), or ``(gain, variance)``: photon
        noise of ``gain`` intensity units per photon plus a constant
        ``variance`` (read noise; negative when the camera adds an offset).
    """
    if isinstance(level, str):
        try:
            level = [float(part) for part in level.split(",")]
        except ValueError:
            level = None
        if level is not None and len(level) == 1:
            level = level[0]
    if isinstance(level, (int, float, np.integer, np.floating)) and np.isfinite(level) and level >= 0:
        return 0.0, float(level) ** 2
    if (isinstance(level, (tuple, list)) and len(level) == 2 and all(np.isfinite(v) for v in level)
            and level[0] >= 0):
        return float(level[0]), float(level[1])
    raise UserInputError(f"The noise level must be a standard deviation (e.g. 25) or a gain and a variance "
                         f"(e.g. 2.5,-80), in the image's intensity units, not {level!r}.")


def crop_windows(shape) -> list[tuple]:
    """Where :func:`estimate_line` looks in an image of spatial ``shape``: up to 16 crops in 2D, 8 in 3D."""
    edge, most = _CROP.get(len(shape), 48), _CROPS_PER_AXIS.get(len(shape), 2)
    spans = []
    for size in shape:
        side = min(size, edge)
        starts = np.linspace(0, size - side, min(most, max(size // edge, 1))).round().astype(int)
        spans.append([slice(int(start), int(start) + side) for start in starts])
    return list(itertools.product(*spans))


def estimate_line(image: np.ndarray) -> tuple[float, float]:
    """The noise variance line ``(a, b)`` of one raw image (spatial axes only), from up to 16 crops: the level a
    noise-aware network is given (its texture correction may go further than fusion's: ``INPUT_TEXTURE_FLOOR``)."""
    crops = [np.asarray(image[index], np.float64) for index in crop_windows(image.shape)]
    return noise_line(crops, crops, INPUT_TEXTURE_FLOOR)


def features(line, offset: float, scale: float) -> tuple[float, float]:
    """The network's two noise channels for the variance line ``line`` (image units) and the
    normalisation ``(x - offset) / scale``: the noise's standard deviation at normalised 0 and 1."""
    a, b = line
    at = [(a * (offset + scale * level) + b) / scale**2 for level in (0.0, 1.0)]
    return tuple(float(np.sqrt(max(v, 0.0))) for v in at)


def noise_features(images: np.ndarray, offset, scale, level=None, *, recurring: bool = False):
    """``(N, 2)`` noise channels for raw model-layout one-channel ``images`` ``(N, *spatial, 1)``.

    ``offset`` and ``scale`` are the normalisation ``(x - offset) / scale``
    of every image (numbers), or of each (arrays ``(N,)``, on the host or
    the device). ``level`` (optional, image units, see
    :func:`variance_line`) is used for every image instead of an estimate
    of each one's own. On a device, the estimate is made there and the
    channels stay there (a JAX array) for large images, and for small ones
    that are ``recurring``: images of this shape come again and again (a
    stack of at least :data:`MANY_PLANES`), so the device's program for
    them pays for its compilation. Other small images send their crops to
    the host (each crop shape compiles its own program, which a few small
    images would wait for).
    """
    given = None if level is None else variance_line(level)
    if given is None and array_namespace(images) is not np:  # the accelerator route: estimated on the device
        spatial = images.shape[1:-1]
        if recurring or min(spatial) >= 2 * _CROP.get(len(spatial), 48) * _CROPS_PER_AXIS.get(len(spatial), 2):
            return _channels(_lines_on_device(images), offset, scale)
    lines = np.array([given or estimate_line(image[..., 0]) for image in images], np.float64).reshape(-1, 2)
    return _channels(lines, offset, scale)


def _channels(lines, offset, scale):
    """:func:`features` of the lines ``(N, 2)`` for each image's ``offset`` and ``scale`` (numbers or
    arrays ``(N,)``): an ``(N, 2)`` float32 array, on the device where the lines or the statistics are."""
    xp = next((array_namespace(v) for v in (lines, offset, scale) if array_namespace(v) is not np), np)
    kind = np.float64 if xp is np else np.float32
    offset, scale = (xp.asarray(v, kind).reshape(-1, 1) for v in (offset, scale))
    lines = xp.asarray(lines, kind)
    at = (lines[:, :1] * (offset + scale * xp.asarray([0.0, 1.0], kind)) + lines[:, 1:]) / scale**2
    return xp.sqrt(xp.maximum(at, 0.0)).astype(np.float32)


def _lines_on_device(images):
    """The variance lines ``(N, 2)`` of device ``images``, as a device array: their crops gathered at once,
    then one program (per crop shape) for each image."""
    from .resident_line import estimated_line

    crops = jnp.stack([images[(slice(None), *window, 0)] for window in crop_windows(images.shape[1:-1])], axis=1)
    return jnp.stack([estimated_line(planes) for planes in crops])


def with_noise(images, noise):
    """``images`` ``(N, *spatial, C)`` with each one's noise channels ``noise[n]`` appended.

    NumPy arrays give a NumPy array; JAX arrays (inside compiled functions too) a JAX array.
    """
    xp = np if isinstance(images, np.ndarray) else jnp
    levels = xp.asarray(noise, images.dtype)
    planes = xp.broadcast_to(levels.reshape(len(levels), *[1] * (images.ndim - 2), -1),
                             (*images.shape[:-1], levels.shape[-1]))
    return xp.concatenate([images, planes], axis=-1)
