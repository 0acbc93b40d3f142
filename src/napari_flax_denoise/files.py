"""Reading and atomically writing images: TIFF / OME-TIFF, ``.npy`` and PNG."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from .errors import UserInputError

IMAGE_SUFFIXES = (".tif", ".tiff", ".npy", ".png")
# tifffile's axis letters mapped to ours; 'S' there means RGB samples.
_TIFF_AXES = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path`` and rename it over ``path`` on success.

    A crash or error leaves ``path`` untouched (old content or absent) and
    removes the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise UserInputError(
            f"'{path}' has an unsupported extension; use one of {', '.join(IMAGE_SUFFIXES)}."
        )
    return suffix


def read_image(path: str | Path) -> tuple[np.ndarray, str | None]:
    """Read an image file.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff`` (OME-TIFF and ImageJ axes are read), ``.npy`` or
        ``.png`` file.

    Returns
    -------
    image : ndarray
    axes : str or None
        Axes from the file's metadata when it has any we can trust, else None.
    """
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise UserInputError(f"Input file '{path}' does not exist; check the path.")
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        if suffix == ".png":
            import imageio.v3 as iio

            image = iio.imread(path)
            return image, ("YXC" if image.ndim == 3 else None)
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            image = series.asarray()
            axes = None
            if tif.is_ome or tif.is_imagej:
                letters = [_TIFF_AXES.get(a) for a in series.axes]
                if None not in letters and len(set(letters)) == len(letters):
                    axes = "".join(letters)
            return image, axes
    except UserInputError:
        raise
    except Exception as err:  # every reader has its own exception types
        raise UserInputError(f"Could not read '{path}' as an image ({type(err).__name__}: {err}); "
                             "check that the file is complete and in a supported format.") from None


def physical_spacing(path: str | Path) -> dict[str, float]:
    """Pixel sizes recorded in an OME-TIFF, e.g. ``{"Y": 0.107, "X": 0.107}``.

    Returns an empty dict for files without OME physical sizes.
    """
    import xml.etree.ElementTree as ElementTree

    import tifffile

    with tifffile.TiffFile(path) as tif:
        if not tif.is_ome:
            return {}
        pixels = next((e for e in ElementTree.fromstring(tif.ome_metadata).iter() if e.tag.endswith("Pixels")), None)
    if pixels is None:
        return {}
    return {axis: float(pixels.get(f"PhysicalSize{axis}")) for axis in "ZYX" if pixels.get(f"PhysicalSize{axis}")}


def write_image(path: str | Path, image: np.ndarray, axes: str | None = None) -> Path:
    """Write ``image`` atomically; TIFF output records ``axes`` as OME metadata.

    Parameters
    ----------
    path : str or Path
        Output file; the extension chooses the format.
    image : ndarray
    axes : str, optional
        Axes of ``image`` (S T C Z Y X); stored in OME-TIFF output.
    """
    path = Path(path)
    suffix = _suffix(path)
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as handle:
                np.save(handle, image)
        elif suffix == ".png":
            import imageio.v3 as iio

            iio.imwrite(tmp, _to_uint8(image), extension=".png")
        else:
            import tifffile

            metadata = {"axes": axes.replace("S", "Q")} if axes else None
            tifffile.imwrite(tmp, image, ome=bool(axes), metadata=metadata)
    return path


def _to_uint8(image):
    # PNG holds 8-bit data: rescale float results to 0-255 rather than clip them.
    if image.dtype == np.uint8:
        return image
    low, high = float(np.min(image)), float(np.max(image))
    scaled = (image - low) / (high - low) if high > low else np.zeros_like(image, np.float32)
    return np.round(scaled * 255).astype(np.uint8)
