"""The training widget's job, run in a child process (GUI-free).

napari runs jobs on a worker thread. There XLA's CPU runtime gets each
training step's temporaries (one block of about 260 MB for the default
network) from a glibc arena that maps blocks over 64 MB afresh every time,
so every step faulted in its memory again: n2v2 trained about 20% slower
than on a main thread. A child process trains on its own main thread, as
the command line does, and sends each progress event and preview back;
Stop reaches it between two steps, and the trained model comes back
through its saved folder.
"""

from __future__ import annotations

import multiprocessing
import queue
import tempfile
import time
import traceback
from pathlib import Path

from ..models.checkpoint import TrainedModel, load_model, save_model
from ..errors import UserInputError
from ..progress import drive
from ..runtime.backend import configure_process
from ..training.run import TrainResult

_POLL = 0.1  # seconds between looks at the stop request while waiting for the child
_GRACE = 60.0  # seconds a stopped child gets to finish its step before it is killed


def train_in_child(images, *, axes: str, stop=None, init=None, output=None, **kwargs):
    """:func:`~napari_flax_denoise.plugin.jobs.train_with_preview` in a child process.

    Parameters
    ----------
    images : list of array_like
        Training images (numpy, dask or zarr arrays: they are sent to the child).
    axes : str
    stop : callable, optional
        Polled while training runs; once it returns True, training ends after
        the current step and the best weights are kept.
    init : TrainedModel or str or Path, optional
        A model to fine-tune.
    output : str or Path, optional
        Model folder; without one, the model goes to a temporary folder and
        is returned in memory.
    **kwargs
        Everything else :func:`train_with_preview` takes (``targets``,
        ``preview_every``, Config fields).

    Yields
    ------
    TrainUpdate
        As :func:`train_with_preview` does (the crop travels only with its preview).

    Returns
    -------
    TrainResult
    """
    context = multiprocessing.get_context("spawn")  # never fork a process that holds Qt and JAX threads
    events, halt = context.Queue(), context.Event()
    with tempfile.TemporaryDirectory(prefix="flax-denoise-") as scratch:
        if isinstance(init, TrainedModel):  # a model crosses as its folder
            saved = init.info.get("path")
            init = saved if saved and Path(saved).is_dir() else save_model(init, Path(scratch) / "init" / init.name)
        folder = Path(output) if output is not None else Path(scratch) / "model"
        child = context.Process(target=_train, args=(events, halt, images, axes, init, folder, kwargs),
                                daemon=True, name="flax-denoise training")
        child.start()
        try:
            while True:
                if stop is not None and stop():
                    halt.set()
                try:
                    kind, payload = events.get(timeout=_POLL)
                except queue.Empty:
                    if not child.is_alive():
                        raise RuntimeError(f"the training process ended unexpectedly (exit code {child.exitcode})")
                    continue
                if kind == "update":
                    yield payload
                elif kind == "done":
                    model = load_model(folder)
                    if output is None:  # the temporary folder goes; the model lives on in memory
                        del model.info["path"]
                    return TrainResult(model, payload[1], payload[0], Path(output) if output is not None else None)
                elif kind == "user_error":
                    raise UserInputError(payload)
                else:
                    raise RuntimeError(f"training failed in its process:\n{payload}")
        finally:
            _end(child, events, halt)


def _end(child, events, halt) -> None:
    """Stop ``child`` after its current step and wait for it, draining its queue
    (a child exits only once what it sent has been read)."""
    halt.set()
    deadline = time.monotonic() + _GRACE
    while child.is_alive() and time.monotonic() < deadline:
        try:
            events.get(timeout=_POLL)
        except queue.Empty:
            pass
    if child.is_alive():
        child.terminate()
    child.join()


def _train(events, halt, images, axes, init, output, kwargs) -> None:
    """The child's work: train, sending every update and then how it ended."""
    from ..runtime.compile_cache import enable_compilation_cache

    try:
        configure_process("train")  # a process of our own, as the command line's
    except ValueError as error:  # a misspelt NAPARI_FLAX_DENOISE_BACKEND
        events.put(("user_error", str(error)))
        return
    enable_compilation_cache()  # a second training of the same network compiles nothing
    from .jobs import train_with_preview

    try:
        run = train_with_preview(images, axes=axes, init=init, output=output, stop=halt.is_set, **kwargs)
        end = drive(run, lambda update: events.put(("update", update)))
        events.put(("done", (end.stopped, end.history)))
    except UserInputError as error:
        events.put(("user_error", str(error)))
    except BaseException:  # noqa: BLE001 - the parent reports it; a child must not die silently
        events.put(("error", traceback.format_exc()))
