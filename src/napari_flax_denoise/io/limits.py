"""What a user's file claims, checked before anything is allocated or followed.

Headers can claim any size: a few hundred bytes of TIFF or NIfTI header can
describe gigabytes of pixels, and a folder can hold links to anywhere. The
readers ask here first, so a damaged or hostile file costs a sentence, not the
machine's memory.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserInputError

# A file whose pixels are stored uncompressed but that holds far less on disk than it claims is
# unfinished (an empty TIFF written to be filled later) or a sparse-file trick; past this size we refuse it.
SPARSE_CHECK_BYTES = 256 * 2**20
SPARSE_RATIO = 64
# Denoising holds about three float32 copies of an in-memory image (input, normalised, result).
WORKING_COPIES = 3


def available_memory() -> int:
    """Bytes of memory this process can still use (MemAvailable on Linux, physical memory elsewhere)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**63


def size_text(nbytes: float) -> str:
    """``1.5 GiB``-style text for a byte count."""
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"  # pragma: no cover


def npy_header(handle) -> tuple[tuple, "np.dtype"]:
    """The shape and type a ``.npy`` stream's header declares, read without its data (the stream stops after it)."""
    import numpy as np

    version = np.lib.format.read_magic(handle)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(handle)
    return tuple(shape), dtype


def check_stored(path: str | Path, offset: int, nbytes: int) -> None:
    """Refuse uncompressed pixel data that the file does not really hold.

    Parameters
    ----------
    path : str or Path
    offset : int
        Where the pixel data starts in the file.
    nbytes : int
        How many bytes of pixels the header claims.
    """
    stat = os.stat(path)
    if offset + nbytes > stat.st_size:
        raise UserInputError(f"'{path}' claims {size_text(nbytes)} of pixels but the file is only "
                             f"{size_text(stat.st_size)} long; it is truncated or damaged, so copy it again.")
    on_disk = getattr(stat, "st_blocks", None)
    if on_disk is not None and nbytes > SPARSE_CHECK_BYTES and on_disk * 512 * SPARSE_RATIO < nbytes:
        raise UserInputError(f"'{path}' claims {size_text(nbytes)} of pixels but only {size_text(on_disk * 512)} "
                             "are stored on disk (an unfinished or sparse file); write the image out completely "
                             "and try again.")


def check_memory(path: str | Path, nbytes: int, *, pixels: int | None = None) -> None:
    """Refuse an image that must be decoded into memory when it cannot fit.

    Parameters
    ----------
    path : str or Path
    nbytes : int
        The decoded size the header claims.
    pixels : int, optional
        Its number of values; the float32 working copies are counted from it.
    """
    need = nbytes + WORKING_COPIES * 4 * (pixels if pixels is not None else nbytes)
    free = available_memory()
    if need > free:
        raise UserInputError(f"'{path}' decodes to {size_text(nbytes)} of pixels, and denoising it in memory needs "
                             f"about {size_text(need)} but {size_text(free)} is free; convert it to OME-Zarr "
                             "(read plane by plane) or an uncompressed TIFF, or crop it.")


def check_links(folder: str | Path) -> None:
    """Refuse links and special files in ``folder`` (a zarr store, a DICOM series) that lead outside it.

    A chunk linked to ``/dev/zero`` or to another user's file must not be read
    as if it belonged to the image. Links that stay inside the folder are fine.
    """
    root = Path(folder).resolve()
    for here, folders, files in os.walk(root):  # does not follow linked folders; they are checked as entries
        for name in (*folders, *files):
            entry = Path(here) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(root):
                    raise UserInputError(f"'{entry}' is a link to '{target}', outside '{folder}'; copy the data "
                                         "into the folder instead of linking to it.")
                entry = target
            if entry.exists() and not (entry.is_file() or entry.is_dir()):
                raise UserInputError(f"'{entry}' is not a regular file (a device, pipe or socket); remove it "
                                     f"from '{folder}'.")
