import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from napari_flax_denoise import Config
from napari_flax_denoise.network.unet import UNet
from napari_flax_denoise.runtime.cpu.packing import pack, packed_apply, packed_masks, per_row, unpack

pytestmark = pytest.mark.float32  # equivalences at float32 precision (accelerators' default is TF32)


@pytest.mark.parametrize("algorithm, dims, shape", [("n2v2", 2, (16, 32, 32, 1)), ("care", 2, (6, 32, 40, 2)),
                                                    ("n2v", 2, (5, 16, 24, 1)), ("n2v2", 3, (4, 8, 16, 16, 1))])
def test_packed_patches_give_each_patch_its_own_result_and_gradient(algorithm, dims, shape):
    """Zero columns between the patches stand in for each patch's own edge, at every level, forward and backward."""
    config = Config(algorithm=algorithm, dims=dims, in_channels=shape[-1], out_channels=shape[-1])
    graphdef, params = nnx.split(UNet(config, rngs=nnx.Rngs(0)))
    batch = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)

    def loss(params, apply):
        return (apply(nnx.merge(graphdef, params), batch) * weights).sum()

    plain = lambda network, x: network(x)  # noqa: E731
    outputs = [jax.jit(lambda p, apply=apply: apply(nnx.merge(graphdef, p), batch))(params)
               for apply in (packed_apply, plain)]
    np.testing.assert_allclose(*outputs, atol=1e-5)
    grads = [jax.jit(jax.grad(loss), static_argnums=1)(params, apply) for apply in (packed_apply, plain)]
    for ours, reference in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5 * np.abs(reference).max())


def test_pack_round_trip_and_row_width():
    batch = jnp.arange(6 * 3 * 5 * 2, dtype=jnp.float32).reshape(6, 3, 5, 2)
    packed = pack(batch, 3, 4)
    assert packed.shape == (2, 3, 27, 2)
    np.testing.assert_array_equal(packed[0, :, 5:9], 0)  # the gap after the first patch
    np.testing.assert_array_equal(packed[0, :, 9:14], batch[1])
    np.testing.assert_array_equal(unpack(packed, 3, 4), batch)
    assert per_row(16, 64, 4) == 16  # 1088 pixels wide
    assert per_row(16, 128, 4) == 8
    assert per_row(16, 64, 4, groups=4) == 4  # each device's share packs on its own
    assert per_row(7, 2000, 4) == 1


def test_packed_masks_end_every_row_in_a_zero_column():
    """What lets the CPU convolution's kernel gradient skip its padded copies (packed_apply promises it)."""
    masks = packed_masks(64, 16, 4, 2, 4)
    for level, mask in enumerate(masks):
        columns = mask.reshape(-1)
        assert columns.size == 16 * (68 >> level) and not columns[-1]
        assert columns.sum() == 16 * (64 >> level)  # every patch's own columns, and no others
