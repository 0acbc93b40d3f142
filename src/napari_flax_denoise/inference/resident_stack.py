"""In-memory images onto the device, and stacks streamed through it in chunks of planes (accelerator route).

One image goes to the device whole, in its own type (:func:`to_device`), and
its values are checked there (:func:`value_range`). A stack of many planes
(S, T, or the channels of a one-channel model) goes in chunks of planes
(:func:`stream_stack`). Sent whole, it would need device memory for several
float32 copies of all of it, and the device would wait while it is copied in
and while the result is copied out. In chunks, the next chunk is on its way,
and its values are checked, while this one is denoised, and the last chunk's
result comes back while this one computes. Normalisation (for models that
normalise every image on their own), noise levels and fusion are per plane,
so the result is the same as the stack's sent whole.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..axes import check_range, not_finite
from ..progress import Progress, relay

# Device bytes per value (pixel and channel) of a chunk in flight: its float32 copies in the pipeline
# (normalised, mirrored and padded, the prediction, fused, undone, TTA's sums), the next chunk arriving
# and the last one's result leaving. The chunks take at most half the memory budget: the tile batches
# are sized to the budget too (``default_batch_size``), and XLA needs room of its own.
_BYTES_PER_VALUE = 64
_CHUNKS = 4  # a large stack goes in at least this many chunks, so that its transfers overlap the work
_MIN_CHUNK_PIXELS = 2**22  # smaller chunks would leave the device's tile batches part empty
_MAX_CHUNK_PIXELS = 2**25  # larger ones only take memory (2 GiB at 64 bytes per value)


def to_device(x):
    """Host ``x`` on the device in its own type: uint16 is half of float32's bytes. 64-bit types go as
    float32, which JAX would otherwise narrow without a word (int64 to int32)."""
    return jax.device_put(x if x.dtype.itemsize <= 4 else x.astype(np.float32))


@jax.jit
def value_range(x):
    """``(min, max, every value finite)`` of a device array, as device scalars read in one transfer."""
    return x.min(), x.max(), jnp.isfinite(x).all()


def chunk_planes(shape, budget: int | None) -> int | None:
    """Planes per chunk for a model-layout stack of ``shape`` ``(N, *spatial, C)``, or None to send it whole.

    A quarter of the stack's pixels, but at least 4 Mi and at most 32 Mi
    (and at least one plane); no more planes than half of ``budget`` bytes
    of device memory holds; then a divisor of N down to half that, where
    there is one, so that every chunk has one shape (each shape compiles its
    own programs).
    """
    count, pixels = shape[0], int(np.prod(shape[1:-1], dtype=np.int64))
    target = min(max(count * pixels // _CHUNKS, _MIN_CHUNK_PIXELS), _MAX_CHUNK_PIXELS)
    planes = max(1, -(-target // pixels))
    if budget is not None:
        planes = min(planes, max(1, budget // 2 // (pixels * shape[-1] * _BYTES_PER_VALUE)))
    if planes >= count:
        return None
    return next((p for p in range(planes, (planes + 1) // 2 - 1, -1) if count % p == 0), planes)


def stream_stack(read, count: int, planes: int, run, norms, land):
    """Denoise a stack of ``count`` planes on the device, ``planes`` planes at a time.

    A generator: yields :class:`~napari_flax_denoise.progress.Progress` for
    the whole stack and returns ``(weight, noise)`` for the whole stack (see
    ``run``); the denoised planes go to ``land``.

    Parameters
    ----------
    read : callable
        ``read(start, stop)``: raw model-layout planes ``[start, stop)``
        ``(n, *spatial, C)`` on the host (not modified). Called on a thread
        of its own, one chunk ahead, which also copies them to the device.
    count, planes : int
        Planes in the stack, and per chunk (:func:`chunk_planes`).
    run : callable
        ``run(chunk, norms)``: a generator that denoises one chunk on the
        device and returns ``(mean, std, weight, noise)``: device arrays (std
        may be None), fusion's mean weight (None without fusion) and a
        noise-aware model's ``(levels, scales)`` (else None).
    norms : tuple or callable
        The ``(input, output)`` normalisations, or a function that fits them
        to a chunk (on the device: per plane, with nothing read back).
    land : callable
        ``land(start, mean, std)``: takes a chunk's results as host arrays
        (``std`` None without it), while the next chunk computes.

    Raises
    ------
    UserInputError
        NaN or infinite values (before the chunk that holds them is
        denoised), or a constant stack.
    """
    full, shown = None, None

    def overall(number, step):  # the stack's progress, in the first chunk's units, a shorter last chunk pro rata
        nonlocal full, shown
        full = full or step.total
        total, share = -(-full * count // planes), min(planes, count - number * planes) / planes
        shown = Progress(min(total, number * full + round(step.done / step.total * full * share)), total)
        return shown

    def send(start):  # on the reader's thread: read, copy in, and queue the value check
        chunk = to_device(read(start, min(start + planes, count)))
        return chunk, value_range(chunk)

    pending, low, high, weights, levels, scales = None, np.inf, -np.inf, [], [], []
    with ThreadPoolExecutor(1) as reader:
        ahead = reader.submit(send, 0)
        for number, start in enumerate(range(0, count, planes)):
            chunk, values = ahead.result()
            if start + planes < count:
                ahead = reader.submit(send, start + planes)  # read and copied in while this chunk is denoised
            smallest, largest, finite = jax.device_get(values)  # queued as the chunk was sent: little or no wait
            if not finite:
                raise not_finite()
            low, high = min(low, smallest), max(high, largest)
            fitted = norms(chunk) if callable(norms) else norms
            mean, std, weight, noise = yield from relay(run(chunk, fitted), partial(overall, number))
            for result in (mean, std):
                if result is not None:
                    result.copy_to_host_async()  # comes back while the next chunk computes
            if pending is not None:
                _land(land, *pending)
            pending = (start, mean, std)
            weights.append(None if weight is None else weight * len(chunk))
            if noise is not None:
                levels.append(noise[0])
                scales.append(noise[1])
        _land(land, *pending)
    check_range(low, high, True)  # a constant stack
    if shown is not None and shown.done < shown.total:  # rounded short
        yield Progress(shown.total, shown.total)
    weight = None if weights[0] is None else float(sum(jax.device_get(weights))) / count
    return weight, None if not levels else (jnp.concatenate(levels), jnp.concatenate(scales))


def _land(land, start, mean, std):
    land(start, np.asarray(mean), None if std is None else np.asarray(std))


class HostStack:
    """The host arrays a stack's denoised chunks land in (:func:`stream_stack`'s ``land``), made at the
    first chunk: ``arrays`` is ``[mean, std]`` (std None without it)."""

    def __init__(self, count: int):
        self.count, self.arrays = count, None

    def land(self, start, *results):
        if self.arrays is None:
            self.arrays = [None if r is None else np.empty((self.count, *r.shape[1:]), np.float32) for r in results]
        for target, result in zip(self.arrays, results):
            if result is not None:
                target[start:start + len(result)] = result
