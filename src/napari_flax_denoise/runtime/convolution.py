"""XLA's own 'SAME' convolution: the U-Net's convolution on accelerators, and the reference everywhere."""

from __future__ import annotations

import jax


def conv_native(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's 'SAME' convolution of a channels-last batch ``x`` (2D or 3D) with ``kernel`` (spatial..., in, out)."""
    dims = kernel.ndim - 2
    spatial = "DHW"[3 - dims:]
    spec = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
    return jax.lax.conv_general_dilated(x, kernel, (1,) * dims, "SAME", dimension_numbers=spec)
