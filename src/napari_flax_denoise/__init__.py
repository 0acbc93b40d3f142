"""napari-flax-denoise: deep-learning denoising of microscopy and medical images.

The public API is loaded lazily, so that napari's plugin discovery (which
imports this package) does not import JAX.

>>> from napari_flax_denoise import train, denoise, load_model, evaluate  # doctest: +SKIP
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "train": "training", "train_iter": "training", "TrainProgress": "training", "TrainResult": "training",
    "denoise": "prediction", "denoise_iter": "prediction",
    "load_model": "checkpoint", "save_model": "checkpoint", "TrainedModel": "checkpoint",
    "evaluate": "metrics", "psnr": "metrics", "ssim": "metrics", "mse": "metrics",
    "classical_denoise": "baselines", "Config": "config", "UserInputError": "errors",
    "open_image": "files", "write_image": "files", "ImageFile": "files", "embedded_models": "embedded",
}
__all__ = sorted(_API) + ["__version__"]


def __getattr__(name):
    if name in _API:
        return getattr(import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
