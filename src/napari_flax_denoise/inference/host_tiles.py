"""Tiled prediction with the tiles cut on the host (the CPU profile's route).

Tiles are cut and mirror-padded in NumPy one batch at a time, into the
profile's tile buffer, and each batch's kept centres are written into the
result before the next batch is cut; a CPU then works on one batch of tiles
at a time, and memory stays at one mirrored image. The accelerator profile's
route, with the image on the device, is :mod:`.resident`.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import numpy as np
from flax import nnx

from ..models.checkpoint import TrainedModel
from ..network.unet import halo as network_halo
from ..progress import Progress
from ..runtime.backend import active
from ..runtime.devices import Placement
from .resident import apply_network
from .tiling import edge_margin, tile_spans


@partial(jax.jit, static_argnums=(0, 1, 2))
def _forward(graphdef, conv, precision, state, batch, valid):
    return apply_network(graphdef, state, batch, valid, conv, precision)


def predict_tiled(model: TrainedModel, images: np.ndarray, tile_shape, halos, batch_size, precision="float32",
                  noise=None):
    """Apply the network to normalised model-layout ``images`` tile by tile, cut on the host.

    A generator: yields :class:`~napari_flax_denoise.progress.Progress` after
    every batch of tiles and returns the prediction ``(N, *spatial, C_out)``
    as float32. ``noise`` (``(N, 2)``, noise-aware models) is appended to
    each tile as constant channels, so the image is never copied with them.
    The accelerator profile's route is :func:`.resident.predict_resident`.
    """
    profile = active()
    graphdef, state = nnx.split(model.network)
    placement = Placement(batch_size)  # tiles spread over the devices, weights on each
    state = placement.replicate(state)
    spatial = images.shape[1:-1]
    margin = edge_margin(network_halo(model.config), 2**model.config.depth)
    spans = [tile_spans(s + 2 * margin, t, h) for s, t, h in zip(spatial, tile_shape, halos)]
    out = np.empty((*images.shape[:-1], model.config.out_channels), np.float32)
    jobs = [(n, tile) for n in range(images.shape[0]) for tile in itertools.product(*spans)]
    total = -(-len(jobs) // batch_size)
    padded_n, padded = -1, None
    for done, first in enumerate(range(0, len(jobs), batch_size), start=1):
        chunk = jobs[first:first + batch_size]
        channels = images.shape[-1]
        batch = profile.tile_buffer((batch_size, *tile_shape, channels + (0 if noise is None else noise.shape[-1])))
        valid = np.zeros((batch_size, len(spatial)), np.int32)
        for i, (n, tile) in enumerate(chunk):
            if n != padded_n:  # mirror one image at a time: memory stays at one image
                padded_n, padded = n, np.pad(images[n], [(margin, margin)] * len(spatial) + [(0, 0)], mode="reflect")
            batch[(i, *(slice(0, size) for _, size, _, _ in tile), slice(0, channels))] = \
                padded[tuple(slice(start, start + size) for start, size, _, _ in tile)]
            if noise is not None:
                batch[i, ..., channels:] = noise[n]
            valid[i] = [size for _, size, _, _ in tile]
        result = np.asarray(_forward(graphdef, profile.convolution, precision, state, placement.split(batch),
                                     placement.split(valid)))
        for (n, tile), prediction in zip(chunk, result):
            keep = [(max(keep_from, margin), min(keep_to, margin + size), start)
                    for (start, _, keep_from, keep_to), size in zip(tile, spatial)]
            if all(lo < hi for lo, hi, _ in keep):
                target = tuple(slice(lo - margin, hi - margin) for lo, hi, _ in keep)
                out[(n, *target)] = prediction[tuple(slice(lo - start, hi - start) for lo, hi, start in keep)]
        yield Progress(done, total)
    return out
