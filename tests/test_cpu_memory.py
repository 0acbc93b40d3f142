import ctypes
import os
import platform
import resource
import subprocess
import sys
import time

import pytest

from napari_flax_denoise.runtime.cpu.memory import kept_memory, release_kept_memory

glibc_only = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="kept_memory tunes glibc's malloc only")


def _faults_of_fresh_buffer(megabytes=64):
    """Minor page faults taken to allocate and fill a buffer of the size a step just freed.

    Through ``malloc`` itself: numpy asks for huge pages, which hides the faults.
    """
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    size = megabytes * 2**20

    def fill_and_free():
        buffer = libc.malloc(ctypes.c_size_t(size))
        ctypes.memset(buffer, 1, size)
        libc.free(ctypes.c_void_p(buffer))

    fill_and_free()  # a step's buffer: allocated, filled, freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    fill_and_free()  # the next step's
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@glibc_only
def test_freed_memory_is_reused_inside_and_returned_after():
    release_kept_memory()
    default = _faults_of_fresh_buffer()  # glibc's default: mmap, and unmap on free
    with kept_memory():
        with kept_memory():  # nested: the inner exit keeps the outer's settings
            pass
        kept = _faults_of_fresh_buffer()
    between = _faults_of_fresh_buffer()  # just after a job: still kept for the next one
    release_kept_memory()
    after = _faults_of_fresh_buffer()
    assert kept * 10 < default, (kept, default)
    assert between * 10 < default, (between, default)
    assert kept * 10 < after, (kept, after)  # the defaults are back


@glibc_only
def test_kept_memory_is_returned_a_moment_after_the_last_job(monkeypatch):
    import napari_flax_denoise.runtime.cpu.memory as runtime

    monkeypatch.setattr(runtime, "_LINGER_SECONDS", 0.2)
    release_kept_memory()
    default = _faults_of_fresh_buffer()
    with kept_memory():
        pass
    with kept_memory():  # a job within the linger keeps the memory
        time.sleep(0.4)
        kept = _faults_of_fresh_buffer()
    time.sleep(1.5)
    after = _faults_of_fresh_buffer()
    assert kept * 10 < default, (kept, default)
    assert kept * 10 < after, (kept, after)


def test_the_cpu_profile_runs_steps_inline_only_in_processes_that_ask():
    code = ("import jax; from napari_flax_denoise.runtime.backend import configure_process; "
            "before = jax.config.values['jax_cpu_enable_async_dispatch']; "
            "configure_process('train'); "
            "print(before, jax.config.values['jax_cpu_enable_async_dispatch'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.parametrize("shape,dtype", [((1, 37, 53, 1), "float32"), ((3, 5), "int32"), ((2, 96, 96, 1), "float32")])
def test_aligned_zeros_start_on_a_64_byte_boundary(shape, dtype):
    import numpy as np

    from napari_flax_denoise.runtime.cpu.memory import aligned_zeros

    for _ in range(5):  # numpy alone lands 16 bytes past such a boundary for most sizes
        array = aligned_zeros(shape, dtype)
        assert array.ctypes.data % 64 == 0
        assert array.shape == shape and array.dtype == np.dtype(dtype) and array.flags.c_contiguous
        assert not array.any()
        array[...] = 1  # writable


def test_a_job_left_open_until_interpreter_shutdown_exits_cleanly():
    code = ("from napari_flax_denoise.runtime.cpu.memory import kept_memory\n"
            "def job():\n"
            "    with kept_memory():\n"
            "        yield 1\n"
            "        yield 2\n"
            "running = job()\n"
            "next(running)\n")  # never finished: closed while the interpreter shuts down
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr


_STEPS_SCRIPT = """
import resource
import numpy as np
from napari_flax_denoise import Config, train_iter
from napari_flax_denoise.runtime.backend import configure_process
configure_process("train")  # as the command line and the training child do
image = np.random.default_rng(0).normal(100, 20, (256, 256)).astype(np.float32)
run = train_iter(image, axes="YX", config=Config(epochs=1, steps_per_epoch=100, val_fraction=0.0))
for _ in range(3):
    next(run)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    next(run)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


@glibc_only
def test_training_steps_reuse_their_memory():
    """A warm training step of the default network (about 290 MB of scratch memory) maps no fresh pages:
    its batch is on the device before the call, so the step runs on the calling thread (see runtime.cpu.memory)."""
    env = {**os.environ, "NAPARI_FLAX_DENOISE_BACKEND": "cpu"}
    out = subprocess.run([sys.executable, "-c", _STEPS_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    per_step = float(out.stdout.split()[-1])
    # Handed over as NumPy, the batch raced its copy: up to 34,000 faults a step, depending on which won.
    assert per_step < 2000, f"{per_step:.0f} page faults a step"
