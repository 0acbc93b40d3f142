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

Importing this module changes no JAX setting; :meth:`Profile.configure_process`
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
    """

    name: str
    tile_cap: dict = field(hash=False, compare=False)
    tiles_per_device: int

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

    def configure_process(self, job: str) -> None:
        """Process-wide settings for a process this package owns, before JAX computes anything.

        Parameters
        ----------
        job : {"denoise", "train"}
            What the process will mostly do.

        On a CPU: JAX's asynchronous dispatch off (steps run on the calling
        thread, whose memory glibc keeps), and for a process that only
        denoises one malloc arena for all threads (see :mod:`.cpu.memory`).
        Accelerators need nothing yet. Library code never calls this: a
        notebook's JAX settings stay its own.
        """
        if job not in ("denoise", "train"):
            raise ValueError(f"job must be 'denoise' or 'train', not {job!r}")
        if self.name == "cpu":
            from .cpu.memory import run_cpu_steps_inline, share_one_arena

            if job == "denoise":
                share_one_arena()
            run_cpu_steps_inline()


# A CPU runs one large tile per call (1088 against 576 pixels: 1.19x on 2048x2048, 1.3 GB
# peak); accelerators run eight 512-pixel tiles per call.
PROFILES = {
    "cpu": Profile("cpu", {2: (1024, 1024), 3: (96, 160, 160)}, tiles_per_device=1),
    "accelerator": Profile("accelerator", {2: (512, 512), 3: (96, 160, 160)}, tiles_per_device=8),
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
