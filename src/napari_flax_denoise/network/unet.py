"""The U-Net denoiser (Flax NNX), one class for 2D and 3D.

Encoder stages are conv + ReLU blocks followed by max-pooling, as in the
classic CNN the project grew from, but the network maps an image to an image:
a decoder upsamples back and (optionally) adds the encoder's features through
skip connections. The N2V2 variant (``blurpool=True``) replaces max-pool by
max-blur-pool and drops the top-level skip connection, which removes the
checkerboard artefacts of plain Noise2Void.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..config import Config
from ..runtime.convolution import conv_native
from .pooling import max_blur_pool, max_pool


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
NOISE_CHANNELS = 2  # a noise_input network's extra input channels: noise std at normalised intensity 0 and 1


def apply_conv(x: jax.Array, layer: nnx.Conv, parts=None, low=None, conv=conv_native) -> jax.Array:
    """Apply a 'SAME' convolution ``layer`` to ``x``, or to the channel-concatenation of ``parts``.

    Convolving each part with its slice of the kernel and summing gives the
    same result as concatenating first, without materialising the
    concatenation (a large memory copy on CPU). ``low`` (optional, 2D) is a
    first part at half resolution, upsampled 2x (see :func:`conv_upsampled`).
    ``conv`` computes each 'SAME' convolution ``(x, kernel) -> y``.
    """
    kernel = layer.kernel[...]
    out, start = None, 0
    if low is not None:
        out, start = conv_upsampled(low, kernel[..., :low.shape[-1], :]), low.shape[-1]
    for part in (x,) if parts is None else parts:
        stop = start + part.shape[-1]
        term = conv(part, kernel[..., start:stop, :])
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

    def __call__(self, *parts, mask=None, low=None, conv=conv_native):
        """Apply the block to the channel-concatenation of ``parts``.

        ``mask`` (optional, boolean, broadcastable): activations outside it
        are set to zero, as if the image ended there (see :meth:`UNet.__call__`).
        ``low`` (optional, 2D): an input at half resolution, to be upsampled
        2x and put before ``parts``; the first convolution takes it at its
        own resolution (see :func:`conv_upsampled`).
        ``conv``: the 'SAME' convolution to compute with (see :meth:`UNet.__call__`).
        """
        h = _masked(jax.nn.relu(apply_conv(None, self.conv1, parts, low=low, conv=conv)), mask)
        return _masked(jax.nn.relu(apply_conv(h, self.conv2, conv=conv)), mask)


def _masked(x: jax.Array, mask) -> jax.Array:
    return x if mask is None else jnp.where(mask, x, 0.0)


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
        ``out_channels``, ``noise_input``, ``use_blurpool`` and ``use_residual``.
    rngs : nnx.Rngs
        Random streams for weight initialisation.

    Notes
    -----
    Input and output are channels-last batches ``(N, [Z,] Y, X, C)`` whose
    spatial sizes are multiples of ``2**depth``. A ``noise_input`` network
    takes :data:`NOISE_CHANNELS` more input channels after the image's: its
    noise level (see :mod:`~napari_flax_denoise.noise.level`). Level ``i`` has
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
        encoders, channels = [], config.in_channels + NOISE_CHANNELS * config.noise_input
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

    def __call__(self, x: jax.Array, valid: jax.Array | None = None, *, masks=None, conv=None,
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
        image, for other layouts (such as the CPU's packed training batches,
        :mod:`~napari_flax_denoise.runtime.cpu.packing`); activations outside
        are held at zero after every layer and every pooling.

        ``conv`` (optional): the 'SAME' convolution ``(x, kernel) -> y`` to
        compute with; by default XLA's own. The backend profile
        (:func:`~napari_flax_denoise.runtime.backend.active`) gives the fastest
        one for the device, which computes the same function.

        ``upsample_in_conv`` (2D): each decoder's first convolution takes the
        level below at its own resolution instead of an upsampled copy (the
        same result up to float rounding, with 4/9 of that part's
        multiplications; see :func:`conv_upsampled`). Inference uses it;
        training keeps the upsampled copy, whose convolution gradients have a
        faster route on CPU (see :mod:`~napari_flax_denoise.runtime.cpu.convolution`).
        """
        expected = self.encoders[0].conv1.in_features
        if x.shape[-1] != expected:  # a narrower input would use only part of the first kernel, silently
            raise ValueError(f"This network takes {expected} input channels, not {x.shape[-1]}.")
        if masks is None:
            masks = [None] * (self.depth + 1) if valid is None else valid_masks(valid, x.shape[1:-1], self.depth)
            pooled_masks = [None] * (self.depth + 1)  # pooling zeros beyond a valid corner by itself
        else:
            pooled_masks = masks
        pool = max_blur_pool if self.blurpool else max_pool
        edge = dict(conv=conv_native if conv is None else conv)
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
        if self.residual and out.shape[-1] <= x.shape[-1]:  # the image channels come first
            out = out + x[..., :out.shape[-1]]
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
