"""Denoising large stacks on a dask cluster: one plane per task, the model loaded once per worker.

Works with any dask scheduler; with a ``dask.distributed.Client`` (a
``LocalCluster``, or an HPC cluster through dask-jobqueue) the planes are
spread over its workers. Workers need to see the model directory (a shared
file system) or use an embedded model's name.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from ..axes import validate_axes
from ..errors import UserInputError


@lru_cache(maxsize=2)
def worker_model(reference: str):
    """Load a model once per worker process (a directory or an embedded name)."""
    from ..models.checkpoint import resolve_model

    return resolve_model(reference)


def _denoise_block(block, *, reference: str, axes: str, options: dict):
    from .prediction import denoise

    return denoise(block, worker_model(reference), axes=axes, **options).astype(np.float32)


def denoise_lazily(image, model, *, axes: str, tile_shape=None, tta: bool = False, fusion: bool | None = None,
                   precision: str = "float32", noise_level=None):
    """A dask array of ``image`` denoised plane by plane, computed when asked.

    Parameters
    ----------
    image : array_like
        A dask, zarr or numpy array; it is cut into one task per S/T (and, for
        one-channel models, C) plane, with Z Y X whole.
    model : str or Path
        A model directory the workers can read, or an embedded model's name.
    axes : str
    tile_shape, tta, fusion, precision, noise_level
        As for :func:`~napari_flax_denoise.denoise`.

    Returns
    -------
    dask.array.Array of float32
        Compute it (``.compute()``, ``da.store``, ``.to_zarr``) under the
        scheduler of your choice, e.g. with a ``dask.distributed.Client``.
    """
    import dask.array as da

    if not isinstance(model, (str, Path)):
        raise UserInputError("On a cluster, give the model as a directory or an embedded model's name, "
                             "so that every worker can load it.")
    from .prediction import check_precision

    reference = str(model)
    config = worker_model(reference).config  # fails early, here, on a bad model
    precision = check_precision(precision)
    axes = validate_axes(axes, len(image.shape))
    if config.out_channels != config.in_channels and "C" not in axes:
        raise UserInputError("Cluster denoising keeps the input's shape; this model changes the channel count.")
    outer = {i for i, a in enumerate(axes) if a in "ST" or (a == "C" and config.in_channels == 1)}
    lazy = da.asarray(image).rechunk(tuple(1 if i in outer else -1 for i in range(len(axes))))
    options = {"tile_shape": tile_shape, "tta": tta, "fusion": fusion, "precision": precision,
               "noise_level": noise_level}
    return lazy.map_blocks(_denoise_block, dtype=np.float32, reference=reference, axes=axes, options=options)


def denoise_on_cluster(image, model, *, axes: str, client, tile_shape=None, tta: bool = False,
                       fusion: bool | None = None, precision: str = "float32", noise_level=None) -> np.ndarray:
    """Denoise ``image`` on the workers of ``client`` and return the result in memory."""
    lazy = denoise_lazily(image, model, axes=axes, tile_shape=tile_shape, tta=tta, fusion=fusion,
                          precision=precision, noise_level=noise_level)
    return client.compute(lazy).result()
