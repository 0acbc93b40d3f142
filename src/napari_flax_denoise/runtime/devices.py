"""Spreading batches over several accelerators (or simulated CPU devices).

With more than one JAX device, batches are split along their first axis and
parameters are replicated; jit then runs data-parallel (gradients are
averaged across devices by the compiler). With one device nothing changes.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .backend import active


class Placement:
    """Where arrays go for a batch size: split over all devices when it divides evenly.

    Parameters
    ----------
    batch_size : int
        Leading size of every batch that :meth:`split` will see.
    """

    def __init__(self, batch_size: int):
        devices = jax.devices()
        self.count = len(devices) if len(devices) > 1 and batch_size % len(devices) == 0 else 1
        if self.count > 1:
            mesh = Mesh(np.array(devices), ("batch",))
            self._split = NamedSharding(mesh, PartitionSpec("batch"))
            self._replicated = NamedSharding(mesh, PartitionSpec())

    @property
    def batch_sharding(self):
        """How a batch made inside a compiled function is split over the devices (None on one device)."""
        return self._split if self.count > 1 else None

    def replicate(self, tree):
        """Copy parameters (any pytree) to every device."""
        return jax.device_put(tree, self._replicated) if self.count > 1 else tree

    def split(self, batch):
        """Put a batch (an array or a pytree of them) on the devices, split along its first axis; returns once it is there (None passes through).

        Waiting matters on a CPU: JAX's CPU client runs a computation whose
        inputs are still being copied later, on one of its own threads, and
        there the computation's scratch memory (about 290 MB for a training
        step) is mapped afresh each time (see :mod:`.cpu.memory`).
        """
        if batch is None:
            return None
        placed = jax.device_put(batch, self._split) if self.count > 1 else jax.device_put(batch)
        return jax.block_until_ready(placed)


MEMORY_ENV = "NAPARI_FLAX_DENOISE_DEVICE_MEMORY"
# Bytes per pixel and feature that a tile's forward pass keeps alive at once: about nine
# feature maps of float32 at full resolution (skips, the block's two layers, the decoder's
# parts), doubled for XLA's scratch space.
_BYTES_PER_PIXEL_FEATURE = 72
_MAX_TILES_PER_DEVICE = 32


def memory_budget() -> int | None:
    """Bytes of one device's memory that inference plans for, or None when the device does not say (CPUs).

    Half the device's memory limit, or ``$NAPARI_FLAX_DENOISE_DEVICE_MEMORY``
    (bytes, or with a unit: ``512MB``, ``4GB``) when set.
    """
    setting = os.environ.get(MEMORY_ENV, "").strip().upper()
    if setting:
        units = {"KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
        unit = next((u for u in units if setting.endswith(u)), None)
        try:
            return int(float(setting[:-2] if unit else setting) * units.get(unit, 1))
        except ValueError:
            raise ValueError(f"{MEMORY_ENV} must be a number of bytes such as 4GB, not {setting!r}.") from None
    stats = jax.devices()[0].memory_stats() or {}
    limit = stats.get("bytes_limit")
    return None if not limit else limit // 2


def tile_bytes(pixels: int, features: int) -> int:
    """Estimated device memory of one tile of ``pixels`` pixels (voxels) through a U-Net of ``features``."""
    return pixels * features * _BYTES_PER_PIXEL_FEATURE


def default_batch_size(pixels: int | None = None, features: int | None = None) -> int:
    """Tiles per inference call, on all devices together.

    The backend profile's number per device (one on a CPU, eight on an
    accelerator); on a device that states its memory (see
    :func:`memory_budget`), as many tiles of ``pixels`` pixels as fit in the
    budget (at most 32 per device, at least one).
    """
    per_device = active().tiles_per_device
    budget = memory_budget() if active().resident_inference and pixels and features else None
    if budget is not None:
        per_device = int(min(_MAX_TILES_PER_DEVICE, max(1, budget // tile_bytes(pixels, features))))
    return per_device * jax.device_count()
