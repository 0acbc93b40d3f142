"""Spreading batches over several accelerators (or simulated CPU devices).

With more than one JAX device, batches are split along their first axis and
parameters are replicated; jit then runs data-parallel (gradients are
averaged across devices by the compiler). With one device nothing changes.
"""

from __future__ import annotations

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

    def replicate(self, tree):
        """Copy parameters (any pytree) to every device."""
        return jax.device_put(tree, self._replicated) if self.count > 1 else tree

    def split(self, batch):
        """Put a batch on the devices, split along its first axis; returns once it is there (None passes through).

        Waiting matters on a CPU: JAX's CPU client runs a computation whose
        inputs are still being copied later, on one of its own threads, and
        there the computation's scratch memory (about 290 MB for a training
        step) is mapped afresh each time (see :mod:`.cpu.memory`).
        """
        if batch is None:
            return None
        placed = jax.device_put(batch, self._split) if self.count > 1 else jax.device_put(batch)
        return placed.block_until_ready()


def default_batch_size() -> int:
    """Tiles per inference call: the backend profile's per device (one on a CPU, eight on an accelerator), on every device."""
    return active().tiles_per_device * jax.device_count()
