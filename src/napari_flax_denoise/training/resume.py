"""The resumable state of a training run (``MODEL_DIR/last/``), written as one atomic set.

A snapshot is ``weights-STEP.npz`` and ``optimizer-STEP.npz`` plus
``state.json``, which names them and is written last, atomically: it is the
commit. A kill at any moment leaves either the previous snapshot or the new
one, never weights of one epoch with the optimiser state of another; files of
older or unfinished snapshots are removed once a new one is committed.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from .._version import __version__
from ..config import Config, read_json
from ..errors import UserInputError
from ..models.checkpoint import FORMAT_VERSION, WEIGHTS_FILE, read_tree, save_arrays, tree_to_arrays, write_json

LAST = "last"
STATE_FILE = "state.json"
_AGAIN = "start training again without --resume"


@dataclass
class LastState:
    """A verified snapshot read back from ``MODEL_DIR/last``."""

    directory: Path
    config: Config
    loop: dict

    @property
    def rng_state(self) -> dict:
        return self.loop["rng_state"]

    def restore(self, params, opt_state):
        """Fill fresh ``params`` / ``opt_state`` structures with the saved values.

        Returns
        -------
        params, opt_state, step, history, best_loss
        """
        params = read_tree(self.directory / self.loop["weights"], params)
        opt_state = read_tree(self.directory / self.loop["optimizer"], opt_state)
        best = self.loop["best_loss"]
        return params, opt_state, self.loop["step"], self.loop["history"], np.inf if best is None else best

    def best_weights(self, like):
        """The best weights written beside ``last/`` (None when no epoch had finished)."""
        path = self.directory.parent / WEIGHTS_FILE
        if not path.is_file():
            return None
        return jax.tree.map(np.array, read_tree(path, like))


def save_last(output, config: Config, params, opt_state, step, history, best_loss, rng_state) -> None:
    """Write the state needed to continue training after ``step``, as one set (see the module's notes)."""
    directory = Path(output) / LAST
    directory.mkdir(parents=True, exist_ok=True)
    weights, optimizer = f"weights-{step}.npz", f"optimizer-{step}.npz"
    save_arrays(directory / weights, tree_to_arrays(params))
    save_arrays(directory / optimizer, tree_to_arrays(opt_state))
    write_json(directory / STATE_FILE, {  # the commit
        "format_version": FORMAT_VERSION, "package_version": __version__,
        "config": config.to_dict(), "step": step, "history": history,
        "best_loss": None if not np.isfinite(best_loss) else float(best_loss),
        "rng_state": rng_state, "weights": weights, "optimizer": optimizer,
    })
    for old in directory.glob("*.npz"):
        if old.name not in (weights, optimizer):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


def load_last(output) -> LastState:
    """Read and verify ``MODEL_DIR/last`` for ``--resume``.

    Raises
    ------
    UserInputError
        No snapshot, or one that is incomplete, from a newer version, or whose
        parts disagree.
    """
    directory = Path(output) / LAST
    path = directory / STATE_FILE
    if not path.is_file():
        raise UserInputError(f"There is no interrupted run to resume in '{output}'; start training without --resume.")
    loop = read_json(path, "The interrupted run's state", _AGAIN)
    version = loop.get("format_version") if isinstance(loop, dict) else None
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise UserInputError(f"The interrupted run in '{output}' was written by a newer napari-flax-denoise "
                             f"({loop.get('package_version')}); update this one: pip install -U napari-flax-denoise.")
    problem = _problem(loop, directory)
    if problem:
        raise UserInputError(f"The interrupted run in '{output}' cannot be resumed: {problem}; {_AGAIN}.")
    try:
        config = Config.from_dict(loop["config"])
    except (KeyError, TypeError, UserInputError) as err:
        raise UserInputError(f"The interrupted run in '{output}' has an invalid configuration ({err}); {_AGAIN}.") from None
    if loop["step"] != len(loop["history"]) * config.steps_per_epoch:
        raise UserInputError(f"The interrupted run in '{output}' cannot be resumed: its step count "
                             f"({loop['step']}) disagrees with its {len(loop['history'])} finished epoch(s); {_AGAIN}.")
    return LastState(directory, config, loop)


def _problem(loop, directory: Path) -> str | None:
    """What is wrong with a snapshot's state, or None."""
    if not isinstance(loop, dict):
        return "its state is not a JSON object"
    kinds = {"format_version": int, "config": dict, "step": int, "history": list, "rng_state": dict,
             "weights": str, "optimizer": str}
    wrong = [key for key, kind in kinds.items() if not isinstance(loop.get(key), kind) or isinstance(loop.get(key), bool)]
    if wrong or not (loop.get("best_loss") is None or isinstance(loop.get("best_loss"), (int, float))):
        return f"its state lacks or garbles {', '.join(wrong) or 'best_loss'} (an older or damaged snapshot)"
    if loop["step"] < 0 or not all(isinstance(h, dict) for h in loop["history"]):
        return "its step count or history is damaged"
    for key in ("weights", "optimizer"):
        name = loop[key]
        if Path(name).name != name or not (directory / name).is_file():
            return f"its {key} file '{name}' is missing"
    return None
