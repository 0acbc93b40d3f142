"""Models shipped inside the package: list them, find them by name, pick the default.

Each lives in ``napari_flax_denoise/models/<name>/`` as an ordinary model
directory plus a model card (``README.md``) whose title line gives the
one-line description. Loading one by name is :func:`.checkpoint.load_embedded`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The default per spatial dimensionality. No 3D model is embedded yet: 3D
# stacks are denoised plane by plane with the 2D default.
DEFAULT = {2: "general-2d", 3: "general-2d"}


def _root() -> Path:
    return Path(str(files("napari_flax_denoise") / "models"))


def embedded_models() -> dict[str, str]:
    """Names of the embedded models, each with a one-line description."""
    found = {}
    root = _root()
    for directory in sorted(root.iterdir()) if root.is_dir() else []:
        if (directory / "model.json").is_file():
            card = directory / "README.md"
            title = card.read_text().splitlines()[0] if card.is_file() else directory.name
            found[directory.name] = title.lstrip("# ").split(": ", 1)[-1]
    return found


def embedded_path(name: str) -> Path | None:
    """Directory of the embedded model ``name``, or None if there is none."""
    path = _root() / name
    return path if name in embedded_models() else None


def default_model_name(dims: int) -> str:
    """The embedded model used when none is given, for ``dims`` spatial dimensions."""
    return DEFAULT[dims]
