"""Which images files, folders and patterns name, and what their results are called (no JAX)."""

from pathlib import Path

import pytest

from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.io.listing import (check_folder, list_inputs, names_several, output_name, output_paths)


@pytest.mark.parametrize("name, suffix, expected", [
    ("cells.tif", None, "cells.tif"),
    ("cells.ome.tif", None, "cells.ome.tif"),
    ("cells.ome.tif", ".npy", "cells.npy"),
    ("cells.ome.tif", ".zarr", "cells.ome.zarr"),
    ("brain.nii.gz", None, "brain.nii.gz"),
    ("brain.nii.gz", ".tif", "brain.tif"),
    ("slice.dcm", None, "slice.tif"),  # DICOM is read, not written
    ("series", None, "series.tif"),  # a DICOM series folder
    ("stack.zarr", None, "stack.zarr"),
])
def test_a_result_keeps_its_inputs_name_and_format_unless_told(name, suffix, expected):
    assert output_name(Path("/data") / name, suffix) == expected


def _touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_folders_patterns_and_files_expand_to_images_in_order_each_once(tmp_path):
    images = tmp_path / "images"
    for name in ("b.tif", "a.npy", "c.nii.gz", ".hidden.tif", "notes.txt", ".a.tif.1x2.partial"):
        _touch(images / name)
    (images / "d.zarr").mkdir()
    (images / "sub").mkdir()  # subfolders are not searched
    _touch(images / "sub" / "e.tif")
    series = tmp_path / "series"
    for k in range(3):
        _touch(series / f"slice{k}.dcm")
    found = list_inputs([images, series, tmp_path / "images" / "*.tif", images / "a.npy"])
    assert [p.name for p in found] == ["a.npy", "b.tif", "c.nii.gz", "d.zarr", "series"]
    assert names_several([images]) and not names_several([series]) and not names_several([images / "a.npy"])
    assert names_several([tmp_path / "images" / "*.tif"])


def test_inputs_that_name_nothing_or_would_collide_are_refused(tmp_path):
    _touch(tmp_path / "x.tif")
    _touch(tmp_path / "x.npy")
    with pytest.raises(UserInputError, match="does not exist"):
        list_inputs([tmp_path / "missing.tif"])
    with pytest.raises(UserInputError, match="No image matches"):
        list_inputs([tmp_path / "*.png"])
    with pytest.raises(UserInputError, match="would both be written to 'x.tif'"):
        output_paths(list_inputs([tmp_path]), tmp_path / "out", ".tif")
    with pytest.raises(UserInputError, match="Cannot write '.jpg'"):
        output_paths([tmp_path / "x.tif"], tmp_path / "out", "jpg")
    assert output_paths([tmp_path / "x.tif"], tmp_path / "out", "NPY") == [tmp_path / "out" / "x.npy"]


def test_an_output_folder_cannot_be_a_file_or_look_like_one(tmp_path):
    _touch(tmp_path / "file")
    (tmp_path / "store.zarr").mkdir()
    for wrong, fragment in [("file", "is a file"), ("result.tif", "named like an image"), ("store.zarr", "named like")]:
        with pytest.raises(UserInputError, match=fragment):
            check_folder(tmp_path / wrong)
    assert check_folder(tmp_path / "new folder") == tmp_path / "new folder"
