import jax
import jax.numpy as jnp
import numpy as np
import pytest

from napari_flax_denoise.training.masking import RADIUS, blind_spot_mask, gather_pixels, grid_spacing


@pytest.mark.parametrize("median", [False, True])
@pytest.mark.parametrize("shape", [(4, 40, 40, 1), (2, 12, 20, 20, 2)])
def test_one_masked_pixel_per_cell_replaced_from_neighbours(median, shape):
    dims = len(shape) - 2
    batch = jnp.asarray(np.random.default_rng(1).random(shape), jnp.float32)
    masked, index = jax.jit(lambda k, b: blind_spot_mask(k, b, mask_fraction=0.01, median=median))(
        jax.random.key(3), batch)
    spacing = grid_spacing(0.01, dims)
    cells = int(np.prod([max(1, s // spacing) for s in shape[1:-1]]))
    assert index.shape == (shape[0], cells)
    changed = np.any(np.asarray(masked != batch), axis=-1).reshape(shape[0], -1)
    for b in range(shape[0]):
        assert set(np.flatnonzero(changed[b])) <= set(np.asarray(index[b]))
        assert len(set(np.asarray(index[b]))) == cells  # one distinct pixel per cell
    # Every replacement is a value (random pick) or a median of the neighbourhood, never the centre.
    flat_in = np.asarray(batch).reshape(shape[0], -1, shape[-1])
    values = np.asarray(gather_pixels(masked, index))
    spatial = shape[1:-1]
    for b in range(shape[0]):
        for k, i in enumerate(np.asarray(index[b])[:5]):
            coord = np.unravel_index(i, spatial)
            lo = [max(c - RADIUS, 0) for c in coord]
            hood = np.asarray(batch[b])[tuple(slice(l, c + RADIUS + 1) for l, c in zip(lo, coord))]
            hood = hood.reshape(-1, shape[-1])
            centre = flat_in[b, i]
            if median:
                assert np.all(values[b, k] <= hood.max(0)) and np.all(values[b, k] >= hood.min(0))
            else:
                assert any(np.array_equal(values[b, k], v) and not np.array_equal(v, centre) for v in hood)


def test_masked_fraction_matches_request():
    batch = jnp.zeros((8, 64, 64, 1))
    _, index = blind_spot_mask(jax.random.key(0), batch, mask_fraction=0.01, median=True)
    assert index.shape[1] / 64**2 == pytest.approx(0.01, rel=0.2)


def test_sorting_network_sorts_every_zero_one_input():
    """By the 0-1 principle, a comparator network that sorts all 0/1 inputs sorts everything."""
    import itertools

    from napari_flax_denoise.training.masking import _merge_sort_pairs

    for size in (2, 4, 8, 16):
        pairs = _merge_sort_pairs(size)
        for bits in itertools.product((0, 1), repeat=size):
            slots = list(bits)
            for i, j in pairs:
                if slots[i] > slots[j]:
                    slots[i], slots[j] = slots[j], slots[i]
            assert slots == sorted(bits), (size, bits)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 8, 24, 27, 124])
def test_median_network_matches_numpy(count):
    from napari_flax_denoise.training.masking import median_of

    rng = np.random.default_rng(count)
    for values in (rng.normal(size=(4, count, 2)), rng.integers(0, 3, size=(4, count, 2))):  # ties too
        values = values.astype(np.float32)
        np.testing.assert_allclose(jax.jit(lambda v: median_of(v, 1))(values), np.median(values, axis=1), rtol=1e-6)
