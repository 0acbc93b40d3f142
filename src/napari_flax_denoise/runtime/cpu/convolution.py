"""The U-Net's 'SAME' convolution on XLA's CPU backend, where two of its own kernels are slow.

The CPU profile (:mod:`..backend`) hands :func:`conv_same` to the network;
accelerators use XLA's own convolution (:func:`..convolution.conv_native`).
Two of XLA's CPU convolution kernels are slow: 3D convolutions (about half the speed of
2D ones) and, above all, the kernel gradient, which ran at 16-20 GFLOP/s on
the top level of the default U-Net against 60-80 for the forward
convolution of the same layer, and took about half of a training step.
So :func:`conv_same` is a ``custom_vjp``:

* a 3D convolution is a sum of 2D convolutions over its Z-taps, run on
  Z-planes packed side by side in rows about 1088 pixels wide (see
  :func:`_forward`); its input gradient takes the same route;
* the kernel gradient is a few large matrix products over a padded,
  flattened layout (see :func:`_kernel_gradient`): a 2D training step of
  16 patches of 64x64 ran 1.36x faster with it, a 3D one of 8 patches of
  32^3 1.7x (a layer with fewer than 8 input channels keeps XLA's, which is
  faster there); when the caller guarantees that the image's last column is
  zero (the packed training batches of :mod:`.packing`), it needs no padded
  copies at all (see :func:`_kernel_gradient_rows`);
* a convolution of at most 6 input channels (the first layer) is a sum of
  shifted copies of its input (see :func:`_shifted_sum`), where XLA's ran
  at about 10 GFLOP/s;
* everything else is XLA's own gradient.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..convolution import conv_native


# Below this many input channels the flat kernel gradient's matrix products are
# too narrow to pay for its padded copies (1 channel: 17.8 ms against XLA's 1.7).
_MIN_FLAT_CHANNELS = 8

# Width (pixels) of the rows of packed Z-planes in the 3D route; see _forward.
_PACKED_WIDTH = 1088

# Up to this many input channels a 2D convolution is a sum of shifted, scaled copies
# of its input; see _shifted_sum. With 8 both routes took the same time.
_SHIFTED_MAX_CHANNELS = 6


def conv_same(x: jax.Array, kernel: jax.Array, *, zero_last_column: bool = False) -> jax.Array:
    """'SAME' convolution of a channels-last batch ``x`` with an odd-sized ``kernel`` (spatial..., in, out).

    The same result as :func:`..convolution.conv_native`, by the faster CPU
    routes described above. ``zero_last_column`` is a promise by the caller,
    used by the kernel gradient: ``x`` is zero in the last column (X) of
    every row, and so is the gradient that will flow back into the result
    (the packed training batches of :mod:`.packing` keep it so).
    """
    return _conv_cpu(x, kernel, zero_last_column)


def _forward(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """2D: XLA's convolution; 3D: 2D convolutions of groups of Z-planes packed side by side along X.

    XLA's CPU convolutions run fastest on images about 500-1100 pixels wide
    (a 3x3 layer of 32 channels: ~330 GFLOP/s at 1088 pixels, ~170 on batches
    of 160-pixel planes). So the Z-planes, each followed by a zero column that
    stands in for its edge, go side by side in rows of about 1088 pixels, each
    row with the planes above and below it for the kernel's reach in Z; each
    Z-tap of the kernel is then one 2D convolution of a slice of those rows.
    A 48x160x160 volume of 32 channels ran at 207 GFLOP/s this way against 138
    as separate planes.
    """
    if kernel.ndim == 4:
        return _conv_2d(x, kernel)
    n, z, y, w, channels = x.shape
    reach = kernel.shape[0] // 2
    rows = -(-z // max(1, min(z, _PACKED_WIDTH // (w + 1))))
    per_row = -(-z // rows)  # planes per row, balanced so few padding planes are computed
    xp = jnp.pad(x, ((0, 0), (reach, rows * per_row - z + reach), (0, 0), (0, 1), (0, 0)))
    planes = np.arange(rows)[:, None] * per_row + np.arange(per_row + 2 * reach)[None]
    packed = jnp.moveaxis(xp[:, planes], 2, 3)  # (n, rows, y, planes + halo, w + 1, channels)
    packed = packed.reshape(n * rows, y, (per_row + 2 * reach) * (w + 1), channels)
    out = None
    for dz in range(kernel.shape[0]):
        part = jax.lax.slice_in_dim(packed, dz * (w + 1), (dz + per_row) * (w + 1), axis=2)
        term = _conv_2d(part, kernel[dz])
        out = term if out is None else out + term
    out = out.reshape(n, rows, y, per_row, w + 1, kernel.shape[-1])[..., :w, :]
    return jnp.moveaxis(out, 3, 2).reshape(n, rows * per_row, y, w, kernel.shape[-1])[:, :z]


def _conv_2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """XLA's 2D convolution, or the shifted sum for few input channels."""
    if kernel.shape[-2] <= _SHIFTED_MAX_CHANNELS:
        return _shifted_sum(x, kernel)
    return conv_native(x, kernel)


def _shifted_sum(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' 2D convolution as a sum over the kernel's taps of shifted copies of ``x`` times the tap.

    XLA's CPU convolution of a 1-channel 1088x1088 image to 32 channels ran at
    about 10 GFLOP/s: with the bias and ReLU that follow, 105 ms. XLA fuses
    this sum, the bias and the ReLU into one pass that writes the output once:
    39 ms (4 channels: 119 -> 69 ms, 6: 127 -> 88). A whole 1088x1088 tile of
    the default U-Net ran 1.03-1.07x faster (five in-process A/B runs, alternating).
    """
    taps_y, taps_x, channels, _ = kernel.shape
    xp = jnp.pad(x, ((0, 0), (taps_y // 2, taps_y // 2), (taps_x // 2, taps_x // 2), (0, 0)))
    y, w = x.shape[1:3]
    out = None
    for i, j, c in itertools.product(range(taps_y), range(taps_x), range(channels)):
        term = xp[:, i:i + y, j:j + w, c:c + 1] * kernel[i, j, c]
        out = term if out is None else out + term
    return out


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_cpu(x: jax.Array, kernel: jax.Array, zero_last_column: bool) -> jax.Array:
    return _forward(x, kernel)


def _conv_cpu_forward(x, kernel, zero_last_column):
    return _forward(x, kernel), (x, kernel)


def _conv_cpu_backward(zero_last_column, saved, grad):
    x, kernel = saved
    if kernel.ndim == 5:
        # The input gradient is the forward route with the kernel flipped and its channels
        # swapped; the kernel gradient is the flat one (8 patches of 32^3: 0.40 training
        # steps/s against 0.24 with XLA's), or XLA's for few input channels.
        flipped = jnp.flip(kernel, (0, 1, 2)).swapaxes(-1, -2)
        if kernel.shape[-2] < _MIN_FLAT_CHANNELS:
            return _forward(grad, flipped), jax.vjp(lambda k: conv_native(x, k), kernel)[1](grad)[0]
        return _forward(grad, flipped), _kernel_gradient(x, grad, kernel.shape)
    if kernel.shape[-2] < _MIN_FLAT_CHANNELS:
        # Few input channels (the first layer): XLA's own kernel gradient was 10x faster there.
        return jax.vjp(conv_native, x, kernel)[1](grad)
    input_gradient = jax.vjp(lambda x: conv_native(x, kernel), x)[1](grad)[0]
    if zero_last_column and x.shape[0] == 1 and kernel.shape[1] <= 3:  # one zero column covers a reach of 1
        return input_gradient, _kernel_gradient_rows(x, grad, kernel.shape)
    return input_gradient, _kernel_gradient(x, grad, kernel.shape)


_conv_cpu.defvjp(_conv_cpu_forward, _conv_cpu_backward)


def _kernel_gradient(x: jax.Array, grad: jax.Array, kernel_shape) -> jax.Array:
    """Gradient of a 'SAME' convolution's kernel as a few large matrix products.

    ``x`` is padded by the kernel's reach on every spatial side and ``grad``
    at the far end by the kernel's extent minus one, so both share one padded
    shape. Flattened (samples and pixels in one axis), the pixel ``x`` meets at
    a kernel tap lies a fixed offset from the ``grad`` pixel it serves, the
    tap's position in padded strides, for every pixel at once. So each tap's
    gradient is ``x_flat[offset:offset + L].T @ grad_flat``: no gather and
    no im2col matrix nine times the size of ``x``. The taps along the last axis (offsets 0, 1, 2)
    are folded into the matrix product's output columns by stacking ``grad``
    shifted by 0, 1, 2 rows: 3 products with 3x wider outputs instead of 9
    (a 2D training step ran at 1.47 steps/s this way against 1.16 with 9).
    ``grad``'s padding is zero and adds nothing. Used in 2D and 3D.
    """
    *taps, ci, co = kernel_shape
    xp = jnp.pad(x, ((0, 0), *[(t // 2, t // 2) for t in taps], (0, 0)))
    gp = jnp.pad(grad, ((0, 0), *[(0, t - 1) for t in taps], (0, 0)))
    padded = xp.shape[1:-1]
    strides = [int(np.prod(padded[d + 1:])) for d in range(len(taps))]
    last = taps[-1]
    length = int(np.prod(xp.shape[:-1])) + last - 1
    flat_grad = gp.reshape(-1, co)
    # folded[q, j * co + o] = grad_flat[q - j, o]: x_flat[q + offset] meets tap (..., j) there
    folded = jnp.concatenate([jnp.pad(flat_grad, ((j, last - 1 - j), (0, 0))) for j in range(last)], axis=1)
    offsets = [sum(t * s for t, s in zip(tap, strides)) for tap in itertools.product(*map(range, taps[:-1]))]
    flat_x = jnp.pad(xp.reshape(-1, ci), ((0, max(offsets) + last - 1), (0, 0)))
    contract = (((0,), (0,)), ((), ()))
    rows = [jax.lax.dot_general(jax.lax.slice_in_dim(flat_x, o, o + length), folded, contract) for o in offsets]
    return jnp.stack(rows).reshape(*taps[:-1], ci, last, co).swapaxes(-2, -3)


def _kernel_gradient_rows(x: jax.Array, grad: jax.Array, kernel_shape) -> jax.Array:
    """:func:`_kernel_gradient` for one 2D image whose last column is zero in ``x`` and ``grad``.

    Flattened row after row, a pixel's left neighbour in column 0 is then the
    previous row's last column, which is zero as the padding would be; its
    right neighbour in the last column meets a zero gradient. So no padded
    copy along X is needed, and along Y only the two row-shifted operands
    are copies: the middle row of taps takes ``x`` itself. On the default
    U-Net's three levels of a packed training batch (1088, 544 and 272
    pixels wide) this ran 1.19-1.26x faster than :func:`_kernel_gradient`.
    """
    taps_y, taps_x, ci, co = kernel_shape
    width = x.shape[2]
    length = x.shape[1] * width
    flat_x, flat_grad = x.reshape(length, ci), grad.reshape(length, co)
    reach_y, reach_x = taps_y // 2, taps_x // 2
    # folded[q, j * co + o] = grad[q - (j - reach_x), o]: x's pixel q meets tap (., j) there
    folded = jnp.concatenate(
        [jnp.pad(flat_grad, ((j, taps_x - 1 - j), (0, 0)))[reach_x:reach_x + length] for j in range(taps_x)], axis=1)
    rows = jnp.pad(flat_x, ((reach_y * width, reach_y * width), (0, 0)))  # zero rows above and below
    contract = (((0,), (0,)), ((), ()))
    products = [jax.lax.dot_general(
        flat_x if i == reach_y else jax.lax.slice_in_dim(rows, i * width, i * width + length), folded, contract)
        for i in range(taps_y)]
    return jnp.stack(products).reshape(taps_y, ci, taps_x, co).swapaxes(1, 2)
