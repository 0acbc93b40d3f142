"""Training data: normalisation, patch shape, train / validation samplers."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import numpy as np

from ..config import Config
from ..io.limits import available_memory
from ..models.normalization import Normalization
from ..noise.level import estimate_line, features
from ..runtime.backend import active
from ..runtime.devices import memory_budget
from .device_patches import device_patches
from .patches import PatchSampler, fit_patch_shape, split_rows

VALIDATION_BATCHES = 4


@dataclass
class TrainingData:
    """Everything the training loop draws batches from.

    Attributes
    ----------
    train : PatchSampler
        Random augmented patches from the training rows.
    val : list of tuple
        Fixed validation batches ``(inputs, targets)`` from the held-out rows
        (empty when ``val_fraction`` is 0).
    input_norm, output_norm : Normalization
    patch_shape : tuple of int
    device : tuple or None
        ``(PatchPlan, buffers)`` when the backend profile trains on the
        device and the images are in memory and fit (see :mod:`.device_patches`).
    """

    train: PatchSampler
    val: list
    input_norm: Normalization
    output_norm: Normalization
    patch_shape: tuple
    device: tuple | None = None

    @classmethod
    def build(cls, images, targets, layouts, config: Config) -> "TrainingData":
        """Prepare samplers from user-layout ``images`` (and ``targets``) described by ``layouts``."""
        xs = [layout.to_model(image) for image, layout in zip(images, layouts)]
        ts = None if targets is None else [layout.to_model(t) for t, layout in zip(targets, layouts)]
        input_norm, output_norm, per_input, per_target = _normalise(xs, ts, config)
        patch_shape = fit_patch_shape([x.shape[1:-1] for x in xs], config.patch_size, 2**config.depth)
        splits = [split_rows(x.shape[-3], patch_shape[-2], config.val_fraction) for x in xs]
        noise = _noise(xs, per_input) if config.noise_input else None
        common = dict(patch_shape=patch_shape, input_norms=per_input, target_norms=per_target, noise=noise)
        train = PatchSampler(xs, ts, rows=[s[0] for s in splits], augment=config.augment, seed=config.seed, **common)
        val = []
        if config.val_fraction > 0:
            sampler = PatchSampler(xs, ts, rows=[s[1] for s in splits], augment=False, seed=config.seed + 1, **common)
            val = [sampler.sample(config.batch_size) for _ in range(VALIDATION_BATCHES)]
        device = None
        if active().resident_training:
            device = device_patches(xs, ts, rows=[s[0] for s in splits], weights=train.weights,
                                    augment=config.augment, budget=_data_budget(), **common)
        return cls(train, val, input_norm, output_norm, patch_shape, device)

    def validation_loss(self, eval_step, params, key) -> float:
        """Mean loss over the fixed validation batches (fixed masks too)."""
        key = jax.random.fold_in(key, 2**31 - 1)  # a stream the train steps never use
        losses = [eval_step(params, x, x if y is None else y, jax.random.fold_in(key, i))
                  for i, (x, y) in enumerate(self.val)]
        return float(np.mean([float(loss) for loss in losses]))


def _noise(xs, norms) -> np.ndarray:
    """Per image, a noise-aware network's noise channels, estimated from its first plane."""
    return np.array([features(estimate_line(np.asarray(x[0][..., 0])), n.offset[0], n.scale[0])
                     for x, n in zip(xs, norms)], np.float32)


def _data_budget() -> int:
    """Bytes the training images may take on the device: a quarter of its budget (or of free host memory)."""
    budget = memory_budget()
    return (budget if budget is not None else available_memory()) // 4


def _normalise(xs, ts, config: Config):
    """The statistics saved with the model, and the ones each image's (and target's)
    patches are normalised with as they are cut (arrays are never normalised whole:
    they may be larger than memory)."""
    if config.normalize_per_image:  # each image and its target on the image's own scale, saved as identity
        norms = [Normalization.fit([x], config.normalization) for x in xs]
        identity = Normalization.identity(xs[0].shape[-1])
        return identity, identity, norms, None if ts is None else norms
    input_norm = Normalization.fit(xs, config.normalization)
    if config.algorithm == "care":
        output_norm = Normalization.fit(ts, config.normalization)
    elif config.algorithm == "n2n":  # both sides are noisy views of one signal: one scale
        input_norm = output_norm = Normalization.fit(xs + ts, config.normalization)
    else:
        output_norm = input_norm
    return input_norm, output_norm, [input_norm] * len(xs), None if ts is None else [output_norm] * len(ts)
