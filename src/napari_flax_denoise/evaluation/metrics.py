"""Image-quality metrics with an explicit data range."""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError


def _pair(prediction, target):
    prediction, target = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    if prediction.shape != target.shape:
        raise UserInputError(
            f"The prediction has shape {prediction.shape} but the target has {target.shape}; "
            "compare images of the same shape."
        )
    if prediction.size == 0 or not (np.all(np.isfinite(prediction)) and np.all(np.isfinite(target))):
        raise UserInputError("Prediction and target must be non-empty and free of NaN or infinite values.")
    return prediction, target


def _range(target, data_range):
    if data_range is None:
        data_range = float(target.max() - target.min())
    if not data_range > 0:
        raise UserInputError("The target is constant, so its data range is 0; give data_range explicitly.")
    return float(data_range)


def mse(prediction, target) -> float:
    """Mean squared error."""
    prediction, target = _pair(prediction, target)
    return float(np.mean((prediction - target) ** 2))


def psnr(prediction, target, *, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB.

    Parameters
    ----------
    prediction, target : array_like
        Same shape.
    data_range : float, optional
        Peak-to-peak range of the signal; default ``target.max() - target.min()``
        (not the dtype range, which would be wrong for float images).
    """
    prediction, target = _pair(prediction, target)
    error = np.mean((prediction - target) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(_range(target, data_range) ** 2 / error))


def ssim(prediction, target, *, data_range: float | None = None, channel_axis: int | None = None) -> float:
    """Structural similarity (scikit-image's implementation, 2D or 3D).

    The window is scikit-image's 7 pixels, or the largest odd size the image
    allows (at least 3) along its smallest axis.
    """
    from skimage.metrics import structural_similarity

    prediction, target = _pair(prediction, target)
    spatial = [n for i, n in enumerate(target.shape) if channel_axis is None or i != channel_axis % target.ndim]
    window = min(7, min(spatial) - (1 - min(spatial) % 2))
    if window < 3:
        raise UserInputError(f"The images ({'x'.join(map(str, target.shape))}) are too small for SSIM, which needs "
                             "at least 3 pixels along every axis; compare larger images.")
    return float(structural_similarity(prediction, target, data_range=_range(target, data_range),
                                       channel_axis=channel_axis, win_size=window))


def evaluate(prediction, target, *, data_range: float | None = None, channel_axis: int | None = None) -> dict:
    """PSNR, SSIM and MSE of ``prediction`` against ``target``.

    Parameters
    ----------
    prediction, target : array_like
        Same shape.
    data_range : float, optional
        See :func:`psnr`.
    channel_axis : int, optional
        The colour / channel axis, which SSIM does not slide its window along.

    Returns
    -------
    dict
        Keys ``psnr``, ``ssim``, ``mse``.
    """
    return {"psnr": psnr(prediction, target, data_range=data_range),
            "ssim": ssim(prediction, target, data_range=data_range, channel_axis=channel_axis),
            "mse": mse(prediction, target)}
