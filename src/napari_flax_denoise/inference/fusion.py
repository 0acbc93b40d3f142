"""Put back the information a blind-spot network never sees: the pixel itself.

A network trained by blind-spot masking (``n2v``, ``n2v2``) learns to
predict each pixel from its neighbours, because the pixel's own value was
hidden whenever it was scored. Its prediction ``mu`` therefore ignores what
the noisy pixel ``y`` says about itself, which is a lot where the image is
detailed (edges, texture) and the noise weak. Laine et al. (2019) recover
it with a network that also predicts its own uncertainty; this module does
it for any trained model, with no change to the network::

    denoised = mu + w * (y - mu)

For noise of variance ``v`` the best weight is ``w = 1 - v (1 - D) / R``,
clipped to [0, 1], where ``R`` is the expected squared difference between
``y`` and ``mu`` near the pixel and ``D`` is ``d mu / d y`` at the pixel
(how much the network still looks at it: near 0 after blind-spot training).

* ``v`` is a line in the intensity (photon noise grows with the signal),
  fitted to the finest Haar wavelet coefficients of ``y`` in intensity bins,
  then scaled down by what fine texture adds to them (see :mod:`~napari_flax_denoise.noise.line`).
* ``D`` comes from one backward pass of the network on a few patches.
* ``R`` is estimated in several ways: per intensity bin, or locally with
  Gaussian windows of several widths. Stein's unbiased risk estimate (SURE)
  of each candidate's squared error, which needs only ``y``, ``v`` and the
  candidate's own derivative, picks the best. A candidate must beat ``w = 0``
  (the prediction unchanged) by more than its statistical error, with ``v``
  taken at the top of its own estimate's error: where the prediction is
  already good, a noisy estimate would otherwise let noise back in.

A supervised network sees the pixel (``D`` well above 0), yet at weak noise
it still smooths fine texture away, and the same rule puts some back. For it
only the local estimates are candidates, and an image too small to fit the
noise line is left alone (see :func:`fuse`).

This module works on the host (NumPy, SciPy); on the accelerator route the
same steps run on the device (:mod:`.resident_fusion`).

"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy import ndimage

from ..runtime.arrays import array_namespace
from ..runtime.backend import active
from ..noise.level import with_noise
from ..noise.line import PER_BIN, binned, noise_line

# Patches per image for the divergence probe and their edge (a multiple of 16 for any depth).
# Small patches spread over the image: D varies with the content more than the probe's own
# noise (about 0.003 over 4096 pixels). A 3D probe of 48^3 took 0.5 s, most of the fusion's
# time on a 32x128x128 stack.
_PATCH = {2: (4, 48), 3: (2, 32)}
_BORDER = 8  # probe pixels this close to a patch edge (where the network sees padding) are not counted
_WIDTHS = (1.5, 2.0, 3.0, 5.0)  # Gaussian windows (sigma, pixels) of the local estimates
_CROP = {2: 256, 3: 64}  # edge of the crops that choose the weights in a large image
_CROPS = 4
# Narrowest intensity bin of the weights, in D * sigma (sigma: the noise's standard deviation):
# a prediction moves by D * n with its pixel's noise n, so by about 8 D sigma over |n| < 4 sigma.
# On `cell` at sigma 50 the n2v2 fine-tuned from general-2d (D = 0.006) had bins 0.025-0.05 sigma
# wide at its background, whose noise read up to 12% above the line: fusion cost 0.9 dB. Factors
# 4-16 cured that and kept every other gain of the benchmark's 16 n2v2 cases within 0.05 dB.
_MIN_BIN_WIDTH = 8.0
_NO_TABLE = (np.zeros(1, np.float32), np.zeros(1, np.float32))


def divergence(network, images, *, seed: int = 0, noise=None) -> float:
    """Mean derivative of each output pixel with respect to the same input pixel.

    Hutchinson's estimate: ``mean(b * J^T b)`` for a random +-1 probe ``b``,
    with ``J^T b`` from one backward pass, on a few patches of ``images``.

    Parameters
    ----------
    network : nnx.Module
        A U-Net with as many output channels as input channels.
    images : ndarray, shape (N, *spatial, C)
        Normalised images in the model's layout (host or device: only the
        patches are read).
    seed : int
        Seed of the patch positions and the probe.
    noise : ndarray, shape (N, 2), optional
        A noise-aware network's noise channels for each image (held fixed:
        ``D`` is the derivative with respect to the image's pixel).

    Returns
    -------
    float
        ``D``: 0 when the output ignores the centre pixel, 1 when it passes
        the pixel through (a JAX scalar for device images).
    """
    dims = images.ndim - 2
    count, edge = _PATCH[dims]
    xp = array_namespace(images)  # device images: the patches are cut there, and D stays there
    rng = np.random.default_rng(seed)
    short = [max(edge - s, 0) for s in images.shape[1:-1]]
    if any(short):  # small images: mirror up to one patch
        images = xp.pad(images, [(0, 0)] + [(0, s) for s in short] + [(0, 0)], mode="symmetric")
    patches, levels = [], []
    for _ in range(count):
        n = rng.integers(images.shape[0])
        corner = [rng.integers(s - edge + 1) for s in images.shape[1:-1]]
        patches.append(images[(n, *(slice(c, c + edge) for c in corner))])
        levels.append(None if noise is None else noise[n])
    patches = xp.stack(patches).astype(np.float32)
    probe = rng.choice(np.array([-1.0, 1.0], np.float32), patches.shape)
    graphdef, state = nnx.split(network)
    levels = None if noise is None else xp.stack(levels).astype(np.float32)
    product = _probe(graphdef, active().convolution, state, patches, probe, levels)
    inner = (slice(None), *(slice(_BORDER, edge - _BORDER),) * dims)
    return product[inner].mean() if xp is not np else float(np.asarray(product)[inner].mean())


@partial(jax.jit, static_argnums=(0, 1))
def _probe(graphdef, conv, state, patches, probe, levels=None):
    def apply(x):
        if levels is not None:  # constant channels after the image's
            x = with_noise(x, levels)
        return nnx.merge(graphdef, state)(x, conv=conv)

    _, pull_back = jax.vjp(apply, jnp.asarray(patches))  # reverse mode: our convolutions define only that
    (gradient,) = pull_back(jnp.asarray(probe))
    return gradient * probe


def fuse(noisy: np.ndarray, prediction: np.ndarray, centre_weight: float,
         blind: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Combine a prediction with the noisy image it came from (see the module's docstring).

    The noise line and the choice of weights come from a few crops (the
    whole image when it is small); only the chosen weights are computed for
    every pixel.

    Parameters
    ----------
    noisy, prediction : ndarray
        One image and its prediction, same shape, no channel axis.
    centre_weight : float
        ``D`` from :func:`divergence`.
    blind : bool
        Whether the prediction comes from a blind-spot network. Only then are
        weights per intensity bin a candidate: for a network that sees the
        pixel, SURE misjudged them (it saw gains where they cost up to 1.9 dB
        on held-out images under photon noise); the local windows it judged
        right. Such a prediction is also left unchanged when the image is too
        small to fit the noise line on two intensity bins (below about
        128x128 pixels).

    Returns
    -------
    fused : ndarray of float32
    weight : ndarray of float32
        Each pixel's weight ``w`` of the noisy image (all 0: the prediction
        unchanged).
    """
    # float32 work arrays: a large 3D stack needs several of them at once.
    y, mu = noisy.astype(np.float32, copy=False), prediction.astype(np.float32, copy=False)
    chosen = choose(y, mu, centre_weight, blind)
    if chosen is None:
        return mu.copy(), np.zeros_like(mu)
    best, line, keep, table = chosen
    r = y - mu
    reach = 0 if best == "bins" else int(4.0 * best + 0.5)  # scipy's Gaussian radius (truncate=4)
    threads = _threads()
    with ThreadPoolExecutor(threads) as pool:
        weight = _by_slabs(lambda r_, mu_: _weights(r_, mu_, line, keep, best, table, slope=False)[0],
                           (r, mu), reach, pool, threads)
    return mu + weight * r, weight


def choose(noisy, prediction, centre_weight: float, blind: bool = True):
    """What :func:`fuse` does to every pixel, decided on a few crops of one image.

    ``noisy`` and ``prediction`` may be host or device arrays; only their
    crops are read here.

    Returns
    -------
    (best, line, keep, table) or None
        The weights' source (``"bins"`` or a Gaussian window's sigma), the
        noise line, ``1 - D`` and the table per intensity bin (for blind-spot
        networks; one bin of weight 0 for others); None when the
        prediction is best left unchanged.
    """
    keep = 1.0 - min(max(centre_weight, 0.0), 0.9)
    samples = [(_host(noisy[c]), _host(prediction[c])) for c in _crops(noisy.shape)]
    a, b = noise_line(*map(list, zip(*samples)))
    line = (np.float32(a), np.float32(b))
    # Judge with the noise at the top of its estimate's error (a variance from n wavelet details
    # has a relative standard error of about 2.33 / sqrt(n); twice that here): too little noise
    # would let noise in.
    count = sum(sample.size >> sample.ndim for sample, _ in samples)
    if not blind and count < 2 * PER_BIN:
        # Too few details to fit the noise line: a network that saw the pixel loses more to a wrong
        # line than it can gain (64x64 MR slices with photon noise: -1.3 to -3.1 dB).
        return None
    caution = np.float32(1.0 + 4.7 / np.sqrt(max(count, 1)))
    # The weights per intensity bin: a candidate for blind-spot networks only (a sort of every sample:
    # 18 ms of the 60 ms that choosing took for a 4096 x 4096 image on one core).
    table = _bin_table([(y_ - m_, m_) for y_, m_ in samples], line, keep) if blind else _NO_TABLE
    best, best_risk = None, 0.0
    with ThreadPoolExecutor(_threads()) as pool:  # numpy and scipy release the GIL in these
        for choice in ("bins", *_WIDTHS) if blind else _WIDTHS:
            gain = np.concatenate(list(pool.map(
                lambda sample: _gain(sample[0] - sample[1], sample[1], line, keep, choice, table, caution), samples)))
            risk, error = gain.mean(), gain.std() / np.sqrt(gain.size)
            if risk < best_risk and risk < -2.0 * error:  # better, and not by chance
                best, best_risk = choice, risk
    return None if best is None else (best, line, keep, table)


def _host(array) -> np.ndarray:
    """A small piece of an image as a float32 host array (copied from the device if it is there)."""
    return np.asarray(jax.device_get(array), np.float32)


def _threads() -> int:
    """CPU cores this process may use (at most 8)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, 8))


def _by_slabs(function, arrays, reach: int, pool, threads: int):
    """``function(*arrays)`` computed on slabs along the first axis, one per thread of
    ``pool`` (``threads`` of them), each with ``reach`` more on either side: the same
    result for a filter that reaches no further.

    The full-image weights took 80-106 ms on one core for a 2048 x 2048 image
    (``np.interp`` / ``gaussian_filter``); both release the GIL, and two
    threads halved that.
    """
    size = arrays[0].shape[0]
    count = min(threads, max(1, size // max(4 * reach, 64)))
    if count == 1:
        return function(*arrays)
    bounds = np.linspace(0, size, count + 1).astype(int)

    def slab(k):
        lo, hi = max(bounds[k] - reach, 0), min(bounds[k + 1] + reach, size)
        part = function(*(a[lo:hi] for a in arrays))
        return part[bounds[k] - lo:bounds[k + 1] - lo]

    return np.concatenate(list(pool.map(slab, range(count))))


def _crops(shape, seed: int = 0) -> list[tuple]:
    """Where to look: the whole image when small, else a few crops spread over it."""
    edge = _CROP[len(shape)]
    if all(s <= 2 * edge for s in shape):
        return [tuple(slice(None) for _ in shape)]
    rng = np.random.default_rng(seed)
    return [tuple(slice(start, start + edge) for start in (rng.integers(max(s - edge, 0) + 1) for s in shape))
            for _ in range(_CROPS)]


def _bin_table(samples, line, keep):
    """Per intensity bin of the prediction, the weight ``1 - v (1 - D) / R``.

    A network that sees its pixel even a little (``D`` above 0) moves its
    prediction with the pixel's noise, so a bin narrower than that movement
    picks the pixels whose noise pushed them in: where a flat background
    makes equal-count bins very narrow, the bins at its edges hold more
    noise than the noise line says, and ``R`` there reads as an error of the
    prediction that is not there. So bins are merged until each spans the
    whole movement (:data:`_MIN_BIN_WIDTH`).
    """
    r = np.concatenate([r_.ravel() for r_, _ in samples])
    mu = np.concatenate([m_.ravel() for _, m_ in samples])
    v = np.maximum(line[0] * mu + line[1], 0)
    centres, weights = binned(mu, np.stack([r * r, v], 1),
                               lambda p: 1.0 - keep * p[:, 1].mean() / max(p[:, 0].mean(), 1e-12),
                               min_width=_MIN_BIN_WIDTH * (1.0 - keep) * float(np.sqrt(v.mean())))
    return centres, np.clip(weights, 0.0, 1.0)


def _weights(r, mu, line, keep, choice, table, slope=True):
    """Weights ``w`` of candidate ``choice`` ("bins", or a Gaussian window's sigma), and
    (if ``slope``) their derivative with respect to ``y`` divided by ``r``."""
    if choice == "bins":
        centres, weights = table
        weight = np.interp(mu, centres, weights) if len(centres) > 1 else np.full(mu.shape, weights[0])
        return weight.astype(np.float32), np.float32(0)
    v = np.maximum(line[0] * mu + line[1], np.float32(0))
    local = np.maximum(ndimage.gaussian_filter(r * r, choice, mode="reflect"), np.float32(1e-12))
    weight = np.float32(1.0) - np.float32(keep) * v / local
    if not slope:  # the final weights of a whole image need no derivative
        return np.clip(weight, 0.0, 1.0), None
    # d w / d y through the window's own centre term (the window's weight there: `centre`).
    reach = int(4 * choice) + 1
    centre = ndimage.gaussian_filter1d(np.pad([1.0], reach), choice)[reach] ** r.ndim
    slope = np.where((weight > 0) & (weight < 1), np.float32(2 * keep * keep * centre) * v / local**2,
                     np.float32(0))
    return np.clip(weight, 0.0, 1.0), slope


def _gain(r, mu, line, keep, choice, table, caution):
    """Each pixel's change of SURE from the unchanged prediction to candidate ``choice``,
    with the noise variance raised by the factor ``caution``."""
    weight, slope = _weights(r, mu, line, keep, choice, table)
    v = np.maximum(line[0] * mu + line[1], np.float32(0)) * caution
    return (_risk(r, v, weight, slope, keep) - _risk(r, v, np.float32(0), np.float32(0), keep)).ravel()


def _risk(r, v, weight, slope, keep):
    """Each pixel's term of SURE of ``mu + weight * r`` for noise of variance ``v``
    (their mean estimates the squared error, up to a constant).

    ``slope * r`` is the derivative of ``weight`` with respect to ``y``, and
    ``1 - keep`` that of ``mu``.
    """
    divergence_ = (1.0 - keep) * (1.0 - weight) + weight + slope * r * r
    return ((weight - 1.0) * r) ** 2 + 2.0 * v * divergence_


def fusion_applies(config) -> bool:
    """Whether a model's predictions are fused by default.

    Fusion weighs the noisy pixel into the prediction, so both must be the
    same kind of image on the same intensity scale. That holds for
    blind-spot models (they predict their input) and for models that meet
    every image on its own scale (``normalize_per_image``, e.g. general-2d
    and its fine-tunes). A ``care`` or ``n2n`` model's targets carry their
    own normalisation and may be another acquisition (another exposure, a
    longer average), so fusion is only done when asked for, and then on the
    assumption that input and target share their intensity units.
    """
    return config.in_channels == config.out_channels and (config.self_supervised or config.normalize_per_image)


def fuse_images(network, images: np.ndarray, predictions: np.ndarray, std: np.ndarray | None = None,
                blind: bool = True, noisy: np.ndarray | None = None, units=1.0, noise=None):
    """:func:`fuse` every image and channel of a batch, in place (host arrays; the accelerator
    route's twin is :func:`.resident_fusion.fuse_on_device`).

    Parameters
    ----------
    network : nnx.Module
        The network that made ``predictions`` (for ``D``).
    images, predictions : ndarray, shape (N, *spatial, C)
        Normalised images (the network's input) and the network's
        predictions of them.
    std : ndarray, optional
        The predictions' per-pixel standard deviation; scaled by ``1 - w``,
        since the noisy image is fixed.
    blind : bool
        Whether ``network`` was trained by blind-spot masking (see :func:`fuse`).
    noisy : ndarray, optional
        ``images`` on the predictions' scale, when the network's output is
        normalised differently from its input (a ``care`` model's targets).
    units : float or ndarray, shape (C,)
        The output scale divided by the input scale, per channel: one step
        of the input is ``1 / units`` steps of ``noisy``, which rescales
        ``D``.
    noise : ndarray, shape (N, 2), optional
        A noise-aware network's noise channels for each image.

    Returns
    -------
    predictions, std : ndarray
        The same arrays, fused (``std`` None if not given).
    mean_weight : float
        The mean weight of the noisy images (0: the predictions unchanged).
    """
    noisy = images if noisy is None else noisy
    units = np.broadcast_to(np.asarray(units, np.float64), (images.shape[-1],))
    weights = []
    for n in range(images.shape[0]):
        # Image by image, so that a stack gives the same result whole or plane by plane.
        centre_weight = divergence(network, images[n:n + 1], noise=None if noise is None else noise[n:n + 1])
        for c in range(images.shape[-1]):
            at = (n, ..., c)
            predictions[at], weight = fuse(noisy[at], predictions[at], centre_weight * units[c], blind)
            if std is not None:
                std[at] *= 1.0 - weight
            weights.append(weight.mean())
    return predictions, std, float(np.mean(weights))
