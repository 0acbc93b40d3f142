"""The one configuration schema shared by Python, the CLI and the napari widgets.

A :class:`Config` holds plain values only, is validated on construction with
messages that name the bad value, and is saved as JSON beside every model so
that a checkpoint can rebuild its own network.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserInputError

ALGORITHMS = ("n2v2", "n2v", "care", "n2n")
SELF_SUPERVISED = ("n2v2", "n2v")


# Fine-tuning starts from a converged model: at the default rate Adam's first
# steps throw away much of what it knows (measured on the embedded general-2d,
# camera with sigma 25: 29.3 -> 20.0 dB after 20 n2v2 steps at 2e-3, 28.8 -> 28.7 dB
# at 5e-5).
FINE_TUNE_LEARNING_RATE = 5e-5

# The from-scratch default, 2e-3, is a compromise (n2v2, 150 steps on 256x256, bench
# images and noises): 4e-3 gained 0.1-0.4 dB on camera (and on a 3D stack, and care)
# but lost 0.75-2.2 dB on cell at sigma 50 and 1.0 under Poisson noise; 3e-3 lay between,
# and 1e-3 lost 0.5 dB there too.

@dataclass
class Config:
    """Model, data and training settings.

    The defaults train a useful self-supervised 2D model in a few minutes on a
    laptop CPU.

    Attributes
    ----------
    algorithm : {'n2v2', 'n2v', 'care', 'n2n'}
        ``n2v2``/``n2v``: blind-spot self-supervision from noisy images only;
        ``care``: supervised noisy -> clean; ``n2n``: pairs of noisy images.
    dims : {2, 3}
        Spatial dimensions of the network (3 when the axes contain Z).
    depth : int
        Number of pooling levels of the U-Net, 1 to 4.
    features : int
        Feature maps of the first level; doubled at every level.
    in_channels, out_channels : int
        Image channels in and out.
    noise_input : bool
        The network also takes the image's noise level: two constant
        channels holding the noise's standard deviation at the bottom and
        the top of the normalised intensity range (0 and 1), estimated from
        each image (see :mod:`~napari_flax_denoise.noise.level`)
        or given by the user. One-channel models only.
    blurpool : bool or None
        Blur-pool instead of max-pool and no top skip connection (N2V2).
        ``None`` means "on for n2v2".
    residual : bool or None
        Predict a correction added to the input. Off by default: on short
        runs it measured 0.4 dB worse than the plain U-Net. Blind-spot
        training from scratch refuses it (the network would pass the noisy
        pixel through); a residual model fine-tuned by n2v / n2v2 keeps it.
    patch_size : int
        Edge of the square / cubic training patches (a multiple of 2**depth).
    batch_size, epochs, steps_per_epoch : int
        Patches per step, number of epochs, optimiser steps per epoch.
    learning_rate : float
        Peak learning rate of the warm-up + cosine schedule. Fine-tuning a
        trained model uses :data:`FINE_TUNE_LEARNING_RATE` unless one is given.
    optimizer : {'adam', 'adamw'}
    weight_decay : float
        Used by ``adamw`` only.
    loss : {'mse', 'l1'}
        Loss of ``care`` and ``n2n``; blind-spot training always uses MSE.
    mask_fraction : float
        Fraction of pixels masked per patch in blind-spot training.
    val_fraction : float
        Fraction of every image (along Y) held out for validation; 0 disables.
    patience : int
        Epochs without validation improvement before training stops early.
    normalization : {'percentile', 'meanstd'}
    normalize_per_image : bool
        Normalise every image (and its target) with the image's own
        statistics, in training and when denoising, instead of saving one set
        of statistics from the training data. Pretrained models that meet
        anyone's images need this.
    augment : bool
        Random flips and 90 degree rotations of training patches.
    precision : {'float32', 'bfloat16'}
        Training arithmetic: ``bfloat16`` computes the network's forward and
        backward passes in bfloat16 (mixed precision: weights, optimiser
        state and loss stay float32). Faster on GPUs with tensor cores; on a
        CPU it is slower. ``bf16`` is accepted.
    seed : int
    """

    algorithm: str = "n2v2"
    dims: int = 2
    depth: int = 2
    features: int = 32
    in_channels: int = 1
    out_channels: int = 1
    noise_input: bool = False
    blurpool: bool | None = None
    residual: bool | None = None
    patch_size: int = 64
    batch_size: int = 16
    epochs: int = 20
    steps_per_epoch: int = 50
    learning_rate: float = 2e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-4
    loss: str = "mse"
    mask_fraction: float = 0.1
    val_fraction: float = 0.1
    patience: int = 8
    normalization: str = "percentile"
    normalize_per_image: bool = False
    augment: bool = True
    precision: str = "float32"
    seed: int = 0

    def __post_init__(self):
        self.algorithm = str(self.algorithm).lower()
        _choice("algorithm", self.algorithm, ALGORITHMS)
        _choice("dims", self.dims, (2, 3))
        _choice("optimizer", self.optimizer, ("adam", "adamw"))
        _choice("loss", self.loss, ("mse", "l1"))
        _choice("normalization", self.normalization, ("percentile", "meanstd"))
        _choice("normalize_per_image", self.normalize_per_image, (False, True))
        _choice("noise_input", self.noise_input, (False, True))
        self.precision = {"bf16": "bfloat16"}.get(str(self.precision).lower(), str(self.precision).lower())
        _choice("precision", self.precision, ("float32", "bfloat16"))
        _int_range("depth", self.depth, 1, 4)
        _int_range("features", self.features, 1, 512)
        _int_range("in_channels", self.in_channels, 1, 64)
        _int_range("out_channels", self.out_channels, 1, 64)
        _int_range("batch_size", self.batch_size, 1, 4096)
        _int_range("epochs", self.epochs, 1, 100_000)
        _int_range("steps_per_epoch", self.steps_per_epoch, 1, 10_000_000)
        _int_range("patience", self.patience, 1, 100_000)
        _int_range("seed", self.seed, 0, 2**31 - 1)
        _int_range("patch_size", self.patch_size, 2**self.depth, 4096)
        if self.patch_size % 2**self.depth:
            raise UserInputError(
                f"patch_size {self.patch_size} must be a multiple of 2**depth = {2**self.depth}."
            )
        _float_range("learning_rate", self.learning_rate, 0.0, 1.0, low_open=True)
        _float_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _float_range("mask_fraction", self.mask_fraction, 0.0, 0.5, low_open=True)
        _float_range("val_fraction", self.val_fraction, 0.0, 0.5)
        if self.noise_input and self.in_channels != 1:
            raise UserInputError("noise_input needs a one-channel model (in_channels 1); a model of several "
                                 "channels denoises without a noise level.")
        if self.self_supervised and self.in_channels != self.out_channels:
            raise UserInputError(
                f"{self.algorithm} predicts the input itself, so out_channels must equal "
                f"in_channels ({self.in_channels})."
            )

    @property
    def self_supervised(self) -> bool:
        """True for the blind-spot algorithms, which need only noisy images."""
        return self.algorithm in SELF_SUPERVISED

    @property
    def use_blurpool(self) -> bool:
        return self.algorithm == "n2v2" if self.blurpool is None else bool(self.blurpool)

    @property
    def use_residual(self) -> bool:
        return bool(self.residual)

    @property
    def patch_shape(self) -> tuple[int, ...]:
        return (self.patch_size,) * self.dims

    def replace(self, **changes) -> "Config":
        """Return a validated copy with ``changes`` applied (``None`` values ignored)."""
        return Config.from_dict({**self.to_dict(), **{k: v for k, v in changes.items() if v is not None}})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """Build a config from a dict, rejecting unknown keys by name."""
        if not isinstance(values, dict):
            raise UserInputError("A configuration must be a JSON object of setting names and values.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserInputError(
                f"Unknown configuration setting(s) {', '.join(unknown)}; "
                f"known settings are {', '.join(sorted(known))}."
            )
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | Path) -> "Config":
        """Read a config from a JSON file."""
        return cls.from_dict(read_json(path, "Configuration file", "check the path, or fix or replace the file"))


# No settings or model description comes near this; a larger "JSON" file is a mistake or an attack.
MAX_JSON_BYTES = 16 * 2**20


def read_json(path: str | Path, name: str, fix: str):
    """Read a JSON file a user handed us, or raise one sentence: ``"{name} '{path}' {problem}; {fix}."``.

    Parameters
    ----------
    path : str or Path
    name : str
        What the file is, for the sentence ("Configuration file").
    fix : str
        What the user should do.

    Raises
    ------
    UserInputError
        When the file is missing, a folder, unreadable, too large, not JSON,
        or nested too deeply for Python to read.
    """
    path = Path(path)
    problem = None
    try:
        if path.is_dir():
            problem = "is a folder, not a file"
        elif path.stat().st_size > MAX_JSON_BYTES:
            problem = f"is larger than {MAX_JSON_BYTES >> 20} MB, too large to be one"
        else:
            return json.loads(path.read_text())
    except FileNotFoundError:
        problem = "does not exist"
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        problem = f"is not valid JSON ({type(err).__name__})"
    except RecursionError:
        problem = "nests too deeply to be read"
    except OSError as err:
        problem = f"cannot be read ({err.strerror})"
    raise UserInputError(f"{name} '{path}' {problem}; {fix}.")


def _choice(name, value, allowed):
    if value not in allowed:
        raise UserInputError(f"{name} must be one of {', '.join(map(str, allowed))}, not {value!r}.")


def _int_range(name, value, low, high):
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UserInputError(f"{name} must be a whole number from {low} to {high}, not {value!r}.")


def _float_range(name, value, low, high, low_open=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (low < value if low_open else low <= value) and value <= high
    if not ok:
        bound = f"above {low}" if low_open else f"at least {low}"
        raise UserInputError(f"{name} must be a number {bound} and at most {high}, not {value!r}.")
