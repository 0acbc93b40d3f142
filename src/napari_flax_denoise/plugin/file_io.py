"""napari reader and writer contributions (GUI-free): DICOM, NIfTI, OME-TIFF and OME-Zarr with spacing.

napari opens plain TIFF itself; these add the formats it lacks, and keep the
physical voxel spacing as the layer's ``scale``, with its units and the axes as labels.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserInputError
from ..io.files import open_image, write_image


def _ours(path: Path) -> bool:
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz", ".dcm", ".zarr", ".ome.tif", ".ome.tiff")):
        return True
    return path.is_dir() and any(p.suffix.lower() == ".dcm" for p in path.iterdir())


def get_reader(path):
    """Return :func:`read_layers` for a DICOM file, folder or file list, NIfTI or zarr; else None."""
    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    if len(paths) > 1:
        return read_layers if all(p.suffix.lower() == ".dcm" for p in paths) else None
    return read_layers if _ours(paths[0]) else None


def read_layers(path) -> list[tuple]:
    """Read ``path`` (or a list of one series' ``.dcm`` files) into one image layer.

    The layer's ``scale`` is the voxel spacing. Errors (a corrupt DICOM file,
    mixed series ...) reach napari as an exception whose message says what
    to do.
    """
    paths = [Path(p) for p in (path if isinstance(path, list) else [path])]
    if len(paths) == 1 and paths[0].suffix.lower() == ".dcm":  # one slice opens its whole series
        from ..io.dicom import series_files

        paths = series_files(paths[0])
    if len(paths) > 1:
        from ..io.dicom import read_dicom
        from ..io.files import ImageFile

        opened = ImageFile(*read_dicom(paths))
    else:
        opened = open_image(paths[0])
    path = paths[0] if len(paths) == 1 else paths[0].parent
    name = path.name.removesuffix(".gz").rsplit(".", 1)[0] if path.is_file() else path.name
    return [opened.layer(name.removesuffix(".ome"), source=str(path))]


def write_layer(path: str, data, meta: dict) -> list[str]:
    """Write one image layer to ``.nii``/``.nii.gz``, ``.tif`` (OME) or ``.zarr`` with its spacing.

    The axes come from the layer's metadata (set by our readers and samples)
    or default to the trailing Z Y X; the spacing is the layer's ``scale``.
    """
    ndim = len(data.shape)
    axes = str(meta.get("metadata", {}).get("axes", "")) or "".join("TZYX"[-ndim:])
    if len(axes) != ndim:
        raise UserInputError(f"The layer has {ndim} dimensions but its axes are '{axes}'; fix layer.metadata['axes'].")
    spacing = {axis: float(size) for axis, size in zip(axes, meta.get("scale", [1.0] * ndim)) if axis in "TZYX"}
    units = {axis: str(unit) for axis, unit in zip(axes, meta.get("units") or [])}
    return [str(write_image(path, data, axes, spacing, units))]
