"""Trained models: self-describing model directories and the models shipped with the package.

``checkpoint``
    :class:`TrainedModel`, saving and loading model directories, one ``resolve_model``.
``embedded``
    The catalogue of embedded models (each in a folder here, e.g. ``general-2d/``).
``normalization``
    The intensity normalisation saved with every model.
``widening``
    A trained model grown to take the noise level, or to more features, computing the same function at first.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "TrainedModel": "checkpoint",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "resolve_model": "checkpoint",
    "embedded_models": "embedded",
})
