"""Training as a generator of progress events.

:func:`train_iter` yields a :class:`TrainProgress` after every step and
returns a :class:`TrainResult`; the CLI (progress bar), the napari widget
(``thread_worker``) and the tests all drive this one loop. Stopping, by a
``stop`` callable or by closing the generator, takes effect between steps
and keeps the best weights.
"""

from __future__ import annotations

import time
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from flax import nnx

from .axes import check_image, spatial_dims
from .checkpoint import TrainedModel, build_network, save_model
from .config import DEFAULTS_3D, FINE_TUNE_LEARNING_RATE, Config
from .cpu_runtime import kept_memory
from .data import TrainingData
from .devices import Placement
from .errors import UserInputError
from .prediction import resolve_model, run
from .resume import load_last, save_last
from .steps import make_steps, optimizer, schedule


MIN_IMPROVEMENT = 1e-3


@dataclass(frozen=True)
class TrainProgress:
    """One training event.

    Attributes
    ----------
    step, total_steps : int
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
    snapshot : callable
        Returns the model with the weights of this step (for live previews);
        it stays valid after training moves on.
    """

    step: int
    total_steps: int
    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    learning_rate: float
    eta_seconds: float
    end_of_epoch: bool = False
    snapshot: Callable[[], TrainedModel] | None = field(default=None, repr=False, compare=False)


@dataclass
class TrainResult:
    """What :func:`train` returns.

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


def _as_list(arrays):
    if arrays is None:
        return None
    return list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]


def _prepare_config(config, axes, init_model, channels_in, channels_out, overrides) -> Config:
    config = Config() if config is None else config
    config = config.replace(**overrides)
    arch = dict(dims=spatial_dims(axes), in_channels=channels_in, out_channels=channels_out)
    if arch["dims"] == 3:  # 2D-sized defaults would make each 3D step enormous
        config = config.replace(**{key: value for key, value in DEFAULTS_3D.items()
                                   if key not in overrides and getattr(config, key) == getattr(Config, key)})
    if init_model is None and config.self_supervised and config.residual:
        raise UserInputError(f"{config.algorithm} cannot train a residual network from scratch: it would pass the "
                             "noisy pixel through. Leave residual off, or fine-tune a residual model with --init.")
    if init_model is not None:
        if "learning_rate" not in overrides and config.learning_rate == Config.learning_rate:
            config = config.replace(learning_rate=FINE_TUNE_LEARNING_RATE)
        base = init_model.config
        mismatch = [k for k, v in arch.items() if getattr(base, k) != v]
        if mismatch:
            raise UserInputError(
                f"The model to fine-tune has {', '.join(f'{k}={getattr(base, k)}' for k in mismatch)} "
                f"but the data need {', '.join(f'{k}={arch[k]}' for k in mismatch)}; pick a matching model or train from scratch."
            )
        # Explicit flags: the architecture must not change with the algorithm.
        arch.update(depth=base.depth, features=base.features, blurpool=base.use_blurpool,
                    residual=base.use_residual, normalize_per_image=base.normalize_per_image)
    return config.replace(**arch)


def train_iter(images, *, axes: str, targets=None, config: Config | None = None, output=None,
               init=None, resume: bool = False, stop=None, **overrides):
    """Generator form of :func:`train`: yields :class:`TrainProgress`, returns :class:`TrainResult`."""
    images = _as_list(images)
    targets = _as_list(targets)
    if resume:
        if output is None:
            raise UserInputError("Resuming needs the output model directory of the run to continue.")
        state = load_last(output)
        config = state.config.replace(**{k: v for k, v in overrides.items() if k == "epochs"})
    init_model = resolve_model(init) if init is not None else None
    checked = [check_image(image, axes, name="training image", lazy=True) for image in images]
    images = [image for image, _ in checked]
    layouts = [layout for _, layout in checked]
    axes = layouts[0].axes
    target_layouts = None
    if targets is not None:
        if len(targets) != len(images):
            raise UserInputError(f"Give one target per training image ({len(images)}), not {len(targets)}.")
        targets, target_layouts = zip(*[check_image(t, axes, name="target", lazy=True) for t in targets])
        for image_layout, target_layout in zip(layouts, target_layouts):
            if (image_layout.batch_shape, image_layout.spatial_shape) != \
                    (target_layout.batch_shape, target_layout.spatial_shape):
                raise UserInputError(
                    f"A target has shape {target_layout.shape} but its image has {image_layout.shape}; "
                    "targets must match their images pixel for pixel."
                )
    channels_in = layouts[0].channels
    channels_out = target_layouts[0].channels if target_layouts else channels_in
    if not resume:
        config = _prepare_config(config, axes, init_model, channels_in, channels_out, overrides)
    if config.self_supervised and targets is not None:
        raise UserInputError(f"{config.algorithm} learns from noisy images alone; drop the targets or choose care / n2n.")
    if not config.self_supervised and targets is None:
        raise UserInputError(f"{config.algorithm} needs targets (clean images for care, second noisy images for n2n).")
    data = TrainingData.build(images, targets, layouts, config)
    network = init_model.network if init_model is not None else build_network(config)
    graphdef, params = nnx.split(network)
    placement = Placement(config.batch_size)  # data-parallel when several devices share the batch
    params = placement.replicate(params)
    tx = optimizer(config)
    opt_state = placement.replicate(tx.init(params))
    step, history, best = 0, [], (np.inf, None)
    if resume:
        like = params
        params, opt_state, step, history, best_loss = state.restore(params, opt_state)
        params, opt_state = placement.replicate(params), placement.replicate(opt_state)
        best = (best_loss, state.best_weights(like))
        data.train.rng.bit_generator.state = state.rng_state
    train_step, eval_step = make_steps(graphdef, config)
    rate = jax.jit(schedule(config))  # called eagerly, optax's schedule took 5.7 ms a step
    fold_in = jax.jit(jax.random.fold_in)  # and the key's fold-in 1.5 ms
    key = jax.random.key(config.seed)
    total = config.epochs * config.steps_per_epoch
    info = {"algorithm": config.algorithm, "axes": axes, "patch_shape": list(data.patch_shape),
            "fine_tuned_from": init_model.name if init_model is not None else None}

    def model_with(weights, **extra):
        return TrainedModel(config, nnx.merge(graphdef, weights), data.input_norm, data.output_norm,
                            {**info, "steps": step, **extra})

    def result(reason):
        model = model_with(best[1] if best[1] is not None else params, stopped=reason, history=history)
        if output is not None:
            save_model(model, output)
        return TrainResult(model, history, reason, Path(output) if output is not None else None)

    with kept_memory():  # reuse each step's pages (see cpu_runtime)
        patience, started, timed, timed_steps = 0, time.perf_counter(), None, 0
        inputs, target_batch = data.train.sample(config.batch_size)
        while step < total:
            epoch = step // config.steps_per_epoch + 1
            params, opt_state, loss = train_step(params, opt_state, placement.split(inputs),
                                                 placement.split(_or(target_batch, inputs)), fold_in(key, step))
            step += 1
            rng_state = data.train.rng.bit_generator.state  # what a resumed run must draw from next
            inputs, target_batch = data.train.sample(config.batch_size)  # overlaps the step on an accelerator
            loss = float(loss)
            if not np.isfinite(loss):
                raise UserInputError("Training diverged (the loss became NaN or infinite); lower the learning rate.")
            if timed is None:  # the first step includes compilation: time from the second on
                timed = time.perf_counter()
            else:
                timed_steps += 1
            per_step = (time.perf_counter() - timed) / max(timed_steps, 1)
            end = step % config.steps_per_epoch == 0
            val_loss = None
            if end:
                val_loss = data.validation_loss(eval_step, params, key) if data.val else loss
                history.append({"epoch": epoch, "train_loss": loss, "val_loss": val_loss,
                                "seconds": time.perf_counter() - started})
                # Patience restarts only on a real improvement (0.1%), not on drift.
                patience = 0 if val_loss < best[0] * (1 - MIN_IMPROVEMENT) else patience + 1
                if val_loss < best[0]:
                    best = (val_loss, jax.tree.map(np.array, params))
                    if output is not None:  # the best model is loadable even if the run dies later
                        save_model(model_with(best[1], stopped="running", history=history), output)
                if output is not None:
                    save_last(output, config, params, opt_state, step, history, best[0], rng_state)
            yield TrainProgress(step, total, epoch, config.epochs, loss, val_loss, float(rate(step - 1)),
                                per_step * (total - step), end, partial(model_with, params, steps=step))
            if stop is not None and stop():
                return result("stop_requested")
            if end and patience >= config.patience:
                return result("early_stopping")
        return result("completed")


def _or(value, fallback):
    return fallback if value is None else value


def train(images, *, axes: str, targets=None, config: Config | None = None, output=None, init=None,
          resume: bool = False, **overrides) -> TrainResult:
    """Train a denoising U-Net.

    Parameters
    ----------
    images : array_like or list of array_like
        Noisy images, all with the same ``axes`` (any sizes).
    axes : str
        Axes of every image, e.g. ``"YX"``, ``"SYX"``, ``"ZYX"``, ``"CYX"``.
    targets : array_like or list of array_like, optional
        Clean images (``care``) or second noisy acquisitions (``n2n``),
        aligned with ``images``.
    config : Config, optional
        Settings; defaults to :class:`Config`'s defaults.
    output : str or Path, optional
        Model directory; best weights and resumable state are written there.
    init : TrainedModel or str or Path, optional
        Model to fine-tune (its architecture is kept).
    resume : bool
        Continue the interrupted run saved in ``output``.
    **overrides
        Any :class:`Config` field, e.g. ``epochs=5``, ``algorithm="care"``.

    Returns
    -------
    TrainResult

    Examples
    --------
    >>> result = train(noisy, axes="YX", epochs=2, steps_per_epoch=10)  # doctest: +SKIP
    >>> clean = denoise(noisy, result.model, axes="YX")  # doctest: +SKIP
    """
    return run(train_iter(images, axes=axes, targets=targets, config=config, output=output,
                          init=init, resume=resume, **overrides))
