"""napari-flax-denoise: deep-learning denoising of microscopy and medical images.

The public API is loaded lazily, so that napari's plugin discovery (which
imports this package) does not import JAX. The subpackages are the
architecture (``docs/architecture.md`` maps them):

``io``
    Image files: TIFF / OME-TIFF, NumPy, PNG, DICOM, NIfTI, zarr / OME-Zarr; the samples.
``network``
    The U-Net (Flax NNX) and its pooling.
``models``
    Model directories, the embedded models, normalisation.
``training``
    Patches, blind-spot masking, the jitted steps, the training loop, resuming.
``inference``
    Tiled prediction, test-time augmentation, pixel fusion, clusters.
``evaluation``
    Metrics and classical baselines.
``runtime``
    The backend profile (CPU or accelerator), devices, the compile cache, CPU kernels.
``plugin``
    The napari widgets, reader and writer.

>>> from napari_flax_denoise import train, denoise, load_model, evaluate  # doctest: +SKIP
"""

from ._lazy import lazy_exports
from ._version import __version__

_API = {
    "train": "training.prepare", "train_iter": "training.prepare",
    "TrainProgress": "training.run", "TrainResult": "training.run",
    "denoise": "inference.prediction", "denoise_iter": "inference.prediction",
    "load_model": "models.checkpoint", "save_model": "models.checkpoint", "TrainedModel": "models.checkpoint",
    "evaluate": "evaluation.metrics", "psnr": "evaluation.metrics", "ssim": "evaluation.metrics",
    "mse": "evaluation.metrics", "classical_denoise": "evaluation.baselines", "Config": "config",
    "UserInputError": "errors", "open_image": "io.files", "write_image": "io.files", "ImageFile": "io.files",
    "embedded_models": "models.embedded", "Progress": "progress", "use_backend": "runtime.backend",
}
__all__ = sorted(_API) + ["__version__"]
__getattr__, _names = lazy_exports(__name__, _API)


def __dir__():
    return sorted(set(_names()) | set(globals()))
