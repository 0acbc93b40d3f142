"""The widgets in a real napari viewer (Qt under Xvfb), loaded through the manifest."""

import hashlib
import importlib.util
import os
import zipfile

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")
if not os.environ.get("DISPLAY"):  # pytest-xvfb sets it when Xvfb is installed (as .ci/run does)
    pytest.skip("the viewer tests need a display: install xvfb and Mesa (see .ci/run)", allow_module_level=True)

from napari.utils.notifications import notification_manager  # noqa: E402

from napari_flax_denoise import Config, denoise, save_model  # noqa: E402
from napari_flax_denoise.config import FINE_TUNE_LEARNING_RATE  # noqa: E402
from napari_flax_denoise.plugin.registry import MODELS  # noqa: E402

PLUGIN = "napari-flax-denoise"
TIMEOUT = 120_000  # ms; generous for a loaded 2-core CI machine


def _digest(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


@pytest.fixture
def viewer(make_napari_viewer):
    return make_napari_viewer()


@pytest.fixture
def denoiser(viewer, tiny_model):
    name = MODELS.add("tiny", tiny_model)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    widget.model.value = name
    return widget


def _run(qtbot, widget, button):
    button.native.click()
    qtbot.waitUntil(lambda: widget.worker is not None and not widget.run_button.enabled, timeout=5_000) \
        if button is widget.run_button else None
    qtbot.waitUntil(lambda: widget.run_button.enabled, timeout=TIMEOUT)


def test_denoise_a_2d_sample_keeps_placement_and_input(viewer, denoiser, qtbot, tiny_model):
    [layer] = viewer.open_sample(PLUGIN, "nuclei_2d")
    layer.scale, layer.translate = (0.5, 0.25), (10, 20)
    before = _digest(layer.data)
    denoiser.image.value = layer
    assert denoiser.info.value == "2D image 512 × 512 (axes YX)"
    _run(qtbot, denoiser, denoiser.run_button)
    result = viewer.layers["nuclei (noisy) denoised"]
    np.testing.assert_allclose(result.scale, (0.5, 0.25))
    np.testing.assert_allclose(result.translate, (10, 20))
    assert result.metadata["napari_flax_denoise"]["model"] == "tiny"
    assert result.metadata["napari_flax_denoise"]["axes"] == "YX"
    assert result.metadata["napari_flax_denoise"]["fusion"]  # on for an n2v2 model
    assert result.metadata["axes"] == "YX"  # the input's metadata is carried over
    np.testing.assert_allclose(result.data, denoise(layer.data, tiny_model, axes="YX"), atol=1e-4)
    assert _digest(layer.data) == before
    assert denoiser.progress.value == denoiser.progress.max
    assert "fusion" in denoiser.status.value  # says what fusion did
    assert 0 <= result.metadata["napari_flax_denoise"]["fusion_weight"] <= 1


def test_denoise_a_3d_sample_plane_by_plane_with_uncertainty(viewer, denoiser, qtbot):
    [layer] = viewer.open_sample(PLUGIN, "fmri_3d")
    before = _digest(layer.data)
    denoiser.image.value = layer
    assert f"Z: {layer.data.shape[0]} slices, each denoised by the 2D model" in denoiser.info.value
    denoiser.uncertainty.value = True
    assert denoiser.tta.value  # the uncertainty map comes from test-time augmentation
    _run(qtbot, denoiser, denoiser.run_button)
    result, std = viewer.layers["fMRI volume (noisy) denoised"], viewer.layers["fMRI volume (noisy) uncertainty"]
    assert result.data.shape == std.data.shape == layer.data.shape
    np.testing.assert_allclose(result.scale, (2.2, 2.0, 2.0), rtol=1e-5)
    assert result.metadata["napari_flax_denoise"]["axes"] == "SYX" and result.metadata["napari_flax_denoise"]["tta"]
    assert std.data.min() >= 0 and std.data.max() > 0
    assert _digest(layer.data) == before


def test_the_model_follows_the_layers_dimensionality_until_the_user_chooses_one(viewer, qtbot, monkeypatch):
    monkeypatch.setattr(MODELS, "_models", {})  # a fresh session: no model trained or loaded yet
    [volume] = viewer.open_sample(PLUGIN, "fmri_3d")
    [plane] = viewer.open_sample(PLUGIN, "nuclei_2d")
    _, denoiser = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    denoiser.image.value = volume
    assert denoiser.model.value == "general-3d" and denoiser.info.value.startswith("3D volume 24 × 96 × 128")
    denoiser.image.value = plane
    assert denoiser.model.value == "general-2d"
    denoiser.image.value = volume
    _run(qtbot, denoiser, denoiser.run_button)
    result = viewer.layers["fMRI volume (noisy) denoised"]
    assert result.metadata["napari_flax_denoise"]["model"] == "general-3d"
    assert result.metadata["napari_flax_denoise"]["axes"] == "ZYX"
    denoiser.model.value = "general-2d"  # chosen by hand: plane by plane, whatever the layer
    denoiser.image.value = plane
    denoiser.image.value = volume
    assert denoiser.model.value == "general-2d" and "each denoised by the 2D model" in denoiser.info.value


def test_a_lazy_dask_layer_is_denoised_plane_by_plane(viewer, denoiser, qtbot, noisy, tiny_model):
    da = pytest.importorskip("dask.array")
    stack = np.stack([noisy, noisy[::-1]])
    layer = viewer.add_image(da.from_array(stack, chunks=(1, *noisy.shape)), name="lazy", metadata={"axes": "TYX"})
    denoiser.image.value = layer
    denoiser.fusion.value = False
    _run(qtbot, denoiser, denoiser.run_button)
    denoiser.fusion.value = True
    np.testing.assert_allclose(viewer.layers["lazy denoised"].data,
                               denoise(stack, tiny_model, axes="TYX", fusion=False), atol=1e-4)


def test_cancel_stops_denoising_without_adding_a_layer(viewer, denoiser, qtbot):
    rng = np.random.default_rng(0)
    viewer.add_image(rng.normal(100, 10, (12, 600, 600)).astype(np.float32), name="big")
    denoiser.image.value = viewer.layers["big"]
    denoiser.run_button.native.click()
    qtbot.waitUntil(lambda: denoiser.progress.value >= 1, timeout=TIMEOUT)
    denoiser.cancel_button.native.click()
    qtbot.waitUntil(lambda: denoiser.run_button.enabled, timeout=TIMEOUT)
    assert "big denoised" not in viewer.layers
    assert denoiser.progress.value < denoiser.progress.max
    assert denoiser.status.value.startswith("Cancelled")


def _hidden(control):
    """Hidden by the widget (the viewer itself is not shown in tests, so nothing is visible)."""
    return control.native.isHidden()


def test_a_folder_is_denoised_from_disk_with_skipped_files_named(viewer, denoiser, qtbot, noisy, tiny_model, tmp_path):
    import tifffile

    source, target = tmp_path / "scans", tmp_path / "denoised"
    source.mkdir()
    tifffile.imwrite(source / "a.tif", noisy)
    np.save(source / "b.npy", noisy[:64])
    np.save(source / "flat.npy", np.ones((32, 32), np.float32))
    denoiser.source.value = "a folder of files (from disk)"
    assert _hidden(denoiser.image) and not _hidden(denoiser.input_folder)
    denoiser.input_folder.value, denoiser.output_folder.value = source, target
    denoiser.format.value = ".tif"
    layers = len(viewer.layers)
    messages = _errors_after(lambda: _run(qtbot, denoiser, denoiser.run_button))
    assert sorted(p.name for p in target.iterdir()) == ["a.tif", "b.tif"]
    np.testing.assert_allclose(tifffile.imread(target / "b.tif"), denoise(noisy[:64], tiny_model, axes="YX"),
                               atol=1e-4)
    assert denoiser.status.value.startswith("Done: 2 of 3 images")
    assert any("flat.npy" in m and "constant" in m for m in messages), messages
    assert len(viewer.layers) == layers  # nothing added to the viewer


def test_settings_are_remembered_restored_and_a_result_replaced(viewer, denoiser, qtbot, make_napari_viewer):
    rgb = viewer.add_image(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), name="photo")
    assert rgb.rgb
    denoiser.image.value = rgb
    denoiser.replace.value, denoiser.tta.value = True, True
    _run(qtbot, denoiser, denoiser.run_button)
    first = viewer.layers["photo denoised"]
    assert first.data.dtype == np.uint8 and first.rgb  # a colour result in its input's type, not floats -6..260
    viewer.layers.move(viewer.layers.index(first), 0)
    _run(qtbot, denoiser, denoiser.run_button)
    assert [layer.name for layer in viewer.layers].count("photo denoised") == 1 and "photo denoised [1]" not in viewer.layers
    assert viewer.layers.index("photo denoised") == 0 and viewer.layers["photo denoised"] is not first
    _, again = make_napari_viewer().window.add_plugin_dock_widget(PLUGIN, "Denoise")  # as if napari restarted
    assert again.tta.value and again.replace.value
    assert _hidden(again.axes)  # advanced settings stay folded
    again.advanced.value = True
    assert not _hidden(again.axes) and not _hidden(again.precision)
    again.defaults_button.native.click()
    assert not again.tta.value and not again.replace.value and _hidden(again.axes)
    every = [w for w in again if w.widget_type not in ("Label", "ProgressBar")]
    assert all(w.tooltip for w in every), [w.label for w in every if not w.tooltip]


def test_the_noise_level_field_serves_noise_aware_models(viewer, denoiser, qtbot, tiny_model, noisy):
    from napari_flax_denoise.models.widening import with_noise_input

    denoiser.image.value = viewer.add_image(noisy, name="noisy")
    denoiser.advanced.value = True
    assert not denoiser.noise_level.enabled  # tiny finds the noise itself
    aware = with_noise_input(tiny_model)
    denoiser.model.value = MODELS.add("tiny aware", aware)
    assert denoiser.noise_level.enabled
    denoiser.noise_level.value = "loud"
    assert any("noise level must be" in m for m in _errors_after(denoiser.run_button.native.click))
    denoiser.noise_level.value = "25"
    _run(qtbot, denoiser, denoiser.run_button)
    result = viewer.layers["noisy denoised"]
    assert result.metadata["napari_flax_denoise"]["noise_level"] == "25"
    assert "noise σ ≈ 25, as given" in denoiser.status.value
    np.testing.assert_allclose(result.data, denoise(noisy, aware, axes="YX", noise_level=25), atol=1e-4)


def _errors_after(action):
    seen = len(notification_manager.records)
    action()
    return [str(n.message) for n in notification_manager.records[seen:]]


@pytest.mark.parametrize("make_layer, axes, expected", [  # Labels and Points layers are not offered at all
    (lambda v: v.add_image(np.zeros((1, 1), np.float32), name="dot"), "", "too small"),
    (lambda v: v.add_image(np.full((32, 32), 7, np.uint16), name="flat"), "", "constant"),
    (lambda v: v.add_image(np.zeros((32, 32, 3), np.uint8), name="rgb_as_tyx"), "TYX", "too small along X=3"),
    (lambda v: v.add_image(np.ones((32, 32), np.float32), name="wrong_axes"), "ZYX", "one letter per image dimension"),
    (lambda v: v.add_image(np.ones((32, 32), np.float32), name="bad_letters"), "QX", "axes"),
])
def test_bad_layers_give_a_notification_not_a_crash(viewer, denoiser, qtbot, make_layer, axes, expected):
    layer = make_layer(viewer)
    layers_before = len(viewer.layers)
    denoiser.image.reset_choices()
    denoiser.image.value = layer
    denoiser.axes.value = axes

    def click():
        denoiser.run_button.native.click()
        qtbot.waitUntil(lambda: denoiser.run_button.enabled, timeout=TIMEOUT)

    messages = _errors_after(click)
    assert any(expected.lower() in m.lower() for m in messages), messages
    assert len(viewer.layers) == layers_before


def test_no_image_layer_and_no_model_give_notifications(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    widget.model.value = None if None in widget.model.choices else widget.model.value
    messages = _errors_after(widget.run_button.native.click)
    assert messages and ("model" in messages[0].lower() or "image layer" in messages[0].lower())


def _trainer(viewer, **values):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / Fine-tune")
    settings = dict(epochs=2, steps_per_epoch=3, patch_size=32, batch_size=4, preview_every=2)
    for name, value in {**settings, **values}.items():
        getattr(widget, name).value = value
    return widget


def _train(qtbot, widget):
    widget.start_button.native.click()
    qtbot.waitUntil(lambda: widget.start_button.enabled and widget.result is not None, timeout=TIMEOUT)


def test_training_plots_previews_saves_and_feeds_the_denoise_widget(viewer, qtbot, tmp_path):
    [layer] = viewer.open_sample(PLUGIN, "nuclei_2d")
    layer.scale = (0.5, 0.5)
    before = _digest(layer.data)
    folder = tmp_path / "nuclei model"
    trainer = _trainer(viewer, folder=folder)
    trainer.images.value = [layer]
    (viewer.scene if hasattr(viewer, "scene") else viewer).camera.center = (150.0, 100.0)  # pixel (300, 200)
    _train(qtbot, trainer)
    assert [s for s, _ in trainer.plot.train] == list(range(1, 7))
    assert [s for s, _ in trainer.plot.val] == [3, 6]
    preview = viewer.layers["nuclei (noisy) preview"]
    assert preview.data.shape == (256, 256)
    np.testing.assert_allclose(preview.translate, (86, 36))  # the crop around the view's centre starts at (172, 72)
    assert (folder / "model.json").is_file()
    assert trainer.result.stopped == "completed" and trainer.progress.value == 6
    assert "6 steps in all · about" in trainer.length.value  # the next run's length, at this run's pace
    assert "ETA" in trainer.status.value
    _, denoiser = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    assert denoiser.model.value == "nuclei model"  # the newest model is preselected
    denoiser.image.value = layer
    _run(qtbot, denoiser, denoiser.run_button)
    assert viewer.layers["nuclei (noisy) denoised"].metadata["napari_flax_denoise"]["model"] == "nuclei model"
    assert _digest(layer.data) == before
    if importlib.util.find_spec("jax2onnx") is not None:  # the bmz extra: the zoo package beside the folder
        trainer.export_button.native.click()
        qtbot.waitUntil(lambda: trainer.status.value.startswith("Exported"), timeout=TIMEOUT)
        with zipfile.ZipFile(tmp_path / "nuclei model.bioimageio.zip") as package:
            assert {"rdf.yaml", "weights.onnx", "cover.png"} <= set(package.namelist())


def test_a_3d_layer_gets_3d_patch_defaults_unless_changed_by_hand(viewer):
    [volume] = viewer.open_sample(PLUGIN, "fmri_3d")
    [plane] = viewer.open_sample(PLUGIN, "nuclei_2d")
    _, trainer = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / Fine-tune")
    trainer.images.value = [volume]
    assert (trainer.patch_size.value, trainer.batch_size.value) == (32, 8)
    trainer.images.value = [plane]
    assert (trainer.patch_size.value, trainer.batch_size.value) == (Config.patch_size, Config.batch_size)
    trainer.patch_size.value = 128
    trainer.images.value = [volume]
    assert trainer.patch_size.value == 128  # chosen by hand: kept
    every = [w for w in trainer if w.widget_type not in ("Label", "ProgressBar")]
    assert all(w.tooltip for w in every), [w.label for w in every if not w.tooltip]


def test_fine_tuning_starts_from_a_loaded_model_folder(viewer, qtbot, tiny_model, noisy, tmp_path):
    save_model(tiny_model, tmp_path / "saved tiny")
    layer = viewer.add_image(noisy, name="noisy")
    trainer = _trainer(viewer, epochs=1, preview_every=0)
    trainer.images.value = [layer]
    assert _errors_after(lambda: setattr(trainer.model_folder, "value", tmp_path))  # not a model folder
    trainer.model_folder.value = tmp_path / "saved tiny"
    assert trainer.start_from.value == "saved tiny"
    assert trainer.learning_rate.value == FINE_TUNE_LEARNING_RATE  # a trained model is fine-tuned gently
    _train(qtbot, trainer)
    assert trainer.result.model.info["fine_tuned_from"] is not None
    assert trainer.result.model.config.features == tiny_model.config.features  # the architecture is kept
    assert "noisy preview" not in viewer.layers


def _start_long_care_training(viewer):
    """A care run on the cell pair that would go on for 1000 epochs."""
    noisy, clean = viewer.open_sample(PLUGIN, "cell_pair")
    trainer = _trainer(viewer, epochs=1000, steps_per_epoch=2, algorithm="care", preview_every=0)
    trainer.images.value = [noisy]
    trainer.target.value = clean
    trainer.start_button.native.click()
    return trainer


def test_targets_are_checked_before_start_and_an_unvalidated_model_is_flagged(viewer, qtbot, noisy):
    layer = viewer.add_image(noisy, name="cells")
    trainer = _trainer(viewer, epochs=1, steps_per_epoch=10_000, preview_every=0)
    assert list(trainer.images.value) == [layer]  # the active layer, so the first Start works
    assert not trainer.target.enabled  # n2v2 takes no target
    trainer.algorithm.value = "care"
    assert trainer.target.enabled
    trainer.target.value = viewer.add_image(np.stack([noisy, noisy]), name="stack")
    messages = _errors_after(trainer.start_button.native.click)
    assert trainer.worker is None  # refused before a child process started
    assert any("(2, 128, 128)" in m and "(128, 128)" in m for m in messages), messages
    trainer.algorithm.value = "n2v2"
    trainer.start_button.native.click()
    qtbot.waitUntil(lambda: len(trainer.plot.train) >= 1, timeout=TIMEOUT)
    messages = _errors_after(lambda: (trainer.stop_button.native.click(),
                                      qtbot.waitUntil(lambda: trainer.start_button.enabled, timeout=TIMEOUT)))
    [name] = [n for n in MODELS.names() if n.startswith("cells · n2v2 · ")]
    assert name.endswith("(stopped before its first validation)")
    assert MODELS.preferred() != name  # listed, never preselected
    assert any("not chosen" in m for m in messages), messages


def test_stop_ends_care_training_within_a_step_and_keeps_a_model(viewer, qtbot):
    trainer = _start_long_care_training(viewer)
    qtbot.waitUntil(lambda: len(trainer.plot.val) >= 2, timeout=TIMEOUT)
    trainer.stop_button.native.click()
    asked = len(trainer.plot.train)
    qtbot.waitUntil(lambda: trainer.start_button.enabled, timeout=TIMEOUT)
    assert trainer.result.stopped == "stop_requested"
    assert len(trainer.plot.train) <= asked + 2  # the child may be a step ahead of the plot, and ends the next
    assert trainer.result.model.config.algorithm == "care"
    assert trainer.save_button.enabled


def test_training_without_a_layer_or_with_a_bad_target_gives_a_notification(viewer, qtbot):
    trainer = _trainer(viewer)
    assert any("at least one noisy image" in m for m in _errors_after(trainer.start_button.native.click))
    a = viewer.add_image(np.random.default_rng(0).normal(size=(64, 64)), name="a")
    b = viewer.add_image(np.random.default_rng(1).normal(size=(48, 64)), name="b")
    trainer.images.reset_choices()
    trainer.target.reset_choices()
    trainer.images.value = [a]
    trainer.target.value = b
    trainer.algorithm.value = "care"

    def click():
        trainer.start_button.native.click()
        qtbot.waitUntil(lambda: trainer.start_button.enabled, timeout=TIMEOUT)

    assert any("must match their images" in m for m in _errors_after(click))
    assert trainer.result is None


def test_viewer_opens_nifti_with_voxel_spacing_and_saves_it_back(viewer, tmp_path):
    nibabel = pytest.importorskip("nibabel")
    xyz = np.random.default_rng(0).random((20, 16, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(xyz, np.diag([0.5, 0.7, 2.0, 1.0])), tmp_path / "scan.nii.gz")
    image = nibabel.Nifti1Image(xyz, np.diag([0.5, 0.7, 2.0, 1.0]))
    image.header.set_xyzt_units("mm")
    nibabel.save(image, tmp_path / "scan.nii.gz")
    [layer] = viewer.open(str(tmp_path / "scan.nii.gz"), plugin=PLUGIN)
    np.testing.assert_allclose(layer.scale, (2.0, 0.7, 0.5))
    assert layer.metadata["axes"] == "ZYX" and tuple(layer.axis_labels) == ("Z", "Y", "X")
    assert [str(unit) for unit in layer.units] == ["millimeter"] * 3
    layer.save(str(tmp_path / "copy.nii.gz"), plugin=PLUGIN)
    saved = nibabel.load(tmp_path / "copy.nii.gz")
    np.testing.assert_allclose(saved.header.get_zooms(), (0.5, 0.7, 2.0))
    np.testing.assert_array_equal(np.asarray(saved.dataobj), xyz)
    layer.save(str(tmp_path / "copy.ome.tif"), plugin=PLUGIN)  # OME-TIFF keeps the spacing and its unit
    [again] = viewer.open(str(tmp_path / "copy.ome.tif"), plugin=PLUGIN)
    np.testing.assert_allclose(again.scale, (2.0, 0.7, 0.5), rtol=1e-6)
    assert [str(unit) for unit in again.units] == ["millimeter"] * 3 and again.name == "copy"


UNGUARDED_SCRIPT = """
import time

import numpy as np
import napari
from qtpy.QtWidgets import QApplication

# The way most napari scripts are written: no `if __name__ == "__main__":` guard.
viewer = napari.Viewer(show=False)
layer = viewer.add_image(np.random.default_rng(0).normal(size=(64, 64)).astype("float32"), name="noisy")
_, trainer = viewer.window.add_plugin_dock_widget("napari-flax-denoise", "Train / Fine-tune")
for name, value in dict(epochs=1, steps_per_epoch=2, patch_size=32, batch_size=2, preview_every=0).items():
    getattr(trainer, name).value = value
trainer.images.value = [layer]
trainer.start_button.native.click()
deadline = time.monotonic() + 240
while (trainer.result is None or not trainer.start_button.enabled) and time.monotonic() < deadline:
    QApplication.processEvents()
    time.sleep(0.05)
print("viewer opened; training", None if trainer.result is None else trainer.result.stopped, flush=True)
viewer.close()
"""


def test_training_from_a_script_without_a_main_guard(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "script.py"
    script.write_text(UNGUARDED_SCRIPT)
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.count("viewer opened") == 1  # the training process did not run the script again
    assert "training completed" in run.stdout, run.stderr[-3000:]


def test_closing_the_viewer_stops_training_and_leaves_no_process(make_napari_viewer, qtbot):
    from test_plugin_core import _training_children

    viewer = make_napari_viewer()
    trainer = _start_long_care_training(viewer)
    qtbot.waitUntil(lambda: len(trainer.plot.train) >= 1, timeout=TIMEOUT)
    assert len(_training_children()) == 1
    viewer.close()
    qtbot.waitUntil(lambda: _training_children() == [], timeout=TIMEOUT)


def test_a_care_result_shows_its_own_range_and_bf16_runs_from_the_widget(viewer, denoiser, qtbot, tiny_model, noisy):
    from napari_flax_denoise.models.checkpoint import TrainedModel
    from napari_flax_denoise.models.normalization import Normalization

    # A care model answers on its targets' scale: here about 1000 +- 500, far from the input's 0..255.
    targets_scale = Normalization("percentile", (1000.0,), (500.0,))
    care = TrainedModel(tiny_model.config.replace(algorithm="care"), tiny_model.network, tiny_model.input_norm,
                        targets_scale, {"name": "tiny care"})
    denoiser.model.value = MODELS.add("tiny care", care)
    layer = viewer.add_image(noisy, name="noisy")
    viewer.add_labels(np.zeros(noisy.shape, int), name="labels")
    denoiser.reset_choices()
    assert "labels" not in [choice.name for choice in denoiser.image.choices]  # only images can be denoised
    assert denoiser.device.value.startswith("Runs on: CPU")
    denoiser.image.value = layer
    _run(qtbot, denoiser, denoiser.run_button)
    result = viewer.layers["noisy denoised"]
    low, high = np.percentile(result.data, (0.5, 99.5))
    np.testing.assert_allclose(result.contrast_limits, (low, high), rtol=1e-4)
    assert tuple(result.contrast_limits) != tuple(layer.contrast_limits)
    denoiser.precision.value = "bfloat16"
    _run(qtbot, denoiser, denoiser.run_button)
    half = viewer.layers["noisy denoised [1]"]
    assert half.metadata["napari_flax_denoise"]["precision"] == "bfloat16"
    spread = float(np.ptp(result.data))
    assert 0 < np.abs(half.data - result.data).max() < 0.05 * spread  # bfloat16 arithmetic, close to float32's


def test_start_shows_that_training_is_starting_and_the_end_says_how_it_went(viewer, qtbot, noisy):
    layer = viewer.add_image(noisy, name="noisy")
    trainer = _trainer(viewer, epochs=1, preview_every=0)
    trainer.images.value = [layer]
    trainer.progress.max, trainer.progress.value = 10, 10  # a previous run's full bar
    trainer.start_button.native.click()
    assert trainer.progress.value == 0 and trainer.status.value.startswith("Starting")
    qtbot.waitUntil(lambda: trainer.start_button.enabled and trainer.result is not None, timeout=TIMEOUT)
    assert "ETA" in trainer.status.value
