"""Denoising files: one input file into one output, or many into a folder with one model load.

Every input is opened as :func:`~napari_flax_denoise.io.open_image` does,
denoised by :func:`.prediction.denoise_iter` and written with its axes and
spacing. In a batch the model is loaded once and its compiled programs are
reused for every image of the same tile shape (small images share one), so
forty small images cost little more than one process start. An input that
cannot be denoised (unreadable, constant, wrong axes) is reported and
skipped; the others are still written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..axes import validate_axes
from ..errors import UserInputError
from ..progress import Progress, relay
from .prediction import denoise_iter

# Progress units per file in a batch: each file's own units are scaled to these.
_UNITS = 100


@dataclass(frozen=True)
class OpenedInput:
    """An input file ready to denoise.

    Attributes
    ----------
    path : Path
    image : ndarray or dask.array.Array
        Lazy for zarr inputs.
    axes : str
        The axes the model sees (Z becomes S when a 2D model goes plane by plane).
    out_axes : str
        The axes the result is written with (those of the file or the user).
    spacing : dict
        Physical size per axis letter, kept in the output.
    model : TrainedModel or str
        The model given, or the embedded default's name for these axes.
    note : str or None
        What the user should know before it runs (a 2D model on a 3D stack).
    units : dict
        The spacing's unit per axis letter, where the file says.
    """

    path: Path
    image: object
    axes: str
    out_axes: str
    spacing: dict
    model: object
    note: str | None = None
    units: dict = field(default_factory=dict)


def open_input(path, model=None, *, axes: str | None = None, planes: bool = False) -> OpenedInput:
    """Open ``path`` and decide its axes and model.

    Parameters
    ----------
    path : str or Path
        Any input :func:`~napari_flax_denoise.io.open_image` reads.
    model : TrainedModel, str or Path, optional
        Default: the embedded default for the input's dimensionality
        (general-3d for a Z axis, see :func:`.embedded.default_model_for`).
    axes : str, optional
        Axes of the input; default those the file records, or Y X for 2D.
    planes : bool
        Let a 2D model given as ``model`` go plane by plane through a 3D
        stack too (the default model always does); otherwise that is an
        error that says how to ask for it.
    """
    from ..io.files import open_image
    from ..models.checkpoint import resolve_model
    from ..models.embedded import default_model_for

    opened = open_image(path)
    shape = opened.data.shape
    use = axes or opened.axes or {2: "YX"}.get(len(shape))
    if use is None:
        raise UserInputError(f"'{Path(path).name}' has {len(shape)} dimensions and no axes metadata; "
                             "give the axes (e.g. ZYX or TYX).")
    use = validate_axes(use, len(shape))
    # The output keeps the axes the file or the user gave (Z stays Z when planes are denoised one by one).
    out_axes = next((a for a in (opened.axes, axes) if a and len(a) == len(shape)), use)
    note, default = None, model is None
    if default:
        model, planes = default_model_for(use, shape)[0], True  # a name, which workers can load too
    if planes and "Z" in use and "S" not in use and resolve_model(model).config.dims == 2:
        which = f"the embedded 2D model '{model}'" if default else "the 2D model"
        note = f"Denoising the {use} stack plane by plane with {which}."
        use = use.replace("Z", "S")
    elif default and "Z" in use:
        note = f"Denoising the {use} stack with the embedded 3D model '{model}'."
    return OpenedInput(Path(path), opened.data, use, out_axes, opened.spacing, model, note, opened.units)


def denoise_input(opened: OpenedInput, output, *, uncertainty=None, **options):
    """Denoise an opened input and write the result (and the uncertainty map) atomically.

    A generator: yields :class:`~napari_flax_denoise.progress.Progress` and
    returns the output path. ``options`` are those of
    :func:`.prediction.denoise_iter` except ``axes`` and ``return_std``;
    ``tta`` is implied by ``uncertainty``. A lazy input written to
    ``.zarr`` streams plane by plane (on a GPU, in chunks of a few planes), so
    memory stays flat however long the stack.
    """
    from ..io.files import write_image
    from ..models.checkpoint import resolve_model

    options = {**options, "axes": opened.axes, "return_std": uncertainty is not None}
    options["tta"] = bool(options.get("tta")) or uncertainty is not None
    image, model = opened.image, resolve_model(opened.model)
    streams = (str(output).lower().endswith(".zarr") and not isinstance(image, np.ndarray) and uncertainty is None
               and model.config.out_channels == model.config.in_channels)
    if streams:
        from ..io.zarr_store import zarr_output

        with zarr_output(output, image.shape, opened.out_axes, opened.spacing, opened.units) as out:
            yield from denoise_iter(image, model, out=out, **options)
        return Path(output)
    result = yield from denoise_iter(image, model, **options)
    denoised, std = result if uncertainty is not None else (result, None)
    axes = opened.out_axes if denoised.ndim == len(opened.out_axes) else opened.axes + "C"
    write_image(output, denoised, axes, opened.spacing, opened.units)
    if std is not None:
        write_image(uncertainty, std, axes, opened.spacing, opened.units)
    return Path(output)


@dataclass(frozen=True)
class FileProgress(Progress):
    """Progress of a batch: ``done`` of ``total`` units over all files.

    Attributes
    ----------
    file : int
        1-based number of the file being denoised.
    files : int
    name : str
        Its file name.
    """

    file: int = 0
    files: int = 0
    name: str = ""


@dataclass
class BatchResult:
    """What a batch wrote and what it skipped.

    Attributes
    ----------
    written : list of (Path, Path)
        ``(input, output)`` pairs.
    failed : list of (Path, str)
        Inputs that could not be denoised, with the reason in one sentence.
    notes : list of str
        What the user should know (once per distinct note).
    """

    written: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def denoise_files(inputs, folder, model=None, *, suffix: str | None = None, axes: str | None = None,
                  uncertainty_folder=None, planes: bool = False, **options):
    """Denoise many files into ``folder``, loading the model once.

    A generator: yields :class:`FileProgress` and returns a :class:`BatchResult`.

    Parameters
    ----------
    inputs : sequence of str or Path
        Files, folders and glob patterns (see :func:`~napari_flax_denoise.io.listing.list_inputs`).
    folder : str or Path
        Output folder, created if missing; each result keeps its input's name
        and format (``suffix``, e.g. ``".tif"``, changes the format).
    model : TrainedModel, str or Path, optional
        Default: the embedded default for each input's dimensionality.
    axes : str, optional
        Axes of every input (default: from each file).
    uncertainty_folder : str or Path, optional
        Also write each TTA standard deviation here, under the same name.
    planes : bool
        A 2D ``model`` goes plane by plane through 3D stacks (see :func:`open_input`).
    **options
        Passed to :func:`.prediction.denoise_iter` (``tta``, ``fusion``, ``precision`` ...).

    Raises
    ------
    UserInputError
        Before any work, when an output would overwrite an input, two inputs
        share a result name, or an input does not exist. Problems of single
        inputs are collected in ``failed`` instead.
    """
    from ..io.files import InputPaths, check_output
    from ..io.listing import check_folder, list_inputs, output_paths
    from ..models.checkpoint import resolve_model

    for target in (folder, uncertainty_folder):
        if target is not None:
            check_folder(target)
    paths = list_inputs(inputs)
    outputs = output_paths(paths, folder, suffix)
    spreads = output_paths(paths, uncertainty_folder, suffix) if uncertainty_folder is not None else [None] * len(paths)
    if uncertainty_folder is not None and Path(uncertainty_folder).resolve() == Path(folder).resolve():
        raise UserInputError(f"The results and the uncertainty maps would both go to '{folder}' under the same "
                             "names; give the uncertainty maps a folder of their own.")
    sources = InputPaths(paths)  # resolved once: a folder of thousands of files is checked in n steps, not n^2
    for output in [*outputs, *(s for s in spreads if s is not None)]:  # names within a folder are unique already
        check_output(output)  # before anything is computed
        sources.check(output)
    for target in (folder, uncertainty_folder):
        if target is not None:
            Path(target).mkdir(parents=True, exist_ok=True)
    model = None if model is None else resolve_model(model)  # once, for every file
    result = BatchResult()
    for number, (path, output, spread) in enumerate(zip(paths, outputs, spreads), start=1):
        yield FileProgress((number - 1) * _UNITS, len(paths) * _UNITS, number, len(paths), path.name)
        try:
            opened = open_input(path, model, axes=axes, planes=planes)
            job = denoise_input(opened, output, uncertainty=spread, **options)
            yield from relay(job, lambda step, number=number, name=path.name: FileProgress(
                (number - 1) * _UNITS + _UNITS * step.done // max(step.total, 1), len(paths) * _UNITS,
                number, len(paths), name))
        except UserInputError as error:
            result.failed.append((path, str(error)))
            continue
        if opened.note and opened.note not in result.notes:
            result.notes.append(opened.note)
        result.written.append((path, output))
    return result
