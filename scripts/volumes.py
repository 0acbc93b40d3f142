"""Synthetic fluorescence-microscopy-like volumes with a point-spread function, for the 3D model.

    python scripts/volumes.py --preview /tmp/volumes.tif   # a few volumes to look at in napari

Every volume is drawn from a seed: a sum of structures (nuclei with texture,
filaments, puncta, smooth tissue with edges) on a faint uneven background,
blurred by a Gaussian point-spread function that is longer along Z, then
sampled every ``z_step`` planes (anisotropic voxels: Z spacing ``z_step``
times Y / X). Intensities are on 0-255 with a random dynamic range, so that
the noise models of ``train_embedded.py`` apply unchanged.
"""

from __future__ import annotations

import argparse

import numpy as np
from scipy import ndimage

KINDS = ("nuclei", "filaments", "puncta", "tissue")


def _field(shape, scale, rng) -> np.ndarray:
    """A smooth random field, zero mean and unit standard deviation, correlated over ``scale`` voxels."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), scale)
    return (field - field.mean()) / (field.std() + 1e-12)


def nuclei(shape, rng) -> np.ndarray:
    """Ellipsoids of random size, brightness and texture, some touching."""
    out = np.zeros(shape)
    zz, yy, xx = np.indices(shape, sparse=True)
    texture = 1 + 0.25 * _field(shape, 2.0, rng)
    for _ in range(int(rng.integers(6, 30))):
        centre = rng.uniform(0, 1, 3) * shape
        radii = rng.uniform(4, 14, 3)
        inside = (((zz - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2
                  + ((xx - centre[2]) / radii[2]) ** 2) <= 1
        out = np.maximum(out, inside * rng.uniform(0.3, 1.0))
    return out * texture


def filaments(shape, rng) -> np.ndarray:
    """Smoothly bending lines (random walks with momentum) of random brightness."""
    out = np.zeros(shape)
    for _ in range(int(rng.integers(5, 25))):
        point = rng.uniform(0, 1, 3) * shape
        direction = rng.normal(size=3)
        brightness = rng.uniform(0.3, 1.0)
        for _ in range(int(rng.integers(60, 300))):
            direction = direction / np.linalg.norm(direction) + rng.normal(0, 0.15, 3)
            point = point + direction / np.linalg.norm(direction)
            index = tuple(np.round(point).astype(int))
            if all(0 <= i < s for i, s in zip(index, shape)):
                out[index] = max(out[index], brightness)
    return ndimage.grey_dilation(out, size=(1, 2, 2)) if rng.random() < 0.5 else out


def puncta(shape, rng) -> np.ndarray:
    """Sparse bright spots (vesicles, spots of a single-molecule image)."""
    out = np.zeros(shape)
    count = int(rng.integers(30, 400))
    index = tuple(rng.integers(0, s, count) for s in shape)
    out[index] = rng.uniform(0.3, 1.0, count)
    return out


def tissue(shape, rng) -> np.ndarray:
    """Smooth regions with sharp borders and texture (tissue, organs in MR)."""
    levels = np.zeros(shape)
    for _ in range(int(rng.integers(2, 5))):
        levels += (_field(shape, rng.uniform(4, 12), rng) > rng.uniform(-0.5, 0.8)) * rng.uniform(0.15, 0.5)
    return levels * (1 + 0.15 * _field(shape, rng.uniform(1, 3), rng))


STRUCTURES = {"nuclei": nuclei, "filaments": filaments, "puncta": puncta, "tissue": tissue}


def volume(seed: int, shape=(48, 96, 96), z_step: int = 1, kinds=None) -> np.ndarray:
    """One clean volume ``shape`` (Z after sampling every ``z_step`` planes) on 0-255.

    ``kinds``: the structures to draw (default: one or two at random).
    """
    rng = np.random.default_rng(seed)
    fine = (shape[0] * z_step, *shape[1:])
    if kinds is None:
        kinds = list(rng.choice(KINDS, size=int(rng.integers(1, 3)), replace=False))
    lateral = rng.uniform(0.7, 1.6)  # PSF sigma in Y / X, in voxels; 2-4x longer along Z
    psf = (lateral * rng.uniform(2, 4), lateral, lateral)
    blurred = rng.uniform(0.0, 0.1) * (1 + 0.5 * _field(fine, 16, rng))  # uneven background
    for kind in kinds:  # each structure blurred, then scaled to its own brightness (thin ones fade less)
        part = ndimage.gaussian_filter(STRUCTURES[kind](fine, rng), psf)
        blurred += part / max(np.percentile(part, 99.9), 1e-12) * rng.uniform(0.5, 1.0)
    sampled = blurred[int(rng.integers(0, z_step)):: z_step][: shape[0]]
    low, high = np.percentile(sampled, (0.1, 99.9))
    peak = rng.uniform(120, 255)
    return np.clip((sampled - low) / max(high - low, 1e-12), 0, 1.2) / 1.2 * peak


def extruded(image: np.ndarray, seed: int, shape=(48, 96, 96), z_step: int = 1) -> np.ndarray:
    """A volume from a 2D image on 0-255: a crop whose planes drift, turn and zoom slowly along Z, so
    that a real image's texture continues from plane to plane; blurred along Z by a point-spread
    function and sampled every ``z_step`` planes."""
    rng = np.random.default_rng(seed)
    depth, edge = shape[0] * z_step, max(shape[1:])
    drift, turn, zoom = rng.normal(0, 0.5, 2), rng.normal(0, 0.01), rng.normal(0, 0.003)
    room = [size - edge - 2 * int(abs(d) * depth) - 8 for size, d in zip(image.shape, drift)]
    corner = [int(rng.integers(0, max(r, 0) + 1)) + int(abs(d) * depth) + 4 for r, d in zip(room, drift)]
    centre = np.array(corner) + edge / 2
    planes = []
    for z in range(depth):
        c, s = np.cos(turn * z), np.sin(turn * z)
        matrix = np.array([[c, -s], [s, c]]) * (1 + zoom * z)
        source = centre + drift * z  # where the crop's centre comes from in plane z
        offset = source - matrix @ (np.array([edge, edge]) / 2)
        planes.append(ndimage.affine_transform(image, matrix, offset, output_shape=(edge, edge), order=1,
                                               mode="reflect"))
    volume = ndimage.gaussian_filter1d(np.stack(planes), rng.uniform(0.5, 2.0), axis=0)
    return volume[int(rng.integers(0, z_step))::z_step][: shape[0], : shape[1], : shape[2]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preview", required=True, help="TIFF file for a stack of example volumes (T Z Y X)")
    parser.add_argument("--count", type=int, default=4)
    args = parser.parse_args(argv)
    import tifffile

    stack = np.stack([volume(seed, z_step=1 + seed % 3) for seed in range(args.count)])
    tifffile.imwrite(args.preview, stack.astype(np.float32), imagej=True, metadata={"axes": "TZYX"})


if __name__ == "__main__":
    main()
