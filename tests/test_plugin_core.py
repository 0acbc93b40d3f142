"""The plugin's GUI-free parts: manifest discovery, samples, layer conversions, jobs."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from napari_flax_denoise import UserInputError, denoise
from napari_flax_denoise.plugin.jobs import preview_crop, train_with_preview
from napari_flax_denoise.progress import drive
from napari_flax_denoise.training import start_run
from napari_flax_denoise.plugin.training_process import train_in_child
from napari_flax_denoise.plugin.layers import infer_axes, layer_data, result_layer
from napari_flax_denoise.io.samples import cell_pair, ct_2d, fmri_3d, nuclei_2d
from napari_flax_denoise.runtime.compile_cache import machine_type

napari_layers = pytest.importorskip("napari.layers")


def test_manifest_discovery_and_widget_list_import_no_jax():
    code = (
        "import sys, npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "manifest = pm.get_manifest('napari-flax-denoise')\n"
        "print(sorted(w.display_name for w in manifest.contributions.widgets))\n"
        "print(sorted(s.key for s in manifest.contributions.sample_data))\n"
        "print('jax' in sys.modules, 'flax' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "['Denoise', 'Train / Fine-tune']"
    assert out[1] == "['cell_pair', 'ct_2d', 'fmri_3d', 'nuclei_2d']"
    assert out[2] == "False False"


@pytest.mark.parametrize("loader, shape, axes, scale", [
    (nuclei_2d, (512, 512), "YX", (1.0, 1.0)),
    (fmri_3d, (24, 96, 128), "ZYX", (2.2, 2.0, 2.0)),
    (ct_2d, (128, 128), "YX", (0.661468, 0.661468)),
])
def test_samples_carry_axes_and_spacing(loader, shape, axes, scale):
    [(data, kwargs, kind)] = loader()
    assert kind == "image" and data.shape == shape and kwargs["metadata"]["axes"] == axes
    np.testing.assert_allclose(kwargs["scale"], scale, rtol=1e-5)
    assert data.std() > 0


def test_cell_pair_is_a_noisy_clean_pair():
    (noisy, _, _), (clean, _, _) = cell_pair()
    assert noisy.shape == clean.shape
    correlation = np.corrcoef(noisy.ravel().astype(float), clean.ravel().astype(float))[0, 1]
    assert 0.5 < correlation < 0.999  # the same scene, visibly noisy


@pytest.mark.parametrize("shape, kwargs, dims, expected", [
    ((64, 64), {}, 2, "YX"),
    ((5, 64, 64), {}, 2, "SYX"),
    ((5, 64, 64), {}, 3, "ZYX"),
    ((3, 5, 64, 64), {}, 3, "SZYX"),
    ((64, 64, 3), {"rgb": True}, 2, "YXC"),
    ((5, 64, 64), {"metadata": {"axes": "ZYX"}}, 3, "ZYX"),
    ((5, 64, 64), {"metadata": {"axes": "ZYX"}}, 2, "SYX"),  # a 2D model goes plane by plane
    ((5, 64, 64), {"metadata": {"axes": "ZYX"}}, None, "ZYX"),
    ((4, 64, 64), {"axis_labels": ("t", "y", "x")}, 2, "TYX"),
])
def test_infer_axes(shape, kwargs, dims, expected):
    layer = napari_layers.Image(np.zeros(shape, np.uint8), **kwargs)
    assert infer_axes(layer, dims) == expected


@pytest.mark.parametrize("layer", [
    None,
    napari_layers.Labels(np.zeros((8, 8), np.uint8), name="cells"),
    napari_layers.Points(np.zeros((3, 2)), name="spots"),
])
def test_non_image_layers_are_refused_by_name(layer):
    with pytest.raises(UserInputError, match="image layer"):
        layer_data(layer)


def test_result_layer_keeps_placement_and_records_settings():
    source = napari_layers.Image(np.zeros((4, 16, 16)), scale=(2.0, 0.5, 0.5), translate=(1, 2, 3),
                                 rotate=30, metadata={"origin": "scope"}, name="raw")
    data, kwargs, kind = result_layer(source, np.ones((4, 16, 16), np.float32), "raw denoised", {"tta": True})
    layer = napari_layers.Image(data, **kwargs)
    np.testing.assert_allclose(layer.scale, source.scale)
    np.testing.assert_allclose(layer.translate, source.translate)
    np.testing.assert_allclose(layer.rotate, source.rotate)
    np.testing.assert_allclose(layer.affine.affine_matrix, source.affine.affine_matrix)
    assert layer.metadata == {"origin": "scope", "napari_flax_denoise": {"tta": True}}
    assert layer.name == "raw denoised"


def test_preview_crop_is_central_and_spatial():
    image = np.arange(3 * 300 * 280).reshape(3, 300, 280)
    crop = preview_crop(image, "TYX")
    assert crop.axes == "YX" and crop.data.shape == (256, 256) and crop.offset == (22, 12)
    np.testing.assert_array_equal(crop.data, image[0, 22:278, 12:268])


def test_train_with_preview_previews_with_current_weights(noisy, tiny_config):
    updates, result = _drain(train_with_preview([noisy], axes="YX", preview_every=3, config=tiny_config))
    steps = [u.progress.done for u in updates if u.preview is not None]
    assert steps == [1, 3, 6, 8]
    assert result.stopped == "completed"
    assert [u.progress.done for u in updates] == list(range(1, 9))
    # The same run again (training is deterministic): its weights at the last step gave the last preview.
    run = start_run([noisy], axes="YX", config=tiny_config)
    drive(run.steps())
    last = updates[-1]
    np.testing.assert_allclose(last.preview, denoise(last.crop.data, run.model(), axes="YX"), atol=1e-5)
    assert not np.allclose(updates[0].preview, last.preview)


def _drain(run, updates=None):
    """Run a job to its end; its updates (appended to ``updates`` as they come) and result."""
    updates = [] if updates is None else updates
    return updates, drive(run, updates.append)


def test_training_in_a_child_process_matches_training_here(noisy, tiny_config, tmp_path, monkeypatch):
    config = tiny_config.replace(epochs=1)
    monkeypatch.setenv("NAPARI_FLAX_DENOISE_CACHE", str(tmp_path / "xla"))
    updates, result = _drain(train_in_child([noisy], axes="YX", preview_every=2, config=config,
                                            output=tmp_path / "child"))
    # The child keeps its compiled step on disk for the next Train click (see runtime.compile_cache).
    assert list((tmp_path / "xla" / machine_type()).glob("jit_train_step-*-cache"))
    assert [u.progress.done for u in updates] == [1, 2, 3, 4]
    assert [u.progress.done for u in updates if u.preview is not None] == [1, 2, 4]
    assert result.stopped == "completed" and result.output == tmp_path / "child"
    _, expected = _drain(train_with_preview([noisy], axes="YX", config=config))
    image = noisy[:64, :64]
    np.testing.assert_allclose(denoise(image, result.model, axes="YX"), denoise(image, expected.model, axes="YX"),
                               atol=1e-4)  # same seed, same steps: the same model


def test_a_child_stops_between_steps_and_reports_user_errors(noisy, tiny_config, tiny_model):
    seen = []
    _, result = _drain(train_in_child([noisy], axes="YX", init=tiny_model, stop=lambda: bool(seen),
                                      config=tiny_config.replace(epochs=50)), seen)
    assert result.stopped == "stop_requested" and len(seen) < 50 * tiny_config.steps_per_epoch
    assert result.model.info["fine_tuned_from"] == tiny_model.name and result.output is None
    assert "path" not in result.model.info  # its temporary folder is gone
    with pytest.raises(UserInputError, match="drop the targets"):
        _drain(train_in_child([noisy], axes="YX", targets=[noisy], config=tiny_config))


def _training_children():
    """Live child processes of this one that run the training module."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
            command = (status.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields.get("PPid", "0")) == os.getpid() and b"training_process" in command \
                and not fields.get("State", "").startswith("Z"):
            found.append(int(status.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the child through /proc")
def test_a_training_child_that_falls_silent_is_declared_failed_and_killed(noisy, tiny_config, monkeypatch):
    from napari_flax_denoise.plugin import training_process

    job = train_in_child([noisy], axes="YX", config=tiny_config.replace(epochs=1000), preview_every=0)
    next(job)  # it trains
    monkeypatch.setattr(training_process, "SILENCE_LIMIT", 3.0)
    [child] = _training_children()
    os.kill(child, signal.SIGSTOP)  # hung, as a deadlocked or swapped-out process would be
    with pytest.raises(RuntimeError, match="sent nothing"):
        for _ in job:
            pass
    assert _training_children() == []
