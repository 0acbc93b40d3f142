"""Denoise a lazy array (zarr, dask, h5py, a memory-mapped file) a few planes at a time.

The array is read one S/T plane (and, for a one-channel model, one channel)
at a time, never whole. On the CPU profile each plane is denoised as an
image of its own. On accelerators the planes go through the device in
chunks (:func:`~.resident_stack.stream_stack`): the next chunk is read and
copied in while this one is denoised, and the last one's result is copied
back and written while this one computes. Every plane is normalised on its
own (models that normalise each image on their own), so the result is the
one the same stack gives in memory.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np

from ..axes import check_image, empty, validate_axes
from ..noise.level import MANY_PLANES
from ..progress import Progress, relay
from ..runtime.backend import active
from ..runtime.devices import memory_budget
from .in_memory import denoise_array, plan, record
from .resident_stack import chunk_planes, stream_stack


def denoise_lazy(image, model, axes, options, out=None):
    """Denoise lazy ``image`` plane by plane (see :func:`~.prediction.denoise_iter`); a generator that
    returns the result: ``out`` when given, else new arrays."""
    axes = validate_axes(axes, len(image.shape))
    if 0 in tuple(image.shape):
        raise empty(image.shape)
    outer = [i for i, a in enumerate(axes) if a in "ST" or (a == "C" and model.config.in_channels == 1)]
    indices = []
    for plane in np.ndindex(*[image.shape[i] for i in outer]):
        index = [slice(None)] * len(axes)
        for i, k in zip(outer, plane):
            index[i] = k
        indices.append(tuple(index))
    inner_axes = "".join(a for i, a in enumerate(axes) if i not in outer)
    target = _Target(image.shape, inner_axes, out)
    if active().resident_inference:
        yield from _streamed(image, indices, inner_axes, model, options, target)
    else:
        for number, index in enumerate(indices):
            block = _read(image, index)
            if block.size and block.min() == block.max() and model.config.out_channels == model.config.in_channels:
                # A blank frame (common in time-lapses) stays blank, with no uncertainty: no need to ask the network.
                result = (block.astype(np.float32),) + ((np.zeros(block.shape, np.float32),)
                                                        if options["return_std"] else ())
            else:
                inner = denoise_array(block, model, inner_axes, recurring=len(indices) >= MANY_PLANES, **options)
                result = yield from relay(inner, lambda step, number=number: Progress(
                    number * step.total + step.done, len(indices) * step.total))
            target.write(index, result if isinstance(result, tuple) else (result,))
    return tuple(target.arrays) if options["return_std"] else target.arrays[0]


def _streamed(image, indices, inner_axes, model, options, target):
    """The accelerator route: chunks of planes through :func:`~.resident_stack.stream_stack`, read ahead on
    one thread and written on another."""
    first = _read(image, indices[0])
    _, layout = check_image(first[None], "S" + inner_axes, values=False)
    options = dict(options)
    report = options.pop("report", None)
    run, norms, _ = plan(model, layout, recurring=len(indices) >= MANY_PLANES, **options)  # no fold: C is outer
    shape = (len(indices), *layout.spatial_shape, layout.channels)
    planes = min(chunk_planes(shape, memory_budget()) or len(indices), len(indices))

    def read(start, stop):
        blocks = np.stack([first if i == 0 else _read(image, indices[i]) for i in range(start, stop)])
        chunk, chunk_layout = check_image(blocks, "S" + inner_axes, values=False)
        return chunk_layout.to_model(chunk)

    with ThreadPoolExecutor(1) as writer:
        written = []

        def land(start, *results):
            chunk_layout = replace(layout, shape=(len(results[0]), *layout.shape[1:]))
            planes_out = [None if r is None else chunk_layout.from_model(r)[0] for r in results]
            for offset in range(len(results[0])):
                written.append(writer.submit(target.write, indices[start + offset],
                                             [p[offset] for p in planes_out if p is not None]))
            while written and (written[0].done() or len(written) > 2 * planes):
                written.pop(0).result()  # a failed write fails the job

        weight, noise = yield from stream_stack(read, len(indices), planes, run, norms, land)
        for future in written:
            future.result()
    record(report, weight, noise)


class _Target:
    """Where a lazy stack's denoised planes go: ``out`` (for the result) or new arrays, made at the
    first write (a multi-channel model's output may add a trailing C axis)."""

    def __init__(self, shape, inner_axes, out):
        self.shape, self.inner, self.out, self.arrays = tuple(shape), len(inner_axes), out, None

    def write(self, index, results):
        if self.arrays is None:  # outer axes keep their place; a new trailing C may follow
            shapes = [self.shape + r.shape[self.inner:] for r in results]
            self.arrays = [self.out if i == 0 and self.out is not None else np.empty(shape, np.float32)
                           for i, shape in enumerate(shapes)]
        for target, result in zip(self.arrays, results):
            target[index] = result


def _read(image, index):
    return np.asarray(image[index])
