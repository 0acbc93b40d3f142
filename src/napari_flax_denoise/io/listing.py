"""Which images a list of files, folders and glob patterns names, and the name each result gets in a folder.

A folder is one of three things: a zarr store (``.zarr``, one image), a
folder of images (its image files and ``.zarr`` stores, not its subfolders)
or, when it holds no other images, a DICOM series (one image). Hidden files
and the temporaries of unfinished writes are never inputs.
"""

from __future__ import annotations

import glob
from pathlib import Path

from ..errors import UserInputError
from .atomic import full_suffix
from .files import IMAGE_SUFFIXES, WRITE_SUFFIXES

_WILDCARDS = set("*?[")
# Outputs of inputs whose format we cannot write (DICOM) default to OME-TIFF.
_FALLBACK_SUFFIX = ".tif"


def is_pattern(path) -> bool:
    """Whether ``path`` is a glob pattern (and not an existing file whose name has ``*?[`` in it)."""
    return bool(_WILDCARDS & set(str(path))) and not Path(path).exists()


def folder_images(folder: Path) -> list[Path]:
    """The images of a folder of images, sorted by name; empty for a zarr store or a DICOM series folder."""
    if full_suffix(folder) == ".zarr" or not folder.is_dir():
        return []
    found = [entry for entry in folder.iterdir() if not entry.name.startswith(".") and _is_image(entry)]
    if all(full_suffix(entry) == ".dcm" for entry in found):
        return []  # only DICOM slices: the folder is one series
    return sorted(found, key=lambda entry: entry.name)


def _is_image(entry: Path) -> bool:
    suffix = full_suffix(entry)
    if suffix == ".zarr":
        return entry.is_dir()
    return suffix in IMAGE_SUFFIXES and entry.is_file()


def names_several(paths) -> bool:
    """Whether ``paths`` (command-line inputs) name a batch: several, a pattern, or a folder of images."""
    paths = list(paths)
    return len(paths) > 1 or any(is_pattern(p) or folder_images(Path(p)) for p in paths)


def list_inputs(paths) -> list[Path]:
    """Expand files, folders and glob patterns into the images they name, in order, each once.

    Parameters
    ----------
    paths : sequence of str or Path

    Returns
    -------
    list of Path

    Raises
    ------
    UserInputError
        When a path does not exist, a pattern matches nothing, or nothing is left.
    """
    found, seen = [], set()
    for path in paths:
        if is_pattern(path):
            matches = [Path(p) for p in sorted(glob.glob(str(path)))]
            matches = [m for m in matches if not m.name.startswith(".") and (_is_image(m) or m.is_dir())]
            if not matches:
                raise UserInputError(f"No image matches '{path}'; check the pattern (quote it to let us expand it).")
        else:
            path = Path(path)
            if not path.exists():
                raise UserInputError(f"Input '{path}' does not exist; check the path.")
            matches = folder_images(path) or [path]
        for match in matches:
            key = match.resolve()
            if key not in seen:
                seen.add(key)
                found.append(match)
    if not found:
        raise UserInputError("No input images were given.")
    return found


def output_name(path: Path, suffix: str | None = None) -> str:
    """The file name of ``path``'s result: its own name and format, or ``suffix``'s format.

    ``.ome.tif`` stays OME-TIFF; DICOM (which we do not write) becomes ``.tif``.
    """
    own = full_suffix(path)
    stem = path.name[:len(path.name) - len(own)] if own else path.name
    if suffix is None:
        suffix = own if own in WRITE_SUFFIXES else _FALLBACK_SUFFIX
    if stem.lower().endswith(".ome") and suffix not in (".tif", ".tiff", ".zarr"):
        stem = stem[:-4]
    return stem + suffix


def output_paths(inputs, folder, suffix: str | None = None) -> list[Path]:
    """``folder / output_name(input)`` for every input; two inputs that would share a name are refused.

    Raises
    ------
    UserInputError
        Naming both inputs, when their results would overwrite each other.
    """
    if suffix is not None:
        suffix = suffix if suffix.startswith(".") else "." + suffix
        if suffix.lower() not in WRITE_SUFFIXES:
            raise UserInputError(f"Cannot write '{suffix}' files; use one of {', '.join(WRITE_SUFFIXES)}.")
        suffix = suffix.lower()
    outputs, first = [], {}
    for path in inputs:
        name = output_name(Path(path), suffix)
        if name.lower() in first:
            raise UserInputError(f"'{first[name.lower()]}' and '{path}' would both be written to '{name}'; "
                                 "denoise them into different folders or rename one.")
        first[name.lower()] = path
        outputs.append(Path(folder) / name)
    return outputs


def check_folder(folder) -> Path:
    """Refuse an output folder that is a file or is named like an image file (a forgotten file name)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserInputError(f"The output '{folder}' is a file; several inputs need an output folder.")
    if full_suffix(folder) == ".zarr" or (full_suffix(folder) in WRITE_SUFFIXES and not folder.is_dir()):
        raise UserInputError(f"The output '{folder}' is named like an image file, but several inputs need an "
                             "output folder; give a folder name.")
    return folder
