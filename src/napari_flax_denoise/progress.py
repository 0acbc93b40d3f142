"""The progress protocol of long jobs: one event shape and one driver.

Every long job (training, denoising) is a generator that yields
:class:`Progress` events (``done`` of ``total`` units, plus what the job
adds: :class:`~napari_flax_denoise.training.TrainProgress` adds the epoch and
losses) and returns its result. :func:`drive` runs one to its end (the
command line, the training child, the synchronous twins ``train`` and
``denoise``); :func:`relay` passes one's events on, changed, from inside
another generator (planes of a stack, previews during training); napari's
``thread_worker`` drives them in the widgets. Closing the outer generator
closes the inner one, so Stop and Cancel reach the job between two events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, TypeVar

Result = TypeVar("Result")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` units of a job (tile batches, training steps).

    Attributes
    ----------
    done, total : int
    """

    done: int
    total: int


def drive(job: Generator[Progress, None, Result], on_event: Callable[[Progress], None] | None = None) -> Result:
    """Run ``job`` to its end, calling ``on_event`` with every event; return its result.

    Examples
    --------
    >>> def job():
    ...     yield Progress(1, 2)
    ...     yield Progress(2, 2)
    ...     return "done"
    >>> seen = []
    >>> drive(job(), seen.append)
    'done'
    >>> [event.done for event in seen]
    [1, 2]
    """
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            if on_event is not None:
                on_event(event)
    finally:
        job.close()


def relay(job: Generator[Progress, None, Result], change: Callable[[Progress], object]):
    """Yield ``change(event)`` for every event of ``job``; return its result (use with ``yield from``).

    Closing the generator that relays closes ``job`` too.
    """
    try:
        while True:
            try:
                event = next(job)
            except StopIteration as stop:
                return stop.value
            yield change(event)
    finally:
        job.close()
