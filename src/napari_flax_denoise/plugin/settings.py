"""Widget settings remembered between napari sessions, and put back to their defaults on request.

Values live in one JSON file per user,
``$XDG_CONFIG_HOME/napari-flax-denoise/widgets.json`` (``~/.config`` when
unset), one object per widget. A value the control no longer accepts (a
choice that went away, a number out of range) is skipped, and an unreadable
file counts as empty: remembered settings never stop a widget from opening.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io.atomic import atomic_path


def settings_file() -> Path:
    """Where the remembered settings are kept."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "napari-flax-denoise" / "widgets.json"


def _read_all() -> dict:
    try:
        stored = json.loads(settings_file().read_text())
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def _plain(value):
    return str(value) if isinstance(value, Path) else value


def recall(key: str):
    """A value kept by :func:`remember` (None if there is none)."""
    return _read_all().get("_values", {}).get(key)


def remember(key: str, value) -> None:
    """Keep a plain value (such as the last training pace) for later sessions."""
    everything = _read_all()
    everything.setdefault("_values", {})[key] = value
    _write_all(everything)


def _write_all(everything: dict) -> None:
    path = settings_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(everything, indent=1))
    except OSError:  # a read-only home: nothing is remembered, nothing else changes
        pass


class Remembered:
    """Keeps named magicgui controls of one widget in the settings file.

    Parameters
    ----------
    widget : str
        The widget's key in the file ("denoise", "train").
    controls : dict of str to magicgui ValueWidget
        The controls to remember, by name. Their values when this is made are
        the defaults that :meth:`restore_defaults` puts back.
    """

    def __init__(self, widget: str, controls: dict):
        self.widget, self.controls = widget, controls
        self.defaults = {name: control.value for name, control in controls.items()}
        stored = _read_all().get(widget, {})
        for name, control in controls.items():
            if name in stored:
                try:
                    control.value = stored[name]
                except (ValueError, TypeError):  # a choice that went away, a value out of range
                    pass
        for control in controls.values():
            control.changed.connect(self.save)

    def save(self, *_):
        """Write every control's current value (called on each change)."""
        everything = _read_all()
        everything[self.widget] = {name: _plain(control.value) for name, control in self.controls.items()}
        _write_all(everything)

    def restore_defaults(self, *_):
        """Put every control back to the value it had when the widget was made."""
        for name, control in self.controls.items():
            control.value = self.defaults[name]
        self.save()
