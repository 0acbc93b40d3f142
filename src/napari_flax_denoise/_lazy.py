"""Lazy re-exports for package ``__init__`` files: a name's module is imported on first use.

So ``import napari_flax_denoise`` (napari's plugin discovery does it) and
``import napari_flax_denoise.io`` import neither JAX nor anything else heavy.
"""

from __future__ import annotations

from importlib import import_module


def lazy_exports(package: str, names: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``names[name]`` (a submodule) on first use.

    Examples
    --------
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"denoise": "inference.prediction"})  # doctest: +SKIP
    """

    def __getattr__(name: str):
        if name in names:
            return getattr(import_module(f".{names[name]}", package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(names)

    return __getattr__, __dir__
