"""Models shipped inside the package: list them, find them by name, pick the default.

Each lives in ``napari_flax_denoise/models/<name>/`` as an ordinary model
directory plus a model card (``README.md``) whose title line gives the
one-line description. Loading one by name is :func:`.checkpoint.load_embedded`.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

# The default per spatial dimensionality: 3D inputs (axes with Z) get the 3D model,
# or, in a build without it, the 2D one plane by plane.
DEFAULT = {2: "general-2d", 3: "general-3d"}
# Fewer planes than this are below the 3D network's smallest input (2**depth): plane by plane.
MIN_PLANES = 4


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
    return DEFAULT[dims] if embedded_path(DEFAULT[dims]) is not None else DEFAULT[2]


def default_model_for(axes: str, shape=None) -> tuple[str, str]:
    """The embedded default for an input with ``axes`` (and ``shape``), and the axes it is denoised with.

    A Z axis of at least :data:`MIN_PLANES` planes picks the 3D default.
    Otherwise, or when the 3D default is a 2D model (a build without the 3D
    one), Z becomes S: plane by plane with the 2D default.
    """
    deep = "Z" in axes and (shape is None or shape[axes.index("Z")] >= MIN_PLANES)
    name = default_model_name(3 if deep else 2)
    if "Z" in axes and name == DEFAULT[2] and "S" not in axes:
        axes = axes.replace("Z", "S")
    return name, axes
