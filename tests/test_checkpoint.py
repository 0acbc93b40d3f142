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


def _deep(depth=100_000):
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("case", ["folder", "deep", "huge", "garbage"])
def test_a_config_file_that_cannot_be_one_gets_a_sentence(tmp_path, case):
    from napari_flax_denoise import Config
    from napari_flax_denoise.config import MAX_JSON_BYTES

    path = tmp_path / "config.json"
    if case == "folder":
        path.mkdir()
    elif case == "deep":
        path.write_text(_deep())  # Python's JSON reader raised RecursionError
    elif case == "huge":
        path.write_text(" " * (MAX_JSON_BYTES + 1) + "{}")
    else:
        path.write_bytes(b"\xff\xfe not text")
    expected = {"folder": "is a folder", "deep": "nests too deeply", "huge": "too large",
                "garbage": "is not valid JSON"}[case]
    with pytest.raises(UserInputError, match=expected):
        Config.from_json(path)


@pytest.mark.parametrize("version, message", [(99, "newer napari-flax-denoise"), ("1", "no valid format_version"),
                                              (None, "no valid format_version")])
def test_a_model_of_another_format_version_is_refused(tiny_model, tmp_path, version, message):
    import json

    directory = save_model(tiny_model, tmp_path / "model")
    meta = json.loads((directory / "model.json").read_text())
    meta["format_version"] = version
    (directory / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserInputError, match=message):
        load_model(directory)


def test_a_model_description_nested_too_deeply_is_reported_as_corrupted(tiny_model, tmp_path):
    directory = save_model(tiny_model, tmp_path / "model")
    (directory / "model.json").write_text(_deep())
    with pytest.raises(UserInputError, match="nests too deeply.*corrupted"):
        load_model(directory)
