"""Classical denoisers from scikit-image behind one signature, for comparisons."""

from __future__ import annotations

import numpy as np

from ..errors import UserInputError

METHODS = ("nlm", "tv", "wavelet", "jinv")


def classical_denoise(image, method: str = "nlm", *, sigma: float | None = None) -> np.ndarray:
    """Denoise a single-channel 2D or 3D image with a classical method.

    Parameters
    ----------
    image : array_like
        Grey-level image, any real dtype.
    method : {'nlm', 'tv', 'wavelet', 'jinv'}
        Non-local means, total variation (Chambolle), BayesShrink wavelets,
        or non-local means with its filter strength calibrated by
        J-invariance (no noise level needed).
    sigma : float, optional
        Noise standard deviation in image units; estimated when omitted.

    Returns
    -------
    ndarray of float32
        Same shape and intensity range as ``image``.
    """
    from skimage import restoration

    if method not in METHODS:
        raise UserInputError(f"method must be one of {', '.join(METHODS)}, not {method!r}.")
    image = np.asarray(image, np.float64)
    low, span = float(image.min()), float(np.ptp(image)) or 1.0
    unit = (image - low) / span  # the methods' parameters assume values near [0, 1]
    noise = restoration.estimate_sigma(unit) if sigma is None else sigma / span
    if method == "nlm":
        out = restoration.denoise_nl_means(unit, h=0.8 * noise, sigma=noise, patch_size=5,
                                           patch_distance=6, fast_mode=True)
    elif method == "tv":
        out = restoration.denoise_tv_chambolle(unit, weight=noise)
    elif method == "wavelet":
        out = restoration.denoise_wavelet(unit, sigma=noise, method="BayesShrink", mode="soft",
                                          rescale_sigma=True)
    else:
        grid = {"h": list(np.linspace(0.4, 1.4, 6) * noise), "sigma": [noise], "patch_size": [5],
                "patch_distance": [6], "fast_mode": [True]}
        out = restoration.calibrate_denoiser(unit, restoration.denoise_nl_means, denoise_parameters=grid)(unit)
    return (out * span + low).astype(np.float32)
