import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from napari_flax_denoise import Config
from napari_flax_denoise.models.checkpoint import build_network
from napari_flax_denoise.network.unet import count_parameters, halo, receptive_radius, variance_scaling

pytestmark = pytest.mark.float32  # equivalences at float32 precision (accelerators' default is TF32)


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
    grad = nnx.jit(lambda net, x: jax.grad(lambda x: net(x)[centre])(x))(net, x)[0, ..., 0]
    reach = np.abs(np.argwhere(np.asarray(grad) != 0) - size // 2).max()
    assert 0 < reach <= receptive_radius(config) <= halo(config)
    assert halo(config) % 2**config.depth == 0


@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_kernel_initialiser_draws_jax_law_from_the_key(scale):
    key = jax.random.key(5)
    shape = (3, 3, 64, 64)
    ours = np.asarray(variance_scaling(scale)(key, shape))
    theirs = np.asarray(jax.nn.initializers.variance_scaling(scale, "fan_in", "truncated_normal")(key, shape))
    assert ours.dtype == np.float32 and ours.shape == shape
    assert ours.std() == pytest.approx(theirs.std(), rel=0.03)
    assert np.abs(ours).max() <= 2 * ours.std() / 0.8796 * 1.001 and np.abs(ours).max() > 1.9 * ours.std() / 0.8796
    np.testing.assert_array_equal(ours, np.asarray(variance_scaling(scale)(key, shape)))
    assert not np.array_equal(ours, np.asarray(variance_scaling(scale)(jax.random.key(6), shape)))
    np.testing.assert_array_equal(ours, np.asarray(variance_scaling(scale)(jax.random.PRNGKey(5), shape)))  # raw key
    abstract = jax.eval_shape(lambda k: variance_scaling(scale)(k, shape), key)
    assert abstract.shape == shape


def test_n2v2_has_no_top_skip():
    n2v = build_network(Config(algorithm="n2v", features=8))
    n2v2 = build_network(Config(algorithm="n2v2", features=8))
    assert n2v.decoders[-1].conv1.kernel.shape[2] == 16
    assert n2v2.decoders[-1].conv1.kernel.shape[2] == 8


@pytest.mark.parametrize("algorithm,dims,size", [("n2v", 2, (20, 27)), ("n2v2", 3, (9, 12, 10))])
def test_image_in_the_corner_of_a_larger_tile_gives_its_own_result(algorithm, dims, size):
    # The valid-extent masks make the zeros after an image's end act like a real image edge,
    # including sizes off the pooling grid; so one tile shape serves every image size.
    config = Config(algorithm=algorithm, dims=dims, features=4, depth=2, patch_size=16)
    network = build_network(config, seed=3)
    net = jax.jit(lambda x, valid=None: network(x, valid))
    rng = np.random.default_rng(1)
    tile = tuple(-(-s // 4) * 4 + 8 for s in size)
    grid_size = tuple(-(-s // 4) * 4 for s in size)
    image = rng.normal(size=(1, *grid_size, 1)).astype(np.float32)
    alone = np.asarray(net(jnp.asarray(image), jnp.asarray([grid_size])))  # exact size, on the grid
    np.testing.assert_allclose(alone, np.asarray(net(jnp.asarray(image))), atol=1e-5)
    placed = np.full((1, *tile, 1), 7.0, np.float32)  # garbage past the image must not matter
    placed[(0, *(slice(0, s) for s in grid_size))] = image[0]
    corner = np.asarray(net(jnp.asarray(placed), jnp.asarray([grid_size])))
    np.testing.assert_allclose(corner[(0, *(slice(0, s) for s in grid_size))], alone[0], atol=1e-5)
    # Off the grid: the same masked image in two tile sizes agrees.
    odd = jnp.asarray([size])
    small, large = (np.asarray(net(jnp.asarray(placed[(slice(None), *(slice(0, t) for t in shape))]), odd))
                    for shape in (grid_size, tile))
    region = (0, *(slice(0, s) for s in size))
    np.testing.assert_allclose(small[region], large[region], atol=1e-5)


@pytest.mark.parametrize("algorithm,depth,channels", [("n2v2", 2, 1), ("care", 3, 2), ("n2v", 1, 1)])
def test_upsampling_inside_the_convolution_gives_the_same_network(algorithm, depth, channels):
    """Inference's decoder convolves the level below at its own resolution, phase by phase: the same
    outputs as convolving its upsampled copy, with and without a valid corner."""
    from napari_flax_denoise.network.unet import conv_upsampled, upsample
    from napari_flax_denoise.runtime.convolution import conv_native

    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
    np.testing.assert_allclose(conv_upsampled(x, kernel), conv_native(upsample(x, 2), kernel), atol=1e-5)
    config = Config(algorithm=algorithm, depth=depth, in_channels=channels, out_channels=channels, features=8)
    net = build_network(config)
    image = jnp.asarray(rng.normal(size=(2, 48, 40, channels)), jnp.float32)
    apply = nnx.jit(lambda net, image, valid, inside: net(image, valid, upsample_in_conv=inside), static_argnums=3)
    for valid in (None, jnp.asarray([[48, 40], [37, 21]])):
        np.testing.assert_allclose(apply(net, image, valid, True), apply(net, image, valid, False), atol=2e-5)


@pytest.mark.parametrize("x_shape, kernel_shape", [((3, 9, 7, 8), (3, 3, 8, 4)), ((2, 5, 8, 7, 3), (3, 3, 3, 3, 4)),
                                                  ((2, 6, 5, 1), (3, 3, 1, 2)), ((1, 7, 4, 300, 2), (3, 3, 3, 2, 3)),
                                                  ((2, 4, 5, 6, 8), (3, 3, 3, 8, 3)), ((1, 9, 11, 4), (3, 3, 4, 5)),
                                                  ((1, 8, 6, 5), (3, 3, 5, 2))])
def test_cpu_convolution_and_its_gradients_match_xla(x_shape, kernel_shape):
    """The CPU route is exact: packed Z-planes for 3D (3 rows of 3 planes in the fourth case), the shifted
    sum for at most 6 input channels (2D, and each Z-tap in 3D), the flat kernel gradient (8 input
    channels, 2D and 3D), XLA's for fewer."""
    from napari_flax_denoise.runtime.convolution import conv_native
    from napari_flax_denoise.runtime.cpu.convolution import conv_same

    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=kernel_shape), jnp.float32)
    np.testing.assert_allclose(conv_same(x, kernel), conv_native(x, kernel), rtol=1e-5, atol=1e-4)
    weights = jnp.asarray(rng.normal(size=(*x_shape[:-1], kernel_shape[-1])), jnp.float32)  # a non-trivial cotangent
    grads = [jax.jit(jax.grad(lambda x, k: (f(x, k) * weights).sum(), (0, 1)))(x, kernel)
             for f in (conv_same, conv_native)]
    for ours, native in zip(*grads):
        np.testing.assert_allclose(ours, native, rtol=1e-4, atol=1e-4)


def test_kernel_gradient_without_padding_needs_and_uses_a_zero_last_column():
    """With the last column zero in the input and the result's gradient, the unpadded kernel gradient is exact;
    the promise is what makes it so (broken, the left taps also pick up the previous row's last pixel)."""
    from napari_flax_denoise.runtime.convolution import conv_native
    from napari_flax_denoise.runtime.cpu.convolution import conv_same

    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 9, 12, 8)).astype(np.float32)
    weights = rng.normal(size=(1, 9, 12, 5)).astype(np.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 8, 5)), jnp.float32)

    def kernel_gradients(x, weights):
        return [jax.jit(jax.grad(lambda k, f=f: (f(x, k) * weights).sum()))(kernel)
                for f in (lambda x, k: conv_same(x, k, zero_last_column=True), conv_native)]

    x[..., -1, :], weights[..., -1, :] = 0, 0
    np.testing.assert_allclose(*kernel_gradients(jnp.asarray(x), jnp.asarray(weights)), rtol=1e-4, atol=1e-4)
    x[..., -1, :] = 1
    ours, native = kernel_gradients(jnp.asarray(x), jnp.asarray(weights))
    assert np.abs(ours - native)[:, 0].max() > 0.1 and np.abs(ours - native)[:, 1:].max() < 1e-3


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (2, 9, 7, 3), (1, 4, 6, 8, 2)])
def test_max_pool_and_its_gradient_match_reduce_window(shape):
    """The block-maximum pooling equals XLA's reduce_window, trailing odd rows dropped, and so does its gradient."""
    from napari_flax_denoise.network.pooling import max_pool

    dims = len(shape) - 2
    window = (1,) + (2,) * dims + (1,)

    def reference(x, dims):
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")

    x = jnp.asarray(np.random.default_rng(3).normal(size=shape), jnp.float32)
    np.testing.assert_array_equal(max_pool(x, dims), reference(x, dims))
    grads = [jax.grad(lambda x: (pool(x, dims) ** 2).sum())(x) for pool in (max_pool, reference)]
    np.testing.assert_allclose(*grads, rtol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 4, 6, 8, 2), (1, 2, 2, 1)])
def test_max_blur_pool_matches_its_definition(shape):
    """2x2 max at stride 1 (-inf past the end), then [1 2 1]/4 at stride 2 (zeros past the end), in numpy."""
    from napari_flax_denoise.network.pooling import max_blur_pool

    dims = len(shape) - 2
    x = np.random.default_rng(4).normal(size=shape).astype(np.float32)
    m = x
    for axis in range(1, dims + 1):
        after = np.concatenate([np.take(m, range(1, m.shape[axis]), axis), np.full_like(np.take(m, [0], axis), -np.inf)], axis)
        m = np.maximum(m, after)
    for axis in range(1, dims + 1):
        padded = np.concatenate([m, np.zeros_like(np.take(m, [0], axis))], axis)
        n = m.shape[axis] // 2
        m = sum(w * np.take(padded, range(k, k + 2 * n, 2), axis) for k, w in enumerate((0.25, 0.5, 0.25)))
    np.testing.assert_allclose(jax.jit(max_blur_pool, static_argnums=1)(jnp.asarray(x), dims), m, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 8, 10, 3), (1, 4, 6, 8, 2)])
def test_max_blur_pool_gradient_is_that_of_its_forward_pass(shape):
    """The custom gradient (through the phase form) equals autodiff through the block form it replaces."""
    from napari_flax_denoise.network.pooling import _pool_blocks, max_blur_pool

    dims = len(shape) - 2
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(shape[0], *(s // 2 for s in shape[1:-1]), shape[-1])), jnp.float32)
    grads = [jax.grad(lambda x: (pool(x, dims) * weights).sum())(x) for pool in (max_blur_pool, _pool_blocks)]
    np.testing.assert_allclose(*grads, rtol=1e-5, atol=1e-6)
