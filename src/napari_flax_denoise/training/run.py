"""A training run in progress: its state, its steps and its events.

:meth:`TrainingRun.steps` is the training loop, a generator that yields a
:class:`TrainProgress` after every optimiser step and returns a
:class:`TrainResult`. Stopping (a ``stop`` callable, or closing the
generator) takes effect between steps and keeps the best weights. The run
is built, and its inputs checked, by :func:`.prepare.start_run`.
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
from ..runtime.backend import active
from ..runtime.devices import Placement
from .data import TrainingData
from .resume import save_last
from .steps import make_steps, schedule

# Patience restarts only on a real improvement (0.1%), not on drift.
MIN_IMPROVEMENT = 1e-3


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
            Asked after every step; once it returns True, training ends with the best weights.
        """
        config, data, placement = self.config, self.data, self.placement
        train_step, eval_step = make_steps(self.graphdef, config)
        rate = jax.jit(schedule(config))  # called eagerly, optax's schedule took 5.7 ms a step
        fold_in = jax.jit(jax.random.fold_in)  # and the key's fold-in 1.5 ms
        key = jax.random.key(config.seed)
        with active().memory():  # on a CPU, each step reuses the last one's pages
            patience, started, timed, timed_steps = 0, time.perf_counter(), None, 0
            inputs, targets = data.train.sample(config.batch_size)
            while self.step < self.total:
                epoch = self.step // config.steps_per_epoch + 1
                self.params, self.opt_state, loss = train_step(
                    self.params, self.opt_state, placement.split(inputs),
                    placement.split(inputs if targets is None else targets), fold_in(key, self.step))
                self.step += 1
                rng_state = data.train.rng.bit_generator.state  # what a resumed run must draw from next
                inputs, targets = data.train.sample(config.batch_size)  # overlaps the step on an accelerator
                loss = float(loss)
                if not np.isfinite(loss):
                    raise UserInputError("Training diverged (the loss became NaN or infinite); lower the learning rate.")
                if timed is None:  # the first step includes compilation: time from the second on
                    timed = time.perf_counter()
                else:
                    timed_steps += 1
                per_step = (time.perf_counter() - timed) / max(timed_steps, 1)
                end = self.step % config.steps_per_epoch == 0
                val_loss = None
                if end:
                    val_loss = data.validation_loss(eval_step, self.params, key) if data.val else loss
                    improved = val_loss < self.best_loss * (1 - MIN_IMPROVEMENT)
                    patience = 0 if improved else patience + 1
                    self._end_epoch(epoch, loss, val_loss, time.perf_counter() - started, rng_state)
                yield TrainProgress(self.step, self.total, epoch, config.epochs, loss, val_loss,
                                    float(rate(self.step - 1)), per_step * (self.total - self.step), end)
                if stop is not None and stop():
                    return self._finish("stop_requested")
                if end and patience >= config.patience:
                    return self._finish("early_stopping")
            return self._finish("completed")

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
