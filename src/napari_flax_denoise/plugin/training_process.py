"""The training widget's job, run in a child process (GUI-free).

napari runs jobs on a worker thread. There XLA's CPU runtime gets each
training step's temporaries (one block of about 260 MB for the default
network) from a glibc arena that maps blocks over 64 MB afresh every time,
so every step faulted in its memory again: n2v2 trained about 20% slower
than on a main thread. A child process trains on its own main thread, as
the command line does, and sends each progress event and preview back;
Stop reaches it between two steps, and the trained model comes back
through its saved folder.

The child is a fresh interpreter started on this module
(``python -m napari_flax_denoise.plugin.training_process``), not a
``multiprocessing`` child: those re-import the user's ``__main__``, which
in a napari script without an ``if __name__ == "__main__":`` guard opens a
second viewer and never trains. Parent and child talk over the child's
standard input and output (pickled messages). The child stops when asked,
or when its input closes because the parent went away; the parent declares
it failed when it stays silent past a deadline.
"""

from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..models.checkpoint import TrainedModel, load_model, save_model
from ..errors import UserInputError
from ..progress import drive
from ..training.run import TrainResult

_POLL = 0.1  # seconds between looks at the stop request while waiting for the child
_GRACE = 60.0  # seconds a stopped child gets to finish its step before it is killed
# A child that sends nothing for this long (starting, compiling or stepping) is declared failed and killed.
SILENCE_LIMIT = 300.0


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
    with tempfile.TemporaryDirectory(prefix="flax-denoise-") as scratch:
        if isinstance(init, TrainedModel):  # a model crosses as its folder
            saved = init.info.get("path")
            init = saved if saved and Path(saved).is_dir() else save_model(init, Path(scratch) / "init" / init.name)
        folder = Path(output) if output is not None else Path(scratch) / "model"
        child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 env=_child_environment())
        events = queue.Queue()
        threading.Thread(target=_listen, args=(child.stdout, events), daemon=True,
                         name="flax-denoise training events").start()
        try:
            _send(child, dict(images=images, axes=axes, init=init, output=folder, kwargs=kwargs))
            heard, stopping = time.monotonic(), False
            while True:
                if stop is not None and not stopping and stop():
                    _send(child, "stop")
                    stopping = True
                try:
                    kind, payload = events.get(timeout=_POLL)
                    heard = time.monotonic()
                except queue.Empty:
                    if time.monotonic() - heard > SILENCE_LIMIT:
                        child.kill()  # hung: it gets no grace
                        raise RuntimeError(f"the training process sent nothing for {SILENCE_LIMIT:.0f} s, so it "
                                           "was stopped") from None
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
                elif kind == "ended":
                    raise RuntimeError(f"the training process ended unexpectedly (exit code {child.wait()})")
                elif kind == "error":
                    raise RuntimeError(f"training failed in its process:\n{payload}")
        finally:
            _end(child)


def _child_environment() -> dict:
    """This environment, with the folder this package was imported from first on the child's path."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else "")}


def _send(child, message) -> None:
    """Send ``message`` to the child; one that has gone is reported by its ``ended`` event instead."""
    try:
        pickle.dump(message, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.flush()
    except (BrokenPipeError, OSError, ValueError):
        pass


def _listen(stream, events) -> None:
    """Move the child's messages into ``events`` until its output ends."""
    try:
        while True:
            events.put(pickle.load(stream))
    except (EOFError, OSError, pickle.UnpicklingError):
        events.put(("ended", None))


def _end(child) -> None:
    """Stop ``child`` after its current step (closing its input asks it to) and wait for it; kill it if need be."""
    _send(child, "stop")
    try:
        child.stdin.close()
    except OSError:
        pass
    try:
        child.wait(timeout=_GRACE)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def _train(send, halt, images, axes, init, output, kwargs) -> None:
    """The child's work: train, sending every update and then how it ended."""
    from ..runtime.backend import configure_process
    from ..runtime.compile_cache import enable_compilation_cache

    try:
        configure_process("train")  # a process of our own, as the command line's
    except ValueError as error:  # a misspelt NAPARI_FLAX_DENOISE_BACKEND
        send(("user_error", str(error)))
        return
    enable_compilation_cache()  # a second training of the same network compiles nothing
    from .jobs import train_with_preview

    try:
        run = train_with_preview(images, axes=axes, init=init, output=output, stop=halt.is_set, **kwargs)
        end = drive(run, lambda update: send(("update", update)))
        send(("done", (end.stopped, end.history)))
    except UserInputError as error:
        send(("user_error", str(error)))
    except BaseException:  # noqa: BLE001 - the parent reports it; a child must not die silently
        import traceback

        send(("error", traceback.format_exc()))


def _child_main() -> None:
    """Entry point of the child: read the job from standard input, answer on standard output."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints of libraries must not corrupt the channel
    inbox = sys.stdin.buffer
    job = pickle.load(inbox)
    halt = threading.Event()

    def listen():  # "stop", or the parent went away: either way, stop after this step
        try:
            while pickle.load(inbox) != "stop":
                pass
        except (EOFError, OSError, pickle.UnpicklingError):
            pass
        halt.set()

    def send(message):
        try:
            pickle.dump(message, channel, protocol=pickle.HIGHEST_PROTOCOL)
            channel.flush()
        except (BrokenPipeError, OSError):  # the parent is gone; stop as soon as the step ends
            halt.set()

    threading.Thread(target=listen, daemon=True).start()
    _train(send, halt, **job)


if __name__ == "__main__":
    _child_main()
