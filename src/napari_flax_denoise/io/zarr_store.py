"""Zarr and OME-Zarr images, read lazily through dask and written plane by plane."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from .atomic import partial_prefix, remove_stale_partials
from .limits import check_links
from .units import NGFF, known

_NGFF_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _multiscales(attrs) -> list | None:
    attrs = dict(attrs)
    return attrs.get("multiscales") or dict(attrs.get("ome", {})).get("multiscales")


def read_zarr(path: str | Path):
    """Open a zarr array, or the full-resolution image of an OME-Zarr group, without loading it.

    Returns
    -------
    image : dask.array.Array
    axes : str or None
        From the OME-Zarr axes when present.
    spacing : dict
        From the OME-Zarr scale transformation when present.
    metadata : dict
    """
    import zarr

    if Path(path).is_dir():
        check_links(path)
    try:
        node = zarr.open(str(path), mode="r")
    except FileNotFoundError:
        raise UserInputError(f"Input '{path}' does not exist; check the path.") from None
    except Exception as err:
        raise UserInputError(f"Could not open '{path}' as zarr ({type(err).__name__}: {err}); check the path.") from None
    if isinstance(node, zarr.Array):
        return _lazy(node, path), None, {}, {}
    multiscales = _multiscales(node.attrs)
    if multiscales:
        try:
            first = multiscales[0]
            dataset = first["datasets"][0]
            array = node[dataset["path"]]
            names = "".join(str(a["name"] if isinstance(a, dict) else a).upper() for a in first.get("axes", []))
            scales = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t["type"] == "scale"),
                          [])
            axes = names if len(names) == array.ndim else None
            spacing = {a: float(s) for a, s in zip(axes or "", scales) if a in "TZYX"}
            name = str(first.get("name", ""))
            units = known({a: entry.get("unit") for a, entry in zip(axes or "", first.get("axes", []))
                           if isinstance(entry, dict) and a in spacing})
        except Exception as err:  # any shape of damaged metadata
            raise UserInputError(f"The OME-Zarr metadata of '{path}' is damaged or points to a missing array "
                                 f"({type(err).__name__}: {err}); repair the store or open its array directly.") from None
        return _lazy(array, path), axes, spacing, {"name": name, **({"units": units} if units else {})}
    arrays = sorted(name for name, _ in node.arrays())
    if not arrays:
        raise UserInputError(f"The zarr store '{path}' holds no array; point to the array (or the OME-Zarr image) "
                             "to read.")
    return _lazy(node[arrays[0]], path), None, {}, {"array": arrays[0]}


class _Chunks:
    """A zarr array whose read errors (a corrupt or missing chunk) become a sentence naming the store."""

    def __init__(self, array, path):
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), array.ndim

    def __getitem__(self, index):
        try:
            return self.array[index]
        except Exception as err:  # the codecs raise many types
            raise UserInputError(f"Part of '{self.path}' cannot be read ({type(err).__name__}: {err}); a chunk is "
                                 "damaged, so copy the store again.") from None


def _lazy(array, path):
    import dask.array as da

    if np.dtype(array.dtype).hasobject:
        raise UserInputError(f"'{path}' holds Python objects, not numbers; store a numeric array.")
    return da.from_array(_Chunks(array, path), chunks=array.chunks, asarray=True, fancy=False, name=False)


@contextlib.contextmanager
def zarr_output(path: str | Path, shape, axes: str, spacing: dict, units: dict | None = None):
    """Yield an empty float32 OME-Zarr (NGFF 0.4) array to fill, one Y X plane per chunk.

    ``units`` (axis letter -> ``"mm"``, ``"µm"`` ...) are written as the axes' NGFF units.

    The store is built beside ``path`` and renamed into place only when the
    block ends without error, so a failed run leaves nothing half-written.
    """
    import zarr

    path, units = Path(path), known(units)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = Path(tempfile.mkdtemp(prefix=partial_prefix(path), suffix=".partial", dir=path.parent))
    try:
        chunks = tuple(1 if a not in "YX" else s for a, s in zip(axes, shape))
        if int(zarr.__version__.split(".")[0]) >= 3:  # zarr 3 (Python 3.11+); format 2 suits more readers
            root = zarr.open_group(str(tmp), mode="w", zarr_format=2)
            array = root.create_array("0", shape=tuple(shape), dtype=np.float32, chunks=chunks)
        else:
            root = zarr.open_group(str(tmp), mode="w")
            array = root.create_dataset("0", shape=tuple(shape), dtype=np.float32, chunks=chunks)
        yield array
        root.attrs["multiscales"] = [{
            "version": "0.4", "name": path.stem,
            "axes": [{"name": a.lower(), **({"type": _NGFF_TYPES[a.lower()]} if a.lower() in _NGFF_TYPES else {}),
                      **({"unit": NGFF[units[a]]} if units.get(a) in NGFF else {})} for a in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [float(spacing.get(a, 1.0)) for a in axes]}]}],
        }]
        check_replaceable(path)  # again: something else may have appeared there meanwhile
        if path.exists():  # the old store goes aside first, so a kill never leaves neither
            old = Path(tempfile.mkdtemp(prefix=partial_prefix(path), suffix=".partial", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


ZARR_MARKERS = (".zgroup", ".zarray", "zarr.json")


def check_replaceable(path: Path) -> None:
    """Refuse to replace anything at ``path`` but a zarr store (a folder of other files is never deleted)."""
    if path.is_symlink() or (path.exists() and not (path.is_dir() and any((path / m).is_file() for m in ZARR_MARKERS))):
        raise UserInputError(f"'{path}' already exists and is not a zarr store; choose another name, or move it "
                             "away first.")


def write_zarr(path: Path, image, axes: str, spacing: dict, units: dict | None = None) -> None:
    """Write ``image`` (possibly lazy) as OME-Zarr, plane by plane; see :func:`zarr_output`."""
    with zarr_output(path, image.shape, axes, spacing, units) as array:
        outer = [i for i, a in enumerate(axes) if a not in "YX"]
        for index in np.ndindex(*[image.shape[i] for i in outer]):
            plane = [slice(None)] * len(axes)
            for i, k in zip(outer, index):
                plane[i] = k
            array[tuple(plane)] = np.asarray(image[tuple(plane)], np.float32)
