import jax
import jax.numpy as jnp
import numpy as np
import pytest

from napari_flax_denoise import Config
from napari_flax_denoise.checkpoint import build_network
from napari_flax_denoise.model import count_parameters, halo, receptive_radius


def _expected_parameters(c: Config):
    """Count by hand: 3^d kernels + biases per conv, channel plan of the U-Net."""
    k = 3**c.dims
    widths = [c.features * 2**i for i in range(c.depth)]
    total, ch = 0, c.in_channels
    for w in widths:
        total += k * ch * w + w + k * w * w + w
        ch = w
    total += k * ch * 2 * ch + 2 * ch + k * 2 * ch * ch + ch
    for level in reversed(range(c.depth)):
        skip = 0 if (level == 0 and c.use_blurpool) else widths[level]
        out = widths[level - 1] if level > 0 else c.features
        total += k * (ch + skip) * widths[level] + widths[level] + k * widths[level] * out + out
        ch = out
    return total + ch * c.out_channels + c.out_channels


@pytest.mark.parametrize("algorithm", ["n2v", "n2v2", "care"])
@pytest.mark.parametrize("dims,depth", [(2, 1), (2, 2), (2, 3), (3, 2)])
def test_shapes_and_parameter_count(algorithm, dims, depth):
    config = Config(algorithm=algorithm, dims=dims, depth=depth, features=4, in_channels=2,
                    out_channels=2, patch_size=16)
    net = build_network(config)
    assert count_parameters(net) == _expected_parameters(config)
    x = jnp.ones((2,) + (16,) * dims + (2,))
    assert jax.jit(lambda x: net(x))(x).shape == x.shape


def test_default_network_size():
    # The default 2D network: depth 2, 32 features (n2v variant with all skips).
    assert count_parameters(build_network(Config(algorithm="n2v"))) == 332_641


@pytest.mark.parametrize("algorithm,dims", [("n2v", 2), ("n2v2", 2), ("n2v2", 3)])
def test_receptive_field_fits_in_halo(algorithm, dims):
    config = Config(algorithm=algorithm, dims=dims, features=4, depth=2, patch_size=16)
    net = build_network(config)
    size = 80 if dims == 2 else 72
    x = jnp.asarray(np.random.default_rng(0).random((1,) + (size,) * dims + (1,)), jnp.float32)
    centre = (0,) + (size // 2,) * dims + (0,)
    grad = jax.grad(lambda x: net(x)[centre])(x)[0, ..., 0]
    reach = np.abs(np.argwhere(np.asarray(grad) != 0) - size // 2).max()
    assert 0 < reach <= receptive_radius(config) <= halo(config)
    assert halo(config) % 2**config.depth == 0


def test_n2v2_has_no_top_skip():
    n2v = build_network(Config(algorithm="n2v", features=8))
    n2v2 = build_network(Config(algorithm="n2v2", features=8))
    assert n2v.decoders[-1].conv1.kernel.shape[2] == 16
    assert n2v2.decoders[-1].conv1.kernel.shape[2] == 8
