"""Tiled prediction with the image resident on the device (the accelerator profile's route).

The host route (:func:`.host_tiles.predict_tiled`) cuts and mirror-pads tiles
in NumPy, copies each batch to the device and reads its result back before
the next: on a GPU the device then idles most of the time. Here the
images go to the device once (``in_memory.denoise_array`` sends them and
normalises them there; fusion's per-pixel step follows in
:mod:`.resident_fusion`); the mirrored margin, cutting the
tiles (``lax.dynamic_slice`` at each tile's corner), the network, and
stitching each tile's kept centre into the result (``dynamic_update_slice``
under the tile's keep mask) all run in one compiled step per batch of tiles,
and the result comes back once. The host only enqueues steps, with two
batches in flight, so progress stays honest while nothing waits per batch.
Test-time augmentation turns, predicts and turns back on the device and
keeps its sums there.

Tiles are cut exactly as on the host route (same spans, same mirrored
margin, the network told where each tile's image ends), so both give the
same result up to float rounding.
"""

from __future__ import annotations

import itertools
import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..errors import UserInputError
from ..network.unet import halo as network_halo
from ..noise.level import with_noise
from ..progress import Progress
from ..runtime.devices import Placement, memory_budget, tile_bytes
from .tiling import edge_margin, tile_spans

# Batches whose step may still run on the device while the host enqueues the next one.
_IN_FLIGHT = 2


def tile_plan(spatial, tile_shape, halos, margin: int, count: int):
    """Every tile of ``count`` images of shape ``spatial``: where it starts and which pixels it keeps.

    Returns
    -------
    plan : dict of ndarray
        ``image`` (T,), ``start``, ``valid``, ``low``, ``high`` (T, dims): the
        tile's corner in the mirrored image, its image part, and the box it
        keeps in its own coordinates (``low <= i < high``).
    extent : tuple of int
        Size of the mirrored image extended so that every tile lies inside it.
    """
    spans = [tile_spans(s + 2 * margin, t, h) for s, t, h in zip(spatial, tile_shape, halos)]
    rows = []
    for n, tile in itertools.product(range(count), itertools.product(*spans)):
        low = [max(keep_from, margin) - start for (start, _, keep_from, _), size in zip(tile, spatial)]
        high = [min(keep_to, margin + size) - start for (start, _, _, keep_to), size in zip(tile, spatial)]
        if all(lo < hi for lo, hi in zip(low, high)):
            rows.append((n, [t[0] for t in tile], [t[1] for t in tile], low, high))
    extent = tuple(max(max(span[0] for span in axis) + t, s + 2 * margin)
                   for axis, t, s in zip(spans, tile_shape, spatial))
    plan = {"image": np.array([r[0] for r in rows], np.int32)}
    for i, key in enumerate(("start", "valid", "low", "high"), start=1):
        plan[key] = np.array([r[i] for r in rows], np.int32).reshape(len(rows), len(spatial))
    return plan, extent


def fitted_batch(batch_size: int, tiles: int, devices: int) -> int:
    """Tiles per call for ``tiles`` tiles: at most ``batch_size``, but no more than the next power of two
    per device that holds them all, so a small image does not compute a batch of empty tiles (a 512x512
    image took 3.4 s in 8-tile calls on a CPU) and only a few batch shapes are ever compiled."""
    per_device = max(1, batch_size // devices)
    needed = 1 << max(0, (-(-tiles // devices) - 1).bit_length())
    return min(per_device, needed) * devices if batch_size % devices == 0 else min(batch_size, needed)


def _batches(plan: dict, batch_size: int):
    """The plan in batches of ``batch_size`` tiles; the last one filled with tiles that keep nothing."""
    total = len(plan["image"])
    for first in range(0, total, batch_size):
        part = {k: v[first:first + batch_size] for k, v in plan.items()}
        short = batch_size - len(part["image"])
        if short:
            part = {k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in part.items()}
        yield part


def apply_network(graphdef, state, tiles, valid, conv, precision: str = "float32"):
    """The network on a batch of tiles as inference runs it, inside ``jit``; float32 out.

    ``precision="bfloat16"`` computes with weights and activations in
    bfloat16 (about twice the speed of float32 on GPUs with tensor cores).
    """
    if precision == "bfloat16":
        state = jax.tree.map(lambda p: p.astype(jnp.bfloat16), state)
        tiles = tiles.astype(jnp.bfloat16)
    network = nnx.merge(graphdef, state)
    return network(tiles, valid, conv=conv, upsample_in_conv=True).astype(jnp.float32)


@partial(jax.jit, static_argnums=(0, 1, 2, 3), donate_argnums=5)
def _step(graphdef, conv, tile_shape, precision, state, out, padded, noise, batch):
    """Predict one batch of tiles of ``padded`` (with their images' ``noise`` channels appended, if
    not None) and stitch their kept boxes into ``out``."""
    channels = padded.shape[-1]

    def cut(n, start):
        return jax.lax.dynamic_slice(padded, (n, *start, 0), (1, *tile_shape, channels))[0]

    tiles = jax.vmap(cut)(batch["image"], batch["start"])
    if noise is not None:
        tiles = with_noise(tiles, noise[batch["image"]])
    prediction = apply_network(graphdef, state, tiles, batch["valid"], conv, precision)
    for i in range(prediction.shape[0]):  # kept boxes never overlap: each tile writes only its own
        corner = (batch["image"][i], *batch["start"][i], 0)
        region = jax.lax.dynamic_slice(out, corner, (1, *tile_shape, out.shape[-1]))[0]
        keep = None
        for axis, size in enumerate(tile_shape):
            index = jnp.arange(size).reshape([-1 if a == axis else 1 for a in range(len(tile_shape))] + [1])
            inside = (index >= batch["low"][i, axis]) & (index < batch["high"][i, axis])
            keep = inside if keep is None else keep & inside
        out = jax.lax.dynamic_update_slice(out, jnp.where(keep, prediction[i], region)[None], corner)
    return out


def predict_resident(model, images, tile_shape, halos, batch_size, *, conv, precision="float32", noise=None):
    """Apply the network to normalised model-layout ``images`` (host or device) tile by tile, on the device.

    A generator: yields :class:`~napari_flax_denoise.progress.Progress` in
    tile batches as they are computed, and returns the prediction
    ``(N, *spatial, C_out)`` as a float32 device array. ``noise`` (``(N, 2)``,
    noise-aware models) is appended to each tile on the device. When the device runs
    out of memory, the batch is halved and the prediction starts again (with
    a warning); with one tile per call it raises a :class:`UserInputError`.

    Raises
    ------
    UserInputError
        When one tile needs more than the device's memory budget (see
        :func:`~napari_flax_denoise.runtime.devices.memory_budget`).
    """
    budget, need = memory_budget(), tile_bytes(int(np.prod(tile_shape)), model.config.features)
    if budget is not None and need > budget:
        raise UserInputError(
            f"A tile of {'x'.join(map(str, tile_shape))} pixels needs about {need / 1e9:.1f} GB of device memory, "
            f"more than the {budget / 1e9:.1f} GB available; give a smaller tile shape (--tile-shape).")
    while True:
        try:
            return (yield from _predict(model, images, tile_shape, halos, batch_size, conv, precision, noise))
        except jax.errors.JaxRuntimeError as error:
            if "RESOURCE_EXHAUSTED" not in str(error):
                raise
            if batch_size == 1:
                raise UserInputError("The device ran out of memory with one tile per call; give a smaller tile "
                                     "shape (--tile-shape) or close other programs that use it.") from None
            batch_size //= 2
            warnings.warn(f"The device ran out of memory; denoising again with {batch_size} tiles per call.",
                          RuntimeWarning, stacklevel=2)


def _predict(model, images, tile_shape, halos, batch_size, conv, precision, noise):
    spatial = images.shape[1:-1]
    margin = edge_margin(network_halo(model.config), 2**model.config.depth)
    plan, extent = tile_plan(spatial, tile_shape, halos, margin, images.shape[0])
    batch_size = fitted_batch(batch_size, len(plan["image"]), jax.device_count())
    graphdef, state = nnx.split(model.network)
    placement = Placement(batch_size)  # with several devices: tiles split over them, the rest on each
    x = jnp.asarray(images, jnp.float32)
    mirrored = jnp.pad(x, [(0, 0)] + [(margin, margin)] * len(spatial) + [(0, 0)], mode="reflect")
    padded = jnp.pad(mirrored, [(0, 0)] + [(0, e - s - 2 * margin) for e, s in zip(extent, spatial)] + [(0, 0)])
    state, padded = placement.replicate(state), placement.replicate(padded)
    noise = None if noise is None else placement.replicate(jnp.asarray(noise, jnp.float32))
    out = placement.replicate(jnp.zeros((images.shape[0], *extent, model.config.out_channels), jnp.float32))
    total = -(-len(plan["image"]) // batch_size)
    tokens = []
    for done, batch in enumerate(_batches(plan, batch_size), start=1):
        out = _step(graphdef, conv, tuple(tile_shape), precision, state, out, padded, noise, placement.split(batch))
        tokens.append(out[(0,) * out.ndim])  # ready once this batch's step has run
        if len(tokens) > _IN_FLIGHT:
            tokens.pop(0).block_until_ready()
        yield Progress(done, total)
    return out[(slice(None), *(slice(margin, margin + s) for s in spatial))]
