"""Judging results: metrics against a reference and the classical denoisers we compare with.

``metrics``
    PSNR, SSIM, MSE.
``baselines``
    scikit-image's classical denoisers.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "evaluate": "metrics",
    "psnr": "metrics",
    "ssim": "metrics",
    "mse": "metrics",
    "classical_denoise": "baselines",
})
