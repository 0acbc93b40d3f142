"""A disk cache of compiled XLA programs for the processes this package starts.

The command line and the training widget's child process begin from nothing
each time and compiled the same programs again: the training and validation
steps of a network and its tile forward pass. JAX can keep them on disk (its
persistent compilation cache). :func:`enable_compilation_cache` turns it on
in ``~/.cache/napari-flax-denoise/xla/<machine>`` (under ``$XDG_CACHE_HOME``
when set): ``flax-denoise train`` on the shipped sample took 7.4 s instead
of 12.5 the second time. Code that imports the library decides about JAX's
cache itself; only processes we own call this.

``NAPARI_FLAX_DENOISE_CACHE`` names another folder, or ``off``. A cache set
for JAX itself (``JAX_COMPILATION_CACHE_DIR``) is used as it is. Programs
are kept per machine type (architecture and CPU features), because the nodes
of a cluster may share a home folder but not an instruction set. When the
folder grows past :data:`MAX_BYTES`, the oldest programs go first.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import jax

ENV = "NAPARI_FLAX_DENOISE_CACHE"
OFF = {"off", "0", "false", "no"}
MAX_BYTES = 1 << 30
# Programs that compile faster than this are not worth a file (the tile forward pass takes about 0.5 s).
MIN_COMPILE_SECONDS = 0.2


def enable_compilation_cache() -> Path | None:
    """Keep compiled programs on disk from now on; returns the folder, or None when off.

    Call it before the process compiles anything: JAX decides once per
    process whether it uses the cache. A folder that cannot be created
    leaves the cache off (compiling still works).
    """
    setting = os.environ.get(ENV, "").strip()
    if setting.lower() in OFF:
        return None
    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = (Path(setting) if setting else home / "napari-flax-denoise" / "xla") / machine_type()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        trim(folder, MAX_BYTES)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return folder


def machine_type() -> str:
    """Architecture and a digest of the CPU's feature flags, e.g. ``x86_64-3f2a9c1b0d4e``."""
    features = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                features = line
                break
    except OSError:
        pass
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(features.encode()).hexdigest()[:12]}"


def trim(folder: Path, max_bytes: int) -> None:
    """Delete the oldest files in ``folder`` until the rest take at most ``max_bytes``."""
    files = []
    for entry in folder.iterdir():
        try:
            stat = entry.stat()
        except OSError:  # another process removed it
            continue
        files.append((stat.st_mtime, stat.st_size, entry))
    total = sum(size for _, size, _ in files)
    for _, size, entry in sorted(files, key=lambda item: item[0]):
        if total <= max_bytes:
            break
        entry.unlink(missing_ok=True)
        total -= size
