"""The resumable state of a training run (``MODEL_DIR/last/``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np

from ..models.checkpoint import WEIGHTS_FILE, arrays_to_tree, load_arrays, save_arrays, tree_to_arrays, write_json
from ..config import Config, read_json
from ..errors import UserInputError

LAST = "last"


@dataclass
class LastState:
    """Loop state read back from ``MODEL_DIR/last``."""

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
        params = arrays_to_tree(load_arrays(self.directory / "weights.npz"), params, str(self.directory))
        opt_state = arrays_to_tree(load_arrays(self.directory / "optimizer.npz"), opt_state, str(self.directory))
        best = self.loop["best_loss"]
        return params, opt_state, self.loop["step"], self.loop["history"], np.inf if best is None else best


    def best_weights(self, like):
        """The best weights written beside ``last/`` (None when no epoch had finished)."""
        path = self.directory.parent / WEIGHTS_FILE
        if not path.is_file():
            return None
        return jax.tree.map(np.array, arrays_to_tree(load_arrays(path), like, str(path)))


def save_last(output, config: Config, params, opt_state, step, history, best_loss, rng_state) -> None:
    """Write the state needed to continue training after ``step``."""
    directory = Path(output) / LAST
    directory.mkdir(parents=True, exist_ok=True)
    save_arrays(directory / "weights.npz", tree_to_arrays(params))
    save_arrays(directory / "optimizer.npz", tree_to_arrays(opt_state))
    # state.json is written last: its presence marks a complete snapshot.
    write_json(directory / "state.json", {
        "config": config.to_dict(), "step": step, "history": history,
        "best_loss": None if not np.isfinite(best_loss) else float(best_loss),
        "rng_state": rng_state,
    })


def load_last(output) -> LastState:
    """Read ``MODEL_DIR/last`` for ``--resume``."""
    directory = Path(output) / LAST
    path = directory / "state.json"
    if not path.is_file():
        raise UserInputError(f"There is no interrupted run to resume in '{output}'; start training without --resume.")
    try:
        loop = read_json(path, "The interrupted run's state", "start training again without --resume")
        config = Config.from_dict(loop["config"])
    except (KeyError, TypeError):
        raise UserInputError(f"'{path}' is corrupted; start training again without --resume.") from None
    return LastState(directory, config, loop)
