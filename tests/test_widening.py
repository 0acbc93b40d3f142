"""Growing a trained model: a wider copy computes the same function, and training grows its added units
(the noise-input copy: test_noise_level)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from napari_flax_denoise import Config, load_model
from napari_flax_denoise.models.checkpoint import TrainedModel, build_network, save_model
from napari_flax_denoise.models.normalization import Normalization
from napari_flax_denoise.models.widening import with_features, with_noise_input


def _trained_like(config):
    """A network whose every weight and bias is non-zero, as after training (fresh biases are zero)."""
    network = build_network(config, seed=3)
    rng = np.random.default_rng(0)
    for _, leaf in nnx.iter_graph(network):
        if isinstance(leaf, nnx.Param) and leaf[...].ndim == 1:
            leaf[...] = jnp.asarray(rng.normal(0, 0.1, leaf[...].shape), jnp.float32)
    norm = Normalization.identity(config.in_channels)
    return TrainedModel(config, network, norm, norm, {"name": "small"})


@pytest.mark.float32
@pytest.mark.parametrize("dims,depth,algorithm,residual", [(2, 2, "n2v2", False), (2, 3, "care", True),
                                                          (3, 2, "n2v2", True)])
def test_a_wider_copy_computes_the_same_function(dims, depth, algorithm, residual, tmp_path):
    config = Config(dims=dims, depth=depth, features=4, algorithm=algorithm, residual=residual, noise_input=True)
    small = _trained_like(config)
    wide = with_features(small, 6)
    assert wide.config.features == 6 and wide.config.replace(features=4) == small.config
    assert wide.network.encoders[0].conv1.kernel.shape[-1] == 6 and wide.network.head.kernel.shape[-2] == 6
    x = jnp.asarray(np.random.default_rng(1).normal(0, 1, (2, *(16,) * dims, 3)), jnp.float32)
    apply = nnx.jit(lambda network, x: network(x))  # one compiled program per network, not op by op
    expected = apply(small.network, x)
    np.testing.assert_allclose(apply(wide.network, x), expected, atol=1e-5)
    # The added units compute something (drawn weights), so training can grow them.
    assert np.any(np.asarray(wide.network.encoders[0].conv1.kernel[..., 4:]))
    # Saved and loaded, it is the wide model.
    loaded = load_model(save_model(wide, tmp_path / "wide"))
    assert loaded.config.features == 6
    np.testing.assert_allclose(apply(loaded.network, x), expected, atol=1e-5)


def test_the_added_units_get_gradients_and_the_old_function_its_own():
    config = Config(dims=2, depth=2, features=4, algorithm="care", residual=True)
    wide = with_features(_trained_like(config), 8)
    x = jnp.asarray(np.random.default_rng(2).normal(0, 1, (2, 16, 16, 1)), jnp.float32)
    target = x * 0.5
    graphdef, params = nnx.split(wide.network, nnx.Param)

    def loss(p):
        return jnp.mean((nnx.merge(graphdef, p)(x) - target) ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    head = np.asarray(grads["head"]["kernel"][...])
    assert np.any(head[..., 4:, :])  # the zero weights out of the added units move at the first step


def test_widening_refuses_to_narrow_and_keeps_a_model_as_wide():
    small = _trained_like(Config(features=8, depth=2))
    assert with_features(small, 8) is small
    with pytest.raises(ValueError, match="at least"):
        with_features(small, 4)
    assert with_noise_input(small).config.noise_input
