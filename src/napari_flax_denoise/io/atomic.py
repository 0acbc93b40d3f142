"""Writing outputs atomically: a temporary beside the output, renamed over it on success.

Temporaries are named ``.NAME.PIDxHOST-RANDOM.partial[.ext]``: the writer's
process and machine are in the name, so a later write beside the same output
can tell the leftovers of a killed run (removed) from the temporaries of a
run still writing (kept).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import tempfile
import zlib
from pathlib import Path

_HOST = f"{zlib.crc32(socket.gethostname().encode()) & 0xFFFFFF:06x}"
_PARTIAL = re.compile(r"\.(?P<pid>\d+)x(?P<host>[0-9a-f]{6})-[^.]*\.partial")
# What a temporary's name adds to the output's (besides the extension, repeated at its end).
TEMPORARY_EXTRA = len(".") + len(".4194304xffffff-12345678.partial")


def full_suffix(path: Path) -> str:
    """The extension, lower-case, with ``.nii.gz`` as one."""
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path`` and rename it over ``path`` on success.

    A crash or error leaves ``path`` untouched (old content or absent) and
    removes the temporary file. The temporary name keeps the full extension
    (``.nii.gz``), which some writers need. The file gets the permissions
    the user's umask gives a new file (``mkstemp`` alone makes it private).
    Temporaries that killed runs left beside ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    fd, tmp = tempfile.mkstemp(prefix=partial_prefix(path), suffix=".partial" + full_suffix(path), dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def partial_prefix(path: Path) -> str:
    """The start of a temporary's name beside ``path`` (``tempfile`` adds a random part)."""
    return f".{path.name}.{os.getpid()}x{_HOST}-"


def remove_stale_partials(path: Path) -> None:
    """Remove temporaries beside ``path`` whose writer (a process on this machine) is gone.

    A folder temporary that holds ``path``'s old version (a store set aside
    while its replacement was moved in, when the writer was killed between
    the two moves) puts it back instead.
    """
    prefix = f".{path.name}"
    with contextlib.suppress(OSError):
        for entry in path.parent.iterdir():
            match = _PARTIAL.match(entry.name[len(prefix):]) if entry.name.startswith(prefix) else None
            if match is None or match["host"] != _HOST or _alive(int(match["pid"])):
                continue
            if entry.is_dir() and not entry.is_symlink():
                if (entry / path.name).exists() and not path.exists():
                    os.replace(entry / path.name, path)
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0o077)  # reading the umask means setting it; set it straight back
    os.umask(mask)
    return mask
