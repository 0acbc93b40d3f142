"""Stop XLA's CPU runtime from paying for fresh memory pages on every step.

XLA allocates each step's buffers afresh with ``malloc`` and frees them
afterwards. glibc hands the large ones back to the kernel, so the next step
touches hundreds of megabytes of new pages that the kernel must zero: a
training step of the default U-Net (16 patches of 64 x 64) took about 75,000
page faults and over 100 ms of system time. Two things together stop it
(each alone did nothing measurable):

* :func:`run_cpu_steps_inline`: with JAX's asynchronous CPU dispatch off,
  a computation runs on the thread that calls it, so its buffers come from
  that thread's ``malloc`` arena (for the main thread, the one heap glibc can
  grow without ``mmap``), not from a worker thread's. That holds only when
  its inputs are already on the device: given a NumPy array, JAX copies it
  in the background and runs the computation on one of its own threads once
  the copy is done, and there glibc maps the step's scratch memory (about
  290 MB for a training step, more than a thread's heap may hold) afresh
  each time: up to 34,000 page faults a step (when the copy lost the race),
  and care trained at 3.71-3.99 steps/s against 4.01-4.17 with its batches
  put on the device first (:meth:`...devices.Placement.split` waits for them);
* :func:`kept_memory`: while training or denoising, glibc serves large
  blocks from that heap and does not trim it, so the second step reuses the
  first step's pages. A few seconds after the last job leaves (unless
  another starts), glibc's defaults return and the idle memory is handed
  back (``malloc_trim``); :func:`release_kept_memory` does it at once.

A process that only denoises also calls :func:`share_one_arena`. A job run
on a worker thread (napari's widgets) gains little: glibc maps such a
thread's large blocks afresh whatever the settings (n2v2 training: 3.05-3.29
steps/s there against 3.63-3.73 on the main thread).
Outside glibc (macOS, Windows, musl) these change nothing but JAX's setting.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys
import threading
from contextlib import contextmanager

import numpy as np

# mallopt parameters (malloc.h) and glibc's defaults for them.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_KEEP = {_M_TRIM_THRESHOLD: 2**31 - 1, _M_MMAP_MAX: 0}

# Seconds the memory stays kept after the last job leaves. Jobs in a row (a script
# denoising a folder, the benchmark's repeats) then reuse each other's pages: a
# 2048 x 2048 denoise took 3.30-3.58 s right after another against 3.71-3.92 s
# when the memory had been handed back in between (4 alternating rounds).
_LINGER_SECONDS = 3.0


def run_cpu_steps_inline() -> None:
    """Turn off JAX's asynchronous dispatch on CPU (``jax_cpu_enable_async_dispatch``).

    JAX reads the setting when it creates its CPU backend (at the first
    computation), so this takes effect only before then and changes nothing
    afterwards; a user who wants it on again sets it back before computing.
    Results are the same either way; a CPU training loop loses only the
    overlap of drawing the next batch (about 2 ms) with the step.
    """
    import jax

    jax.config.update("jax_cpu_enable_async_dispatch", False)


def share_one_arena() -> None:
    """Let every thread allocate from glibc's main heap (``M_ARENA_MAX`` = 1).

    For a process that only denoises, such as ``flax-denoise denoise``:
    XLA's worker threads otherwise allocate in heaps of their own, which glibc
    unmaps whenever they empty, so pages are faulted in afresh for every tile
    (4 planes of 2048 x 2048 from the command line, start-up included:
    18.8-20.1 s against 23.7-24.3 s without it). It affects only threads
    that have not allocated yet, so it belongs before the first JAX
    computation. Training is 10-20% slower with it (the threads wait on one
    lock), so training leaves it alone.
    """
    if _LIBC is not None:
        _LIBC.mallopt(ctypes.c_int(_M_ARENA_MAX), ctypes.c_int(1))


def _libc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


class _Settings:
    """glibc's malloc settings, counted over the jobs that want memory kept.

    It holds everything it uses, so that a job abandoned until interpreter
    shutdown (when module globals are already gone) still restores them.
    """

    def __init__(self, libc):
        self.libc, self.lock, self.users = libc, threading.Lock(), 0
        self.int, self.size = ctypes.c_int, ctypes.c_size_t
        self.keep, self.defaults = _KEEP, _DEFAULTS
        self.kept, self.timer, self.timer_class = False, None, threading.Timer
        self.finalizing = sys.is_finalizing

    def _set(self, settings):
        for parameter, value in settings.items():
            self.libc.mallopt(self.int(parameter), self.int(value))

    def acquire(self):
        with self.lock:
            self.users += 1
            if self.timer is not None:
                self.timer.cancel()
                self.timer = None
            if not self.kept:
                self._set(self.keep)
                self.kept = True

    def release(self, linger: float):
        at_once = self.finalizing()  # no new thread can start while the interpreter shuts down
        with self.lock:
            self.users -= 1
            if self.users == 0 and not at_once:
                self.timer = self.timer_class(linger, self.restore)
                self.timer.daemon = True
                self.timer.start()
        if at_once:
            self.restore()

    def restore(self):
        """glibc's defaults back and idle memory returned, unless a job holds it."""
        with self.lock:
            if self.users == 0 and self.kept:
                self._set(self.defaults)
                self.libc.malloc_trim(self.size(0))
                self.kept = False


_LIBC = _libc()
_SETTINGS = None if _LIBC is None else _Settings(_LIBC)


@contextmanager
def kept_memory():
    """Within the block, memory freed by glibc's ``malloc`` stays in the process for reuse.

    Nested and concurrent uses are counted: the defaults come back and the
    idle memory is returned to the system a few seconds after the last one
    leaves, unless another block starts first (see
    :func:`release_kept_memory`).

    Examples
    --------
    >>> with kept_memory():
    ...     pass  # run the training steps here
    """
    settings = _SETTINGS
    if settings is None:
        yield
        return
    settings.acquire()
    try:
        yield
    finally:
        settings.release(_LINGER_SECONDS)


def release_kept_memory() -> None:
    """Return idle memory to the system now rather than a few seconds after the last job.

    Does nothing while a job keeps memory (inside :func:`kept_memory`).
    """
    if _SETTINGS is not None:
        _SETTINGS.restore()


def aligned_zeros(shape, dtype=np.float32, alignment: int = 64) -> np.ndarray:
    """A zero array whose data start on an ``alignment``-byte boundary.

    numpy aligns large arrays to 16 bytes. XLA's CPU runtime computed a
    1072 x 1072 tile of the default U-Net given such an array 40-50 ms
    (7%) slower than given the same values 64-byte aligned or already on
    the device (in-process A/B, medians of 6), and ``denoise`` of a
    2048 x 2048 image took 3.04-3.18 s with its tiles built in these against
    3.37-3.61 s (4 alternating rounds). Training batches, a few hundred
    kilobytes, showed no difference.
    """
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.zeros(size + alignment, np.uint8)
    start = -raw.ctypes.data % alignment
    return raw[start:start + size].view(dtype).reshape(shape)
