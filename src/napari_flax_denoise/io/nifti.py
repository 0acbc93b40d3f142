"""NIfTI images (``.nii``, ``.nii.gz``): reoriented to Z Y X with the header's voxel sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .limits import check_memory, check_stored
from .units import NIFTI
from .units import canonical as known_unit


def read_nifti(path: str | Path) -> tuple[np.ndarray, str, dict, dict]:
    """Read a 2D-4D NIfTI image, reoriented to the closest canonical (RAS) orientation.

    Returns
    -------
    image : ndarray
        ``(Z, Y, X)`` (``(T, Z, Y, X)`` for 4D) with the scaling slope applied.
    axes : str
    spacing : dict
        Voxel size per axis letter, in the header's unit.
    metadata : dict
        The spatial unit and the original affine.
    """
    import nibabel

    try:
        nifti = nibabel.load(str(path))  # reads the header only
    except FileNotFoundError:
        raise UserInputError(f"Input file '{path}' does not exist; check the path.") from None
    except Exception as err:
        raise UserInputError(f"Could not read '{path}' as NIfTI ({type(err).__name__}: {err}); check that the file "
                             "is complete.") from None
    _check_claim(path, nifti)
    try:
        if nifti.ndim == 2:  # reorient as a one-slice volume; nibabel reorients 3D and up
            nifti = type(nifti)(np.asanyarray(nifti.dataobj)[:, :, None], nifti.affine, nifti.header)
        canonical = nibabel.as_closest_canonical(nifti)
        data = np.asanyarray(canonical.dataobj)
    except Exception as err:
        raise UserInputError(f"Could not read '{path}' as NIfTI ({type(err).__name__}: {err}); check that the file "
                             "is complete.") from None
    if data.ndim not in (3, 4):
        raise UserInputError(f"'{path}' has {data.ndim} dimensions; NIfTI images of 2 to 4 dimensions are supported.")
    zooms = [float(z) for z in canonical.header.get_zooms()]
    unit = canonical.header.get_xyzt_units()[0] or "unknown"
    metadata = {"unit": unit, "affine": nifti.affine.tolist()}
    if known_unit(unit):
        metadata["units"] = {axis: known_unit(unit) for axis in "ZYX"}
    spatial = {"Z": zooms[2], "Y": zooms[1], "X": zooms[0]}
    if data.ndim == 3 and 1 in data.shape and nifti.shape[2] == 1:  # a single slice: the two axes it spans
        kept = [i for i in range(3) if data.shape[i] != 1][:2] if data.shape.count(1) < 3 else [0, 1]
        plane = np.transpose(data, (*[i for i in range(3) if i not in kept], *kept[::-1]))[0]
        names = [("X", "Y", "Z")[i] for i in kept[::-1]]
        return plane, "YX", {"Y": spatial[names[0]], "X": spatial[names[1]]}, metadata
    if data.ndim == 3:
        return np.transpose(data, (2, 1, 0)), "ZYX", spatial, metadata
    return np.transpose(data, (3, 2, 1, 0)), "TZYX", {"T": zooms[3], **spatial}, metadata


def _check_claim(path, nifti) -> None:
    """The header's size claim against the file (uncompressed) or the free memory (gzip)."""
    header = nifti.header
    shape = header.get_data_shape()
    nbytes = int(np.prod(shape, dtype=np.int64)) * header.get_data_dtype().itemsize
    if str(path).lower().endswith(".gz"):
        check_memory(path, nbytes, pixels=int(np.prod(shape, dtype=np.int64)))
    else:
        check_stored(path, int(header.get_data_offset()), nbytes)


def write_nifti(path: Path, image: np.ndarray, axes: str, spacing: dict, units: dict | None = None) -> None:
    """Write a ``(T,) Z, Y, X`` (or Y, X) image with a diagonal affine of its spacing.

    The spatial unit is that of X in ``units`` when NIfTI can say it, else millimetres.
    """
    import nibabel

    if set(axes) - set("TZYX") or not axes.endswith("YX"):
        raise UserInputError(f"NIfTI output holds Z Y X (and T) axes, not '{axes}'; write .tif or .zarr instead.")
    reverse = tuple(range(image.ndim))[::-1]  # (T,) Z, Y, X -> X, Y, Z(, T)
    sizes = [float(spacing.get(a, 1.0)) for a in "XYZ"]
    affine = np.diag(sizes + [1.0])
    nifti = nibabel.Nifti1Image(np.transpose(image, reverse), affine)
    nifti.header.set_xyzt_units(NIFTI.get((units or {}).get("X"), "mm"))
    if "T" in axes:
        nifti.header.set_zooms(tuple(sizes[: image.ndim - 1]) + (float(spacing.get("T", 1.0)),))
    nibabel.save(nifti, str(path))
