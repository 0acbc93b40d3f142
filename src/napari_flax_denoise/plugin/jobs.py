"""Long jobs of the widgets as generators (GUI-free; napari's thread_worker runs them)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inference.prediction import denoise
from ..progress import relay
from ..training.prepare import start_run
from ..training.run import TrainProgress

# Largest live-preview crop per spatial axis: small enough to refresh in a fraction of a second.
_PREVIEW = {2: (256, 256), 3: (16, 128, 128)}


@dataclass(frozen=True)
class TrainUpdate:
    """One event of :func:`train_with_preview`.

    Attributes
    ----------
    progress : TrainProgress
    preview : ndarray or None
        The preview crop denoised with the current weights, when due.
    crop : PreviewCrop or None
        Where the preview lies in the first training image.
    """

    progress: TrainProgress
    preview: np.ndarray | None = None
    crop: PreviewCrop | None = None


@dataclass(frozen=True)
class PreviewCrop:
    """A crop of the first training image for live previews.

    Attributes
    ----------
    data : ndarray
        The crop (spatial axes, and C if the image has it).
    axes : str
        Its axes.
    offset : tuple of int
        Start of the crop along each spatial axis of the source image.
    source_axes : str
        Axes of the source image.
    """

    data: np.ndarray
    axes: str
    offset: tuple
    source_axes: str


def preview_crop(image, axes: str, centre=None) -> PreviewCrop:
    """A crop of ``image`` (axes already validated) around ``centre``, for live previews.

    ``centre`` (optional): a position per axis of ``image`` in pixels, such
    as the point the viewer shows; the crop holds it (kept inside the image)
    and its S / T plane. Default: the centre of the first plane.
    """
    spatial = [a for a in axes if a in "ZYX"]
    caps = _PREVIEW[len(spatial)]
    if centre is None:
        centre = [0 if a in "ST" else size / 2 for a, size in zip(axes, image.shape)]
    index, offset = [], []
    for axis, size, at in zip(axes, image.shape, centre):
        if axis in "ST":
            index.append(int(np.clip(round(at), 0, size - 1)))
        elif axis == "C":
            index.append(slice(None))
        else:
            cap = min(caps[spatial.index(axis)], size)
            start = int(np.clip(round(at - cap / 2), 0, size - cap))
            index.append(slice(start, start + cap))
            offset.append(start)
    kept = "".join(a for a in axes if a not in "ST")
    return PreviewCrop(np.asarray(image[tuple(index)]), kept, tuple(offset), axes)


def train_with_preview(images, *, axes: str, preview_every: int = 0, preview_centre=None, stop=None,
                       **train_kwargs):
    """:func:`~napari_flax_denoise.train_iter` that also denoises a preview crop.

    Yields :class:`TrainUpdate` for every step; every ``preview_every`` steps
    (and on the first and last step) its ``preview`` holds the crop of the first image
    around ``preview_centre`` (see :func:`preview_crop`) denoised with the
    current weights. Returns the :class:`TrainResult`.
    Closing this generator closes the training.
    """
    crop = preview_crop(images[0], axes, preview_centre) if preview_every else None
    run = start_run(images, axes=axes, **train_kwargs)

    def update(event: TrainProgress) -> TrainUpdate:
        if crop is None or not (event.done % preview_every == 0 or event.done in (1, event.total)):
            return TrainUpdate(event)
        return TrainUpdate(event, denoise(crop.data, run.model(), axes=crop.axes), crop)

    return (yield from relay(run.steps(stop), update))


def export_for_zoo(model, path, *, test_image=None, test_axes=None):
    """:func:`~napari_flax_denoise.models.bmz.export_bmz` as a job: one event, then the package's path."""
    from ..models.bmz import export_bmz
    from ..progress import Progress

    yield Progress(0, 1)
    return export_bmz(model, path, test_image=test_image, test_axes=test_axes)
