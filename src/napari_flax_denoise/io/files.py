"""Reading and atomically writing images, chosen by extension.

TIFF / OME-TIFF, ``.npy`` and PNG here; DICOM series (a folder or ``.dcm``
files), NIfTI (``.nii``, ``.nii.gz``) and zarr / OME-Zarr (``.zarr``, lazy)
in their own modules. Every reader gives the axes and physical spacing it
knows, and every writer keeps them where the format can.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .atomic import TEMPORARY_EXTRA, atomic_path
from .atomic import full_suffix as _suffix
from .limits import check_memory, check_stored, npy_header
from .units import OME, known

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".nii", ".nii.gz", ".zarr", ".dcm")
WRITE_SUFFIXES = (".tif", ".tiff", ".npy", ".png", ".nii", ".nii.gz", ".zarr")
# Larger uncompressed TIFFs are memory-mapped (read-only) instead of loaded.
MEMMAP_TIFF_BYTES = 256 * 2**20
# tifffile's axis letters mapped to ours; 'S' there means RGB samples.
_TIFF_AXES = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}


@dataclass
class ImageFile:
    """An image read from disk with what the file says about it.

    Attributes
    ----------
    data : ndarray or dask.array.Array
        Lazy for zarr inputs.
    axes : str or None
        Axes from the file, when it records them.
    spacing : dict
        Physical size per axis letter (e.g. ``{"Z": 2.5, "Y": 0.7, "X": 0.7}``).
    metadata : dict
        Format-specific extras (DICOM modality, NIfTI unit ...).
    """

    data: object
    axes: str | None = None
    spacing: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    @property
    def units(self) -> dict:
        """Unit of the spacing per axis letter (``"mm"``, ``"µm"`` ...), where the file says."""
        return known(self.metadata.get("units"))

    def layer(self, name: str, **metadata) -> tuple:
        """A napari layer-data tuple: the spacing as ``scale``, with units and axis labels.

        Axes the file does not name are taken as the trailing (T) Z Y X.
        """
        axes = self.axes or "".join("TZYX"[-len(self.data.shape):])
        kwargs = {"name": name, "metadata": {"axes": axes, "spacing": self.spacing, **self.metadata, **metadata}}
        placed = axes.replace("C", "")  # napari places every axis but the channels'
        if "C" in axes:  # colour as RGB(A), other channels as one layer each
            colour = axes.endswith("C") and self.data.shape[-1] in (3, 4) and np.dtype(self.data.dtype) == np.uint8
            kwargs.update(rgb=True) if colour else kwargs.update(channel_axis=axes.index("C"))
        kwargs.update(scale=[self.spacing.get(axis, 1.0) for axis in placed], axis_labels=list(placed))
        if self.units:  # a pixel where the file gives no unit
            kwargs["units"] = [self.units.get(axis, "pixel") for axis in placed]
        return self.data, kwargs, "image"


# The longest file name most file systems take; atomic_path's temporary sibling adds to the output's.
_NAME_MAX = 255


def check_output(path: str | Path, *, inputs=(), others=(), folder: bool = False, allowed=WRITE_SUFFIXES) -> Path:
    """Refuse an output path that would lose data or fail only after the work is done.

    Parameters
    ----------
    path : str or Path
        The output: an image file (or ``.zarr`` store), or with ``folder`` a model directory.
    inputs : sequence of str or Path
        Files and stores read by the job: the output may not be one, lie inside one, or hold one.
    others : sequence of str or Path
        Other outputs of the same job, which it may not equal.
    folder : bool
        The output is a directory (a model folder): no extension to check.
    allowed : tuple of str
        Extensions an image output may have.

    Returns
    -------
    Path

    Raises
    ------
    UserInputError
        One sentence saying which path is wrong and what to do.
    """
    path = Path(path)
    where = path.resolve()
    InputPaths(inputs).check(path, where)
    for other in others:
        if other is not None and where == Path(other).resolve():
            raise UserInputError(f"Two outputs are the same file '{path}'; give each its own name.")
    if not folder:
        if path.is_dir() and _suffix(path) != ".zarr":
            raise UserInputError(f"The output '{path}' is an existing folder; give a file name inside it.")
        if _checked_suffix(path, allowed) == ".zarr":
            from .zarr_store import check_replaceable

            check_replaceable(path)
    elif path.exists() and not path.is_dir():
        raise UserInputError(f"The model folder '{path}' is an existing file; give a folder name.")
    parent = next((p for p in where.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserInputError(f"The output '{path}' lies under '{parent}', which is a file, not a folder.")
    if len(path.name.encode()) + TEMPORARY_EXTRA + len(_suffix(path)) > _NAME_MAX:
        raise UserInputError(f"The output name '{path.name}' is too long for the file system; shorten it.")
    return path


class InputPaths:
    """The resolved paths a job reads, to check outputs against (each check is a walk up one path).

    Parameters
    ----------
    inputs : sequence of str or Path
    """

    def __init__(self, inputs=()):
        self.paths = {Path(source).resolve() for source in inputs}
        self._holders = {parent for source in self.paths for parent in source.parents}

    def check(self, path, where: Path | None = None) -> None:
        """Refuse an output that is an input, lies inside one (a store or series folder), or holds one."""
        where = Path(path).resolve() if where is None else where
        source = next((p for p in (where, *where.parents) if p in self.paths), None)
        if source is None and where in self._holders:
            source = next(p for p in self.paths if p.is_relative_to(where))
        if source is not None:
            raise UserInputError(f"The output '{path}' would overwrite the input '{source}'; "
                                 "write to another file or folder.")


def _checked_suffix(path: Path, allowed=IMAGE_SUFFIXES) -> str:
    suffix = _suffix(path)
    if suffix not in allowed:
        raise UserInputError(f"'{path}' has an unsupported extension; use one of {', '.join(allowed)}.")
    return suffix


def open_image(path: str | Path) -> ImageFile:
    """Open an image file, a DICOM folder or a zarr store.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (OME-TIFF and ImageJ axes and pixel sizes),
        ``.npy``, ``.png``, ``.nii``/``.nii.gz``, ``.zarr``, a ``.dcm`` file
        or a folder holding one DICOM series.

    Returns
    -------
    ImageFile
    """
    path = Path(path)
    if path.is_dir() and _suffix(path) != ".zarr":
        from .dicom import read_dicom

        return ImageFile(*read_dicom([path]))
    suffix = _checked_suffix(path)
    if not path.exists():
        raise UserInputError(f"Input file '{path}' does not exist; check the path.")
    if suffix == ".dcm":
        from .dicom import read_dicom

        return ImageFile(*read_dicom([path]))
    if suffix in (".nii", ".nii.gz"):
        from .nifti import read_nifti

        return ImageFile(*read_nifti(path))
    if suffix == ".zarr":
        from .zarr_store import read_zarr

        return ImageFile(*read_zarr(path))
    try:
        if suffix == ".npy":
            return ImageFile(_read_npy(path))
        if suffix == ".png":
            import imageio.v3 as iio

            image = iio.imread(path)
            return ImageFile(image, "YXC" if image.ndim == 3 else None)
        return _read_tiff(path)
    except UserInputError:
        raise
    except Exception as err:  # every reader has its own exception types
        raise UserInputError(f"Could not read '{path}' as an image ({type(err).__name__}: {err}); "
                             "check that the file is complete and in a supported format.") from None


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array, its header checked against the file first; large ones are mapped, not loaded."""
    with open(path, "rb") as handle:
        if handle.read(4) == b"PK\x03\x04":
            raise UserInputError(f"'{path}' is an .npz archive, not a single .npy array; save one array with "
                                 "numpy.save, or rename it to .npz and extract the array you want.")
        handle.seek(0)
        shape, dtype = npy_header(handle)
        offset = handle.tell()
    if dtype.hasobject:
        raise UserInputError(f"'{path}' holds Python objects, not numbers; save a numeric array.")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    check_stored(path, offset, nbytes)
    if nbytes > MEMMAP_TIFF_BYTES:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    return np.load(path, allow_pickle=False)


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if series.dataoffset is not None:
            check_stored(path, series.dataoffset, series.nbytes)
        if series.dataoffset is not None and series.nbytes > MEMMAP_TIFF_BYTES:
            # uncompressed and contiguous: map it, so planes and patches are read on demand
            image = tifffile.memmap(path, series=0, mode="r")
        else:
            check_memory(path, series.nbytes, pixels=series.size)
            image = series.asarray()
        axes = None
        if tif.is_ome or tif.is_imagej:
            letters = [_TIFF_AXES.get(a) for a in series.axes]
            if None not in letters and len(set(letters)) == len(letters):
                axes = "".join(letters)
        spacing, units = _ome_spacing(tif.ome_metadata) if tif.is_ome else ({}, {})
    return ImageFile(image, axes, spacing, {"units": units} if units else {})


def _ome_spacing(ome_xml: str) -> tuple[dict[str, float], dict[str, str]]:
    """Physical sizes per axis and their units (OME's default unit is the micrometre)."""
    import xml.etree.ElementTree as ElementTree

    pixels = next((e for e in ElementTree.fromstring(ome_xml).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}, {}
    spacing = {axis: float(pixels.get(f"PhysicalSize{axis}")) for axis in "ZYX" if pixels.get(f"PhysicalSize{axis}")}
    return spacing, known({axis: pixels.get(f"PhysicalSize{axis}Unit", "µm") for axis in spacing})


def read_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Read an image into memory; returns ``(image, axes or None)``. See :func:`open_image`."""
    opened = open_image(path)
    return np.asarray(opened.data), opened.axes


def write_image(path: str | Path, image, axes: str | None = None, spacing: dict | None = None,
                units: dict | None = None) -> Path:
    """Write ``image`` atomically in the format its extension names.

    Parameters
    ----------
    path : str or Path
        ``.tif``/``.tiff`` (OME-TIFF with axes and pixel sizes), ``.npy``,
        ``.png``, ``.nii``/``.nii.gz`` (Z Y X with a diagonal affine) or
        ``.zarr`` (OME-Zarr, written plane by plane).
    image : array_like
        May be lazy for ``.zarr`` output.
    axes : str, optional
        Axes of ``image`` (S T C Z Y X).
    spacing : dict, optional
        Physical size per axis letter.
    units : dict, optional
        Unit of the spacing per axis letter (``"mm"``, ``"µm"``); kept by
        OME-TIFF, OME-Zarr and NIfTI (which has one spatial unit).
    """
    path = Path(path)
    suffix = _checked_suffix(path, WRITE_SUFFIXES)
    spacing, units = spacing or {}, known(units)
    if suffix == ".zarr":
        from .zarr_store import write_zarr

        write_zarr(path, image, axes or "".join("STCZYX"[-np.ndim(image):]), spacing, units)
        return path
    image = np.asarray(image)
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, image)
        elif suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, _to_uint8(image), extension=".png")
        elif suffix in (".nii", ".nii.gz"):
            from .nifti import write_nifti

            write_nifti(tmp, image, axes or ("ZYX" if image.ndim == 3 else "YX"), spacing, units)
        else:
            import tifffile

            metadata = None
            if axes:
                metadata = {"axes": axes.replace("S", "Q")}
                for axis, size in spacing.items():
                    if axis in "ZYX" and axis in axes:
                        metadata[f"PhysicalSize{axis}"] = float(size)
                        if units.get(axis) in OME:
                            metadata[f"PhysicalSize{axis}Unit"] = OME[units[axis]]
            tifffile.imwrite(tmp, image, ome=bool(axes), metadata=metadata)
    return path


def _to_uint8(image):
    # PNG holds 8-bit data: rescale float results to 0-255 rather than clip them.
    if image.dtype == np.uint8:
        return image
    low, high = float(np.min(image)), float(np.max(image))
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image, np.float32)
    return np.round(scaled * 255).astype(np.uint8)
