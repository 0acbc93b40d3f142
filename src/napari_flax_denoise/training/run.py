"""A training run in progress: its state, its steps and its events.

:meth:`TrainingRun.steps` is the training loop, a generator that yields a
:class:`TrainProgress` after every optimiser step and returns a
:class:`TrainResult`. On a CPU each step runs on patches cut on the host; on
an accelerator, in-memory images live on the device and several steps run
per dispatch, their losses coming back together. Stopping (a ``stop``
callable, or closing the generator) takes effect between dispatches and
keeps the best weights. The run is built, and its inputs checked, by
:func:`.prepare.start_run`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from ..config import Config
from ..errors import UserInputError
from ..models.checkpoint import TrainedModel, save_model
from ..progress import Progress
from ..runtime.backend import active, compiled_loops_are_slow
from ..runtime.devices import Placement
from .data import TrainingData
from .resume import save_last
from .steps import MAX_STEPS_PER_DISPATCH, make_dispatch, make_steps, schedule

# Patience restarts only on a real improvement (0.1%), not on drift.
MIN_IMPROVEMENT = 1e-3
# How long one dispatch of several training steps should take on an accelerator: long enough that
# launching it costs little, short enough that Stop and the progress bar respond at once.
DISPATCH_SECONDS = 0.1


@dataclass(frozen=True)
class TrainProgress(Progress):
    """One training event: ``done`` of ``total`` optimiser steps, and how the run goes.

    Attributes
    ----------
    done, total : int
        Optimiser steps done and planned.
    epoch, epochs : int
        Current epoch (1-based) and planned epochs.
    train_loss : float
        Loss of this step.
    val_loss : float or None
        Validation loss; set on the last step of an epoch only.
    learning_rate : float
    eta_seconds : float
        Estimated time to the planned end.
    end_of_epoch : bool
    """

    epoch: int = 1
    epochs: int = 1
    train_loss: float = float("nan")
    val_loss: float | None = None
    learning_rate: float = 0.0
    eta_seconds: float = 0.0
    end_of_epoch: bool = False


@dataclass
class TrainResult:
    """What :func:`~napari_flax_denoise.train` returns.

    Attributes
    ----------
    model : TrainedModel
        The network with the best weights (lowest validation loss).
    history : list of dict
        Per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``seconds``.
    stopped : str
        ``"completed"``, ``"early_stopping"`` or ``"stop_requested"``.
    output : Path or None
    """

    model: TrainedModel
    history: list = field(default_factory=list)
    stopped: str = "completed"
    output: Path | None = None


# A step loss this many times the lowest so far means the run is diverging.
GROWTH_WARNING = 100.0


class LossWatch:
    """Notices from the step losses that a run is going wrong, and whether its model can be trusted.

    Examples
    --------
    >>> watch = LossWatch()
    >>> [watch.add(loss) for loss in (1.0, 0.5)]
    [None, None]
    >>> watch.add(80.0)[:36]
    'The training loss grew 160-fold from'
    """

    def __init__(self):
        self.lowest, self.warning = float("inf"), None

    def add(self, loss: float) -> str | None:
        """Take one step's loss; the first time it is :data:`GROWTH_WARNING` times the lowest, a warning."""
        self.lowest = min(self.lowest, loss)
        if self.warning is None and loss > GROWTH_WARNING * self.lowest:
            self.warning = (f"The training loss grew {loss / self.lowest:.0f}-fold from its lowest "
                            f"({self.lowest:.3g} to {loss:.3g}): training is diverging; lower the learning rate.")
            return self.warning
        return None

    def problem(self, result: TrainResult) -> str | None:
        """Why ``result``'s model should not be used as it is, in a few words; None if nothing is wrong."""
        if not result.history:
            return "stopped before its first validation"
        if self.warning is not None:
            return "diverged"
        return None


@dataclass
class TrainingRun:
    """The state of one training run: settings, data, weights, optimiser and loop counters.

    Attributes
    ----------
    config : Config
    data : TrainingData
    graphdef : nnx.GraphDef
        The network's structure; ``params`` fill it.
    params, opt_state : pytree
        Current weights and optimiser state (on the devices).
    info : dict
        Provenance saved with the model.
    output : Path or None
        Model directory written at every epoch's end.
    step : int
        Optimiser steps done.
    history : list of dict
    best_loss : float
    best_params : pytree or None
        Host copy of the weights with the lowest validation loss.
    """

    config: Config
    data: TrainingData
    graphdef: object
    params: object
    opt_state: object
    placement: Placement
    info: dict
    output: Path | None = None
    step: int = 0
    history: list = field(default_factory=list)
    best_loss: float = np.inf
    best_params: object = None

    @property
    def total(self) -> int:
        """Planned optimiser steps."""
        return self.config.epochs * self.config.steps_per_epoch

    def model(self, weights=None, **extra) -> TrainedModel:
        """The model with ``weights`` (default: this step's); it stays valid after training moves on."""
        weights = self.params if weights is None else weights
        return TrainedModel(self.config, nnx.merge(self.graphdef, weights), self.data.input_norm,
                            self.data.output_norm, {**self.info, "steps": self.step, **extra})

    def steps(self, stop=None):
        """Train to the planned end: yields :class:`TrainProgress` per step, returns :class:`TrainResult`.

        Parameters
        ----------
        stop : callable, optional
            Asked after every dispatch of steps (every step on a CPU); once it
            returns True, training ends with the best weights.
        """
        config, data = self.config, self.data
        _, eval_step = make_steps(self.graphdef, config)
        rate = jax.jit(schedule(config))  # called eagerly, optax's schedule took 5.7 ms a step
        key = jax.random.key(config.seed)
        with active().memory():  # on a CPU, each step reuses the last one's pages
            patience, started, timed, timed_steps = 0, time.perf_counter(), None, 0
            chunks = self._device_steps(key) if data.device is not None else self._host_steps(key)
            for losses, rng_state in chunks:  # the losses of consecutive steps, never past an epoch's end
                if timed is None:  # the first dispatch includes compilation: time from the next on
                    timed = time.perf_counter()
                else:
                    timed_steps += len(losses)
                per_step = (time.perf_counter() - timed) / max(timed_steps, 1)
                for last, loss in enumerate(losses, 1 - len(losses)):  # last == 0 on the dispatch's last step
                    self.step += 1
                    if not np.isfinite(loss):
                        raise UserInputError("Training diverged (the loss became NaN or infinite); lower the learning rate.")
                    epoch = (self.step - 1) // config.steps_per_epoch + 1
                    end = self.step % config.steps_per_epoch == 0
                    val_loss = None
                    if end:
                        val_loss = data.validation_loss(eval_step, self.params, key) if data.val else loss
                        improved = val_loss < self.best_loss * (1 - MIN_IMPROVEMENT)
                        patience = 0 if improved else patience + 1
                        self._end_epoch(epoch, loss, val_loss, time.perf_counter() - started, rng_state)
                    yield TrainProgress(self.step, self.total, epoch, config.epochs, loss, val_loss,
                                        float(rate(self.step - 1)), per_step * (self.total - self.step), end)
                    if last == 0 and stop is not None and stop():
                        return self._finish("stop_requested")
                    if end and patience >= config.patience:
                        return self._finish("early_stopping")
            return self._finish("completed")

    def _host_steps(self, key):
        """One step at a time on patches cut on the host; yields ``([loss], rng_state)``.

        The next batch is cut while the step runs (JAX dispatches it
        asynchronously on an accelerator).
        """
        train_step, _ = make_steps(self.graphdef, self.config)
        fold_in = jax.jit(jax.random.fold_in)  # called eagerly, the key's fold-in took 1.5 ms
        sampler, placement, step = self.data.train, self.placement, self.step
        inputs, targets = sampler.sample(self.config.batch_size)
        while step < self.total:
            self.params, self.opt_state, loss = train_step(
                self.params, self.opt_state, placement.split(inputs),
                placement.split(inputs if targets is None else targets), fold_in(key, step))
            step += 1
            rng_state = sampler.rng.bit_generator.state  # what a resumed run must draw from next
            inputs, targets = sampler.sample(self.config.batch_size)
            yield [float(loss)], rng_state

    def _device_steps(self, key):
        """Several steps per dispatch on patches drawn on the device; yields ``(losses, rng_state)``.

        The losses are read once per dispatch, and a dispatch never crosses an
        epoch's end. How many steps a dispatch runs is set by :class:`_Pace`.
        """
        plan, buffers = self.data.device
        dispatch = make_dispatch(self.graphdef, self.config, plan, self.placement.batch_sharding)
        buffers = self.placement.replicate(buffers)
        rng_state = self.data.train.rng.bit_generator.state  # unused by device sampling; kept for resume's format
        pace, step, per_epoch = _Pace(looping=not compiled_loops_are_slow()), self.step, self.config.steps_per_epoch
        while step < self.total:
            n = min(pace.count, per_epoch - step % per_epoch)
            began = time.perf_counter()
            self.params, self.opt_state, losses = dispatch(self.params, self.opt_state, buffers, key, step, n)
            losses = np.asarray(losses)[:n].tolist()
            pace.took(n, time.perf_counter() - began)
            step += n
            yield losses, rng_state

    def _end_epoch(self, epoch, loss, val_loss, seconds, rng_state) -> None:
        """Record the epoch, keep the best weights, and write the model and resumable state."""
        self.history.append({"epoch": epoch, "train_loss": loss, "val_loss": val_loss, "seconds": seconds})
        if val_loss < self.best_loss:
            self.best_loss, self.best_params = val_loss, jax.tree.map(np.array, self.params)
            if self.output is not None:  # the best model is loadable even if the run dies later
                save_model(self.model(self.best_params, stopped="running", history=self.history), self.output)
        if self.output is not None:
            save_last(self.output, self.config, self.params, self.opt_state, self.step, self.history,
                      self.best_loss, rng_state)

    def _finish(self, reason: str) -> TrainResult:
        weights = self.best_params if self.best_params is not None else self.params
        model = self.model(weights, stopped=reason, history=self.history)
        if self.output is not None:
            save_model(model, self.output)
        return TrainResult(model, self.history, reason, self.output)


class _Pace:
    """How many steps the next dispatch runs: as many as take about :data:`DISPATCH_SECONDS`.

    A step alone and steps in a loop are separate programs; the first call of
    each compiles and is not timed. Should the loop run a step more slowly
    than the step alone, the loop is dropped and every dispatch runs one
    step; where loops are known to be slow (a CPU device, see
    :func:`~napari_flax_denoise.runtime.backend.compiled_loops_are_slow`),
    it is never tried (``looping=False``).
    """

    def __init__(self, looping: bool = True):
        self.count, self.alone, self.looping = 1, None, looping
        self._compiled = set()

    def took(self, steps: int, seconds: float) -> None:
        program = steps > 1
        if program not in self._compiled:  # the first call of each program compiles
            self._compiled.add(program)
            return
        per_step = seconds / steps
        if not program:
            self.alone = per_step if self.alone is None else min(self.alone, per_step)
        elif per_step > 1.5 * self.alone:
            self.looping = False
        wanted = int(DISPATCH_SECONDS / max(per_step, 1e-6))
        self.count = int(np.clip(wanted, 1, MAX_STEPS_PER_DISPATCH)) if self.looping else 1
