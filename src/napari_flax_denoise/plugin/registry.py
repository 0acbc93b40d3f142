"""The models the widgets can pick from in this session (GUI-free).

A model trained in the Train widget or loaded from a folder is added here
under a name, and every Denoise widget's picker follows :attr:`changed`.
"""

from __future__ import annotations

from pathlib import Path

from psygnal import Signal

from ..errors import UserInputError


class ModelRegistry:
    """Named models: trained models in memory or model directories on disk."""

    changed = Signal()

    def __init__(self):
        self._models = {}

    def names(self) -> list[str]:
        """Names in the order they were added, newest last."""
        return list(self._models)

    def add(self, name: str, model) -> str:
        """Register ``model`` (a TrainedModel or a directory) and return its name.

        A name already taken by another model gets a numbered suffix.
        """
        unique, number = name, 2
        while unique in self._models and self._models[unique] is not model:
            unique, number = f"{name} ({number})", number + 1
        self._models[unique] = model
        self.changed.emit()
        return unique

    def add_folder(self, folder: str | Path) -> str:
        """Load a model directory (checking it is one) and register it under its folder name."""
        from ..checkpoint import load_model

        model = load_model(folder)
        return self.add(Path(folder).name, model)

    def get(self, name: str | None):
        """The model registered as ``name`` (a TrainedModel)."""
        if not name or name not in self._models:
            raise UserInputError("Choose a model: train one in the Train / Fine-tune widget or load a model folder.")
        return self._models[name]


#: The registry the widgets share.
MODELS = ModelRegistry()
