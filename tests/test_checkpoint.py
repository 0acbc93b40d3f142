import json

import numpy as np
import pytest

from napari_flax_denoise import denoise, load_model
from napari_flax_denoise.models.checkpoint import save_model
from napari_flax_denoise.errors import UserInputError


def test_round_trip_rebuilds_from_config_alone(tiny_model, noisy, tmp_path):
    save_model(tiny_model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["package_version"] and meta["config"]["features"] == tiny_model.config.features
    assert set(meta["normalization"]) == {"input", "output"}
    loaded = load_model(tmp_path / "m")
    assert loaded.config == tiny_model.config
    np.testing.assert_array_equal(denoise(noisy, loaded, axes="YX"), denoise(noisy, tiny_model, axes="YX"))


def _corrupt_weights(d):
    (d / "weights.npz").write_bytes(b"not a zip file")


def _truncate_weights(d):
    data = dict(np.load(d / "weights.npz"))
    data.pop(sorted(data)[0])
    np.savez(d / "weights.npz", **data)


def _wrong_shape(d):
    meta = json.loads((d / "model.json").read_text())
    meta["config"]["features"] = 4
    (d / "model.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage,fragment", [
    (lambda d: (d / "weights.npz").unlink(), "missing"),
    (_corrupt_weights, "corrupted"),
    (_truncate_weights, "corrupted"),
    (_wrong_shape, "corrupted"),
    (lambda d: (d / "model.json").write_text("{"), "JSON"),
    (lambda d: (d / "model.json").unlink(), "not a model directory"),
])
def test_damaged_models_give_clear_errors(tiny_model, tmp_path, damage, fragment):
    save_model(tiny_model, tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(UserInputError, match=fragment):
        load_model(tmp_path / "m")


def test_missing_model_directory(tmp_path):
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(tmp_path / "nothing")
