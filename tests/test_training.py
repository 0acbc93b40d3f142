import json

import jax
import numpy as np
import pytest
from flax import nnx

from napari_flax_denoise import Config, denoise, load_model, psnr, train, train_iter, use_backend
from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.training import start_run
from napari_flax_denoise.training.patches import PatchSampler, split_rows
from napari_flax_denoise.models.normalization import Normalization

from conftest import RecordingArray


def _losses(events):
    return [e.train_loss for e in events]


def test_patches_follow_targets_and_stay_in_rows():
    image = np.arange(60 * 50, dtype=np.float32).reshape(1, 60, 50, 1)
    norm = Normalization("meanstd", (0.0,), (1.0,))
    sampler = PatchSampler([image], [image * 2], patch_shape=(16, 16), rows=[(10, 40)],
                           input_norms=[norm], target_norms=[norm], seed=0)
    x, y = sampler.sample(32)
    assert x.shape == y.shape == (32, 16, 16, 1)
    np.testing.assert_array_equal(y, 2 * x)  # same window and same flips / turns
    rows = x[..., 0] // 50
    assert rows.min() >= 10 and rows.max() < 40


def test_validation_rows_are_held_out():
    (train_rows, val_rows) = split_rows(100, 16, 0.2)
    assert train_rows == (0, 80) and val_rows == (80, 100)
    with pytest.raises(UserInputError, match="validation fraction"):
        split_rows(20, 16, 0.1)


def test_events_and_loss_decrease(noisy, tiny_config):
    run = start_run(noisy, axes="YX", config=tiny_config.replace(epochs=3, steps_per_epoch=8))
    events, models = [], []
    for event in run.steps():
        events.append(event)
        models.append(run.model())  # the weights of this step
    assert [(e.done, e.total) for e in events] == [(step, 24) for step in range(1, 25)]
    epoch_ends = [e for e in events if e.end_of_epoch]
    assert len(epoch_ends) == 3 and all(e.val_loss is not None for e in epoch_ends)
    assert all(e.learning_rate > 0 and e.eta_seconds >= 0 for e in events)
    assert np.mean(_losses(events)[-6:]) < np.mean(_losses(events)[:3])
    # Models of a step stay usable after training moved on, and differ between steps.
    early, late = models[0], models[-1]
    assert early.info["steps"] == 1 and late.info["steps"] == 24
    assert not np.allclose(denoise(noisy, early, axes="YX"), denoise(noisy, late, axes="YX"))


def test_seed_makes_training_deterministic(noisy, tiny_config):
    a = _losses(train_iter(noisy, axes="YX", config=tiny_config, seed=3))
    b = _losses(train_iter(noisy, axes="YX", config=tiny_config, seed=3))
    c = _losses(train_iter(noisy, axes="YX", config=tiny_config, seed=4))
    assert a == b and a != c


def test_a_second_run_of_the_same_network_compiles_no_step(noisy, tiny_config):
    from jax import monitoring

    compiles = []  # programs compiled, or loaded from the disk cache (conftest turns it on): not taken from memory
    monitoring.register_event_duration_secs_listener(
        lambda event, seconds, **_: compiles.append(seconds)
        if event.endswith(("backend_compile_duration", "cache_retrieval_time_sec")) else None)
    config = tiny_config.replace(features=6, epochs=1)  # a network no other test trains
    counts = []
    for seed in (1, 2):
        before = len(compiles)
        train(noisy, axes="YX", config=config, seed=seed)
        counts.append(len(compiles) - before)
    # The first run compiles its steps and more; the second only its learning-rate schedule.
    assert counts[0] >= 4 and counts[1] <= 1, counts


def test_stop_request_ends_within_one_step(noisy, tiny_config):
    calls = []
    result = train(noisy, axes="YX", config=tiny_config.replace(epochs=50),
                   stop=lambda: len(calls.append(1) or calls) >= 3)
    assert result.stopped == "stop_requested" and len(calls) == 3


def test_resume_continues_the_interrupted_run(noisy, tiny_config, tmp_path):
    config = tiny_config.replace(epochs=4)
    full = _losses(train_iter(noisy, axes="YX", config=config, output=tmp_path / "full"))
    # Interrupt after 2 epochs by closing the generator, then resume.
    run = train_iter(noisy, axes="YX", config=config, output=tmp_path / "part")
    first = [next(run).train_loss for _ in range(2 * config.steps_per_epoch)]
    run.close()
    assert load_model(tmp_path / "part").info["steps"] <= 2 * config.steps_per_epoch  # best so far is loadable
    rest = _losses(train_iter(noisy, axes="YX", output=tmp_path / "part", resume=True))
    assert len(first) + len(rest) == len(full)
    np.testing.assert_allclose(first + rest, full, rtol=1e-4)


def test_a_run_killed_while_writing_a_checkpoint_resumes_from_the_last_whole_one(noisy, tiny_config, tmp_path,
                                                                                   monkeypatch):
    from napari_flax_denoise.training import resume

    config = tiny_config.replace(epochs=4)
    full = _losses(train_iter(noisy, axes="YX", config=config, output=tmp_path / "full"))
    commit, commits = resume.write_json, []

    def dies_at_the_third_commit(path, values):  # epoch 3's weights and optimiser state are on disk, its state not
        commits.append(path)
        if len(commits) == 3:
            raise KeyboardInterrupt
        commit(path, values)

    monkeypatch.setattr(resume, "write_json", dies_at_the_third_commit)
    with pytest.raises(KeyboardInterrupt):
        _losses(train_iter(noisy, axes="YX", config=config, output=tmp_path / "part"))
    monkeypatch.undo()
    last = tmp_path / "part" / "last"
    assert len(list(last.glob("weights-*.npz"))) == 2  # epoch 2's committed set and epoch 3's orphan
    rest = _losses(train_iter(noisy, axes="YX", output=tmp_path / "part", resume=True))
    np.testing.assert_allclose(rest, full[2 * config.steps_per_epoch:], rtol=1e-4)
    assert sorted(p.name for p in last.glob("*.npz")) == [f"optimizer-{len(full)}.npz", f"weights-{len(full)}.npz"]


def _interrupted(noisy, config, folder):
    run = train_iter(noisy, axes="YX", config=config.replace(epochs=4), output=folder)
    for _ in range(2 * config.steps_per_epoch):
        next(run)
    run.close()
    return folder / "last"


def _edit_state(change):
    def damage(last):
        state = json.loads((last / "state.json").read_text())
        change(state)
        (last / "state.json").write_text(json.dumps(state))
    return damage


RESUME_DAMAGE = {
    "state without its history": (_edit_state(lambda s: s.pop("history")), "lacks or garbles history"),
    "step count that disagrees": (_edit_state(lambda s: s.update(step=s["step"] + 1)), "disagrees"),
    "weights file missing": (lambda last: next(last.glob("weights-*.npz")).unlink(), "weights file"),
    "written by a newer version": (_edit_state(lambda s: s.update(format_version=99)), "newer"),
    "state that is not JSON": (lambda last: (last / "state.json").write_text("{"), "state"),
}


@pytest.mark.parametrize("case", sorted(RESUME_DAMAGE))
def test_a_damaged_snapshot_is_refused_by_resume_with_a_sentence(noisy, tiny_config, tmp_path, case):
    damage, fragment = RESUME_DAMAGE[case]
    damage(_interrupted(noisy, tiny_config, tmp_path / "run"))
    with pytest.raises(UserInputError, match=fragment):
        start_run(noisy, axes="YX", output=tmp_path / "run", resume=True)


def test_resuming_with_inputs_of_another_channel_count_is_refused(noisy, tiny_config, tmp_path):
    _interrupted(noisy, tiny_config, tmp_path / "run")
    with pytest.raises(UserInputError, match="channel"):
        start_run(np.stack([noisy, noisy]), axes="CYX", output=tmp_path / "run", resume=True)


@pytest.mark.slow  # epoch-level logic, the same on both routes (the accelerator's own: test_device_training)
def test_early_stopping(noisy, tiny_config):
    result = train(noisy, axes="YX", config=tiny_config.replace(epochs=30, patience=1, learning_rate=1e-6))
    assert result.stopped == "early_stopping" and len(result.history) < 30


@pytest.mark.parametrize("algorithm", ["care", pytest.param("n2n", marks=pytest.mark.slow)])  # n2n: care's route
def test_supervised_algorithms_improve_psnr(clean, noisy, tiny_config, algorithm):
    second = clean + np.random.default_rng(9).normal(0, 25, clean.shape).astype(np.float32)
    target = clean if algorithm == "care" else second
    result = train(noisy, axes="YX", targets=target, config=tiny_config.replace(
        algorithm=algorithm, features=16, batch_size=8, epochs=4, steps_per_epoch=25, learning_rate=2e-3))
    gain = psnr(denoise(noisy, result.model, axes="YX"), clean, data_range=255) - psnr(noisy, clean, data_range=255)
    assert gain > 2


@pytest.mark.slow  # what a fine-tune keeps is decided before either route runs
@pytest.mark.parametrize("algorithm", ["n2v2", "care"])
def test_fine_tuning_keeps_architecture(clean, noisy, tiny_model, algorithm):
    # An n2v2 model fine-tuned with care keeps its blur-pool network.
    targets = clean if algorithm == "care" else None
    result = train(noisy, axes="YX", targets=targets, init=tiny_model, algorithm=algorithm,
                   config=Config(epochs=1, steps_per_epoch=2, patch_size=32, batch_size=2))
    assert result.model.config.features == tiny_model.config.features
    assert result.model.config.use_blurpool and result.model.config.algorithm == algorithm
    assert result.model.info["fine_tuned_from"] == tiny_model.name


@pytest.mark.parametrize("kwargs,fragment", [
    (dict(targets=np.zeros((128, 128))), "drop the targets"),
    (dict(algorithm="care"), "needs targets"),
    (dict(algorithm="care", targets=np.ones((64, 64))), "match their images"),
    (dict(epochs=-1), "epochs"),
    (dict(patch_size=30), "multiple"),
    (dict(axes="ZYX"), "dimension"),
])
def test_bad_training_input(noisy, tiny_config, kwargs, fragment):
    kwargs = {"axes": "YX", **kwargs}
    with pytest.raises(UserInputError, match=fragment):
        train(noisy, config=tiny_config, **kwargs)


def test_training_reads_a_lazy_stack_one_chunk_at_a_time(noisy, tiny_config):
    stack = np.stack([noisy, noisy[::-1], noisy[:, ::-1], noisy.T])  # T Y X
    lazy = RecordingArray(stack, chunks=(1, 32, 32))
    result = train(lazy, axes="TYX", config=tiny_config.replace(normalize_per_image=True))
    assert lazy.reads and max(np.prod(shape) for shape in lazy.reads) <= 32 * 32  # never more than a chunk
    with use_backend("cpu"):  # patches cut on the host from the in-memory stack too (accelerators draw on the device)
        eager = train(stack, axes="TYX", config=tiny_config.replace(normalize_per_image=True))
    assert [h["train_loss"] for h in result.history] == pytest.approx([h["train_loss"] for h in eager.history],
                                                                      rel=1e-4)


def test_nan_in_a_lazy_stack_is_refused_when_a_patch_meets_it(noisy, tiny_config):
    import dask.array as da

    stack = np.stack([noisy] * 2)
    stack[:, 40:90, 40:90] = np.nan  # patches of 32 cannot avoid it
    with pytest.raises(UserInputError, match="NaN"):
        train(da.from_array(stack, chunks=(1, 64, 64)), axes="TYX", config=tiny_config)


@pytest.mark.parametrize("profile", ["cpu", "accelerator"])
def test_patch_and_batch_defaults_follow_the_device_unless_given(profile):
    """2D-sized defaults (16 patches of 64) would make every 3D step about 12 GB on a CPU; an accelerator
    gets larger batches to keep it busy."""
    from napari_flax_denoise.training.prepare import _prepare_config

    with use_backend(profile):
        three = _prepare_config(None, "ZYX", None, 1, 1, {})
        two = _prepare_config(None, "YX", None, 1, 1, {})
        assert _prepare_config(None, "ZYX", None, 1, 1, {"patch_size": 48}).patch_size == 48  # asked for: kept
        assert _prepare_config(Config(batch_size=2), "YX", None, 1, 1, {}).batch_size == 2
    assert (three.patch_size, three.batch_size) == ((32, 8) if profile == "cpu" else (64, 8))
    assert (two.patch_size, two.batch_size) == ((Config.patch_size, Config.batch_size) if profile == "cpu"
                                                else (128, 128))


def test_a_loss_that_grows_a_hundredfold_warns_once_and_flags_the_model():
    from napari_flax_denoise.training.run import LossWatch, TrainResult

    watch = LossWatch()
    assert [watch.add(x) for x in (1.0, 0.2, 0.3, 19.0)] == [None] * 4  # 95x the lowest: noisy, not diverging
    assert "grew 105-fold" in watch.add(21.0)
    assert watch.add(1e15) is None  # said once
    result = TrainResult(model=None, history=[{"epoch": 1, "train_loss": 21.0, "val_loss": 20.0}])
    assert watch.problem(result) == "diverged"
    assert LossWatch().problem(result) is None
    assert LossWatch().problem(TrainResult(model=None)) == "stopped before its first validation"


def test_mixed_precision_keeps_float32_weights_and_learns_like_float32(noisy):
    runs = {}
    for precision in ("float32", "bf16"):
        config = Config(features=8, patch_size=32, batch_size=4, epochs=2, steps_per_epoch=4, seed=3,
                        precision=precision, val_fraction=0.0)
        runs[precision] = train(noisy, axes="YX", config=config)
    half, full = runs["bf16"], runs["float32"]
    assert half.model.config.precision == "bfloat16"  # saved with the model, so a resume continues alike
    weights = jax.tree.leaves(nnx.state(half.model.network, nnx.Param))
    assert all(w.dtype == np.float32 for w in weights)  # master weights stay float32
    losses = [[h["train_loss"] for h in run.history] for run in (half, full)]
    assert losses[0] != losses[1]  # bfloat16 arithmetic did run
    np.testing.assert_allclose(losses[0], losses[1], rtol=0.1)
