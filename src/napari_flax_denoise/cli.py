"""The ``flax-denoise`` command line: ``train``, ``denoise``, ``evaluate``, ``export``, ``models`` and ``info``.

Mistakes the user can fix print one sentence and exit with status 2;
anything else is a bug: one line asks to report it, with the traceback in a log file, and the status is 1.
"""

from __future__ import annotations

import argparse
import json
import sys

from .errors import UserInputError

EXIT_USAGE = 2


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flax-denoise", description="Deep-learning denoising of microscopy and medical images.")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train or fine-tune a denoising model")
    train.add_argument("inputs", nargs="+", metavar="INPUT",
                       help="noisy images (TIFF, .npy, PNG, NIfTI, zarr, DICOM file or series folder)")
    train.add_argument("--axes", help="axes of every input, e.g. YX, ZYX, TYX, CYX (default: from the file)")
    train.add_argument("--output", required=True, metavar="MODEL_DIR", help="model directory to write")
    train.add_argument("--algorithm", choices=["n2v2", "n2v", "care", "n2n"])
    train.add_argument("--target", nargs="+", metavar="TARGET", help="clean (care) or second noisy (n2n) images, one per input")
    train.add_argument("--init", metavar="MODEL", help="model directory or embedded model name to fine-tune")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--steps-per-epoch", type=_positive_int)
    train.add_argument("--patch-size", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--precision", choices=["float32", "bf16", "bfloat16"],
                       help="bf16: mixed precision (bfloat16 arithmetic, float32 weights and loss), faster on GPUs "
                            "with tensor cores (default: float32)")
    train.add_argument("--config", metavar="FILE", help="JSON file of settings (flags override it)")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in --output")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    denoise = commands.add_parser("denoise", help="denoise images with a trained model")
    denoise.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="TIFF, .npy, PNG, NIfTI, zarr / OME-Zarr, a .dcm file or a DICOM series folder; "
                              "several inputs, folders of images or glob patterns are denoised into the folder OUTPUT")
    denoise.add_argument("--output", required=True, metavar="OUTPUT",
                         help="the output file, or for several inputs a folder: each result keeps its input's name")
    denoise.add_argument("--format", metavar="EXT",
                         help="with an output folder: write this format (tif, npy, png, nii.gz, zarr) instead of "
                              "each input's own")
    denoise.add_argument("--model", metavar="MODEL",
                         help="model directory or embedded model name (default: the embedded default)")
    denoise.add_argument("--axes", help="axes of the input (read from OME-TIFF when omitted)")
    denoise.add_argument("--tile-shape", nargs="+", type=_positive_int, metavar="T")
    denoise.add_argument("--tta", action="store_true", help="average the 8 flips / rotations")
    denoise.add_argument("--uncertainty", metavar="OUTPUT",
                         help="write the TTA standard deviation here, a file or for several inputs a folder "
                              "(implies --tta)")
    denoise.add_argument("--no-fusion", dest="fusion", action="store_false", default=None,
                         help="keep the network's prediction as it is (by default, for n2v / n2v2 models and general-2d, "
                              "it is combined with each noisy pixel, weighted by the estimated noise, wherever "
                              "that is clearly better)")
    denoise.add_argument("--precision", choices=["float32", "bf16", "bfloat16"], default="float32",
                         help="the network's arithmetic: bf16 is about twice as fast on GPUs with tensor cores, "
                              "at a small cost in quality (default: float32)")
    denoise.add_argument("--noise-level", metavar="SIGMA",
                         help="for noise-aware models (general-2d): the noise's standard deviation in the image's "
                              "intensity units, or GAIN,VARIANCE for photon noise (variance = GAIN * intensity + "
                              "VARIANCE); default: estimated from each image")
    denoise.add_argument("--scheduler", metavar="ADDRESS",
                         help="dask.distributed scheduler to spread the planes over (e.g. tcp://10.0.0.5:8786)")
    denoise.add_argument("--quiet", action="store_true", help="no progress bar")

    export = commands.add_parser("export", help="export a model for the BioImage Model Zoo (needs the bmz extra)")
    export.add_argument("model", metavar="MODEL", help="model directory or embedded model name")
    export.add_argument("--bmz", required=True, metavar="OUT.zip", help="the zoo package to write")
    export.add_argument("--author", help="the package's author (default: your user name)")
    export.add_argument("--license", default="CC-BY-4.0", help="SPDX licence of the weights (default: CC-BY-4.0)")
    export.add_argument("--test-image", metavar="IMAGE",
                        help="an image for the test tensors and the cover (default: a synthetic one)")
    export.add_argument("--axes", help="axes of the test image (default: from the file, else YX or ZYX)")

    commands.add_parser("models", help="list the embedded models, one per line")
    commands.add_parser("info", help="versions, JAX's devices and the backend profile in use (for bug reports)")
    evaluate = commands.add_parser("evaluate", help="PSNR / SSIM / MSE of a prediction against a target")
    evaluate.add_argument("prediction", metavar="PREDICTION")
    evaluate.add_argument("--target", required=True)
    evaluate.add_argument("--data-range", type=float, help="signal range (default: the target's max - min)")
    evaluate.add_argument("--axes", help="axes of the target, e.g. YXC for colour (default: from the file)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _progress(job, quiet, unit, describe=None, scale=1):
    """Drive a job (a generator of :class:`~.progress.Progress`) with a tqdm bar on stderr; return its result.

    ``scale``: progress units per ``unit`` shown.
    """
    from tqdm import tqdm

    from .progress import drive

    if quiet:
        return drive(job)
    bars = []  # opened at the first event: a job refused before its work starts shows its error alone

    def show(event):
        if not bars:
            bars.append(tqdm(unit=unit, file=sys.stderr))
        bar = bars[0]
        bar.total, bar.n = event.total / scale, event.done / scale
        if describe is not None:
            bar.set_postfix_str(describe(event), refresh=False)
        bar.refresh()

    try:
        return drive(job, show)
    finally:
        for bar in bars:
            bar.close()


def _start_process(job: str):
    """Set up this process (ours alone) for ``job`` before JAX computes anything; returns the backend profile."""
    from .runtime.backend import configure_process
    from .runtime.compile_cache import enable_compilation_cache

    profile = _profile(lambda: configure_process(job))  # before JAX makes its backends
    enable_compilation_cache()  # before anything compiles; see runtime.compile_cache
    return profile


def _profile(active):
    try:
        return active()
    except ValueError as err:  # a misspelt NAPARI_FLAX_DENOISE_BACKEND
        raise UserInputError(str(err)) from None


def _read(path, axes=None):
    from .io.files import read_image

    image, file_axes = read_image(path)
    return image, (axes or file_axes)


def _open(path):
    """The input (lazy for zarr), the axes the file records (or None) and its spacing."""
    from .io.files import open_image

    opened = open_image(path)
    return opened.data, opened.axes, opened.spacing


def _train(args):
    from .io.files import check_output

    check_output(args.output, inputs=[*args.inputs, *(args.target or [])], folder=True)
    _start_process("train")
    from .config import Config
    from .training.prepare import train_iter

    config = Config.from_json(args.config) if args.config else None
    images, axes = [], args.axes
    for path in args.inputs:  # lazy (zarr, large TIFF): training reads patches, never the whole file
        image, file_axes, _ = _open(path)
        axes = axes or file_axes
        images.append(image)
    if axes is None:
        raise UserInputError("The inputs record no axes; give --axes (e.g. YX, ZYX or TYX).")
    targets = [_open(path)[0] for path in args.target] if args.target else None
    overrides = {k: v for k, v in dict(
        algorithm=args.algorithm, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        patch_size=args.patch_size, batch_size=args.batch_size, learning_rate=args.learning_rate,
        val_fraction=args.val_fraction, seed=args.seed, precision=args.precision).items() if v is not None}
    run = train_iter(images, axes=axes, targets=targets, config=config, output=args.output,
                     init=args.init, resume=args.resume, **overrides)

    def describe(event):
        text = f"epoch {event.epoch}/{event.epochs} loss {event.train_loss:.4g}"
        return text + (f" val {event.val_loss:.4g}" if event.val_loss is not None else "")

    result = _progress(run, args.quiet, "step", describe)
    best = min((h["val_loss"] for h in result.history), default=float("nan"))
    print(f"Saved model to {result.output} ({result.stopped}, best validation loss {best:.4g}).")


def _denoise(args):
    from pathlib import Path

    from .io.listing import names_several

    if names_several(args.inputs) or (Path(args.output).is_dir() and not args.output.lower().endswith(".zarr")):
        return _denoise_many(args)
    if args.format is not None:
        raise UserInputError("--format applies to an output folder; for one input, end the output's name with "
                             "the extension you want.")
    from .io.files import check_output

    [source] = args.inputs
    check_output(args.output, inputs=[source])  # before anything is read or computed
    if args.uncertainty is not None:
        check_output(args.uncertainty, inputs=[source], others=[args.output])
    _start_process("denoise")
    from .inference.batch import denoise_input, open_input

    opened = open_input(source, args.model, axes=args.axes)
    if opened.note:
        print(opened.note, file=sys.stderr)
    if args.scheduler:
        _denoise_on_cluster(args, opened, _options(args))
        return
    _progress(denoise_input(opened, args.output, uncertainty=args.uncertainty, **_options(args)), args.quiet, "batch")


def _options(args) -> dict:
    return dict(tile_shape=args.tile_shape, tta=args.tta, fusion=args.fusion, precision=args.precision,
                noise_level=args.noise_level)


def _denoise_many(args):
    if args.scheduler:
        raise UserInputError("--scheduler takes one input at a time; give one input (a large stack or store).")
    _start_process("denoise")
    from .inference.batch import denoise_files

    job = denoise_files(args.inputs, args.output, args.model, suffix=args.format, axes=args.axes,
                        uncertainty_folder=args.uncertainty, **_options(args))
    result = _progress(job, args.quiet, "image", lambda event: f"{event.file}/{event.files} {event.name}", scale=100)
    for note in result.notes:
        print(note, file=sys.stderr)
    for path, reason in result.failed:
        print(f"Skipped {path}: {reason}", file=sys.stderr)
    count = len(result.written) + len(result.failed)
    print(f"Denoised {len(result.written)} of {count} images into {args.output}.")
    if result.failed:
        raise UserInputError(f"{len(result.failed)} of {count} inputs could not be denoised (reasons above); "
                             "fix or remove them and run again.")


def _denoise_on_cluster(args, opened, options):
    from .inference.cluster import denoise_lazily
    from .io.files import write_image

    if args.uncertainty:
        raise UserInputError("--uncertainty is not available with --scheduler; drop one of them.")
    try:
        from distributed import Client
    except ImportError:
        raise UserInputError("--scheduler needs dask.distributed: pip install distributed.") from None
    try:
        client = Client(args.scheduler, timeout=30)
    except OSError as err:
        raise UserInputError(f"Could not reach the dask scheduler at {args.scheduler} ({err}); check the address.") from None
    image, spacing = opened.image, opened.spacing
    with client:
        lazy = denoise_lazily(image, opened.model, axes=opened.axes,
                              **{k: options[k] for k in ("tile_shape", "tta", "fusion", "precision",
                                                         "noise_level")})
        if str(args.output).lower().endswith(".zarr"):  # the workers write their planes straight to the store
            import dask.array as da

            from .io.zarr_store import zarr_output

            with zarr_output(args.output, image.shape, opened.out_axes, spacing, opened.units) as out:
                da.store(lazy, out, lock=False)
        else:
            write_image(args.output, client.compute(lazy).result(), opened.out_axes, spacing, opened.units)


def _export(args):
    from .io.files import check_output

    check_output(args.bmz, inputs=[args.model], allowed=(".zip",))
    _start_process("denoise")
    from .models.bmz import export_bmz

    test_image, axes = _read(args.test_image, args.axes) if args.test_image else (None, None)
    path = export_bmz(args.model, args.bmz, author=args.author, license=args.license, test_image=test_image,
                      test_axes=axes)
    print(f"Wrote {path}; check it with: bioimageio test {path}")


def _models(args):
    from .models.embedded import embedded_models

    for name, description in embedded_models().items():
        print(f"{name}\t{description}")


def _info(args):
    import platform

    from ._version import __version__
    from .runtime.backend import describe

    about = _profile(describe)
    print(f"napari-flax-denoise {__version__}")
    print(f"Python {platform.python_version()} on {platform.system()} {platform.machine()}")
    print(f"JAX {about['jax']}, jaxlib {about['jaxlib']}, default backend {about['platform']}")
    for device in about["devices"]:
        print(f"  device {device}")
    forced = f" (forced; the device alone gives {about['detected']})" if about["profile"] != about["detected"] else ""
    print(f"backend profile: {about['profile']}{forced}")


def _evaluate(args):
    from .evaluation.metrics import evaluate

    prediction, _ = _read(args.prediction)
    target, axes = _read(args.target, args.axes)
    if axes is not None and len(axes) != target.ndim:
        raise UserInputError(f"--axes '{axes}' names {len(axes)} axes but the target has {target.ndim}; "
                             "give one letter per axis.")
    channel_axis = axes.index("C") if axes and "C" in axes else None
    if axes is None and target.ndim == 3 and target.shape[-1] in (3, 4) and min(target.shape[:2]) > 4:
        channel_axis = -1  # Y X RGB(A), as images without axes metadata nearly always are
    scores = evaluate(prediction, target, data_range=args.data_range, channel_axis=channel_axis)
    if args.json:
        print(json.dumps(scores))
    else:
        print("\n".join(f"{k.upper():5s} {v:.6g}" for k, v in scores.items()))


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 success, 2 user error)."""
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "denoise": _denoise, "evaluate": _evaluate, "models": _models, "export": _export,
         "info": _info}[args.command](args)
    except UserInputError as err:
        print(f"flax-denoise {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug: a short line for the user, the traceback to a log
        from .errors import report_bug

        print(f"flax-denoise {args.command}: error: {report_bug(error, f'flax-denoise {args.command}')}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
