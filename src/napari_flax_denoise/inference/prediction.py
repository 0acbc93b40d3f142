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
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import numpy as np

from ..axes import check_image, check_range, is_lazy, validate_axes
from ..errors import UserInputError
from ..models.checkpoint import resolve_model
from ..models.embedded import default_model_for
from ..models.normalization import PlaneNormalization
from ..noise.level import MANY_PLANES, noise_features, variance_line
from ..progress import Progress, drive, relay
from ..runtime.backend import active
from ..runtime.devices import default_batch_size, memory_budget
from .augmentation import tta_mean_std
from .fusion import fuse_images, fusion_applies
from .host_tiles import predict_tiled
from .resident import predict_resident
from .resident_fusion import fuse_on_device
from .resident_stack import chunk_planes, stream_stack, to_device, value_range
from .tiling import check_tiling, default_tile_shape


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
    pixels, per image or plane (0: the prediction unchanged); for a
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
            return (yield from _denoise_lazy(image, model, axes, options, out))
        result = yield from _denoise_array(image, model, axes, **options)
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


def _denoise_lazy(image, model, axes, options, out=None):
    """Denoise a lazy array one S/T (and, for one-channel models, C) plane at a time.

    On the device-resident route the next plane is read, and the last one
    written, by threads while this one is denoised.
    """
    axes = validate_axes(axes, len(image.shape))
    outer = [i for i, a in enumerate(axes) if a in "ST" or (a == "C" and model.config.in_channels == 1)]
    indices = []
    for plane in np.ndindex(*[image.shape[i] for i in outer]):
        index = [slice(None)] * len(axes)
        for i, k in zip(outer, plane):
            index[i] = k
        indices.append(tuple(index))
    inner_axes = "".join(a for i, a in enumerate(axes) if i not in outer)
    overlap = active().resident_inference
    outputs = None
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        written = []
        ahead = reader.submit(_read, image, indices[0]) if overlap else None
        for number, index in enumerate(indices):
            block = ahead.result() if overlap else _read(image, index)
            if overlap and number + 1 < len(indices):
                ahead = reader.submit(_read, image, indices[number + 1])
            if block.size and block.min() == block.max() and model.config.out_channels == model.config.in_channels:
                # A blank frame (common in time-lapses) stays blank, with no uncertainty.
                result = (block.astype(np.float32),) + ((np.zeros(block.shape, np.float32),)
                                                        if options["return_std"] else ())
            else:
                inner = _denoise_array(block, model, inner_axes, recurring=len(indices) >= MANY_PLANES, **options)
                result = yield from relay(inner, lambda step, number=number: Progress(
                    number * step.total + step.done, len(indices) * step.total))
            result = result if isinstance(result, tuple) else (result,)
            if outputs is None:  # outer axes keep their place; a new trailing C may follow
                shapes = [tuple(image.shape) + r.shape[len(inner_axes):] for r in result]
                outputs = [out if i == 0 and out is not None else np.empty(shape, np.float32)
                           for i, shape in enumerate(shapes)]
            for target, r in zip(outputs, result):
                if overlap:
                    written.append(writer.submit(target.__setitem__, index, r))
                else:
                    target[index] = r
            while written and (written[0].done() or len(written) > 2):
                written.pop(0).result()  # a failed write fails the job
        for future in written:
            future.result()
    return tuple(outputs) if options["return_std"] else outputs[0]


def _read(image, index):
    return np.asarray(image[index])


def _denoise_array(image, model, axes, *, tile_shape, overlap, batch_size, tta, return_std, fusion, precision,
                   report=None, noise_level=None, recurring=False):
    """Denoise one in-memory image or stack (see :func:`denoise_iter`).

    ``recurring``: images of its shape come again and again (the planes of a
    lazy stack; see :func:`~napari_flax_denoise.noise.level.noise_features`).
    """
    config = model.config
    resident = active().resident_inference
    image, layout = check_image(image, axes, values=not resident)  # resident: the device checks them
    if not resident:
        check_range(image.min(), image.max(), True)
    dims = len(layout.spatial_shape)
    if dims != config.dims:
        hint = (" To denoise plane by plane, call the Z axis S (e.g. axes 'SYX')." if config.dims == 2 else
                " Give axes with Z for a 3D stack.")
        raise UserInputError(f"This is a {config.dims}D model but the image axes '{layout.axes}' are {dims}D.{hint}")
    if return_std and not tta:
        raise UserInputError("An uncertainty map needs test-time augmentation; turn tta on.")
    if fusion is None:
        fusion = fusion_applies(config)
    if fusion and config.in_channels != config.out_channels:
        raise UserInputError("Pixel fusion needs a model whose output channels are its input channels; turn it off.")
    x = layout.to_model(image)
    fold = layout.channels != config.in_channels
    if fold and config.in_channels != 1:
        raise UserInputError(
            f"The image has {layout.channels} channel(s) but the model expects {config.in_channels}; "
            "check the C axis or use a matching model."
        )
    if fold:  # a one-channel model denoises each channel separately
        x = np.moveaxis(x, -1, 1).reshape(-1, *layout.spatial_shape, 1)
    if tile_shape is None:
        tile_shape = default_tile_shape(layout.spatial_shape, config)
    tile_shape, halos = check_tiling(tile_shape, overlap, layout.spatial_shape, config)
    if batch_size is None:
        batch_size = default_batch_size(int(np.prod(tile_shape)), config.features)
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise UserInputError(f"batch_size must be a positive whole number, not {batch_size!r}.")
    run = partial(_model_pass, model, tile_shape=tile_shape, halos=halos, batch_size=batch_size, tta=tta,
                  return_std=return_std, fusion=fusion, precision=precision, noise_level=noise_level,
                  recurring=recurring or len(x) >= MANY_PLANES)
    # A pretrained model meets every image on the image's own scale.
    norms = partial(_fitted, config) if config.normalize_per_image else (model.input_norm, model.output_norm)
    planes = chunk_planes(x.shape, memory_budget()) if resident else None
    if planes:  # a stack in chunks of planes, with its transfers overlapping the work
        mean, std, weight, noise = yield from stream_stack(x, planes, run, norms)
    else:
        if resident:  # the image goes to the device once; the result comes back once
            x = to_device(x)
            check_range(*jax.device_get(value_range(x)))  # three numbers back, not two passes over the image
        mean, std, weight, noise = yield from run(x, norms(x) if callable(norms) else norms)
        if isinstance(mean, jax.Array):  # the one transfer back, into arrays the caller owns (writable)
            mean, std = (None if a is None else np.array(a) for a in (mean, std))
    if report is not None:
        if fusion:
            report.setdefault("fusion_weights", []).append(float(weight))
        if noise is not None:
            levels, scale = jax.device_get(noise)  # read once the device has the work
            levels = np.asarray(levels, np.float32)
            report.setdefault("noise_levels", []).extend(levels.tolist())
            sigma = np.sqrt(np.mean(np.square(levels, dtype=np.float64), axis=1)) * scale
            report.setdefault("noise_sigmas", []).extend(sigma.tolist())
    if fold:  # back from one-channel images to channels
        mean, std = (None if a is None else np.moveaxis(a.reshape(-1, layout.channels, *layout.spatial_shape), 1, -1)
                     for a in (mean, std))
    result = layout.from_model(mean)[0]
    return (result, layout.from_model(std)[0]) if return_std else result


def _fitted(config, x):
    """Each image of model-layout ``x`` on its own scale (see :class:`PlaneNormalization`), as
    ``(input, output)``."""
    norm = PlaneNormalization.fit(x, config.normalization)
    return norm, norm


def _model_pass(model, x, norms, *, tile_shape, halos, batch_size, tta, return_std, fusion, precision,
                noise_level, recurring):
    """Denoise raw model-layout ``x`` (host, or on the device) with the normalisations ``norms``.

    A generator; returns ``(mean, std, weight, noise)``: the result and its spread (None without
    ``return_std``) in ``x``'s intensities, arrays where ``x`` is; fusion's mean weight (None
    without fusion); for a noise-aware model ``(levels, scales)``, its noise channels ``(N, 2)`` and
    the scales ``(N,)`` that turn them into each image's units (else None). ``recurring``: see
    :func:`~napari_flax_denoise.noise.level.noise_features`.
    """
    config, (input_norm, output_norm) = model.config, norms
    noise = _noise_of(x, config, input_norm, noise_level, recurring)  # from a few crops, where the image is
    x = input_norm.apply(x)
    mean, std = yield from _predict(model, x, tile_shape, halos, batch_size, tta, return_std, precision, noise)
    weight = None
    if fusion:
        # Fusion mixes the noisy image into the prediction, so both must be on the prediction's scale:
        # a care model's targets have their own normalisation (a care model's output fused on the
        # input's scale fell from 25.1 to 19.8 dB).
        same = input_norm == output_norm  # n2v / n2v2 and per-image models: no copy of a large stack
        noisy = x if same else output_norm.apply(input_norm.undo(x))
        units = 1.0 if same else np.float32(output_norm.scale) / np.float32(input_norm.scale)
        fuse = partial(fuse_on_device, recurring=recurring) if isinstance(mean, jax.Array) else fuse_images
        mean, std, weight = fuse(model.network, x, mean, std, blind=config.self_supervised, noisy=noisy,
                                 units=units, noise=noise)
    mean, std = output_norm.undo(mean), None if std is None else output_norm.undo(std, shift=False)
    if noise is not None:  # with the scale that turns the channels into the image's units
        noise = (noise, input_norm.per_image(len(x))[1])
    return mean, std, weight, noise


def _noise_of(x, config, norm, level, recurring=False):
    """The noise channels of raw model-layout ``x`` for a noise-aware model (None for others)."""
    if not config.noise_input:
        if level is not None:
            raise UserInputError("This model does not take a noise level (it finds the noise itself); leave the "
                                 "noise level out, or choose a noise-aware model such as general-2d.")
        return None
    return noise_features(x, *norm.per_image(len(x)), level, recurring=recurring)


def _predict(model, x, tile_shape, halos, batch_size, tta, with_std, precision, noise=None):
    """The network's prediction of normalised ``x`` (and its TTA spread), by the active profile's route;
    ``noise``: a noise-aware model's channels per image (constant, so the TTA symmetries leave them alone).

    Returns host arrays on the host route, device arrays on the resident one (``std`` None without
    ``with_std``).
    """
    profile = active()
    if profile.resident_inference:  # ``x`` is on the device already; so is the result
        def predict(images, shape):
            return predict_resident(model, images, shape, halos, batch_size, conv=profile.convolution,
                                    precision=precision, noise=noise)
    else:
        def predict(images, shape):
            return predict_tiled(model, images, shape, halos, batch_size, precision, noise)
    if tta:
        mean, std = yield from tta_mean_std(predict, x, tile_shape, with_std)
    else:
        mean, std = (yield from predict(x, tile_shape)), None
    return mean, std


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
        written as soon as it is done, so memory stays at one plane.
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
