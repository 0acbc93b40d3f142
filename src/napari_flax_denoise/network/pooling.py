"""Down-sampling of the U-Net's encoder: max-pool and max-blur-pool (N2V2).

Both are written as elementwise maxima of strided slices, each with its own
gradient (``jax.custom_vjp``): XLA's CPU backend differentiates
``reduce_window`` through index arrays and a scatter, and its gradients of
the strided forms took several passes over the activations where these take
one (the docstrings give the measured gains). Arrays are channels-last
batches ``(N, *spatial, C)``.
"""

from __future__ import annotations

import itertools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


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
    full = _interleave([jnp.where(phase == peak, grad, 0.0) for phase in phases], dims)
    return (jnp.pad(full, [(0, 0)] + [(0, s % 2) for s in x.shape[1:-1]] + [(0, 0)]),)


def _interleave(phases: list[jax.Array], dims: int) -> jax.Array:
    """The inverse of :func:`_phases`: put half-resolution phases back at their even and odd positions."""
    n, c, half = phases[0].shape[0], phases[0].shape[-1], phases[0].shape[1:-1]
    grid = jnp.stack(phases, -2).reshape(n, *half, *(2,) * dims, c)  # (N, *half, *phase, C)
    order = [0] + [i for axis in range(dims) for i in (1 + axis, 1 + dims + axis)] + [1 + 2 * dims]
    return grid.transpose(order).reshape(n, *(2 * h for h in half), c)


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
    return _interleave(phases, dims)


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
