"""The U-Net denoiser (Flax NNX), one class for 2D and 3D.

Encoder stages are conv + ReLU blocks followed by max-pooling, as in the
classic CNN the project grew from, but the network maps an image to an image:
a decoder upsamples back and (optionally) adds the encoder's features through
skip connections. The N2V2 variant (``blurpool=True``) replaces max-pool by
max-blur-pool and drops the top-level skip connection, which removes the
checkerboard artefacts of plain Noise2Void.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from .config import Config
from .convolution import conv_same


def variance_scaling(scale: float):
    """Kernel initialiser: fan-in variance scaling with a truncated normal, drawn by NumPy.

    The same law as ``jax.nn.initializers.variance_scaling(scale, "fan_in",
    "truncated_normal")`` (``scale=2`` is He, ``1`` LeCun), and still keyed
    by Flax's random streams, so ``seed`` decides it. Drawn by JAX outside
    ``jit``, each kernel shape compiled its own program (about half a second
    each on CPU), and building the default network took 4.6 s (now 0.6).
    Abstract builds (``nnx.eval_shape``) pass a tracer and use JAX's version.
    """
    traced = jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")

    def init(key, shape, dtype=jnp.float32):
        if isinstance(key, jax.core.Tracer):
            return traced(key, shape, dtype)
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):  # a typed key (Flax's); raw keys are their data
            key = jax.random.key_data(key)
        rng = np.random.default_rng(np.asarray(key).ravel())
        draw = rng.standard_normal(shape)
        outside = np.abs(draw) > 2
        while outside.any():
            draw[outside] = rng.standard_normal(int(outside.sum()))
            outside = np.abs(draw) > 2
        # 0.8796... is the standard deviation of a unit normal truncated to [-2, 2].
        std = np.sqrt(scale / np.prod(shape[:-1])) / 0.87962566103423978
        return jnp.asarray(draw * std, dtype)

    return init


_KERNEL_INIT, _HEAD_INIT = variance_scaling(2.0), variance_scaling(1.0)


def conv(x: jax.Array, layer: nnx.Conv, parts=None, low=None, zero_last_column: bool = False) -> jax.Array:
    """Apply a 'SAME' convolution ``layer`` to ``x``, or to the channel-concatenation of ``parts``.

    Convolving each part with its slice of the kernel and summing gives the
    same result as concatenating first, without materialising the
    concatenation (a large memory copy on CPU). ``low`` (optional, 2D) is a
    first part at half resolution, upsampled 2x (see :func:`conv_upsampled`).
    ``zero_last_column``: see :func:`.convolution.conv_same`.
    """
    kernel = layer.kernel[...]
    out, start = None, 0
    if low is not None:
        out, start = conv_upsampled(low, kernel[..., :low.shape[-1], :]), low.shape[-1]
    for part in (x,) if parts is None else parts:
        stop = start + part.shape[-1]
        term = conv_same(part, kernel[..., start:stop, :], zero_last_column=zero_last_column)
        out, start = term if out is None else out + term, stop
    return out + layer.bias[...]


def _phase_taps(kernel: jax.Array, axis: int, phase: int) -> jax.Array:
    """The two taps along ``axis`` that a 3-tap kernel puts on an image upsampled 2x by repetition, at one output phase.

    Output pixel ``2a`` sees input rows ``a - 1, a, a`` (taps 0, 1, 2); pixel ``2a + 1`` sees ``a, a, a + 1``.
    """
    k0, k1, k2 = (jax.lax.index_in_dim(kernel, i, axis) for i in range(3))
    return jnp.concatenate([k0, k1 + k2] if phase == 0 else [k0 + k1, k2], axis)


def conv_upsampled(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``conv_same(upsample(x, 2), kernel)`` for a 2D batch and a 3x3 kernel, computed at ``x``'s resolution.

    Each of the four output phases (even or odd row, even or odd column) is a
    2x2 convolution of ``x``: 4/9 of the multiplications, and the upsampled
    copy is never made. Phase ``(p, q)`` reads the 2x2 window whose corner is
    ``(p - 1, q - 1)`` from its pixel, so all four are one 2x2 convolution
    with four times the output channels over ``x`` padded by one pixel, each
    phase taking its channels at its own offset; they are interleaved
    afterwards, a reshape that XLA fuses with the bias and ReLU that follow.
    One wide convolution ran 1.18-1.46x faster than four narrow ones.
    """
    n, h, w, _ = x.shape
    out = kernel.shape[-1]
    phases = [(p, q) for p in (0, 1) for q in (0, 1)]
    taps = jnp.concatenate([_phase_taps(_phase_taps(kernel, 0, p), 1, q) for p, q in phases], axis=-1)
    wide = jax.lax.conv_general_dilated(x, taps, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))
    parts = [wide[:, p:p + h, q:q + w, i * out:(i + 1) * out] for i, (p, q) in enumerate(phases)]
    grid = jnp.stack(parts, 3).reshape(n, h, w, 2, 2, out)  # (N, H, W, p, q, C)
    return grid.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, out)


def pointwise(x: jax.Array, layer: nnx.Conv) -> jax.Array:
    """Apply a 1x1(x1) convolution ``layer`` as a matrix product over channels.

    XLA's CPU convolution ran the U-Net's head (32 channels to 1) 2.3x slower
    than this product, forward and backward.
    """
    kernel = layer.kernel[...]
    return jnp.dot(x, kernel.reshape(kernel.shape[-2:])) + layer.bias[...]


class ConvBlock(nnx.Module):
    """Two 3x3(x3) convolutions, each followed by ReLU.

    Parameters
    ----------
    dims : int
        Spatial dimensions (2 or 3).
    in_features, mid_features, out_features : int
        Channels before, between and after the two convolutions.
    rngs : nnx.Rngs
    """

    def __init__(self, dims: int, in_features: int, mid_features: int, out_features: int, *, rngs):
        kernel = (3,) * dims
        self.conv1 = nnx.Conv(in_features, mid_features, kernel, kernel_init=_KERNEL_INIT, rngs=rngs)
        self.conv2 = nnx.Conv(mid_features, out_features, kernel, kernel_init=_KERNEL_INIT, rngs=rngs)

    def __call__(self, *parts, mask=None, low=None, zero_last_column=False):
        """Apply the block to the channel-concatenation of ``parts``.

        ``mask`` (optional, boolean, broadcastable): activations outside it
        are set to zero, as if the image ended there (see :meth:`UNet.__call__`).
        ``low`` (optional, 2D): an input at half resolution, to be upsampled
        2x and put before ``parts``; the first convolution takes it at its
        own resolution (see :func:`conv_upsampled`).
        ``zero_last_column``: the parts are zero in the last column of every
        row and ``mask`` excludes it, so the convolutions' gradients may rely
        on it (see :func:`.convolution.conv_same`).
        """
        edge = dict(zero_last_column=zero_last_column)
        h = _masked(jax.nn.relu(conv(None, self.conv1, parts, low=low, **edge)), mask)
        return _masked(jax.nn.relu(conv(h, self.conv2, **edge)), mask)


def _masked(x: jax.Array, mask) -> jax.Array:
    return x if mask is None else jnp.where(mask, x, 0.0)


def _excludes_last_column(masks) -> bool:
    """Whether every mask is a concrete array that is False in its last column (X)."""
    return all(isinstance(mask, np.ndarray) and not mask[..., -1, :].any() for mask in masks)


def valid_masks(valid: jax.Array, spatial_shape, depth: int) -> list[jax.Array]:
    """Per U-Net level, a boolean ``(N, *spatial, 1)`` mask of each sample's valid region.

    ``valid`` is ``(N, dims)``: the first ``valid[n, i]`` pixels along
    spatial axis ``i`` of sample ``n`` are image; level ``l`` keeps
    ``ceil(valid / 2**l)`` of them.
    """
    masks = []
    for level in range(depth + 1):
        mask = None
        for axis, size in enumerate(spatial_shape):
            extent = -(-valid[:, axis] // 2**level)
            inside = jnp.arange(size // 2**level) < extent[:, None]
            shape = [valid.shape[0]] + [1] * len(spatial_shape) + [1]
            shape[1 + axis] = size // 2**level
            inside = inside.reshape(shape)
            mask = inside if mask is None else mask & inside
        masks.append(mask)
    return masks


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x: jax.Array, dims: int) -> jax.Array:
    """2x max-pooling of a channels-last batch ``(N, *spatial, C)`` (a trailing odd row is dropped).

    The maximum of the 2x2(x2) strided slices of ``x`` (one per phase: even
    or odd along each axis), all elementwise, rather than ``reduce_window``,
    which XLA's CPU backend differentiates through index arrays and a
    scatter. The gradient is one pass too (see :func:`_max_pool_gradient`).
    """
    return _max_of(_phases(x, dims))


def _phases(x: jax.Array, dims: int) -> list[jax.Array]:
    """``x[:, a::2, b::2, ...]`` for every phase ``(a, b, ...)``, trailing odd rows dropped."""
    half = [s // 2 for s in x.shape[1:-1]]
    return [x[(slice(None), *(slice(a, a + 2 * n, 2) for a, n in zip(phase, half)))]
            for phase in itertools.product(range(2), repeat=dims)]


def _max_of(arrays):
    peak = arrays[0]
    for a in arrays[1:]:
        peak = jnp.maximum(peak, a)
    return peak


def _max_pool_forward(x, dims):
    return _max_of(_phases(x, dims)), x


def _max_pool_gradient(dims, x, grad):
    """Gradient of :func:`max_pool`: each phase of ``x`` takes ``grad`` where it is its block's maximum.

    One elementwise pass, phases interleaved back; a trailing odd row gets
    zero. XLA's gradient of the earlier reshaped-block maximum counted the
    block's ties and divided by them, in three passes. Here a tie gets the
    whole gradient, as in :func:`_pool_gradient`: after a ReLU ties happen
    only at zero, where the ReLU's own gradient is zero.
    """
    phases = _phases(x, dims)
    peak = _max_of(phases)
    parts = [jnp.where(phase == peak, grad, 0.0) for phase in phases]
    n, c, half = x.shape[0], x.shape[-1], grad.shape[1:-1]
    grid = jnp.stack(parts, -2).reshape(n, *half, *(2,) * dims, c)  # (N, *half, *phase, C)
    order = [0] + [i for axis in range(dims) for i in (1 + axis, 1 + dims + axis)] + [1 + 2 * dims]
    full = grid.transpose(order).reshape(n, *(2 * h for h in half), c)
    return (jnp.pad(full, [(0, 0)] + [(0, s % 2) for s in x.shape[1:-1]] + [(0, 0)]),)


max_pool.defvjp(_max_pool_forward, _max_pool_gradient)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_blur_pool(x: jax.Array, dims: int) -> jax.Array:
    """Max-blur-pool (N2V2): 2x2 max at stride 1, then a [1 2 1]/4 blur at stride 2.

    Padding is 'SAME'-style (-inf after the end for the max, zeros for the
    blur); spatial sizes are even. The forward pass computes each output
    pixel straight from the 4x4 block of ``x`` it depends on (see
    :func:`_pool_blocks`), the gradient each input pixel straight from the
    windows it lies in (see :func:`_pool_gradient`).
    """
    return _pool_blocks(x, dims)


def _pool_forward(x, dims):
    return _pool_blocks(x, dims), x


def _pool_backward(dims, x, grad):
    return (_pool_gradient(x, grad, dims),)


# Per axis, for an input pixel 2j + a and the max window starting at 2j + a - 1 + e: the
# pooled pixels j + offset whose blur reads that window, with the blur's weight.
_BLUR_READERS = {(0, 0): ((-1, 0.5),), (0, 1): ((0, 0.25), (-1, 0.25)),
                 (1, 0): ((0, 0.25), (-1, 0.25)), (1, 1): ((0, 0.5),)}


def _pool_gradient(x: jax.Array, grad: jax.Array, dims: int) -> jax.Array:
    """Gradient of :func:`max_blur_pool` with respect to ``x``, given ``grad`` of its output.

    Each input pixel lies in the 2x2(x2) max windows that start one pixel
    before it or at it; it takes, from each window whose maximum it is,
    what the blur passed back to that window. Computed per phase of ``x``
    (even or odd along each axis) from strided slices of ``x`` and of
    ``grad``, which XLA fuses into one pass. XLA's gradient of the earlier
    phase form of the pooling took several passes (18 ms of a 230 ms n2v2
    training step at the top level alone; 3 ms this way). An input tied with
    another for a window's maximum gets the window's whole gradient, as each
    of them does: after a ReLU that happens only at zero, where the ReLU's
    own gradient is zero.
    """
    pad = [(0, 0)] + [(1, 1)] * dims + [(0, 0)]
    xp = jnp.pad(x, pad, constant_values=-jnp.inf)
    gp = jnp.pad(grad, [(0, 0)] + [(1, 0)] * dims + [(0, 0)])
    half = grad.shape[1:-1]

    def strided(offsets):  # xp[2j + offsets] = x[2j + offsets - 1] for every pooled pixel j
        return xp[(slice(None), *(slice(o, o + 2 * n, 2) for o, n in zip(offsets, half)))]

    def pooled(offsets):  # grad[j + offsets]
        return gp[(slice(None), *(slice(o + 1, o + 1 + n) for o, n in zip(offsets, half)))]

    phases = []
    for phase in itertools.product(range(2), repeat=dims):
        centre = strided([a + 1 for a in phase])
        total = None
        for start in itertools.product(range(2), repeat=dims):
            peak = None
            for corner in itertools.product(range(2), repeat=dims):
                value = strided([a + e + c for a, e, c in zip(phase, start, corner)])
                peak = value if peak is None else jnp.maximum(peak, value)
            passed = None
            for readers in itertools.product(*(_BLUR_READERS[a, e] for a, e in zip(phase, start))):
                term = float(np.prod([w for _, w in readers])) * pooled([o for o, _ in readers])
                passed = term if passed is None else passed + term
            term = jnp.where(centre == peak, passed, 0.0)
            total = term if total is None else total + term
        phases.append(total)
    n, c = x.shape[0], x.shape[-1]
    grid = jnp.stack(phases, -2).reshape(n, *half, *(2,) * dims, c)  # (N, *half, *phase, C)
    order = [0] + [i for axis in range(dims) for i in (1 + axis, 1 + dims + axis)] + [1 + 2 * dims]
    return grid.transpose(order).reshape(x.shape)


max_blur_pool.defvjp(_pool_forward, _pool_backward)


def _pool_blocks(x: jax.Array, dims: int) -> jax.Array:
    """Max-blur-pool from strided slices of ``x`` padded by one -inf and one zero at the end of each axis.

    The two paddings give both of the pooling's paddings at once. XLA makes
    this two passes over a level's activations (a padded copy with the bias
    and ReLU before it, then the pooling), where the earlier phase form
    (shifted copies of the half-resolution phases of ``x``: its even and odd
    rows, columns ...) read them five times: a 1088x1088 n2v2 tile ran
    1.02-1.05x faster. XLA's own gradient of this form, through 16 strided
    slices, trained 1.25x slower than its gradient of the phase form;
    :func:`_pool_gradient` trains 1.07x faster than the latter (n2v2, 5.04
    against 4.71 steps/s, alternating rounds).
    """
    pad = [(0, 0)] + [(0, 1)] * dims + [(0, 0)]
    xp = jnp.pad(jnp.pad(x, pad, constant_values=-jnp.inf), pad)
    half = [s // 2 for s in x.shape[1:-1]]

    def block(offsets):  # xp[2i + offsets] for every output pixel i
        index = tuple(slice(o, o + 2 * n, 2) for o, n in zip(offsets, half))
        return xp[(slice(None), *index)]

    weights = (0.25, 0.5, 0.25)
    out = None
    for taps in itertools.product(range(3), repeat=dims):
        peak = None
        for corner in itertools.product(range(2), repeat=dims):
            value = block([t + c for t, c in zip(taps, corner)])
            peak = value if peak is None else jnp.maximum(peak, value)
        term = float(np.prod([weights[t] for t in taps])) * peak
        out = term if out is None else out + term
    return out


def upsample(x: jax.Array, dims: int) -> jax.Array:
    """Nearest-neighbour 2x upsampling; the following 3x3 conv smooths it."""
    for axis in range(1, dims + 1):
        x = jnp.repeat(x, 2, axis=axis)
    return x


class UNet(nnx.Module):
    """U-Net image-to-image denoiser.

    Parameters
    ----------
    config : Config
        Uses ``dims``, ``depth``, ``features``, ``in_channels``,
        ``out_channels``, ``use_blurpool`` and ``use_residual``.
    rngs : nnx.Rngs
        Random streams for weight initialisation.

    Notes
    -----
    Input and output are channels-last batches ``(N, [Z,] Y, X, C)`` whose
    spatial sizes are multiples of ``2**depth``. Level ``i`` has
    ``features * 2**i`` channels; the bottleneck widens to
    ``features * 2**depth`` in its middle convolution.
    """

    def __init__(self, config: Config, *, rngs: nnx.Rngs):
        self.dims = config.dims
        self.depth = config.depth
        self.blurpool = config.use_blurpool
        self.residual = config.use_residual
        d, f = config.dims, config.features
        widths = [f * 2**i for i in range(config.depth)]
        encoders, channels = [], config.in_channels
        for width in widths:
            encoders.append(ConvBlock(d, channels, width, width, rngs=rngs))
            channels = width
        self.encoders = nnx.List(encoders)
        self.bottleneck = ConvBlock(d, channels, 2 * channels, channels, rngs=rngs)
        decoders = []
        for level in reversed(range(config.depth)):
            skip = 0 if (level == 0 and self.blurpool) else widths[level]
            out = widths[level - 1] if level > 0 else f
            decoders.append(ConvBlock(d, channels + skip, widths[level], out, rngs=rngs))
            channels = out
        self.decoders = nnx.List(decoders)
        self.head = nnx.Conv(channels, config.out_channels, (1,) * d, kernel_init=_HEAD_INIT, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None, *, masks=None,
                 upsample_in_conv: bool = False) -> jax.Array:
        """Denoise a batch ``x`` of shape ``(N, [Z,] Y, X, C)``.

        ``valid`` (optional, integers ``(N, dims)``): only the first
        ``valid[n]`` pixels of sample ``n`` along each spatial axis are image.
        Activations beyond are held at zero after every layer, which is what
        the convolutions' zero padding does at a real image edge. So an image
        placed in the corner of a larger tile gives the same result as on its
        own, and one compiled tile shape serves every image size.

        ``masks`` (optional, instead of ``valid``): one boolean mask per level
        (broadcastable to that level's activations) of the pixels that are
        image, for other layouts (see :mod:`.packing`); activations outside
        are held at zero after every layer and every pooling.

        ``upsample_in_conv`` (2D): each decoder's first convolution takes the
        level below at its own resolution instead of an upsampled copy (the
        same result up to float rounding, with 4/9 of that part's
        multiplications; see :func:`conv_upsampled`). Inference uses it;
        training keeps the upsampled copy, whose convolution gradients have a
        faster route on CPU (see :mod:`.convolution`).
        """
        if masks is None:
            masks = [None] * (self.depth + 1) if valid is None else valid_masks(valid, x.shape[1:-1], self.depth)
            pooled_masks = [None] * (self.depth + 1)  # pooling zeros beyond a valid corner by itself
        else:
            pooled_masks = masks
        pool = max_blur_pool if self.blurpool else max_pool
        # Masks that exclude every row's last column (packed batches) keep it at zero in every
        # layer's input and gradient, which the convolutions' gradients can use.
        edge = dict(zero_last_column=self.dims == 2 and _excludes_last_column(masks))
        skips, h = [], _masked(x, masks[0])
        for level, encoder in enumerate(self.encoders):
            h = encoder(h, mask=masks[level], **edge)
            skips.append(h)
            h = _masked(pool(h, self.dims), pooled_masks[level + 1])
        h = self.bottleneck(h, mask=masks[self.depth], **edge)
        for level, decoder in zip(reversed(range(self.depth)), self.decoders):
            skip = () if level == 0 and self.blurpool else (skips[level],)
            if upsample_in_conv and self.dims == 2:
                h = decoder(*skip, mask=masks[level], low=h, **edge)
            else:
                h = decoder(upsample(h, self.dims), *skip, mask=masks[level], **edge)
        out = pointwise(h, self.head)
        if self.residual and out.shape[-1] == x.shape[-1]:
            out = out + x
        return out


def receptive_radius(config: Config) -> int:
    """Pixels on each side that can influence one output pixel.

    Each 3x3 convolution at level ``l`` adds ``2**l``; each pooling step adds
    ``2**l`` (max-pool) or ``3 * 2**l`` (max-blur-pool); each upsampling
    ``2**l``. Tiled prediction uses this to size its overlap.
    """
    radius = 0
    pool = 3 if config.use_blurpool else 1
    for level in range(config.depth):
        radius += 2 * 2**level  # encoder block
        radius += pool * 2**level  # pooling window beyond the pooled pixel
        radius += 2 * 2**level + 2**level  # decoder block and the upsampling before it
    radius += 2 * 2**config.depth  # bottleneck block
    return radius


def halo(config: Config) -> int:
    """Receptive radius rounded up to a multiple of ``2**depth`` (pooling grid)."""
    step = 2**config.depth
    return int(np.ceil(receptive_radius(config) / step) * step)


def count_parameters(model: UNet) -> int:
    """Number of trainable scalars in ``model``."""
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
