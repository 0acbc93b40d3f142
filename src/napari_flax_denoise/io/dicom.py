"""DICOM series: slices sorted by position, rescale applied, spacing from the headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .limits import check_links

# Neighbouring slice gaps may differ by this fraction before the spacing counts as inconsistent.
SPACING_TOLERANCE = 0.01


def _candidates(paths) -> list[Path]:
    """The files to read: a folder's ``.dcm`` (or extension-less) files, or the given files."""
    if len(paths) == 1 and Path(paths[0]).is_dir():
        folder = Path(paths[0])
        check_links(folder)
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in (".dcm", "")
                       and not p.name.startswith(".") and p.name.upper() != "DICOMDIR")
        if not files:
            raise UserInputError(f"The folder '{folder}' holds no DICOM (.dcm) files; check the path.")
        return files
    return [Path(p) for p in paths]


def _read_header(path: Path):
    import pydicom

    try:
        return pydicom.dcmread(path)
    except FileNotFoundError:
        raise UserInputError(f"DICOM file '{path}' does not exist; check the path.") from None
    except Exception as err:  # pydicom raises several types for damaged files
        raise UserInputError(f"'{path}' is not a readable DICOM file ({type(err).__name__}); remove it from "
                             "the series or replace it with an intact copy.") from None


def _numbers(ds, keyword: str, count: int, path: Path) -> tuple:
    """The ``count`` numbers of a multi-valued header field, or a sentence saying it is damaged."""
    value = getattr(ds, keyword)
    try:
        numbers = tuple(float(v) for v in ([value] if isinstance(value, (str, bytes, int, float)) else value))
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != count or not all(np.isfinite(numbers)):
        raise UserInputError(f"'{path}' has a damaged {keyword} (expected {count} numbers, found {value!r}); "
                             "repair the headers or convert the series to NIfTI / OME-TIFF.")
    if keyword == "PixelSpacing" and min(numbers) <= 0:
        raise UserInputError(f"'{path}' has a PixelSpacing of {value!r}; pixel sizes must be positive, so repair "
                             "the headers.")
    return numbers


def _position(ds, normal) -> float | None:
    position = getattr(ds, "ImagePositionPatient", None)
    if position is None:
        return None
    try:
        position = np.asarray(position, float).reshape(3)
    except (TypeError, ValueError):
        return None
    return float(np.dot(position, normal))


def _pixels(ds, path: Path) -> np.ndarray:
    try:
        pixels = ds.pixel_array
    except Exception as err:
        raise UserInputError(f"Could not decode the pixels of '{path}' ({type(err).__name__}: {err}); "
                             "install the decoder it names or convert the file to uncompressed DICOM.") from None
    slope, intercept = float(getattr(ds, "RescaleSlope", 1) or 1), float(getattr(ds, "RescaleIntercept", 0) or 0)
    if (slope, intercept) != (1.0, 0.0):
        pixels = pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return pixels


def read_dicom(paths) -> tuple[np.ndarray, str, dict, dict]:
    """Read one DICOM series.

    Parameters
    ----------
    paths : sequence of str or Path
        One folder holding the series, or the series' files.

    Returns
    -------
    image : ndarray
        ``(Z, Y, X)`` for several slices or a multi-frame file, ``(Y, X)`` for one.
    axes : str
    spacing : dict
        Physical pixel size in mm per axis letter.
    metadata : dict
        Modality, series description and UID.

    Raises
    ------
    UserInputError
        Unreadable files, several series, missing or inconsistent spacing.
    """
    files = _candidates(paths)
    datasets = [(_read_header(p), p) for p in files]
    series = {str(getattr(ds, "SeriesInstanceUID", "")) for ds, _ in datasets}
    if len(series) > 1:
        raise UserInputError(f"The DICOM files belong to {len(series)} different series; put each series in its "
                             "own folder (or pass the files of one series) and read them one at a time.")
    first, first_path = datasets[0]
    if getattr(first, "PixelSpacing", None) is None:
        raise UserInputError(f"'{first_path}' has no PixelSpacing, so the pixel size is unknown; add it to the "
                             "headers or convert the series to NIfTI / OME-TIFF with its pixel size.")
    row, column = _numbers(first, "PixelSpacing", 2, first_path)
    metadata = {"modality": str(getattr(first, "Modality", "")), "series": str(getattr(first, "SeriesDescription", "")),
                "series_uid": next(iter(series)), "units": {"Z": "mm", "Y": "mm", "X": "mm"}}  # DICOM's unit
    frames = int(getattr(first, "NumberOfFrames", 1) or 1)
    if len(datasets) == 1:
        image = _pixels(first, first_path)
        if frames == 1:
            return image, "YX", {"Y": row, "X": column}, metadata
        step = float(getattr(first, "SpacingBetweenSlices", 0) or getattr(first, "SliceThickness", 0) or 0)
        if step <= 0:
            raise UserInputError(f"'{first_path}' has {frames} frames but no slice spacing (SpacingBetweenSlices or "
                                 "SliceThickness); add it or convert the file to NIfTI / OME-TIFF.")
        return image, "ZYX", {"Z": step, "Y": row, "X": column}, metadata
    sizes = {(int(getattr(ds, "Rows", 0)), int(getattr(ds, "Columns", 0))) for ds, _ in datasets}
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sorted(sizes))
        raise UserInputError(f"The slices of this series have different sizes ({listed}); keep only slices of one "
                             "size in the folder (a localizer or a derived image may have slipped in).")
    orientation = (_numbers(first, "ImageOrientationPatient", 6, first_path)
                   if getattr(first, "ImageOrientationPatient", None) is not None else (1, 0, 0, 0, 1, 0))
    orientation = np.asarray(orientation, float)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [_position(ds, normal) for ds, _ in datasets]
    if None in positions:
        missing = files[positions.index(None)]
        raise UserInputError(f"'{missing}' has no ImagePositionPatient, so the slice order and spacing are "
                             "unknown; add the positions or convert the series to NIfTI / OME-TIFF.")
    order = np.argsort(positions)
    gaps = np.diff(np.asarray(positions)[order])
    if np.any(gaps <= 0) or gaps.max() - gaps.min() > SPACING_TOLERANCE * gaps.mean():
        raise UserInputError(f"The slices of this series are unevenly spaced ({gaps.min():.3g} to {gaps.max():.3g} "
                             "mm apart, or repeated); remove duplicate or missing slices, or resample the series.")
    image = np.stack([_pixels(*datasets[i]) for i in order])
    return image, "ZYX", {"Z": float(gaps.mean()), "Y": row, "X": column}, metadata


def series_files(path: str | Path) -> list[Path]:
    """All files in the folder of the DICOM file ``path`` that belong to its series.

    napari hands a reader one file at a time; opening one slice should open its series.
    """
    import pydicom

    path = Path(path)
    uid = str(getattr(_read_header(path), "SeriesInstanceUID", ""))
    same = []
    for candidate in _candidates([path.parent]):
        try:
            header = pydicom.dcmread(candidate, stop_before_pixels=True)
        except Exception:  # unreadable neighbours belong to no series; read_dicom reports the chosen ones
            continue
        if str(getattr(header, "SeriesInstanceUID", "")) == uid:
            same.append(candidate)
    return same
