"""Starting a training run: check the inputs, settle the settings, build the data and the network.

:func:`train_iter` (yields :class:`~.run.TrainProgress`, returns
:class:`~.run.TrainResult`) and its synchronous twin :func:`train` are the
public entry points; the command line, the napari widget's child process
and the tests all drive this one loop (:meth:`~.run.TrainingRun.steps`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flax import nnx

from ..axes import check_image, spatial_dims
from ..config import FINE_TUNE_LEARNING_RATE, Config
from ..errors import UserInputError
from ..models.checkpoint import build_network, resolve_model
from ..progress import drive
from ..runtime.backend import active
from ..runtime.devices import Placement
from .data import TrainingData
from .resume import load_last
from .run import TrainingRun, TrainResult
from .steps import optimizer


def _as_list(arrays):
    if arrays is None:
        return None
    return list(arrays) if isinstance(arrays, (list, tuple)) else [arrays]


def default_sizes(dims: int) -> dict:
    """``patch_size`` and ``batch_size`` a run on ``dims`` spatial axes gets unless given, on this device."""
    return {"patch_size": Config.patch_size, "batch_size": Config.batch_size,
            **active().training_sizes.get(dims, {})}


def _prepare_config(config, axes, init_model, channels_in, channels_out, overrides) -> Config:
    config = Config() if config is None else config
    config = config.replace(**overrides)
    arch = dict(dims=spatial_dims(axes), in_channels=channels_in, out_channels=channels_out)
    config = config.replace(**{key: value for key, value in default_sizes(arch["dims"]).items()
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
                    residual=base.use_residual, normalize_per_image=base.normalize_per_image,
                    noise_input=base.noise_input)
    return config.replace(**arch)


def check_inputs(images, *, axes: str, targets=None, algorithm: str | None = None):
    """Check training images and their targets, before anything is started.

    Parameters
    ----------
    images : list of array_like
    axes : str
    targets : list of array_like, optional
        One per image, matching it pixel for pixel.
    algorithm : str, optional
        When given, whether it takes targets is checked too.

    Returns
    -------
    images, layouts, targets, target_layouts
        The checked arrays and their :class:`~napari_flax_denoise.axes.Layout`
        (``targets`` and ``target_layouts`` None without targets).

    Raises
    ------
    UserInputError
        Naming both shapes when a target does not match its image.
    """
    images, targets = _as_list(images), _as_list(targets)
    checked = [check_image(image, axes, name="training image", lazy=True) for image in images]
    images, layouts = [image for image, _ in checked], [layout for _, layout in checked]
    if algorithm is not None:
        supervised = algorithm in ("care", "n2n")
        if not supervised and targets is not None:
            raise UserInputError(f"{algorithm} learns from noisy images alone; drop the targets or choose care / n2n.")
        if supervised and targets is None:
            raise UserInputError(f"{algorithm} needs targets (clean images for care, second noisy images for n2n).")
    if targets is None:
        return images, layouts, None, None
    if len(targets) != len(images):
        raise UserInputError(f"Give one target per training image ({len(images)}), not {len(targets)}.")
    for image, target in zip(images, targets):
        if len(np.shape(target)) != len(np.shape(image)):
            raise UserInputError(f"A target has shape {np.shape(target)} but its image has {np.shape(image)}; "
                                 "targets must match their images pixel for pixel.")
    targets, target_layouts = zip(*[check_image(t, layouts[0].axes, name="target", lazy=True) for t in targets])
    for image_layout, target_layout in zip(layouts, target_layouts):
        if (image_layout.batch_shape, image_layout.spatial_shape) != \
                (target_layout.batch_shape, target_layout.spatial_shape):
            raise UserInputError(
                f"A target has shape {target_layout.shape} but its image has {image_layout.shape}; "
                "targets must match their images pixel for pixel."
            )
    return images, layouts, list(targets), list(target_layouts)


def start_run(images, *, axes: str, targets=None, config: Config | None = None, output=None,
              init=None, resume: bool = False, **overrides) -> TrainingRun:
    """Check the inputs and build a :class:`~.run.TrainingRun` ready to step (arguments as for :func:`train`).

    Raises
    ------
    UserInputError
        When the images, targets, settings or the model to fine-tune do not fit together.
    """
    if resume:
        if output is None:
            raise UserInputError("Resuming needs the output model directory of the run to continue.")
        state = load_last(output)
        config = state.config.replace(**{k: v for k, v in overrides.items() if k == "epochs"})
    init_model = resolve_model(init) if init is not None else None
    images, layouts, targets, target_layouts = check_inputs(images, axes=axes, targets=targets)
    axes = layouts[0].axes
    channels_in = layouts[0].channels
    channels_out = target_layouts[0].channels if target_layouts else channels_in
    if not resume:
        config = _prepare_config(config, axes, init_model, channels_in, channels_out, overrides)
    elif (config.in_channels, config.out_channels, config.dims) != (channels_in, channels_out, layouts[0].dims):
        raise UserInputError(f"The interrupted run in '{output}' trained a {config.dims}D network on "
                             f"{config.in_channels} channel(s), but these inputs are {layouts[0].dims}D with "
                             f"{channels_in}; resume with the run's own images, or start a new run.")
    if config.self_supervised and targets is not None:
        raise UserInputError(f"{config.algorithm} learns from noisy images alone; drop the targets or choose care / n2n.")
    if not config.self_supervised and targets is None:
        raise UserInputError(f"{config.algorithm} needs targets (clean images for care, second noisy images for n2n).")
    data = TrainingData.build(images, targets, layouts, config)
    network = init_model.network if init_model is not None else build_network(config)
    graphdef, params = nnx.split(network)
    placement = Placement(config.batch_size)  # data-parallel when several devices share the batch
    params = placement.replicate(params)
    opt_state = placement.replicate(optimizer(config).init(params))
    info = {"algorithm": config.algorithm, "axes": axes, "patch_shape": list(data.patch_shape),
            "fine_tuned_from": init_model.name if init_model is not None else None}
    run = TrainingRun(config, data, graphdef, params, opt_state, placement, info,
                      Path(output) if output is not None else None)
    if resume:
        like = params
        params, opt_state, run.step, run.history, run.best_loss = state.restore(params, opt_state)
        run.params, run.opt_state = placement.replicate(params), placement.replicate(opt_state)
        run.best_params = state.best_weights(like)
        try:
            data.train.rng.bit_generator.state = state.rng_state
        except (TypeError, ValueError, KeyError):
            raise UserInputError(f"The interrupted run in '{output}' has a damaged random state; start training "
                                 "again without --resume.") from None
    return run


def train_iter(images, *, axes: str, targets=None, config: Config | None = None, output=None,
               init=None, resume: bool = False, stop=None, **overrides):
    """Generator form of :func:`train`: yields :class:`~.run.TrainProgress`, returns :class:`~.run.TrainResult`.

    ``stop`` (optional callable) is asked after every step; once it returns
    True, training ends and keeps the best weights.
    """
    run = start_run(images, axes=axes, targets=targets, config=config, output=output, init=init,
                    resume=resume, **overrides)
    return (yield from run.steps(stop))


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
    return drive(train_iter(images, axes=axes, targets=targets, config=config, output=output,
                          init=init, resume=resume, **overrides))
