"""The models the widgets can pick from (GUI-free): the embedded ones and this session's.

A model trained in the Train widget or loaded from a folder is added here
under a name, and every widget's picker follows :attr:`changed`.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal

from ..errors import UserInputError


class ModelRegistry:
    """Named models: trained models in memory or model directories on disk."""

    changed = Signal()

    def __init__(self):
        self._models, self._flagged = {}, set()

    def names(self) -> list[str]:
        """The embedded models, then this session's in the order they were added (newest last)."""
        from ..models.embedded import embedded_models

        return [name for name in embedded_models() if name not in self._models] + list(self._models)

    def preferred(self, default: str | None = None) -> str | None:
        """The model to preselect: the newest of this session not flagged, else ``default``
        (an embedded model; by default the 2D default)."""
        from ..models.embedded import default_model_name

        trusted = [name for name in self._models if name not in self._flagged]
        return trusted[-1] if trusted else default or default_model_name(2)

    def add(self, name: str, model, *, flagged: bool = False) -> str:
        """Register ``model`` (a TrainedModel or a directory) and return its name.

        A name already taken by another model gets a numbered suffix. A
        ``flagged`` model (diverged, or stopped before its first validation)
        is listed but never preselected.
        """
        unique, number = name, 2
        while unique in self._models and self._models[unique] is not model:
            unique, number = f"{name} ({number})", number + 1
        self._models[unique] = model
        if flagged:
            self._flagged.add(unique)
        self.changed.emit()
        return unique

    def add_folder(self, folder: str | Path) -> str:
        """Load a model directory (checking it is one) and register it under its folder name."""
        from ..models.checkpoint import load_model

        model = load_model(folder)
        return self.add(Path(folder).name, model)

    def get(self, name: str | None):
        """The model registered or embedded as ``name`` (a TrainedModel)."""
        from ..models.checkpoint import load_embedded
        from ..models.embedded import embedded_path

        if name in self._models:
            return self._models[name]
        if name and embedded_path(name) is not None:
            return load_embedded(name)
        raise UserInputError("Choose a model: train one in the Train / Fine-tune widget or load a model folder.")


#: The registry the widgets share.
MODELS = ModelRegistry()
