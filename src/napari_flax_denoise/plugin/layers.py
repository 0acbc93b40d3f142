"""napari layers to core arrays and back, without importing napari or Qt.

The widgets call these so they stay thin: a layer becomes ``(data, axes)``
for the core, and a core result becomes a layer-data tuple that keeps the
input's physical placement (scale, translate, rotate, shear, affine, units).
"""

from __future__ import annotations

from ..axes import validate_axes
from ..errors import UserInputError

_LETTERS = set("STCZYX")


def layer_data(layer):
    """The full-resolution data of an image layer; lazy (dask) data stays lazy.

    Raises
    ------
    UserInputError
        If ``layer`` is missing or is not an image layer.
    """
    if layer is None:
        raise UserInputError("Open or select an image layer first (File > Open Sample has examples).")
    kind = type(layer).__name__
    if kind != "Image":
        raise UserInputError(f"'{layer.name}' is a {kind} layer; choose an image layer instead.")
    return layer.data[0] if layer.multiscale else layer.data


def _trusted(candidate: str, ndim: int) -> bool:
    return len(candidate) == ndim and set(candidate) <= _LETTERS and len(set(candidate)) == ndim


def infer_axes(layer, model_dims: int | None = None) -> str:
    """Axes of an image layer for a model with ``model_dims`` spatial dimensions.

    Axes recorded by a reader (``layer.metadata["axes"]``) or one-letter axis
    labels win; otherwise the trailing axes are Y X (an RGB layer adds C),
    preceded by Z for a 3D model, and remaining leading axes are stacks
    (S, then T). With a 2D model a Z axis is denoised plane by plane (as S).

    Parameters
    ----------
    layer : napari.layers.Image
    model_dims : {2, 3} or None
        None (a model yet to be trained): keep a Z the layer declares, else 2D.

    Returns
    -------
    axes : str
    """
    ndim = len(layer_data(layer).shape)
    labels = "".join(str(label).upper() for label in getattr(layer, "axis_labels", ()))
    for candidate in (str(layer.metadata.get("axes", "")).upper(), labels):
        if _trusted(candidate, ndim):
            axes = candidate
            break
    else:
        rgb = bool(getattr(layer, "rgb", False))
        base = ("ZYX" if model_dims == 3 and ndim - rgb >= 3 else "YX") + ("C" if rgb else "")
        extra = max(ndim - len(base), 0)
        axes = ("ST" if rgb else "STC")[:extra] + base
    if model_dims == 2 and "Z" in axes and "S" not in axes:
        axes = axes.replace("Z", "S")
    return axes


def describe_axes(axes: str, shape, declared: str = "") -> str:
    """How an image of ``shape`` is denoised with ``axes``, in plain words.

    Parameters
    ----------
    axes : str
        The axes the model gets (from :func:`infer_axes`).
    shape : tuple of int
    declared : str
        The layer's own axes (``infer_axes(layer)``): a Z there that became
        S is called slices.

    Examples
    --------
    >>> describe_axes("SYX", (24, 256, 256), "ZYX")
    '2D image 256 × 256 · Z: 24 slices, each denoised by the 2D model (axes SYX)'
    >>> describe_axes("TCZYX", (5, 2, 16, 64, 64))
    '3D volume 16 × 64 × 64 · T: 5 time points, each denoised on its own · C: 2 channels (axes TCZYX)'
    """
    sizes = dict(zip(axes, shape))
    spatial = [sizes[a] for a in axes if a in "ZYX"]
    parts = [f"{'3D volume' if len(spatial) == 3 else '2D image'} {' × '.join(map(str, spatial))}"]
    if "S" in sizes:
        parts.append(f"Z: {sizes['S']} slices, each denoised by the 2D model" if "Z" in declared
                     else f"{sizes['S']} separate images, each denoised on its own")
    if "T" in sizes:
        parts.append(f"T: {sizes['T']} time points, each denoised on its own")
    if "C" in sizes:
        parts.append(f"C: {sizes['C']} channels")
    return " · ".join(parts) + f" (axes {axes})"


def view_centre(viewer, layer) -> tuple:
    """The point the viewer shows (the centre of the canvas, on the current slice) in ``layer``'s pixels."""
    point = list(viewer.dims.point)
    displayed = list(viewer.dims.displayed)
    scene = getattr(viewer, "scene", None)  # napari 0.9 moved the camera there
    camera = scene.camera if scene is not None else viewer.camera
    for axis, value in zip(displayed, list(camera.center)[-len(displayed):]):
        point[axis] = value
    return tuple(float(v) for v in layer.world_to_data(point[-layer.ndim:]))


def describe_fusion(report: dict) -> str:
    """What pixel fusion did, in words, from :func:`~napari_flax_denoise.inference.denoise_iter`'s ``report``."""
    weights = report.get("fusion_weights")
    if not weights:
        return "no fusion"
    mean = sum(weights) / len(weights)
    if mean < 0.005:
        return "fusion changed nothing (the network's result was already the better)"
    return f"fusion put back {100 * mean:.0f}% of the noisy pixels on average"


def describe_noise(report: dict, given: bool) -> str:
    """The noise level a noise-aware model was given, in words (empty for other models)."""
    sigmas = report.get("noise_sigmas")
    if not sigmas:
        return ""
    return f"noise σ ≈ {sum(sigmas) / len(sigmas):.3g}, {'as given' if given else 'estimated'}"


def check_axes_override(text: str, layer) -> str | None:
    """Validate an axes override typed by the user; empty means "infer"."""
    text = (text or "").strip()
    return validate_axes(text, len(layer_data(layer).shape)) if text else None


def result_layer(layer, data, name: str, metadata: dict, *, contrast=True) -> tuple:
    """A layer-data tuple for ``data`` computed from ``layer``, placed where ``layer`` is.

    Parameters
    ----------
    layer : napari.layers.Image
        The input layer; it is not modified.
    data : ndarray
        The result, in the layer's axes (possibly with one extra trailing
        channel axis, which is split into one layer per channel).
    name : str
    metadata : dict
        Recorded under ``metadata["napari_flax_denoise"]``, beside a copy of
        the input's metadata.
    contrast : bool
        Reuse the input's contrast limits: right for a result on the input's
        intensity scale (blind-spot models), wrong for a supervised model's
        (on its targets' scale) or an uncertainty map, which get limits of
        their own.
    """
    kwargs = {
        "name": name,
        "scale": layer.scale, "translate": layer.translate, "rotate": layer.rotate, "shear": layer.shear,
        "affine": layer.affine.affine_matrix, "units": layer.units, "axis_labels": layer.axis_labels,
        "blending": layer.blending,
        "metadata": {**layer.metadata, "napari_flax_denoise": metadata},
    }
    if data.ndim == len(layer_data(layer).shape) + 1:  # a multi-channel output of a single-channel input
        kwargs["channel_axis"] = -1
    elif layer.rgb and contrast:
        data = as_colour(data, layer_data(layer).dtype)
        kwargs.update(rgb=True)
    else:
        kwargs.update(rgb=layer.rgb, colormap=layer.colormap.name)
        kwargs["contrast_limits"] = layer.contrast_limits if contrast else robust_limits(data)
    return data, kwargs, "image"


def as_colour(data, dtype):
    """An RGB(A) result of an integer image as rounded, clipped values of its type.

    A float result of a uint8 photograph (-6..260) showed as a white
    thumbnail; float inputs keep float results under the input's contrast limits.
    """
    import numpy as np

    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.integer):
        return data
    info = np.iinfo(dtype)
    return np.clip(np.rint(data), info.min, info.max).astype(dtype)


def robust_limits(data) -> list:
    """Contrast limits that show ``data``: its 0.5th and 99.5th percentiles (of a sample, for large arrays)."""
    import numpy as np

    values = np.asarray(data).ravel()
    values = values[:: max(1, values.size // 1_000_000)]
    values = values[np.isfinite(values)]
    if values.size == 0:
        return [0.0, 1.0]
    low, high = (float(v) for v in np.percentile(values, (0.5, 99.5)))
    if high <= low:
        low, high = float(values.min()), float(values.max())
    return [low, high] if high > low else [low - 0.5, low + 0.5]


def preview_layer(layer, crop, preview) -> tuple:
    """A layer-data tuple that lays a denoised preview crop over its place in ``layer``.

    Parameters
    ----------
    layer : napari.layers.Image
        The training layer the crop came from.
    crop : PreviewCrop
        Where the crop lies (see :func:`~napari_flax_denoise.plugin.jobs.preview_crop`).
    preview : ndarray
        The denoised crop, in ``crop.axes``.
    """
    spatial = [i for i, a in enumerate(crop.source_axes) if a in "ZYX"]
    if "C" in crop.axes and not layer.rgb:  # show the first channel of a multi-channel image
        preview = preview.take(0, axis=crop.axes.index("C"))
    scale = [layer.scale[i] for i in spatial]
    translate = [layer.translate[i] + start * layer.scale[i] for i, start in zip(spatial, crop.offset)]
    kwargs = {"name": f"{layer.name} preview", "scale": scale, "translate": translate, "rgb": layer.rgb,
              "colormap": layer.colormap.name, "contrast_limits": robust_limits(preview),
              "metadata": {"napari_flax_denoise": {"preview_of": layer.name}}}
    return preview, kwargs, "image"
