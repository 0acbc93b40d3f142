"""Denoise an image or a stack held in memory: normalisation, noise level, network, TTA and fusion.

:func:`plan` checks the options against the model and the image's layout
once, and gives the pass that every image (or chunk of planes) goes through:
:func:`_model_pass`. On the CPU profile it runs on the host
(:mod:`.host_tiles`); on accelerators the image goes to the device once
(:mod:`.resident`), and a stack of many planes goes in chunks
(:mod:`.resident_stack`).
"""

from __future__ import annotations

from functools import partial

import jax
import numpy as np

from ..axes import check_image, check_range
from ..errors import UserInputError
from ..models.normalization import PlaneNormalization
from ..noise.level import MANY_PLANES, noise_features
from ..runtime.arrays import array_namespace
from ..runtime.backend import active
from ..runtime.devices import default_batch_size, memory_budget
from .augmentation import tta_mean_std
from .fusion import fuse_images, fusion_applies
from .host_tiles import predict_tiled
from .resident import predict_resident
from .resident_fusion import fuse_on_device
from .resident_stack import HostStack, chunk_planes, stream_stack, to_device, value_range
from .tiling import check_tiling, default_tile_shape


def denoise_array(image, model, axes, *, report=None, recurring=False, **options):
    """Denoise one in-memory image or stack (see :func:`~.prediction.denoise_iter`); a generator.

    ``recurring``: images of its shape come again and again (the planes of a
    lazy stack; see :func:`~napari_flax_denoise.noise.level.noise_features`).
    """
    resident = active().resident_inference
    image, layout = check_image(image, axes, values=not resident)  # resident: the device checks them
    if not resident:
        check_range(image.min(), image.max(), True)
    run, norms, fold = plan(model, layout, recurring=recurring, **options)
    x = layout.to_model(image)
    if fold:  # a one-channel model denoises each channel separately
        x = np.moveaxis(x, -1, 1).reshape(-1, *layout.spatial_shape, 1)
    planes = chunk_planes(x.shape, memory_budget()) if resident else None
    if planes:  # a stack in chunks of planes, with its transfers overlapping the work
        stack = HostStack(len(x))
        weight, noise = yield from stream_stack(lambda start, stop: x[start:stop], len(x), planes, run, norms,
                                                stack.land)
        mean, std = stack.arrays
    else:
        if resident:  # the image goes to the device once; the result comes back once
            x = to_device(x)
            check_range(*jax.device_get(value_range(x)))  # three numbers back, not two passes over the image
        mean, std, weight, noise = yield from run(x, norms(x) if callable(norms) else norms)
        if isinstance(mean, jax.Array):  # the one transfer back, into arrays the caller owns (writable)
            mean, std = (None if a is None else np.array(a) for a in (mean, std))
    record(report, weight, noise)
    if fold:  # back from one-channel images to channels
        mean, std = (None if a is None else np.moveaxis(a.reshape(-1, layout.channels, *layout.spatial_shape), 1, -1)
                     for a in (mean, std))
    result = layout.from_model(mean)[0]
    return (result, layout.from_model(std)[0]) if options["return_std"] else result


def plan(model, layout, *, tile_shape, overlap, batch_size, tta, return_std, fusion, precision, noise_level=None,
         recurring=False):
    """Check the options against ``model`` and an image of ``layout``; returns ``(run, norms, fold)``.

    ``run(x, norms)`` is :func:`_model_pass` for model-layout planes ``x``
    of this image (all, or a chunk); ``norms`` the model's ``(input,
    output)`` normalisations, or a function that fits them to ``x`` (models
    that normalise every image on its own); ``fold``: the image's channels
    go through a one-channel model one by one.
    """
    config = model.config
    if layout.dims != config.dims:
        hint = (" To denoise plane by plane, call the Z axis S (e.g. axes 'SYX')." if config.dims == 2 else
                " Give axes with Z for a 3D stack.")
        raise UserInputError(f"This is a {config.dims}D model but the image axes '{layout.axes}' are "
                             f"{layout.dims}D.{hint}")
    if return_std and not tta:
        raise UserInputError("An uncertainty map needs test-time augmentation; turn tta on.")
    if fusion is None:
        fusion = fusion_applies(config)
    if fusion and config.in_channels != config.out_channels:
        raise UserInputError("Pixel fusion needs a model whose output channels are its input channels; turn it off.")
    fold = layout.channels != config.in_channels
    if fold and config.in_channels != 1:
        raise UserInputError(
            f"The image has {layout.channels} channel(s) but the model expects {config.in_channels}; "
            "check the C axis or use a matching model."
        )
    if tile_shape is None:
        tile_shape = default_tile_shape(layout.spatial_shape, config)
    tile_shape, halos = check_tiling(tile_shape, overlap, layout.spatial_shape, config)
    if batch_size is None:
        batch_size = default_batch_size(int(np.prod(tile_shape)), config.features)
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise UserInputError(f"batch_size must be a positive whole number, not {batch_size!r}.")
    planes = int(np.prod(layout.batch_shape, dtype=np.int64)) * (layout.channels if fold else 1)
    run = partial(_model_pass, model, tile_shape=tile_shape, halos=halos, batch_size=batch_size, tta=tta,
                  return_std=return_std, fusion=fusion, precision=precision, noise_level=noise_level,
                  recurring=recurring or planes >= MANY_PLANES)
    # A pretrained model meets every image on the image's own scale.
    norms = partial(_fitted, config) if config.normalize_per_image else (model.input_norm, model.output_norm)
    return run, norms, fold


def record(report, weight, noise) -> None:
    """Add a job's fusion weight and noise levels (see :func:`_model_pass`) to ``report`` (if any)."""
    if report is None:
        return
    if weight is not None:
        report.setdefault("fusion_weights", []).append(float(weight))
    if noise is not None:
        levels, scale = jax.device_get(noise)  # read once the device has the work
        levels = np.asarray(levels, np.float32)
        report.setdefault("noise_levels", []).extend(levels.tolist())
        sigma = np.sqrt(np.mean(np.square(levels, dtype=np.float64), axis=1)) * scale
        report.setdefault("noise_sigmas", []).extend(sigma.tolist())


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
    raw, blank = x, _blank_planes(x) if config.out_channels == config.in_channels else None
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
    if blank is not None:  # a blank frame (common in time-lapses) stays blank, with no uncertainty
        xp, keep = array_namespace(raw), blank.reshape(len(blank), *[1] * (raw.ndim - 2), -1)
        mean = xp.where(keep, xp.asarray(raw, np.float32), mean)
        std = None if std is None else xp.where(keep, np.float32(0), std)
    if noise is not None:  # with the scale that turns the channels into the image's units
        noise = (noise, input_norm.per_image(len(x))[1])
    return mean, std, weight, noise


def _blank_planes(x):
    """Which planes (and channels) of raw model-layout ``x`` hold one value, ``(N, C)`` where ``x`` is;
    on the host, None when none does."""
    host = array_namespace(x) is np
    if host and x.shape[0] == x.shape[-1] == 1:  # one host image: its range was checked whole, not constant
        return None
    spatial = tuple(range(1, x.ndim - 1))
    blank = x.min(axis=spatial) == x.max(axis=spatial)
    return blank if not host or blank.any() else None


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
