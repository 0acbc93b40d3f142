"""Grow a trained model into a larger one that starts out computing the same function.

Two ways, both used to build the embedded models (``scripts/train_embedded.py``):
:func:`with_noise_input` adds the noise-level input channels, and
:func:`with_features` widens every level of the U-Net. Each added weight
that feeds an existing unit is zero, so the copy gives the model's results
(up to float rounding: 5e-5 on general-2d's 0-255 scale) until it is trained
further; the added units themselves get the network's usual random weights,
so that training has something to grow.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from .checkpoint import TrainedModel, build_network, tree_to_arrays


def with_noise_input(model: TrainedModel) -> TrainedModel:
    """A noise-aware copy of a one-channel ``model`` (``Config.noise_input``) that computes the same function.

    The first convolution gets the noise channels as extra inputs with zero
    weights, so the copy starts where ``model`` is and learns to use the
    noise level when trained further (``scripts/train_embedded.py`` builds
    general-2d this way).
    """
    if model.config.noise_input:
        return model
    return _grown(model, model.config.replace(noise_input=True), random_outputs=False)


def with_features(model: TrainedModel, features: int, seed: int = 0) -> TrainedModel:
    """A copy of ``model`` with ``features`` channels at the top level (every level widened alike).

    Parameters
    ----------
    model : TrainedModel
    features : int
        At least ``model.config.features``.
    seed : int
        Draws the added units' incoming weights.

    Returns
    -------
    TrainedModel
        The same function as ``model`` (its old units see only old inputs,
        and the added units' outputs enter every next layer with weight 0),
        with more capacity to train.
    """
    if features < model.config.features:
        raise ValueError(f"features must be at least the model's {model.config.features}, not {features}")
    if features == model.config.features:
        return model
    return _grown(model, model.config.replace(features=features), random_outputs=True, seed=seed)


def _input_parts(path: str, config) -> int:
    """How many equal groups of channels a kernel's input concatenates (a decoder takes the level below and
    the encoder's skip; ``decoders`` run from the deepest level up)."""
    found = re.match(r"\['decoders'\]\[(\d+)\]\['conv1'\]", path)
    if found is None:
        return 1
    level = config.depth - 1 - int(found.group(1))
    return 1 if level == 0 and config.use_blurpool else 2


def _grown(model: TrainedModel, config, random_outputs: bool, seed: int = 0) -> TrainedModel:
    """``model``'s weights placed in a network for ``config`` whose layers are at least as wide: old
    inputs and outputs keep their places within each group of channels; the rest is zero, or for added
    output units (``random_outputs``) the new network's own initial weights."""
    grown = build_network(config, seed) if random_outputs else nnx.eval_shape(lambda: build_network(config))
    graphdef, like = nnx.split(grown)
    old = tree_to_arrays(nnx.state(model.network, nnx.Param))

    def place(path, leaf):
        name = jax.tree_util.keystr(path)
        value = old[name]
        new = np.array(leaf, np.float32) if random_outputs else np.zeros(leaf.shape, np.float32)
        out = value.shape[-1]
        if value.ndim == 1:  # a bias: added units start at zero
            new[:out], new[out:] = value, 0
            return jax.numpy.asarray(new, leaf.dtype)
        new[..., :out] = 0  # old units take no input from added channels...
        parts = _input_parts(name, model.config)
        old_in, new_in = value.shape[-2] // parts, leaf.shape[-2] // parts
        if new_in * parts != leaf.shape[-2] or old_in * parts != value.shape[-2]:
            raise ValueError(f"cannot place {name}: {value.shape} into {leaf.shape}")
        for part in range(parts):  # ...and keep their weights from the old ones
            new[..., part * new_in:part * new_in + old_in, :out] = value[..., part * old_in:(part + 1) * old_in, :]
        return jax.numpy.asarray(new, leaf.dtype)

    params = jax.tree_util.tree_map_with_path(place, like)
    info = {k: v for k, v in model.info.items() if k != "path"}
    return TrainedModel(config, nnx.merge(graphdef, params), model.input_norm, model.output_norm, info)
