"""Self-describing model directories.

A model directory holds ``model.json`` (package version, the full
:class:`~napari_flax_denoise.config.Config`, normalisation statistics and a
training summary) and ``weights.npz`` (one array per parameter, named by its
path in the network). :func:`load_model` rebuilds the network from the JSON
alone and fills it with the weights. Training also keeps ``last/`` (weights,
optimiser state and loop state) so that ``--resume`` continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from .._version import __version__
from ..config import Config, read_json
from ..errors import UserInputError
from ..io.atomic import atomic_path
from ..io.limits import npy_header
from ..network.unet import UNet
from .embedded import embedded_models, embedded_path
from .normalization import Normalization

FORMAT = "napari-flax-denoise-model"
FORMAT_VERSION = 1  # raise it when a change of model.json or weights.npz would mislead older versions
MODEL_FILE, WEIGHTS_FILE = "model.json", "weights.npz"


@dataclass
class TrainedModel:
    """A network with everything needed to apply it.

    Attributes
    ----------
    config : Config
    network : UNet
    input_norm : Normalization
        Statistics of the training inputs.
    output_norm : Normalization
        Statistics used to map predictions back to intensities (the targets'
        for ``care``; the inputs' otherwise).
    info : dict
        Free-form provenance: training summary, source path, name.
    """

    config: Config
    network: UNet
    input_norm: Normalization
    output_norm: Normalization
    info: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.get("name", "model")


def build_network(config: Config, seed: int | None = None) -> UNet:
    """A freshly initialised network for ``config``."""
    return UNet(config, rngs=nnx.Rngs(config.seed if seed is None else seed))


def tree_to_arrays(tree) -> dict[str, np.ndarray]:
    """Flatten a pytree into ``{path: array}`` with readable path names."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save_arrays(path: Path, arrays: dict) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def read_tree(path: Path, like):
    """Fill the structure of ``like`` with the arrays :func:`save_arrays` wrote to ``path``.

    Only the members ``like`` needs are read, and each one's header (shape,
    type) is checked before its data is decompressed: a small archive cannot
    claim gigabytes. Weights must be finite numbers.

    Raises
    ------
    UserInputError
        A missing, unreadable or mismatched file or member, naming the file.
    """
    import zipfile

    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    corrupted = "the model is corrupted, so retrain or copy it again"
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise UserInputError(f"'{path}' is missing; the model directory is incomplete, so retrain or copy it again.") from None
    except (OSError, zipfile.BadZipFile) as err:
        raise UserInputError(f"'{path}' cannot be read ({type(err).__name__}); {corrupted}.") from None
    filled = []
    with archive:
        members = set(archive.namelist())
        for key_path, leaf in leaves:
            key = jax.tree_util.keystr(key_path)
            try:
                array = _member(archive, key + ".npy", np.shape(leaf)) if key + ".npy" in members else None
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise UserInputError(f"'{path}' cannot be read at parameter {key} ({type(err).__name__}); "
                                     f"{corrupted}.") from None
            if array is None:
                raise UserInputError(f"'{path}' does not match its configuration (parameter {key} missing or of "
                                     f"the wrong shape or type); {corrupted}.")
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise UserInputError(f"'{path}' holds NaN or infinite values (parameter {key}); the model is "
                                     "corrupted or its training diverged, so retrain it.")
            filled.append(jax.numpy.asarray(array, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, filled)


def _member(archive, name: str, shape) -> np.ndarray | None:
    """One ``.npy`` member, or None when its header declares another shape or a non-numeric type."""
    with archive.open(name) as handle:
        declared, dtype = npy_header(handle)
    if declared != tuple(shape) or dtype.kind not in "biuf":
        return None
    with archive.open(name) as handle:
        return np.lib.format.read_array(handle, allow_pickle=False)


def write_json(path: Path, values: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(values, indent=2))


def save_model(model: TrainedModel, directory: str | Path, *, params=None) -> Path:
    """Write ``model`` (or ``params`` in its structure) to ``directory``.

    Parameters
    ----------
    model : TrainedModel
    directory : str or Path
        Created when missing; existing files are replaced atomically.
    params : pytree, optional
        Parameters to save instead of the network's current ones.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    params = nnx.state(model.network, nnx.Param) if params is None else params
    save_arrays(directory / WEIGHTS_FILE, tree_to_arrays(params))
    write_json(directory / MODEL_FILE, {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": __version__,
        "config": model.config.to_dict(),
        "normalization": {"input": model.input_norm.to_dict(), "output": model.output_norm.to_dict()},
        "info": model.info,
    })
    return directory


def read_model_json(directory: Path) -> dict:
    path = directory / MODEL_FILE
    if not directory.is_dir():
        raise UserInputError(f"Model '{directory}' does not exist; give a model directory written by 'flax-denoise train'.")
    if not path.exists():
        raise UserInputError(f"'{directory}' is not a model directory (no {MODEL_FILE}); give one written by 'flax-denoise train'.")
    meta = read_json(path, "The model description", "the model is corrupted, so retrain or copy it again")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserInputError(f"'{path}' is not a napari-flax-denoise model description; give a model directory written by 'flax-denoise train'.")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserInputError(f"'{path}' has no valid format_version; the model is corrupted, so retrain or copy it again.")
    if version > FORMAT_VERSION:
        raise UserInputError(f"The model '{directory}' was written by a newer napari-flax-denoise (model format "
                             f"{version}, this one reads {FORMAT_VERSION}); update it: pip install -U napari-flax-denoise.")
    return meta


def load_model(path: str | Path) -> TrainedModel:
    """Rebuild a model from its directory.

    Parameters
    ----------
    path : str or Path
        A directory written by :func:`save_model` / ``flax-denoise train``,
        or the name of an embedded model (``flax-denoise models``) when no
        such directory exists.

    Returns
    -------
    TrainedModel
    """
    directory = Path(path)
    if not directory.exists():
        directory = embedded_path(str(path)) or directory
    meta = read_model_json(directory)
    try:
        config = Config.from_dict(meta["config"])
        norms = meta["normalization"]
        input_norm, output_norm = Normalization.from_dict(norms["input"]), Normalization.from_dict(norms["output"])
        if (len(input_norm.offset), len(output_norm.offset)) != (config.in_channels, config.out_channels):
            raise UserInputError("its normalisation and its network have different channel counts")
    except (KeyError, TypeError, UserInputError) as err:
        raise UserInputError(f"'{directory / MODEL_FILE}' is incomplete or invalid ({err}); the model is corrupted, so retrain it.") from None
    abstract = nnx.eval_shape(lambda: build_network(config))
    graphdef, like = nnx.split(abstract)
    params = read_tree(directory / WEIGHTS_FILE, like)
    network = nnx.merge(graphdef, params)
    info = dict(meta.get("info", {}))
    info.setdefault("name", directory.name)
    info["path"] = str(directory)
    return TrainedModel(config, network, input_norm, output_norm, info)


@lru_cache(maxsize=4)
def load_embedded(name: str) -> TrainedModel:
    """Load (once per process) the embedded model ``name`` (see :func:`.embedded.embedded_models`)."""
    return load_model(embedded_path(name))


def resolve_model(model) -> TrainedModel:
    """Accept a :class:`TrainedModel`, a model directory or an embedded model's name.

    Raises
    ------
    UserInputError
        When ``model`` is none of these.
    """
    if isinstance(model, TrainedModel):
        return model
    if isinstance(model, (str, Path)):
        if not Path(model).exists() and embedded_path(str(model)) is not None:
            return load_embedded(str(model))
        if not Path(model).exists():
            raise UserInputError(f"Model '{model}' is neither a model directory nor an embedded model "
                                 f"({', '.join(embedded_models()) or 'none'}); check the name or path.")
        return load_model(model)
    raise UserInputError("model must be a trained model, a model directory or an embedded model's name.")
