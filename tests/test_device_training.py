"""Training on the device (the accelerator profile, forced here on the CPU): patches drawn there, many steps per dispatch."""

import itertools

import jax
import numpy as np
import pytest

from napari_flax_denoise import train, train_iter, use_backend
from napari_flax_denoise.models.normalization import Normalization
from napari_flax_denoise.training import start_run
from napari_flax_denoise.training.device_patches import device_patches
from napari_flax_denoise.progress import drive
from napari_flax_denoise.training.steps import make_dispatch

IDENTITY = Normalization("identity", (0.0,), (1.0,))


def _d4(window):
    """The eight flips and turns of a square Y X window."""
    turns = [np.rot90(window, k) for k in range(4)]
    return turns + [np.flip(t, 0) for t in turns]


def _plan(images, targets=None, rows=None, augment=True, patch=(4, 4)):
    rows = rows or [(0, image.shape[1]) for image in images]
    weights = [1.0 / len(images)] * len(images)
    made = device_patches(images, targets, rows=rows, input_norms=[IDENTITY] * len(images),
                          target_norms=None if targets is None else [IDENTITY] * len(images), patch_shape=patch,
                          weights=weights, augment=augment, budget=None)
    assert made is not None
    return made


def test_device_patches_are_flipped_or_turned_windows_of_the_training_rows_and_cover_them(tmp_path):
    image = np.arange(2 * 12 * 10, dtype=np.float32).reshape(2, 12, 10, 1)  # every pixel tells where it is
    target = 2 * image + 1
    plan, buffers = _plan([image], [target], rows=[(0, 8)])
    draw = jax.jit(lambda key: plan.sample(buffers, key, 64))
    starts = set()
    for seed in range(40):
        inputs, targets = map(np.asarray, draw(jax.random.key(seed)))
        np.testing.assert_array_equal(targets, 2 * inputs + 1)  # the target comes from the same place, same way
        for patch in inputs[..., 0]:
            plane, rest = divmod(int(patch.min()), 120)
            y, x = divmod(rest, 10)
            window = image[plane, y:y + 4, x:x + 4, 0]
            assert y + 4 <= 8  # the validation rows (8 to 12) are never trained on
            assert any(np.array_equal(patch, view) for view in _d4(window))
            starts.add((plane, y, x))
    assert starts == set(itertools.product(range(2), range(5), range(7)))  # every position is drawn


def test_device_patches_without_augmentation_are_plain_windows_from_every_image():
    images = [np.full((1, 8, 8, 1), 1.0, np.float32), np.full((3, 6, 9, 1), 2.0, np.float32)]
    plan, buffers = _plan(images, augment=False)
    inputs, targets = plan.sample(buffers, jax.random.key(0), 256)
    assert targets is None and inputs.shape == (256, 4, 4, 1)
    values = np.asarray(inputs).reshape(256, -1)
    assert set(np.unique(values)) == {1.0, 2.0} and np.all(values.min(1) == values.max(1))


def test_lazy_or_memory_mapped_inputs_keep_the_host_sampler(tmp_path):
    np.save(tmp_path / "image.npy", np.zeros((1, 8, 8, 1), np.float32))
    mapped = np.load(tmp_path / "image.npy", mmap_mode="r")
    assert device_patches([mapped], None, rows=[(0, 8)], input_norms=[IDENTITY], target_norms=None,
                          patch_shape=(4, 4), weights=[1.0], augment=True, budget=None) is None
    image = np.zeros((1, 8, 8, 1), np.float32)
    assert device_patches([image], None, rows=[(0, 8)], input_norms=[IDENTITY], target_norms=None,
                          patch_shape=(4, 4), weights=[1.0], augment=True, budget=100) is None  # does not fit


@pytest.mark.parametrize("algorithm", ["n2v2", "care"])
def test_one_dispatch_of_k_steps_equals_k_dispatches_of_one(noisy, clean, tiny_config, algorithm):
    with use_backend("accelerator"):
        run = start_run(noisy, axes="YX", targets=None if algorithm == "n2v2" else clean,
                        config=tiny_config.replace(algorithm=algorithm))
        assert run.data.device is not None
        plan, buffers = run.data.device
        dispatch = make_dispatch(run.graphdef, run.config, plan)
        key = jax.random.key(3)
        copy = jax.tree.map(np.array, (run.params, run.opt_state))
        _, _, together = dispatch(*copy, buffers, key, 5, 4)
        params, opt_state, one_by_one = *jax.tree.map(np.array, (run.params, run.opt_state)), []
        for i in range(4):
            params, opt_state, losses = dispatch(params, opt_state, buffers, key, 5 + i, 1)
            one_by_one.append(float(losses[0]))
    np.testing.assert_allclose(np.asarray(together)[:4], one_by_one, rtol=1e-5)
    assert np.all(np.isnan(np.asarray(together)[4:]))


def test_device_training_learns_and_stops_within_a_dispatch(noisy, tiny_config):
    config = tiny_config.replace(epochs=4)
    with use_backend("accelerator"):
        full = train(noisy, axes="YX", config=config)
        asked = []
        long = config.replace(epochs=100)
        stopped = drive(train_iter(noisy, axes="YX", config=long, stop=lambda: asked.append(1) or len(asked) >= 2))
    assert full.history[-1]["train_loss"] < full.history[0]["train_loss"]
    assert stopped.stopped == "stop_requested"
    assert stopped.model.info["steps"] <= 2 * long.steps_per_epoch  # two dispatches, neither past an epoch's end


def test_dispatches_grow_to_a_tenth_of_a_second_and_drop_a_loop_that_runs_slower():
    from napari_flax_denoise.training.run import _Pace

    fast = _Pace()
    fast.took(1, 5.0)  # compiling: not timed
    fast.took(1, 0.002)
    assert fast.count == 50  # 0.1 s of 2 ms steps
    fast.took(50, 9.0)  # the loop compiles
    fast.took(50, 0.1)
    assert fast.count == 50 and fast.looping
    slow = _Pace()
    slow.took(1, 5.0)
    slow.took(1, 0.002)
    slow.took(50, 9.0)
    slow.took(50, 2.0)  # 40 ms a step in the loop against 2 ms alone (XLA's CPU backend does this)
    assert slow.count == 1 and not slow.looping
    slowest = _Pace()
    slowest.took(1, 5.0)
    slowest.took(1, 0.5)
    assert slowest.count == 1  # steps longer than a dispatch: one at a time
    never = _Pace(looping=False)  # a device whose loops are known to be slow
    never.took(1, 5.0)
    never.took(1, 0.002)
    assert never.count == 1
