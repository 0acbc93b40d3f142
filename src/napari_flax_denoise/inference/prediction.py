"""Tiled, batched, jit-compiled denoising with optional test-time augmentation.

Images are cut into overlapping tiles of one fixed shape, so one compiled
function serves images of any size. Neighbouring tiles overlap by twice the
network's receptive radius (rounded to its pooling grid) and each gives only
its centre. At the image's edges a thin mirrored margin (a quarter of that
radius) gives the network context, and a tile that reaches past the image
tells the network where the image ends (see :meth:`UNet.__call__`), so the
rest of the tile costs nothing in the result. A tiled result therefore equals
the untiled one up to float rounding, and a small image costs one tile of
about its own size.

This module is the entry point (:func:`denoise`, :func:`denoise_iter`): an
image or stack in memory goes through :mod:`.in_memory`, a lazy array
through :mod:`.lazy_stack`.
"""

from __future__ import annotations

import numpy as np

from ..axes import is_lazy
from ..errors import UserInputError
from ..models.checkpoint import resolve_model
from ..models.embedded import default_model_for
from ..noise.level import variance_line
from ..progress import drive
from ..runtime.backend import active
from .in_memory import denoise_array
from .lazy_stack import denoise_lazy


def denoise_iter(image, model=None, *, axes: str, tile_shape=None, overlap=None, batch_size=None,
                 tta: bool = False, return_std: bool = False, fusion: bool | None = None, out=None,
                 precision: str = "float32", report: dict | None = None, noise_level=None):
    """Generator form of :func:`denoise`: yields progress, returns the result.

    ``out`` (optional, lazy inputs): a writable array of the result's shape,
    e.g. a zarr array, that receives every plane as soon as it is denoised;
    it is returned in place of an in-memory result, so memory stays at one
    plane however long the stack.

    ``report`` (optional): a dict that receives what was done beyond the
    network: ``"fusion_weights"``, the mean weight fusion gave the noisy
    pixels (0: the prediction unchanged), per image or stack (per plane of
    a lazy stack on the CPU profile); for a
    noise-aware model, ``"noise_levels"``, the noise channels it was given
    per image or plane (standard deviations at normalised intensity 0 and 1),
    and ``"noise_sigmas"``, the same as one standard deviation in the
    image's intensity units (their root mean square).
    """
    if model is None:
        model, axes = default_model_for(axes, np.shape(image))
    model = resolve_model(model)
    if noise_level is not None:
        variance_line(noise_level)  # a bad value is refused before anything is read
    options = dict(tile_shape=tile_shape, overlap=overlap, batch_size=batch_size, tta=tta, return_std=return_std,
                   fusion=fusion, precision=check_precision(precision), report=report, noise_level=noise_level)
    with active().memory():  # on a CPU, each tile reuses the last one's pages
        if is_lazy(image):
            return (yield from denoise_lazy(image, model, axes, options, out))
        result = yield from denoise_array(image, model, axes, **options)
    if out is None:
        return result
    out[...] = result[0] if return_std else result
    return (out, result[1]) if return_std else out


PRECISIONS = {"float32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def check_precision(precision: str) -> str:
    """``"float32"`` or ``"bfloat16"`` (``"bf16"`` accepted), else a :class:`UserInputError`."""
    if precision not in PRECISIONS:
        raise UserInputError(f"precision must be 'float32' or 'bfloat16' (bf16), not {precision!r}.")
    return PRECISIONS[precision]


def denoise(image, model=None, *, axes: str, tile_shape=None, overlap=None, batch_size=None,
            tta: bool = False, return_std: bool = False, fusion: bool | None = None, out=None,
            precision: str = "float32", noise_level=None):
    """Denoise an image with a trained model.

    Parameters
    ----------
    image : array_like
        2D or 3D image, optionally with sample (S), time (T) and channel (C)
        axes. Not modified. A lazy array (dask, zarr, h5py) is read one S/T
        plane at a time (and one channel at a time for a one-channel model).
    model : TrainedModel or str or Path, optional
        A model from :func:`~napari_flax_denoise.train` /
        :func:`~napari_flax_denoise.load_model`, a model directory or an
        embedded model's name. Default: the embedded default for the input's
        dimensionality, ``general-3d`` when ``axes`` has Z, else ``general-2d``.
    axes : str
        Axes of ``image``, e.g. ``"YX"``, ``"ZYX"``, ``"TYX"``, ``"CYX"``.
    tile_shape : tuple of int, optional
        Spatial tile shape (multiples of ``2**depth``). Default: the whole
        image when small, else 1024 new pixels per
        side plus the overlap in 2D, 96 x 160 x 160 in 3D.
    overlap : int or tuple of int, optional
        Overlap between neighbouring tiles. Default: twice the network's
        receptive radius, which makes tiling invisible.
    batch_size : int, optional
        Tiles per compiled call (default: 1 per CPU device; 8 per
        accelerator, or as many as half its memory holds; with several
        devices the tiles of a call are spread over them). On accelerators the image stays on the device, where the tiles
        are cut, predicted and stitched (see :mod:`.resident`).
    tta : bool
        Average the 8 flips / quarter turns of the YX plane.
    return_std : bool
        Also return the per-pixel standard deviation over those 8 predictions
        (an uncertainty map); needs ``tta=True``.
    fusion : bool, optional
        Combine the network's prediction with each noisy pixel, weighted by
        the noise and the prediction's local error (see
        :mod:`~napari_flax_denoise.inference.fusion`). ``None`` (default): on for
        blind-spot models (``n2v`` / ``n2v2``), which learned to ignore the
        pixel itself (in the benchmark: up to 3 dB more on a detailed
        photograph), and for models that normalise every image on its own,
        such as general-2d, which smooths fine detail away at weak noise (a
        photograph at sigma 5: +3.75 dB); off for other ``care`` / ``n2n``
        models, whose targets may be on another intensity scale (see
        :func:`~napari_flax_denoise.fusion.fusion_applies`). Where the
        prediction is already close, fusion leaves it unchanged.
    out : array_like, optional
        A writable array of the result's shape (e.g. a zarr array) to fill and
        return instead of a new array; with a lazy ``image`` every plane is
        written as soon as it is done, so memory stays at one plane (on an
        accelerator, at one chunk of a few planes: at most 32 Mi pixels).
    precision : {"float32", "bfloat16"}
        The network's arithmetic. ``"bfloat16"`` (or ``"bf16"``) computes in
        bfloat16, about twice as fast on GPUs with tensor cores, at a small
        cost in PSNR (``bench/gpu.py`` measures it); float32 runs as TF32 on
        GPUs that have it.
    noise_level : float or (float, float), optional
        For noise-aware models (such as general-2d): the noise's standard
        deviation in the image's intensity units, or ``(gain, variance)`` for
        photon noise (variance ``gain * intensity + variance``). Default:
        estimated from each image (each plane of a stack) on its own.

    Returns
    -------
    denoised : ndarray of float32
        Same layout and intensity range as ``image`` (a trailing C axis is
        added if a multi-channel model output has none in ``axes``).
    std : ndarray of float32
        Only with ``return_std=True``.

    Examples
    --------
    >>> clean = denoise(noisy, "my_model", axes="YX")  # doctest: +SKIP
    """
    return drive(denoise_iter(image, model, axes=axes, tile_shape=tile_shape, overlap=overlap,
                              batch_size=batch_size, tta=tta, return_std=return_std, fusion=fusion, out=out,
                              precision=precision, noise_level=noise_level))
