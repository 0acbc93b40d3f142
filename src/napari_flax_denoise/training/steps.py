"""Loss, optimiser and the jitted train / validation steps.

The step functions are pure: parameters and optimiser state go in and come
out (donated, so XLA updates them in place), and the batch shape is fixed, so
each compiles once per training run. They are kept for later runs of the
same network and settings in the same process (a script's or notebook's
loop over seeds or images), which then compile nothing.
"""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ..config import Config
from .masking import blind_spot_mask, gather_pixels
from ..runtime.backend import Profile, active


def loss_fn(network, inputs, targets, key, config: Config, profile: Profile | None = None):
    """Training loss of ``network`` on one batch.

    Parameters
    ----------
    network : UNet
    inputs : jax.Array, shape (B, *patch, C_in)
        Normalised noisy patches.
    targets : jax.Array, shape (B, *patch, C_out)
        Normalised targets (ignored by the blind-spot algorithms).
    key : jax.Array
        PRNG key for blind-spot masking.
    config : Config
    profile : Profile, optional
        Backend profile whose training forward route to take (default: the active one).

    Returns
    -------
    jax.Array
        Scalar loss: MSE at the masked pixels for ``n2v``/``n2v2``; MSE or L1
        over all pixels for ``care``/``n2n``.
    """
    route = (profile or active()).training_forward

    def forward(net, batch):
        if config.precision == "bfloat16":  # weights cast in _loss_of; the loss is computed in float32
            return route(net, batch.astype(jnp.bfloat16)).astype(jnp.float32)
        return route(net, batch)

    if config.self_supervised:  # only the image's channels are masked, not a noise-aware network's noise level
        image, noise = inputs[..., :config.in_channels], inputs[..., config.in_channels:]
        masked, index = blind_spot_mask(key, image, mask_fraction=config.mask_fraction,
                                        median=config.algorithm == "n2v2")
        if noise.shape[-1]:
            masked = jnp.concatenate([masked, noise], axis=-1)
        prediction = gather_pixels(forward(network, masked), index)
        return jnp.mean((prediction - gather_pixels(image, index)) ** 2)
    error = forward(network, inputs) - targets
    return jnp.mean(error**2) if config.loss == "mse" else jnp.mean(jnp.abs(error))


def schedule(config: Config) -> optax.Schedule:
    """Linear warm-up, then cosine decay to 2% of the peak over the planned steps.

    The floor keeps learning alive on small data, where plateau schedulers
    shrink the rate to nothing after a few noisy epochs.
    """
    total = config.epochs * config.steps_per_epoch
    warmup = max(1, min(200, total // 20))
    return optax.warmup_cosine_decay_schedule(
        init_value=config.learning_rate * 0.05, peak_value=config.learning_rate,
        warmup_steps=warmup, decay_steps=max(total, warmup + 1), end_value=config.learning_rate * 0.02,
    )


def optimizer(config: Config) -> optax.GradientTransformation:
    """Adam or AdamW on the warm-up + cosine schedule, with gradient clipping."""
    rate = schedule(config)
    if config.optimizer == "adamw":
        core = optax.adamw(rate, weight_decay=config.weight_decay)
    else:
        core = optax.adam(rate)
    return optax.chain(optax.clip_by_global_norm(1.0), core)


# Settings the steps do not depend on: runs differing only in these share compiled steps.
_NOT_IN_STEPS = ("seed", "patience", "val_fraction")
_KEPT_STEPS: dict = {}
_MAX_KEPT = 8


def make_steps(graphdef, config: Config):
    """The jitted ``train_step`` and ``eval_step`` for one network structure and its settings.

    Returns
    -------
    train_step : callable
        ``(params, opt_state, inputs, targets, key) -> (params, opt_state, loss)``
        with ``opt_state`` from ``optimizer(config).init(params)``;
        ``opt_state`` is donated. ``params`` is not, so that snapshots of
        earlier steps stay valid (the weights are small next to activations).
    eval_step : callable
        ``(params, inputs, targets, key) -> loss``.
    """
    profile = active()  # its forward route is traced into the steps
    return _kept(("steps", graphdef, profile.name, _settings(config)),
                 lambda: _compile_steps(graphdef, config, optimizer(config), profile))


# The most steps one dispatch runs; one compiled program serves any number up to it.
MAX_STEPS_PER_DISPATCH = 64


def make_dispatch(graphdef, config: Config, plan, batch_sharding=None):
    """A jitted function that runs several training steps on patches drawn on the device.

    Parameters
    ----------
    graphdef : nnx.GraphDef
    config : Config
    plan : PatchPlan
        Where the patches come from (see :mod:`.device_patches`).
    batch_sharding : jax.sharding.Sharding, optional
        How each batch is split over several devices.

    Returns
    -------
    callable
        ``(params, opt_state, buffers, key, step, count) -> (params, opt_state, losses)``:
        ``count`` (at most :data:`MAX_STEPS_PER_DISPATCH`) steps from step
        number ``step``, each drawing its batch and its masks from
        ``fold_in(key, step + i)``; ``losses`` holds the ``count`` losses
        first. ``opt_state`` is donated. One step runs as a program of its
        own; more run in one compiled loop (a single program for any count),
        which XLA's CPU backend runs many times slower than the step alone
        (see :class:`~.run.TrainingRun`, which measures both).
    """
    profile = active()
    return _kept(("dispatch", graphdef, profile.name, _settings(config), plan, batch_sharding),
                 lambda: _compile_dispatch(graphdef, config, optimizer(config), profile, plan, batch_sharding))


def _settings(config: Config) -> str:
    return json.dumps({k: v for k, v in config.to_dict().items() if k not in _NOT_IN_STEPS}, sort_keys=True)


def _kept(key, build):
    """The compiled function kept under ``key``, built (and the oldest dropped) when missing."""
    if key not in _KEPT_STEPS:
        if len(_KEPT_STEPS) >= _MAX_KEPT:
            del _KEPT_STEPS[next(iter(_KEPT_STEPS))]
        _KEPT_STEPS[key] = build()
    return _KEPT_STEPS[key]


def _loss_of(graphdef, config: Config, profile: Profile):
    def loss_of(params, inputs, targets, key):
        if config.precision == "bfloat16":  # mixed precision: float32 master weights, bfloat16 arithmetic
            params = jax.tree.map(lambda p: p.astype(jnp.bfloat16) if jnp.issubdtype(p.dtype, jnp.floating)
                                  else p, params)
        return loss_fn(nnx.merge(graphdef, params), inputs, targets, key, config, profile)

    return loss_of


def _compile_steps(graphdef, config: Config, tx: optax.GradientTransformation, profile: Profile):
    """The two jitted steps of :func:`make_steps`, new (they compile on their first call)."""
    loss_of = _loss_of(graphdef, config, profile)

    @partial(jax.jit, donate_argnums=1)
    def train_step(params, opt_state, inputs, targets, key):
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, targets, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return train_step, jax.jit(loss_of)


def _compile_dispatch(graphdef, config: Config, tx, profile: Profile, plan, batch_sharding):
    """The jitted function of :func:`make_dispatch`, new."""
    loss_of = _loss_of(graphdef, config, profile)

    def one_step(params, opt_state, buffers, key, step):
        data_key, mask_key = jax.random.split(jax.random.fold_in(key, step))
        inputs, targets = plan.sample(buffers, data_key, config.batch_size)
        targets = inputs if targets is None else targets
        if batch_sharding is not None:
            inputs, targets = (jax.lax.with_sharding_constraint(b, batch_sharding) for b in (inputs, targets))
        loss, grads = jax.value_and_grad(loss_of)(params, inputs, targets, mask_key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    @partial(jax.jit, donate_argnums=1)
    def single(params, opt_state, buffers, key, step):
        params, opt_state, loss = one_step(params, opt_state, buffers, key, step)
        return params, opt_state, loss[None]

    @partial(jax.jit, donate_argnums=1)
    def looped(params, opt_state, buffers, key, step, count):
        def body(i, carry):
            params, opt_state, losses = carry
            params, opt_state, loss = one_step(params, opt_state, buffers, key, step + i)
            return params, opt_state, losses.at[i].set(loss)

        losses = jnp.full((MAX_STEPS_PER_DISPATCH,), jnp.nan, jnp.float32)
        return jax.lax.fori_loop(0, count, body, (params, opt_state, losses))

    def dispatch(params, opt_state, buffers, key, step, count):
        if count == 1:
            return single(params, opt_state, buffers, key, step)
        return looped(params, opt_state, buffers, key, step, count)

    return dispatch
