"""Spreading batches over several accelerators (or simulated CPU devices).

With more than one JAX device, batches are split along their first axis and
parameters are replicated; jit then runs data-parallel (gradients are
averaged across devices by the compiler). With one device nothing changes.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


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

    def replicate(self, tree):
        """Copy parameters (any pytree) to every device."""
        return jax.device_put(tree, self._replicated) if self.count > 1 else tree

    def split(self, batch):
        """Split a batch along its first axis over the devices (None passes through)."""
        if batch is None or self.count == 1:
            return batch
        return jax.device_put(batch, self._split)


def default_batch_size() -> int:
    """Tiles per inference call: one per CPU device, eight per accelerator."""
    per_device = 1 if jax.default_backend() == "cpu" else 8
    return per_device * jax.device_count()
