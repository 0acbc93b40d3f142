"""DICOM, NIfTI, OME-Zarr and OME-TIFF: axes and spacing from the file, through the denoiser, back to disk."""

import numpy as np
import pytest
import tifffile

from napari_flax_denoise import UserInputError
from napari_flax_denoise.models.checkpoint import save_model
from napari_flax_denoise.io.files import open_image, write_image
from napari_flax_denoise.plugin.file_io import get_reader, write_layer

from test_cli import flax_denoise

pydicom = pytest.importorskip("pydicom")
nibabel = pytest.importorskip("nibabel")


def write_series(folder, volume, *, spacing=(2.5, 0.7, 0.6), series_uid=None, positions=None, pixel_spacing=True):
    """Write ``volume`` (Z, Y, X, uint16) as one CT slice per file, in shuffled file order."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    positions = positions if positions is not None else [z * spacing[0] for z in range(len(volume))]
    for number in np.random.default_rng(1).permutation(len(volume)):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "CT", series_uid, "1.2.3"
        ds.Rows, ds.Columns = volume.shape[1:]
        if pixel_spacing:
            ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.ImagePositionPatient = [0.0, 0.0, float(positions[number])]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = volume[number].astype(np.uint16).tobytes()
        ds.save_as(folder / f"slice_{number:03d}.dcm", enforce_file_format=True)
    return folder


@pytest.fixture
def volume():
    return np.random.default_rng(0).integers(0, 1000, (6, 32, 40)).astype(np.uint16)


def test_dicom_series_is_sorted_rescaled_and_spaced(tmp_path, volume):
    opened = open_image(write_series(tmp_path / "series", volume))
    assert opened.axes == "ZYX" and opened.metadata["modality"] == "CT"
    np.testing.assert_allclose(opened.data, volume * 2.0 - 1024)  # slice order by position, rescale applied
    assert opened.spacing == pytest.approx({"Z": 2.5, "Y": 0.7, "X": 0.6})


@pytest.mark.parametrize("damage, message", [
    ("corrupt", "not a readable DICOM file"),
    ("mixed", "different series"),
    ("gap", "unevenly spaced"),
    ("no spacing", "no PixelSpacing"),
    ("sizes", "different sizes"),
    ("one spacing value", "damaged PixelSpacing"),
    ("three orientation values", "damaged ImageOrientationPatient"),
    ("link outside", "outside"),
])
def test_bad_dicom_series_name_the_problem(tmp_path, volume, damage, message):
    folder = tmp_path / "series"
    if damage == "sizes":  # a localizer of another size slipped into the folder
        write_series(folder, volume)
        write_series(tmp_path / "other", volume[:1, :16], series_uid=pydicom.dcmread(next(folder.iterdir())).SeriesInstanceUID,
                     positions=[100.0])
        next((tmp_path / "other").iterdir()).rename(folder / "localizer.dcm")
    elif damage in ("one spacing value", "three orientation values"):
        write_series(folder, volume)
        for path in folder.iterdir():
            ds = pydicom.dcmread(path)
            if damage == "one spacing value":
                ds.PixelSpacing = [0.7]
            else:
                ds.ImageOrientationPatient = [1, 0, 0]
            ds.save_as(path)
    elif damage == "link outside":
        write_series(tmp_path / "elsewhere", volume)
        folder.mkdir()
        for path in (tmp_path / "elsewhere").iterdir():
            (folder / path.name).symlink_to(path)
    elif damage == "gap":
        write_series(folder, volume, positions=[0, 2.5, 5, 7.5, 12.5, 15])
    else:
        write_series(folder, volume, pixel_spacing=damage != "no spacing")
    if damage == "corrupt":
        (folder / "slice_002.dcm").write_bytes(b"DICM but not really")
    if damage == "mixed":
        write_series(folder / ".." / "other", volume[:2])
        for i, path in enumerate(sorted((folder / ".." / "other").iterdir())):
            path.rename(folder / f"other_{i}.dcm")
    with pytest.raises(UserInputError, match=message) as error:
        open_image(folder)
    if damage == "corrupt":
        assert "slice_002.dcm" in str(error.value)


def test_nifti_reads_zyx_with_voxel_sizes_and_round_trips(tmp_path):
    xyz = np.random.default_rng(0).random((20, 16, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(xyz, np.diag([0.5, 0.7, 2.0, 1.0])), tmp_path / "in.nii.gz")
    opened = open_image(tmp_path / "in.nii.gz")
    assert opened.axes == "ZYX" and opened.data.shape == (6, 16, 20)
    assert opened.spacing == pytest.approx({"Z": 2.0, "Y": 0.7, "X": 0.5})
    write_image(tmp_path / "out.nii.gz", opened.data, opened.axes, opened.spacing)
    again = open_image(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(again.data, opened.data)
    assert again.spacing == pytest.approx(opened.spacing)


def test_ome_zarr_is_lazy_and_round_trips_axes_and_spacing(tmp_path):
    image = np.random.default_rng(0).random((3, 5, 24, 20)).astype(np.float32)
    write_image(tmp_path / "x.zarr", image, "TZYX", {"Z": 3.0, "Y": 0.25, "X": 0.2})
    opened = open_image(tmp_path / "x.zarr")
    assert type(opened.data).__module__.startswith("dask")
    assert opened.axes == "TZYX" and opened.spacing == pytest.approx({"T": 1.0, "Z": 3.0, "Y": 0.25, "X": 0.2})
    np.testing.assert_array_equal(np.asarray(opened.data), image)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_zarr_without_an_array_is_a_clear_error(tmp_path):
    import zarr

    zarr.open_group(str(tmp_path / "empty.zarr"), mode="w")
    with pytest.raises(UserInputError, match="holds no array"):
        open_image(tmp_path / "empty.zarr")


def test_ome_tiff_keeps_pixel_sizes(tmp_path):
    write_image(tmp_path / "x.tif", np.ones((4, 8, 8), np.float32), "ZYX", {"Z": 1.5, "Y": 0.3, "X": 0.3})
    assert open_image(tmp_path / "x.tif").spacing == pytest.approx({"Z": 1.5, "Y": 0.3, "X": 0.3})


@pytest.mark.parametrize("name", ["out.ome.tif", "out.zarr", "out.nii.gz"])
@pytest.mark.parametrize("unit", ["mm", "µm"])
def test_the_spacings_unit_survives_a_round_trip(tmp_path, name, unit):
    image = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    spacing = {"Z": 2.0, "Y": 0.5, "X": 0.5}
    write_image(tmp_path / name, image, "ZYX", spacing, units={axis: unit for axis in "ZYX"})
    opened = open_image(tmp_path / name)
    assert opened.spacing == pytest.approx(spacing) and opened.units == {axis: unit for axis in "ZYX"}
    _, kwargs, _ = opened.layer("out")
    assert kwargs["units"] == [unit] * 3 and kwargs["axis_labels"] == ["Z", "Y", "X"]


def test_a_large_uncompressed_tiff_is_memory_mapped_and_denoised_plane_by_plane(tmp_path, monkeypatch,
                                                                                tiny_model, noisy):
    import napari_flax_denoise.io.files as files
    from napari_flax_denoise import denoise

    stack = np.stack([noisy, noisy[::-1], noisy[:, ::-1]])
    write_image(tmp_path / "big.tif", stack, "TYX", {})
    monkeypatch.setattr(files, "MEMMAP_TIFF_BYTES", stack.nbytes - 1)  # "large" = bigger than this stack
    opened = open_image(tmp_path / "big.tif")
    assert isinstance(opened.data, np.memmap) and not opened.data.flags.writeable  # inputs are never modified
    np.testing.assert_allclose(denoise(opened.data, tiny_model, axes="TYX"), denoise(stack, tiny_model, axes="TYX"),
                               atol=1e-5)


def test_cli_denoises_a_dicom_series_into_nifti_keeping_spacing(tmp_path, volume, tiny_model):
    save_model(tiny_model, tmp_path / "model")
    series = write_series(tmp_path / "series", volume)
    before = {p.name: p.read_bytes() for p in series.iterdir()}
    run = flax_denoise("denoise", series, "--output", tmp_path / "out.nii.gz", "--model", tmp_path / "model",
                       "--axes", "SYX", "--quiet")
    assert run.returncode == 0, run.stderr
    out = open_image(tmp_path / "out.nii.gz")
    assert out.data.shape == volume.shape
    assert out.spacing == pytest.approx({"Z": 2.5, "Y": 0.7, "X": 0.6})  # the file's Z, though denoised per plane
    assert {p.name: p.read_bytes() for p in series.iterdir()} == before


def test_cli_trains_on_and_denoises_ome_zarr_lazily_into_ome_zarr(tmp_path, noisy):
    write_image(tmp_path / "in.zarr", np.stack([noisy, noisy[::-1]]), "TYX", {"Y": 0.5, "X": 0.5})
    run = flax_denoise("train", tmp_path / "in.zarr", "--output", tmp_path / "model", "--epochs", "1",
                       "--steps-per-epoch", "3", "--patch-size", "32", "--batch-size", "4", "--quiet")
    assert run.returncode == 0, run.stderr  # axes from the file; patches read from the store
    run = flax_denoise("denoise", tmp_path / "in.zarr", "--output", tmp_path / "out.zarr", "--model",
                       tmp_path / "model", "--quiet")
    assert run.returncode == 0, run.stderr
    out = open_image(tmp_path / "out.zarr")
    assert out.axes == "TYX" and out.spacing == pytest.approx({"T": 1.0, "Y": 0.5, "X": 0.5})


def test_napari_reader_and_writer_keep_spacing(tmp_path):
    xyz = np.random.default_rng(0).random((20, 16, 6)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(xyz, np.diag([0.5, 0.7, 2.0, 1.0])), tmp_path / "in.nii.gz")
    assert get_reader(str(tmp_path / "x.tif")) is None
    [(data, kwargs, kind)] = get_reader(str(tmp_path / "in.nii.gz"))(str(tmp_path / "in.nii.gz"))
    assert kind == "image" and kwargs["scale"] == pytest.approx([2.0, 0.7, 0.5]) and kwargs["name"] == "in"
    [written] = write_layer(str(tmp_path / "out.ome.tif"), data, kwargs)
    with tifffile.TiffFile(written) as tif:
        assert tif.series[0].axes == "ZYX"
    assert open_image(written).spacing == pytest.approx({"Z": 2.0, "Y": 0.7, "X": 0.5})


def test_napari_reader_opens_the_whole_series_of_one_slice(tmp_path, volume):
    folder = write_series(tmp_path / "series", volume)
    write_series(tmp_path / "other", volume[:2])
    for i, path in enumerate(sorted((tmp_path / "other").iterdir())):  # a second series in the same folder
        path.rename(folder / f"other_{i}.dcm")
    one_slice = str(folder / "slice_003.dcm")
    [(data, kwargs, _)] = get_reader(one_slice)(one_slice)
    assert data.shape == volume.shape and kwargs["metadata"]["axes"] == "ZYX"
    assert kwargs["scale"] == pytest.approx([2.5, 0.7, 0.6])
