"""Export a model as a BioImage Model Zoo package (spec 0.5): ONNX weights, ``rdf.yaml``, test tensors, cover, card.

The zoo runs ONNX, not JAX: the network is converted with ``jax2onnx`` for
one fixed tile shape (the zoo's runners cut larger images into tiles and
drop ``halo`` pixels at each tile's edge, as we do). What the zoo's
processing steps can say, and what they cannot:

* a model with fixed statistics (trained from scratch on your data) is
  exact: ``scale_linear`` before and after the network, per channel;
* a model that normalises every image on its own (general-2d and its
  fine-tunes) gets ``scale_range`` (the 1st and 99.8th percentiles) before
  the network, computed per tile by the zoo rather than over the whole image;
  the zoo has no step that undoes it, so its output stays on that
  normalised scale (0 to about 1);
* pixel fusion, test-time augmentation and the uncertainty map are ours alone.

These limits are written into the package's documentation as well.
The export needs the ``bmz`` extra: ``pip install "napari-flax-denoise[bmz]"``.
"""

from __future__ import annotations

import hashlib
import tempfile
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .._version import __version__
from ..axes import check_image
from ..errors import UserInputError
from ..io.atomic import atomic_path
from ..network.unet import halo as network_halo
from .checkpoint import resolve_model

# Smallest tiles the ONNX graph is exported for (a fixed shape: jax2onnx cannot leave the
# strided pooling's sizes symbolic); a side grows to three halos where the network sees further.
TILE = {2: (256, 256), 3: (32, 64, 64)}
_EPS = 1e-6  # the zoo's scale_range adds this to the percentile spread
_CITATIONS = {
    "n2v": ("Krull, Buchholz, Jug. Noise2Void - Learning Denoising from Single Noisy Images. CVPR 2019.",
            "10.1109/CVPR.2019.00223"),
    "n2v2": ("Hoeck et al. N2V2 - Fixing Noise2Void Checkerboard Artifacts. ECCV Workshops 2022.",
             "10.1007/978-3-031-25069-9_33"),
    "care": ("Weigert et al. Content-aware image restoration: pushing the limits of fluorescence microscopy. "
             "Nature Methods 2018.", "10.1038/s41592-018-0216-7"),
    "n2n": ("Lehtinen et al. Noise2Noise: Learning Image Restoration without Clean Data. ICML 2018.",
            "10.48550/arXiv.1803.04189"),
}
SOURCE = "https://github.com/napari-flax-denoise/napari-flax-denoise"


def _needs(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserInputError(f"Exporting to the BioImage Model Zoo needs {module}: "
                             'pip install "napari-flax-denoise[bmz]".') from None


def export_bmz(model, path, *, author: str | None = None, license: str = "CC-BY-4.0",
               test_image: np.ndarray | None = None, test_axes: str | None = None) -> Path:
    """Write ``model`` as a BioImage Model Zoo package (a ``.zip``) at ``path``.

    Parameters
    ----------
    model : TrainedModel, str or Path
        A model, a model directory or an embedded model's name.
    path : str or Path
        The ``.zip`` to write (atomically).
    author : str, optional
        The package's author (default: this computer's user name).
    license : str
        SPDX identifier of the weights' licence.
    test_image : ndarray, optional
        An image to make the test tensors and the cover from (its first
        S / T plane, centre-cropped or mirrored to one tile; default: a
        synthetic image).
    test_axes : str, optional
        Its axes (default: Y X, or Z Y X for a 3D model).

    Returns
    -------
    Path
    """
    path = Path(path)
    if not path.name.lower().endswith(".zip"):
        raise UserInputError(f"A BioImage Model Zoo package is a .zip file; name the output '{path.stem}.zip'.")
    model = resolve_model(model)
    spec = _needs("bioimageio.spec")
    from bioimageio.spec.model.v0_5 import ModelDescr

    config = model.config
    halo, grid = network_halo(config), 2**config.depth
    tile = tuple(max(side, -(-3 * halo // grid) * grid) for side in TILE[config.dims])
    with tempfile.TemporaryDirectory(prefix="bmz-") as work:
        work = Path(work)
        if test_image is not None:
            test_image, layout = check_image(test_image, test_axes or ("ZYX" if config.dims == 3 else "YX"),
                                             name="test image")
            test_image = layout.to_model(test_image)[0]
        test_input = _test_input(test_image, tile, config.in_channels)
        noise = _noise_level(model, test_input)
        opset = _write_onnx(model, tile, work / "weights.onnx", noise)
        test_output = _expected_output(model, test_input, noise)
        np.save(work / "test_input.npy", test_input)
        np.save(work / "test_output.npy", test_output)
        _write_cover(test_input, test_output, work / "cover.png")
        (work / "README.md").write_text(_card(model, tile, halo, noise))
        rdf = _description(model, tile, halo, opset, work, author, license, ModelDescr.implemented_format_version)
        _write_yaml(rdf, work / "rdf.yaml")
        described = spec.load_description(work / "rdf.yaml", perform_io_checks=True)
        if not isinstance(described, ModelDescr):
            raise RuntimeError(f"the zoo's validator refused our description: {described.validation_summary}")
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for item in sorted(work.iterdir()):
                archive.write(item, item.name)
    return path


def _noise_level(model, test_input):
    """A noise-aware network's noise channels, fixed at export: the test image's, on the zoo's normalised scale."""
    if not model.config.noise_input:
        return None
    from ..noise.level import noise_features

    gain, offset = (float(np.ravel(v)[0]) for v in _zoo_input_scale(model, test_input))
    return noise_features(test_input, -offset / gain, 1 / gain)[0]


def _with_noise(x, noise):
    """``x`` (one image) with the fixed noise channels appended (unchanged for other networks)."""
    from ..noise.level import with_noise

    return x if noise is None else with_noise(x, noise[None])


def _write_onnx(model, tile, target: Path, noise=None) -> int:
    """The network (the exported tile shape, one image) as ONNX; returns its opset version.

    ``noise`` (noise-aware networks): the noise channels, constants of the exported graph.
    """
    _needs("jax2onnx")
    import logging

    from flax import nnx
    from jax2onnx import to_onnx

    graphdef, state = nnx.split(model.network)
    network = nnx.merge(graphdef, state)  # a copy: export traces it

    def forward(x):
        return network(_with_noise(x, noise), conv=_conv_for_onnx)

    quiet = logging.getLogger("onnx_ir")
    level, quiet.level = quiet.level, logging.ERROR  # it warns about every shape constant it skips
    try:
        # One image per call: with a symbolic batch size jax2onnx took 5 minutes on a small 3D network, not 8 s.
        onnx_model = to_onnx(forward, [(1, *tile, model.config.in_channels)], return_mode="proto")
    finally:
        quiet.level = level
    target.write_bytes(onnx_model.SerializeToString())
    return int(next(o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")))


def _conv_for_onnx(x, kernel):
    """The network's 'SAME' convolution in operations jax2onnx converts.

    jax2onnx converts 2D convolutions only: a 3D one is the sum, over the
    kernel's Z offsets, of 2D convolutions of the Z-shifted volume (the same
    products, summed in another order).
    """
    import jax
    import jax.numpy as jnp

    from ..runtime.convolution import conv_native

    if kernel.ndim == 4:
        return conv_native(x, kernel)
    n, depth, height, width, channels = x.shape
    reach = (kernel.shape[0] - 1) // 2
    padded = jnp.pad(x, ((0, 0), (reach, kernel.shape[0] - 1 - reach), (0, 0), (0, 0), (0, 0)))
    total = None
    for dz in range(kernel.shape[0]):
        planes = jax.lax.slice_in_dim(padded, dz, dz + depth, axis=1).reshape(n * depth, height, width, channels)
        part = conv_native(planes, kernel[dz])
        total = part if total is None else total + part
    return total.reshape(n, depth, height, width, kernel.shape[-1])


def _test_input(image, tile, channels: int) -> np.ndarray:
    """A ``(1, *tile, C)`` float32 test tensor: the centre of ``image``, or a synthetic noisy image."""
    if image is None:
        rng = np.random.default_rng(0)
        grids = np.meshgrid(*[np.linspace(0, 6 * np.pi, size) for size in tile], indexing="ij")
        clean = 100 + 50 * np.prod([np.sin(g) for g in grids], axis=0)
        image = (clean[..., None] + rng.normal(0, 15, (*tile, channels))).astype(np.float32)
    image = np.asarray(image, np.float32)
    if image.ndim != len(tile) + 1 or image.shape[-1] != channels:
        raise UserInputError(f"The test image has {image.ndim - 1} spatial axes and {image.shape[-1]} channel(s) "
                             f"but the model takes {len(tile)} and {channels}; give a matching image or none.")
    short = [max(t - s, 0) for s, t in zip(image.shape, tile)]
    if any(short):  # a small image is mirrored up to one tile
        image = np.pad(image, [(0, k) for k in short] + [(0, 0)], mode="symmetric")
    start = [(s - t) // 2 for s, t in zip(image.shape, tile)]
    return image[tuple(slice(a, a + t) for a, t in zip(start, tile))][None]


def _zoo_input_scale(model, x: np.ndarray):
    """What the zoo's preprocessing does to ``x``: the (gain, offset) per channel it applies."""
    if model.config.normalize_per_image:
        from .normalization import PERCENTILES

        low, high = np.percentile(x.reshape(-1, x.shape[-1]).astype(np.float64), PERCENTILES, axis=0)
        return 1.0 / (high - low + _EPS), -low / (high - low + _EPS)
    offset, scale = np.asarray(model.input_norm.offset), np.asarray(model.input_norm.scale)
    return 1.0 / scale, -offset / scale


def _expected_output(model, x: np.ndarray, noise=None) -> np.ndarray:
    """Our network, with the zoo's pre- and postprocessing, on the test tensor (computed with JAX)."""
    import jax.numpy as jnp

    from ..runtime.convolution import conv_native

    gain, offset = _zoo_input_scale(model, x)
    normalised = (x * gain + offset).astype(np.float32)
    y = np.asarray(model.network(_with_noise(jnp.asarray(normalised), noise), conv=conv_native), np.float32)
    if not model.config.normalize_per_image:
        y = y * np.float32(model.output_norm.scale) + np.float32(model.output_norm.offset)
    return y.astype(np.float32)


def _write_cover(test_input, test_output, target: Path) -> None:
    """Input beside output (the middle plane of a volume, first channel), each on its own contrast."""
    import imageio.v3 as iio

    def plane(a):
        a = a[0, ..., 0]
        a = a[a.shape[0] // 2] if a.ndim == 3 else a
        low, high = np.percentile(a, (0.5, 99.5))
        return np.clip((a - low) / max(high - low, 1e-12) * 255, 0, 255).astype(np.uint8)

    both = np.concatenate([plane(test_input), np.full((plane(test_input).shape[0], 8), 255, np.uint8),
                           plane(test_output)], axis=1)
    iio.imwrite(target, both, extension=".png")


def _axes(tile, channels: int, names: str, halo: int | None = None, unit_of: str = "input") -> list:
    spatial = "zyx"[3 - len(tile):]
    axes = [{"type": "batch", "size": 1}] if halo is None else [{"type": "batch"}]
    for axis, size in zip(spatial, tile):
        if halo is None:
            axes.append({"type": "space", "id": axis, "size": size})
        else:
            axes.append({"type": "space", "id": axis, "halo": halo, "size": {"tensor_id": unit_of, "axis_id": axis}})
    axes.append({"type": "channel", "channel_names": [f"{names}{c}" for c in range(channels)]})
    return axes


def _description(model, tile, halo, opset, work: Path, author, license, format_version) -> dict:
    import getpass

    config = model.config
    spatial = list("zyx"[3 - config.dims:])
    if config.normalize_per_image:
        pre = [{"id": "scale_range", "kwargs": {"axes": spatial, "min_percentile": 1.0, "max_percentile": 99.8,
                                                 "eps": _EPS}}]
        post = []
    else:
        offset, scale = np.asarray(model.input_norm.offset), np.asarray(model.input_norm.scale)
        pre = [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": (1.0 / scale).tolist(),
                                                  "offset": (-offset / scale).tolist()}}]
        post = [{"id": "scale_linear", "kwargs": {"axis": "channel", "gain": list(model.output_norm.scale),
                                                   "offset": list(model.output_norm.offset)}}]
    text, doi = _CITATIONS[config.algorithm]
    return {
        "format_version": format_version, "type": "model",
        "name": _zoo_name(f"{model.name} ({config.algorithm} napari-flax-denoise)"),
        "description": f"A {config.dims}D U-Net denoiser ({config.algorithm}) exported from napari-flax-denoise "
                       f"{__version__}.",
        "authors": [{"name": author or getpass.getuser()}],
        "cite": [{"text": text, "doi": doi}, {"text": "napari-flax-denoise", "url": SOURCE}],
        "license": license, "git_repo": SOURCE, "tags": ["denoising", f"{config.dims}d", config.algorithm, "unet"],
        "documentation": _file(work, "README.md"), "covers": [_file(work, "cover.png")],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [{"id": "input", "description": "noisy image", "axes": _axes(tile, config.in_channels, "noisy"),
                    "test_tensor": _file(work, "test_input.npy"), "preprocessing": pre}],
        "outputs": [{"id": "output", "description": "denoised image",
                     "axes": _axes(tile, config.out_channels, "denoised", halo),
                     "test_tensor": _file(work, "test_output.npy"), "postprocessing": post}],
        "weights": {"onnx": {**_file(work, "weights.onnx"), "opset_version": opset,
                             "comment": f"converted from Flax with jax2onnx by napari-flax-denoise {__version__}"}},
        "config": {"napari_flax_denoise": {"version": __version__, "config": config.to_dict()}},
    }


def _zoo_name(text: str) -> str:
    """The zoo allows letters, digits, spaces and ``_+-()`` in names, at most 128 characters."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    return "".join(c if c in allowed else "-" for c in text)[:128]


def _file(work: Path, name: str) -> dict:
    return {"source": name, "sha256": hashlib.sha256((work / name).read_bytes()).hexdigest()}


def _card(model, tile, halo, noise=None) -> str:
    config = model.config
    per_image = config.normalize_per_image
    return "\n".join([
        f"# {model.name}", "",
        f"A {config.dims}D U-Net denoiser (`{config.algorithm}`, depth {config.depth}, {config.features} features) "
        f"exported from [napari-flax-denoise]({SOURCE}) {__version__}.", "",
        "## Use in the zoo", "",
        f"* ONNX weights for tiles of {' x '.join(map(str, tile))} pixels, one at a time; the zoo's runners cut "
        f"larger images into tiles and drop {halo} pixels at each tile's edge.",
        "* Input normalisation: " + ("the 1st and 99.8th percentiles of each tile map to 0 and 1 (`scale_range`); "
                                     "napari-flax-denoise takes them over the whole image instead." if per_image else
                                     "fixed statistics of the training data (`scale_linear`), exact."),
        "* Output: " + ("on the normalised scale (0 to about 1): the zoo cannot undo a per-image normalisation."
                        if per_image else "in the training targets' intensities (`scale_linear`), exact."),
        *([f"* Noise level: fixed when exported, at the test image's (noise standard deviation {noise[0]:.4g} at "
           f"normalised intensity 0, {noise[1]:.4g} at 1). napari-flax-denoise estimates it from every image; "
           "export with a test image like your data."] if noise is not None else []),
        "* Not in the zoo: pixel fusion (napari-flax-denoise puts back the noisy pixel where the noise allows), "
        "test-time augmentation and the uncertainty map. For those, denoise with napari-flax-denoise itself.", "",
        "# Validation", "",
        "`bioimageio test` reproduces the test output (computed with JAX by napari-flax-denoise) from the test "
        "input with the ONNX weights; the cover shows that input beside its output.", "",
        "## Provenance", "",
        "```", *[f"{k}: {v}" for k, v in sorted(model.info.items()) if isinstance(v, (str, int, float))], "```", "",
    ])


def _write_yaml(data: dict, target: Path) -> None:
    import yaml

    target.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
