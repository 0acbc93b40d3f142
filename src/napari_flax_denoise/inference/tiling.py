"""Tile shapes and spans: how an image is cut into overlapping tiles of one shape.

The overlap is the network's halo (its receptive radius rounded to the
pooling grid); every tile gives only its centre, and an image edge inside a
tile is kept up to the edge. Pure arithmetic on shapes: no arrays, no JAX
programs; the backend profile gives the largest default tile.
"""

from __future__ import annotations

import itertools

import numpy as np

from ..errors import UserInputError
from ..network.unet import halo as network_halo
from ..runtime.backend import active

# The step in which 3D images smaller than the profile's largest default tile
# (:attr:`~napari_flax_denoise.runtime.backend.Profile.tile_cap`) are rounded
# up, so only a handful of tile shapes (compilations) ever occur.
_TILE_STEP = {2: 64, 3: 16}
# A 2D side that fits one tile is rounded up to an eighth of its power of two
# (272 -> 288, 600 -> 640): at most 12.5% wasted, eight shapes per octave.
_STEPS_PER_OCTAVE = 8
# A 3D tile may be longer than the cap on one axis if it is shorter on another: its
# voxels stay within the cap's, and the 32-voxel halo on each side wastes less.
_TILE_LONGEST_3D = (160, 320, 320)


def edge_margin(halo: int, grid: int) -> int:
    """Mirrored margin at image edges: a quarter of the halo, on the pooling grid.

    Without it the outermost pixels meet the convolutions' zero padding: on
    a 128-pixel image and a briefly trained model that cost 1.6 dB over the
    whole image, nearly all of it in the outer 2 pixels. With 4-8 mirrored
    pixels the result matched a full-halo mirror within 0.01 dB.
    """
    return -(-(halo // 4) // grid) * grid


def default_tile_shape(spatial_shape, config) -> tuple[int, ...]:
    """Tile shape for an image: the whole image (with its margins) rounded up if small,
    else the fewest tiles under the cap, made just large enough to cover it.

    In 2D the cap (the backend profile's, 1024) comes plus the overlap, so a
    2048-pixel side takes two or four tiles with no pixels to spare. A side
    between caps gets tiles of equal size rather than full tiles whose last
    one reaches far past the image: on a 1200-pixel side, two tiles of 640
    instead of two of 1088. In 3D a tile keeps the cap's volume but takes the
    shape whose tiles compute the fewest voxels (:func:`_fewest_voxels`).
    A 2D side that fits in one tile is rounded up to an eighth of its power
    of two (32 pixels for 256-511, 64 for 512-1023), so images of similar
    sizes share one compiled tile (a compilation took 0.6-0.7 s, more than
    denoising a 512x512 image) and none computes more than 12.5% past its
    edge (a 256x256 image, 272 with margins: 288 instead of the 320 of
    64-pixel steps, 0.145 s instead of 0.159 on 2 cores). A side cut into several
    tiles is rounded only to the pooling grid: every pixel a tile computes
    past the image is wasted, and a large image takes seconds to denoise.
    2048x2048 gets tiles of 1064 instead of 1088 (4.4% fewer pixels). 3D
    sizes are rounded to 16 voxels.
    """
    dims, halo = config.dims, network_halo(config)
    caps = active().tile_cap[dims]
    step = _TILE_STEP[dims]
    if dims == 2:
        caps = tuple(cap + 2 * halo for cap in caps)
    margin = edge_margin(halo, 2**config.depth)
    if dims == 3:
        return _fewest_voxels([s + 2 * margin for s in spatial_shape], caps, halo, step)
    shape = []
    for size, cap in zip(spatial_shape, caps):
        size += 2 * margin
        count = 1 if size <= cap else -(-(size - 2 * halo) // (cap - 2 * halo))
        tile = -(-(size + 2 * halo * (count - 1)) // count)  # count tiles overlapping by 2 * halo cover size
        rounding = _single_tile_step(tile, 2**config.depth) if count == 1 else 2**config.depth
        shape.append(min(cap, -(-tile // rounding) * rounding))
    return tuple(shape)


def _single_tile_step(size: int, grid: int) -> int:
    """The rounding of a 2D side that fits one tile: an eighth of its power of two, on the pooling grid."""
    eighth = 2 ** (int(size).bit_length() - 1) // _STEPS_PER_OCTAVE
    return max(grid, eighth // grid * grid)


def _fewest_voxels(sizes, caps, halo: int, step: int) -> tuple[int, ...]:
    """The 3D tile shape (multiples of ``step``, at most as many voxels as ``caps``) whose
    tiles compute the fewest voxels over an image of ``sizes`` (margins included);
    of equal costs, the larger tile. A tile no longer than twice the halo cannot
    be one of several along an axis; where no shape fits (a deep network's
    halo), the caps are returned and :func:`check_tiling` says what to do."""
    options = []
    for size, longest in zip(sizes, _TILE_LONGEST_3D):
        top = min(longest, -(-size // step) * step)
        options.append([(t, t if size <= t else np.inf if t <= 2 * halo else (-(-(size - t) // (t - 2 * halo)) + 1) * t)
                        for t in range(min(2 * halo + step, top), top + 1, step)])
    best = min((c for c in itertools.product(*options) if np.prod([t for t, _ in c]) <= np.prod(caps)),
               key=lambda c: (np.prod([cost for _, cost in c]), -np.prod([t for t, _ in c])), default=None)
    if best is None:  # nothing fits: the caps, as before
        return tuple(min(cap, -(-size // step) * step) for size, cap in zip(sizes, caps))
    return tuple(int(t) for t, _ in best)


def check_tiling(tile_shape, overlap, spatial_shape, config):
    """Validate a tile shape and overlap chosen by the user (or by :func:`default_tile_shape`).

    Parameters
    ----------
    tile_shape : int or sequence of int
        One size for every spatial axis, or one per axis.
    overlap : int, sequence of int or None
        Pixels shared by neighbouring tiles; None takes the network's halo on each side.
    spatial_shape : tuple of int
        The image's spatial shape.
    config : Config
        The model's configuration (its depth gives the pooling grid).

    Returns
    -------
    tile_shape, halos : tuple of int
        One tile size and one halo (half the overlap, on the pooling grid) per axis.

    Raises
    ------
    UserInputError
        When a size is off the pooling grid or leaves no room for new pixels between the halos.
    """
    dims = len(spatial_shape)
    grid = 2**config.depth
    halo = network_halo(config)
    if overlap is not None:
        overlap = tuple(overlap) if np.ndim(overlap) else (int(overlap),) * dims
        if len(overlap) != dims or any(o < 0 for o in overlap):
            raise UserInputError(f"overlap must be {dims} non-negative numbers, not {overlap}.")
        halos = tuple(int(-(-o // 2 // grid) * grid) for o in overlap)
    else:
        halos = (halo,) * dims
    tile_shape = tuple(int(t) for t in np.atleast_1d(tile_shape))
    if len(tile_shape) == 1:
        tile_shape = tile_shape * dims
    if len(tile_shape) != dims:
        raise UserInputError(f"tile_shape must have {dims} numbers for this {dims}D model, not {tile_shape}.")
    for t, h, size in zip(tile_shape, halos, spatial_shape):
        if t % grid or (t <= 2 * h and size > t):  # overlapping tiles need room for new pixels
            raise UserInputError(
                f"Tile size {t} must be a multiple of {grid} and larger than twice the overlap margin "
                f"({2 * h}); try {max(4 * h, 2 * grid)} or more, or leave tile_shape unset."
            )
    return tile_shape, halos


def tile_spans(size: int, tile: int, halo: int):
    """Tiles along one axis: ``(start, valid, keep_from, keep_to)`` each.

    Tiles start every ``tile - 2 * halo`` pixels; the last one may reach past
    the image (its ``valid`` part is image). Each tile keeps the pixels
    ``[keep_from, keep_to)`` of the image: its centre, and everything up to
    an image edge that lies inside it.
    """
    stride = tile - 2 * halo
    count = 1 if size <= tile else -(-(size - tile) // stride) + 1
    spans = []
    for k in range(count):
        start = k * stride
        keep_from = 0 if k == 0 else start + halo
        keep_to = size if k == count - 1 else start + stride + halo
        spans.append((start, min(tile, size - start), keep_from, keep_to))
    return spans
