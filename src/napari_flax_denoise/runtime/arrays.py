"""Which array library an array belongs to: the host's NumPy, or JAX on a device."""

from __future__ import annotations

import sys

import numpy as np


def array_namespace(array):
    """``jax.numpy`` for a JAX array (the accelerator route keeps images on the device), else ``numpy``.

    Looks JAX up only if it is already imported, so host-only callers never import it.
    """
    jax = sys.modules.get("jax")
    return jax.numpy if jax is not None and isinstance(array, jax.Array) else np
