"""The backend profile: everything that differs between a CPU and an accelerator.

One :class:`Profile` per kind of device decides the tile cap and tiles per
call of inference, the route of the training forward pass and of the
convolutions, the memory context of long jobs, how tile buffers are
allocated and what a process we own sets up before JAX starts. The rest of
the package asks :func:`active` and never looks at the device itself: this
is the only module that calls :func:`jax.default_backend`.

The profile follows the device JAX computes on, and can be forced, so that
the accelerator path runs (and is tested) on a CPU:

* the environment variable ``NAPARI_FLAX_DENOISE_BACKEND=cpu`` or
  ``accelerator`` (read when a profile is first needed);
* from Python, ``with use_backend("accelerator"): ...``.

Importing this module changes no JAX setting; :func:`configure_process`
does, and only the processes this package owns (the command line, the
training widget's child, the benchmark) call it.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

import numpy as np

ENV = "NAPARI_FLAX_DENOISE_BACKEND"
NAMES = ("cpu", "accelerator")


@dataclass(frozen=True)
class Profile:
    """What the package does differently on one kind of device.

    Attributes
    ----------
    name : str
        ``"cpu"`` or ``"accelerator"``.
    tile_cap : dict
        Largest default tile per spatial dimensionality (2D: new pixels per
        side, the overlap comes on top; 3D: voxels per axis).
    tiles_per_device : int
        Tiles per compiled inference call on each device.
    resident_inference : bool
        Whether inference keeps the image on the device and cuts, predicts
        and stitches tiles there (accelerators), or cuts tiles on the host and
        sends them one batch at a time (a CPU, where host and device share
        memory and 64-byte aligned host buffers ran fastest).
    resident_training : bool
        Whether training keeps in-memory images on the device, draws patches
        there and runs several steps per dispatch (accelerators), or cuts
        patches on the host while the previous step runs (a CPU, where the
        host sampler costs about 1% of a step).
    training_sizes : dict
        Default ``patch_size`` and ``batch_size`` per spatial dimensionality,
        where they differ from :class:`~napari_flax_denoise.config.Config`'s
        (16 patches of 64²), for settings the user leaves unset.
    """

    name: str
    tile_cap: dict = field(hash=False, compare=False)
    tiles_per_device: int
    resident_inference: bool
    resident_training: bool
    training_sizes: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def convolution(self) -> Callable:
        """The U-Net's 'SAME' convolution ``(x, kernel) -> y`` (channels last) on this device."""
        if self.name == "cpu":
            from .cpu.convolution import conv_same

            return conv_same
        from .convolution import conv_native

        return conv_native

    def training_forward(self, network, batch):
        """``network(batch)`` as the training step computes it.

        On a CPU the patches go side by side in wide rows (see
        :mod:`.cpu.packing`), where XLA's convolutions run about twice as
        fast; an accelerator takes the batch as it is.
        """
        if self.name == "cpu":
            from .cpu.packing import packed_apply

            return packed_apply(network, batch)
        return network(batch, conv=self.convolution)

    def memory(self):
        """Context manager around a long job (see :func:`.cpu.memory.kept_memory`)."""
        if self.name == "cpu":
            from .cpu.memory import kept_memory

            return kept_memory()
        return nullcontext()

    def tile_buffer(self, shape, dtype=np.float32) -> np.ndarray:
        """A zeroed host buffer for a batch of tiles (64-byte aligned on a CPU, see :func:`.cpu.memory.aligned_zeros`)."""
        if self.name == "cpu":
            from .cpu.memory import aligned_zeros

            return aligned_zeros(shape, dtype)
        return np.zeros(shape, dtype)


# A CPU runs one large tile per call (1088 against 576 pixels: 1.19x on 2048x2048, 1.3 GB
# peak). Accelerators take the same large tiles, whose overlap wastes the fewest pixels
# (2048x2048: 1.08x its pixels against 1.21x with 512-pixel tiles), eight per call or as
# many as their memory holds (see devices.default_batch_size).
_CAPS = {2: (1024, 1024), 3: (96, 160, 160)}
# Training patches: on a CPU, the 2D defaults (16 patches of 64²) as 16 cubes of 64³ made a step of about 12 GB
# that ran for minutes on 2 cores; 8 cubes of 32³ are 4x the pixels of a 2D step. An accelerator is kept busy by
# 2 M pixels a step (128 patches of 128², or 8 cubes of 64³: about 5 GB with the default network).
_CPU_SIZES = {3: {"patch_size": 32, "batch_size": 8}}
_ACCELERATOR_SIZES = {2: {"patch_size": 128, "batch_size": 128}, 3: {"patch_size": 64, "batch_size": 8}}
PROFILES = {
    "cpu": Profile("cpu", _CAPS, tiles_per_device=1, resident_inference=False, resident_training=False,
                   training_sizes=_CPU_SIZES),
    "accelerator": Profile("accelerator", _CAPS, tiles_per_device=8, resident_inference=True, resident_training=True,
                           training_sizes=_ACCELERATOR_SIZES),
}

_lock = threading.Lock()
_forced: list[str] = []


@lru_cache(maxsize=1)
def detected() -> str:
    """The profile JAX's default device calls for: ``"cpu"`` or ``"accelerator"``."""
    import jax

    return "cpu" if jax.default_backend() == "cpu" else "accelerator"


def _check(name: str, source: str) -> str:
    name = name.strip().lower()
    if name not in NAMES:
        raise ValueError(f"{source} must be 'cpu' or 'accelerator', not {name!r}; fix it or leave it unset.")
    return name


def active() -> Profile:
    """The profile in force: the innermost :func:`use_backend`, else ``$NAPARI_FLAX_DENOISE_BACKEND``, else the device's.

    Raises
    ------
    ValueError
        When the environment variable names no profile.
    """
    with _lock:
        if _forced:
            return PROFILES[_forced[-1]]
    setting = os.environ.get(ENV, "").strip()
    return PROFILES[_check(setting, ENV) if setting else detected()]


def describe() -> dict:
    """JAX's version, platform and devices and the profile in force, for bug reports and the widgets' label.

    Returns
    -------
    dict
        ``jax``, ``jaxlib``: versions; ``platform``: JAX's default backend
        (``"cpu"``, ``"gpu"``, ``"tpu"``); ``devices``: one line per device;
        ``detected``: the profile the device calls for; ``profile``: the one
        in force (see :func:`active`).
    """
    import jax
    import jaxlib

    return {"jax": jax.__version__, "jaxlib": jaxlib.__version__, "platform": jax.default_backend(),
            "devices": [f"{d.id}: {d.device_kind} ({d.platform})" for d in jax.devices()],
            "detected": detected(), "profile": active().name}


def compiled_loops_are_slow() -> bool:
    """Whether the device runs a step inside a compiled loop far slower than the same step alone.

    XLA's CPU backend does: one care step of 8 x 64² patches took 24 s inside
    a ``fori_loop`` or ``scan`` against 0.64 s alone (2-core machine). Training
    on a CPU device (with the accelerator profile forced) then runs one step
    per dispatch.
    """
    import jax

    return jax.default_backend() == "cpu"


def configure_process(job: str) -> Profile:
    """Process-wide settings for a process this package owns; call it before JAX computes anything.

    Parameters
    ----------
    job : {"denoise", "train"}
        What the process will mostly do.

    Returns
    -------
    Profile
        The profile in force (see :func:`active`).

    JAX's CPU client runs steps on the calling thread, whose memory glibc
    keeps (asynchronous dispatch off, see :mod:`.cpu.memory`). JAX reads that
    setting when it creates its backends, which finding the profile does, so
    it is set first; it changes nothing on accelerators. On the CPU profile a
    process that only denoises also shares one malloc arena among its
    threads (none has allocated yet). Accelerators need nothing more yet.
    Library code never calls this: a notebook's JAX settings stay its own.

    Raises
    ------
    ValueError
        For an unknown ``job``, or when the environment variable names no profile.
    """
    if job not in ("denoise", "train"):
        raise ValueError(f"job must be 'denoise' or 'train', not {job!r}")
    from .cpu.memory import run_cpu_steps_inline, share_one_arena

    run_cpu_steps_inline()
    profile = active()
    if profile.name == "cpu" and job == "denoise":
        share_one_arena()
    return profile


@contextmanager
def use_backend(name: str):
    """Force the profile ``name`` (``"cpu"`` or ``"accelerator"``) within the block.

    Examples
    --------
    >>> with use_backend("accelerator"):
    ...     active().name
    'accelerator'
    """
    name = _check(name, "The backend")
    with _lock:
        _forced.append(name)
    try:
        yield PROFILES[name]
    finally:
        with _lock:
            _forced.reverse()
            _forced.remove(name)
            _forced.reverse()
