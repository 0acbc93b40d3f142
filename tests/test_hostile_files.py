"""Files from users are hostile until validated: damaged headers, size claims, links, leftovers.

Every case is made here, by the test, and read through the real readers; a
failure must be a UserInputError (one sentence), and the bombs must not cost
memory. Memory is measured in a separate process that imports only the reader.
"""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import tifffile

from napari_flax_denoise import denoise
from napari_flax_denoise.errors import UserInputError
from napari_flax_denoise.io.atomic import atomic_path, partial_prefix
from napari_flax_denoise.io.files import check_output, open_image
from napari_flax_denoise.io.zarr_store import write_zarr
from napari_flax_denoise.models.checkpoint import load_model, save_model

PEAK_MB = 500  # what a bomb file may cost the process that reads it (imports included)
# The peak resident memory of the process since it started (ru_maxrss would include the parent's, kept over exec).
PEAK_OF_THIS_PROCESS = ("next(int(line.split()[1]) // 1024 for line in open('/proc/self/status') "
                        "if line.startswith('VmHWM'))")


def _npz_named_npy(d):
    np.savez(d / "archive.npz", a=np.ones((8, 8)))
    return (d / "archive.npz").rename(d / "image.npy")


def _truncated_bigtiff(d):
    with tifffile.TiffWriter(d / "big.tif", bigtiff=True) as tif:
        tif.write(shape=(46000, 46000), dtype=np.uint8)  # header and strip table only; pixels never written
    os.truncate(d / "big.tif", 500_000)
    return d / "big.tif"


def _nifti_header_bomb(d):
    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((32000, 32000))
    header.set_data_dtype(np.float32)
    with open(d / "bomb.nii", "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * 64)
    return d / "bomb.nii"


def _gzip_nifti_claiming_terabytes(d):
    import gzip

    import nibabel

    header = nibabel.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))  # 100 TB of float32
    header.set_data_dtype(np.float32)
    with gzip.open(d / "huge.nii.gz", "wb") as handle:
        header.write_to(handle)
        handle.write(b"\0" * 1024)
    return d / "huge.nii.gz"


def _npy_claiming_more_than_it_holds(d):
    np.save(d / "short.npy", np.ones((512, 512), np.float32))
    os.truncate(d / "short.npy", 4096)
    return d / "short.npy"


def _zarr(d, name="image.zarr"):
    import zarr

    store = zarr.open(str(d / name), mode="w", shape=(64, 64), chunks=(32, 32), dtype="f4")
    store[:] = np.random.default_rng(0).random((64, 64))
    chunk = next(p for p in sorted((d / name).rglob("*")) if p.is_file() and p.name[0].isdigit())
    return d / name, chunk


def _corrupt_chunk(d):
    store, chunk = _zarr(d)
    chunk.write_bytes(b"not a compressed chunk" * 4)
    return store


def _chunk_linked_to_dev_zero(d):
    store, chunk = _zarr(d)
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    return store


def _chunk_linked_outside(d):
    store, chunk = _zarr(d)
    (d / "elsewhere").write_bytes(chunk.read_bytes())
    chunk.unlink()
    chunk.symlink_to(d / "elsewhere")
    return store


def _fifo_in_store(d):
    store, chunk = _zarr(d)
    chunk.unlink()
    os.mkfifo(chunk)
    return store


def _ome_zarr_missing_dataset(d):
    import zarr

    group = zarr.open_group(str(d / "ome.zarr"), mode="w")
    group.attrs["multiscales"] = [{"version": "0.4", "axes": ["y", "x"], "datasets": [{"path": "nothing"}]}]
    return d / "ome.zarr"


READERS = {  # case -> (maker, what the sentence says)
    "npz archive named .npy": (_npz_named_npy, ".npz archive"),
    "truncated BigTIFF claiming 46000x46000": (_truncated_bigtiff, "truncated"),
    "NIfTI header claiming 32000x32000": (_nifti_header_bomb, "truncated"),
    "gzipped NIfTI claiming terabytes": (_gzip_nifti_claiming_terabytes, "free"),
    ".npy claiming more than it holds": (_npy_claiming_more_than_it_holds, "truncated"),
    "corrupt zarr chunk": (_corrupt_chunk, "damaged"),
    "zarr chunk linked to /dev/zero": (_chunk_linked_to_dev_zero, "outside"),
    "zarr chunk linked outside the store": (_chunk_linked_outside, "outside"),
    "pipe inside a zarr store": (_fifo_in_store, "not a regular file"),
    "OME-Zarr pointing to a missing array": (_ome_zarr_missing_dataset, "metadata"),
}


@pytest.mark.parametrize("case", sorted(READERS))
def test_damaged_or_hostile_files_get_one_sentence(tmp_path, case):
    make, fragment = READERS[case]
    path = make(tmp_path)
    with pytest.raises(UserInputError, match=fragment) as error:
        np.asarray(open_image(path).data)  # lazy stores fail when read, with the same kind of sentence
    assert str(path.name) in str(error.value) or str(path) in str(error.value)


def _peak_of_reading(path):
    """Open ``path`` in a fresh process that imports only the reader; return (outcome, peak MB)."""
    script = textwrap.dedent(f"""
        from napari_flax_denoise.errors import UserInputError
        from napari_flax_denoise.io.files import open_image
        try:
            open_image({str(path)!r})
            outcome = "read"
        except UserInputError:
            outcome = "refused"
        print(outcome, {PEAK_OF_THIS_PROCESS})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    outcome, peak = run.stdout.split()
    return outcome, int(peak)


@pytest.mark.parametrize("make", [_truncated_bigtiff, _nifti_header_bomb])
def test_size_bombs_are_refused_before_memory_is_spent(tmp_path, make):
    outcome, peak = _peak_of_reading(make(tmp_path))
    assert outcome == "refused" and peak < PEAK_MB


def test_a_weights_archive_with_a_huge_extra_member_loads_without_decompressing_it(tiny_model, tmp_path):
    folder = save_model(tiny_model, tmp_path / "model")
    with zipfile.ZipFile(folder / "weights.npz", "a", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("huge.npy", "w", force_zip64=True) as member:  # 1 GiB of zeros, about 1 MB stored
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (2**28,)})
            block = bytes(2**24)
            for _ in range(64):
                member.write(block)
    assert (folder / "weights.npz").stat().st_size < 8 * 2**20
    script = textwrap.dedent(f"""
        from napari_flax_denoise.models.checkpoint import load_model
        load_model({str(folder)!r})
        print({PEAK_OF_THIS_PROCESS})
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.split()[-1]) < PEAK_MB


def test_a_sparse_file_claiming_hundreds_of_megabytes_is_refused(tmp_path):
    path = tmp_path / "empty.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(shape=(18000, 18000), dtype=np.uint8)  # an empty image, written to be filled later
    if path.stat().st_blocks * 512 > 2**20:
        pytest.skip("this file system does not keep sparse files")
    with pytest.raises(UserInputError, match="stored on disk"):
        open_image(path)


def test_values_beyond_float32_are_refused(tiny_model):
    image = np.random.default_rng(0).random((32, 32))
    image[3, 4] = 1e300
    with pytest.raises(UserInputError, match="float32's range"):
        denoise(image, tiny_model, axes="YX")


@pytest.mark.parametrize("flip", [(1, 1), (-1, 1), (1, -1)])
def test_a_2d_nifti_in_any_orientation_is_read(tmp_path, flip):
    import nibabel

    data = np.arange(64 * 48, dtype=np.float32).reshape(64, 48)  # NIfTI order: X, Y
    nibabel.save(nibabel.Nifti1Image(data, np.diag([0.5 * flip[0], 2.0 * flip[1], 1, 1])), tmp_path / "plane.nii")
    opened = open_image(tmp_path / "plane.nii")
    expected = data.T[:: flip[1], :: flip[0]]  # Y X, turned to RAS
    np.testing.assert_array_equal(opened.data, expected)
    assert opened.axes == "YX" and opened.spacing == {"Y": 2.0, "X": 0.5}


def test_stale_temporaries_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)

    def temporary(output, writer, rest):  # the name atomic_path gives a temporary of process ``writer``
        return tmp_path / (partial_prefix(output).replace(f".{os.getpid()}x", f".{writer}x") + rest)

    out, store = tmp_path / "out.tif", tmp_path / "out.zarr"
    stale_file = temporary(out, dead.stdout.strip(), "abcd1234.partial.tif")
    stale_store = temporary(store, dead.stdout.strip(), "abcd1234.partial")
    live = temporary(out, os.getpid(), "live1234.partial.tif")  # this process: still writing
    for path in (stale_file, live):
        path.write_bytes(b"half")
    stale_store.mkdir()
    (stale_store / "0").write_bytes(b"half")
    with atomic_path(out) as tmp:
        tmp.write_bytes(b"whole")
    write_zarr(store, np.ones((8, 8), np.float32), "YX", {})
    assert out.read_bytes() == b"whole"
    assert not stale_file.exists() and not stale_store.exists() and live.exists()


def test_a_folder_that_is_not_a_zarr_store_is_never_replaced(tmp_path, noisy):
    folder = tmp_path / "results.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("a week of work")
    with pytest.raises(UserInputError, match="not a zarr store"):
        check_output(folder)
    with pytest.raises(UserInputError, match="not a zarr store"):
        write_zarr(folder, noisy, "YX", {})
    assert (folder / "notes.txt").read_text() == "a week of work"
    write_zarr(tmp_path / "ok.zarr", noisy, "YX", {})
    write_zarr(tmp_path / "ok.zarr", noisy * 2, "YX", {})  # a store we wrote is replaced whole
    np.testing.assert_allclose(np.asarray(open_image(tmp_path / "ok.zarr").data), noisy * 2, rtol=1e-6)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def _scale(value):
    def damage(folder):
        meta = json.loads((folder / "model.json").read_text())
        meta["normalization"]["input"]["scale"] = value
        (folder / "model.json").write_text(json.dumps(meta))
    return damage


def _weights(fill):
    def damage(folder):
        with np.load(folder / "weights.npz") as saved:
            arrays = {key: fill(saved[key]) for key in saved.files}
        np.savez(folder / "weights.npz", **arrays)
    return damage


MODELS = {
    "normalisation scale zero": (_scale([0.0]), "normalisation"),
    "normalisation scale a string": (_scale("x"), "normalisation"),
    "weights all NaN": (_weights(lambda a: np.full_like(a, np.nan)), "NaN"),
    "weights that are strings": (_weights(lambda a: np.full(a.shape, "x")), "wrong shape or type"),
}


@pytest.mark.parametrize("case", sorted(MODELS))
def test_a_model_with_impossible_contents_is_reported_as_corrupted(tiny_model, tmp_path, case):
    damage, fragment = MODELS[case]
    folder = save_model(tiny_model, tmp_path / "model")
    damage(folder)
    with pytest.raises(UserInputError, match=fragment):
        load_model(folder)


def test_a_store_set_aside_by_a_killed_writer_is_put_back(tmp_path, noisy):
    from napari_flax_denoise.io.zarr_store import zarr_output

    store = tmp_path / "out.zarr"
    write_zarr(store, noisy, "YX", {})
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / (partial_prefix(store).replace(f".{os.getpid()}x", f".{dead.stdout.strip()}x") + "k.partial")
    aside.mkdir()
    os.replace(store, aside / store.name)  # killed between moving the old store aside and moving the new one in
    with pytest.raises(RuntimeError):
        with zarr_output(store, noisy.shape, "YX", {}):
            raise RuntimeError("this write fails too")
    np.testing.assert_allclose(np.asarray(open_image(store).data), noisy, rtol=1e-6)
    assert not aside.exists()
