"""Inference: denoising images of any size with a trained model.

``prediction``
    ``denoise`` / ``denoise_iter``: the entry point.
``in_memory``
    An image or stack in memory: normalisation, noise level, network, test-time augmentation, fusion.
``lazy_stack``
    A lazy array (zarr, dask, memory-mapped), a few planes at a time, never whole.
``host_tiles``
    The CPU route: tiles cut and stitched on the host, one batch at a time.
``resident``, ``resident_fusion``, ``resident_stack``
    The accelerator route: the image stays on the device, tiles are cut and stitched there,
    and fusion runs there too; a stack goes in chunks of planes, its transfers overlapping the work.
``augmentation``
    Test-time augmentation over the 8 symmetries of the YX plane.
``tiling``
    Tile shapes and spans.
``fusion``
    Pixel fusion (the noise line it fits is in ``noise``).
``batch``
    Files in, files out: one input or many into a folder, with one model load.
``cluster``
    Denoising a lazy stack on a dask cluster.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "denoise": "prediction",
    "denoise_iter": "prediction",
    "denoise_files": "batch",
})
