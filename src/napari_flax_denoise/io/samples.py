"""Sample images for napari's File > Open Sample menu (and for tests).

Each loader returns napari layer-data tuples ``(data, kwargs, "image")``
built from the files in ``sample_data/`` (shipped in the wheel); origin and
licence of each file are in ``sample_data/README.md``. No napari import.
"""

from __future__ import annotations

from importlib.resources import files

from .files import open_image


def sample_path(name: str):
    """Path of a shipped sample file, e.g. ``sample_path("nuclei2d_noisy.tif")``."""
    return files("napari_flax_denoise.sample_data") / name


def _layer(name: str, title: str, description: str) -> tuple:
    return open_image(sample_path(name)).layer(title, sample=description)


def nuclei_2d() -> list[tuple]:
    """Fluorescent nuclei, 512 x 512, with real acquisition noise."""
    return [_layer("nuclei2d_noisy.tif", "nuclei (noisy)", "Fluorescence nuclei (DSB2018), real noise")]


def fmri_3d() -> list[tuple]:
    """One fMRI volume (24 x 96 x 128, 2.2 x 2 x 2 mm voxels) with real noise."""
    return [_layer("fmri3d_noisy.tif", "fMRI volume (noisy)", "fMRI volume (nibabel example4d), real noise")]


def ct_2d() -> list[tuple]:
    """A 128 x 128 CT slice in Hounsfield units (0.66 mm pixels)."""
    return [_layer("ct2d.tif", "CT slice", "CT slice (pydicom CT_small), Hounsfield units")]


def cell_pair() -> list[tuple]:
    """A clean quantitative-phase cell image and a copy with synthetic Poisson-Gaussian noise."""
    return [_layer("cell2d_noisy.tif", "cell (synthetic noise)", "skimage cell + Poisson-Gaussian noise, seed 2026"),
            _layer("cell2d_clean.tif", "cell (clean)", "skimage cell, clean target for care")]
