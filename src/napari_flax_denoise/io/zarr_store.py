"""Zarr and OME-Zarr images, read lazily through dask and written plane by plane."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UserInputError

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
    import dask.array as da
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except FileNotFoundError:
        raise UserInputError(f"Input '{path}' does not exist; check the path.") from None
    except Exception as err:
        raise UserInputError(f"Could not open '{path}' as zarr ({type(err).__name__}: {err}); check the path.") from None
    if isinstance(node, zarr.Array):
        return da.from_zarr(node), None, {}, {}
    multiscales = _multiscales(node.attrs)
    if multiscales:
        first = multiscales[0]
        dataset = first["datasets"][0]
        array = node[dataset["path"]]
        names = "".join(str(a["name"] if isinstance(a, dict) else a).upper() for a in first.get("axes", []))
        scales = next((t["scale"] for t in dataset.get("coordinateTransformations", []) if t["type"] == "scale"), [])
        axes = names if len(names) == array.ndim else None
        spacing = {a: float(s) for a, s in zip(axes or "", scales) if a in "TZYX"}
        return da.from_zarr(array), axes, spacing, {"name": first.get("name", "")}
    arrays = sorted(name for name, _ in node.arrays())
    if not arrays:
        raise UserInputError(f"The zarr store '{path}' holds no array; point to the array (or the OME-Zarr image) "
                             "to read.")
    return da.from_zarr(node[arrays[0]]), None, {}, {"array": arrays[0]}


@contextlib.contextmanager
def zarr_output(path: str | Path, shape, axes: str, spacing: dict):
    """Yield an empty float32 OME-Zarr (NGFF 0.4) array to fill, one Y X plane per chunk.

    The store is built beside ``path`` and renamed into place only when the
    block ends without error, so a failed run leaves nothing half-written.
    """
    import zarr

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent))
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
            "axes": [{"name": a.lower(), **({"type": _NGFF_TYPES[a.lower()]} if a.lower() in _NGFF_TYPES else {})}
                     for a in axes],
            "datasets": [{"path": "0", "coordinateTransformations": [
                {"type": "scale", "scale": [float(spacing.get(a, 1.0)) for a in axes]}]}],
        }]
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_zarr(path: Path, image, axes: str, spacing: dict) -> None:
    """Write ``image`` (possibly lazy) as OME-Zarr, plane by plane; see :func:`zarr_output`."""
    with zarr_output(path, image.shape, axes, spacing) as array:
        outer = [i for i, a in enumerate(axes) if a not in "YX"]
        for index in np.ndindex(*[image.shape[i] for i in outer]):
            plane = [slice(None)] * len(axes)
            for i, k in zip(outer, index):
                plane[i] = k
            array[tuple(plane)] = np.asarray(image[tuple(plane)], np.float32)
