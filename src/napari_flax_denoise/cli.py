"""The ``flax-denoise`` command line: ``train``, ``denoise`` and ``evaluate``.

Mistakes the user can fix print one sentence and exit with status 2;
anything else is a bug and keeps its traceback.
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
    train.add_argument("inputs", nargs="+", metavar="INPUT", help="noisy images (TIFF, .npy, PNG)")
    train.add_argument("--axes", required=True, help="axes of every input, e.g. YX, ZYX, TYX, CYX")
    train.add_argument("--output", required=True, metavar="MODEL_DIR", help="model directory to write")
    train.add_argument("--algorithm", choices=["n2v2", "n2v", "care", "n2n"])
    train.add_argument("--target", nargs="+", metavar="TARGET", help="clean (care) or second noisy (n2n) images, one per input")
    train.add_argument("--init", metavar="MODEL", help="model directory to fine-tune")
    train.add_argument("--epochs", type=_positive_int)
    train.add_argument("--steps-per-epoch", type=_positive_int)
    train.add_argument("--patch-size", type=_positive_int)
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--learning-rate", type=float)
    train.add_argument("--val-fraction", type=float)
    train.add_argument("--seed", type=int)
    train.add_argument("--config", metavar="FILE", help="JSON file of settings (flags override it)")
    train.add_argument("--resume", action="store_true", help="continue the interrupted run in --output")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    denoise = commands.add_parser("denoise", help="denoise an image with a trained model")
    denoise.add_argument("input", metavar="INPUT")
    denoise.add_argument("--output", required=True, metavar="OUTPUT")
    denoise.add_argument("--model", metavar="MODEL", help="model directory")
    denoise.add_argument("--axes", help="axes of the input (read from OME-TIFF when omitted)")
    denoise.add_argument("--tile-shape", nargs="+", type=_positive_int, metavar="T")
    denoise.add_argument("--tta", action="store_true", help="average the 8 flips / rotations")
    denoise.add_argument("--uncertainty", metavar="OUTPUT", help="write the TTA standard deviation here (implies --tta)")
    denoise.add_argument("--quiet", action="store_true", help="no progress bar")

    evaluate = commands.add_parser("evaluate", help="PSNR / SSIM / MSE of a prediction against a target")
    evaluate.add_argument("prediction", metavar="PREDICTION")
    evaluate.add_argument("--target", required=True)
    evaluate.add_argument("--data-range", type=float, help="signal range (default: the target's max - min)")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _progress(generator, quiet, unit, describe):
    """Drive a progress generator with a tqdm bar on stderr; return its result."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                event = next(generator)
            except StopIteration as stop:
                return stop.value
            if quiet:
                continue
            if bar is None:
                bar = tqdm(total=getattr(event, "total_steps", getattr(event, "total", None)), unit=unit, file=sys.stderr)
            bar.n = getattr(event, "step", getattr(event, "done", 0))
            bar.set_postfix_str(describe(event), refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def _read(path, axes=None):
    from .files import read_image

    image, file_axes = read_image(path)
    return image, (axes or file_axes)


def _train(args):
    from .config import Config
    from .training import train_iter

    config = Config.from_json(args.config) if args.config else None
    images, axes = [], args.axes
    for path in args.inputs:
        images.append(_read(path)[0])
    targets = [_read(path)[0] for path in args.target] if args.target else None
    overrides = {k: v for k, v in dict(
        algorithm=args.algorithm, epochs=args.epochs, steps_per_epoch=args.steps_per_epoch,
        patch_size=args.patch_size, batch_size=args.batch_size, learning_rate=args.learning_rate,
        val_fraction=args.val_fraction, seed=args.seed).items() if v is not None}
    run = train_iter(images, axes=axes, targets=targets, config=config, output=args.output,
                     init=args.init, resume=args.resume, **overrides)

    def describe(event):
        text = f"epoch {event.epoch}/{event.epochs} loss {event.train_loss:.4g}"
        return text + (f" val {event.val_loss:.4g}" if event.val_loss is not None else "")

    result = _progress(run, args.quiet, "step", describe)
    best = min((h["val_loss"] for h in result.history), default=float("nan"))
    print(f"Saved model to {result.output} ({result.stopped}, best validation loss {best:.4g}).")


def _denoise(args):
    from .files import write_image
    from .prediction import denoise_iter

    if args.model is None:
        raise UserInputError("Give a model directory with --model (train one with 'flax-denoise train').")
    image, axes = _read(args.input, args.axes)
    if axes is None:
        axes = {2: "YX", 3: None}.get(image.ndim)
        if axes is None:
            raise UserInputError(f"The input has {image.ndim} dimensions and no axes metadata; give --axes (e.g. ZYX or TYX).")
    tta = args.tta or args.uncertainty is not None
    run = denoise_iter(image, args.model, axes=axes, tile_shape=args.tile_shape, tta=tta,
                       return_std=args.uncertainty is not None)
    result = _progress(run, args.quiet, "batch", lambda event: "")
    denoised, std = result if args.uncertainty is not None else (result, None)
    out_axes = axes if denoised.ndim == len(axes) else axes + "C"
    write_image(args.output, denoised, out_axes)
    if std is not None:
        write_image(args.uncertainty, std, out_axes)


def _evaluate(args):
    from .metrics import evaluate

    prediction, _ = _read(args.prediction)
    target, _ = _read(args.target)
    scores = evaluate(prediction, target, data_range=args.data_range)
    if args.json:
        print(json.dumps(scores))
    else:
        print("\n".join(f"{k.upper():5s} {v:.6g}" for k, v in scores.items()))


def main(argv=None) -> int:
    """Run the CLI; returns the exit status (0 success, 2 user error)."""
    args = _parser().parse_args(argv)
    try:
        {"train": _train, "denoise": _denoise, "evaluate": _evaluate}[args.command](args)
    except UserInputError as err:
        print(f"flax-denoise {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
