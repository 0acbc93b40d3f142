import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_flax_denoise import denoise
from napari_flax_denoise.models.checkpoint import save_model


def flax_denoise(*args, cwd=None):
    """Run the real console entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "napari_flax_denoise.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def flax_denoise_together(*commands):
    """Run several independent commands at once (most of each is importing and compiling, on one core)."""
    processes = [subprocess.Popen([sys.executable, "-m", "napari_flax_denoise.cli", *map(str, args)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for args in commands]
    outputs = [p.communicate() for p in processes]
    return [subprocess.CompletedProcess(p.args, p.returncode, *out) for p, out in zip(processes, outputs)]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def files(tmp_path_factory, noisy, clean, tiny_model):
    d = tmp_path_factory.mktemp("cli")
    tifffile.imwrite(d / "noisy.tif", noisy)
    tifffile.imwrite(d / "clean.tif", clean)
    np.save(d / "noisy.npy", noisy)
    save_model(tiny_model, d / "model")
    return d


def test_train_denoise_evaluate_end_to_end(files, tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"features": 8, "batch_size": 4, "patch_size": 32}))
    # Training, denoising with a saved model and fine-tuning it (--init) are independent: run them at once.
    trained, denoised, tuned = flax_denoise_together(
        ("train", files / "noisy.tif", "--axes", "YX", "--output", tmp_path / "m", "--epochs", 2,
         "--steps-per-epoch", 3, "--config", config, "--seed", 1),
        ("denoise", files / "noisy.npy", "--output", tmp_path / "out.tif", "--model", files / "model",
         "--uncertainty", tmp_path / "std.tif"),
        ("train", files / "noisy.tif", "--axes", "YX", "--output", tmp_path / "ft", "--epochs", 1,
         "--steps-per-epoch", 2, "--init", files / "model", "--patch-size", 32, "--batch-size", 2))
    for run in (trained, denoised, tuned):
        assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "m" / "model.json").read_text())["config"]["features"] == 8
    assert json.loads((tmp_path / "ft" / "model.json").read_text())["info"]["fine_tuned_from"] == "model"
    out = tifffile.imread(tmp_path / "out.tif")
    assert out.shape == (128, 128) and out.dtype == np.float32
    assert tifffile.imread(tmp_path / "std.tif").shape == out.shape
    run = flax_denoise("evaluate", tmp_path / "out.tif", "--target", files / "clean.tif", "--json")
    assert run.returncode == 0, run.stderr
    scores = json.loads(run.stdout)
    assert set(scores) == {"psnr", "ssim", "mse"} and scores["psnr"] > 20


def test_denoise_without_fusion_keeps_the_prediction(files, tmp_path, noisy, tiny_model):
    run = flax_denoise("denoise", files / "noisy.tif", "--output", tmp_path / "plain.tif", "--model", files / "model",
                       "--no-fusion")
    assert run.returncode == 0, run.stderr
    plain = tifffile.imread(tmp_path / "plain.tif")
    np.testing.assert_allclose(plain, denoise(noisy, tiny_model, axes="YX", fusion=False), atol=1e-4)
    assert not np.allclose(plain, denoise(noisy, tiny_model, axes="YX"), atol=1e-2)


def _write(d, name, array):
    path = d / name
    if name.endswith(".npy"):
        np.save(path, array)
    else:
        tifffile.imwrite(path, array)
    return path


BAD = {
    "wrong axes": (["denoise", "{noisy}", "--axes", "ZYX"], "dimension"),
    "unknown axis": (["denoise", "{noisy}", "--axes", "YQ"], "unknown"),
    "nan image": (["denoise", "{nan}"], "NaN"),
    "noise level for a model without one": (["denoise", "{noisy}", "--noise-level", "25"], "does not take a noise"),
    "unreadable noise level": (["denoise", "{noisy}", "--model", "general-2d", "--noise-level", "loud"],
                               "noise level must be"),
    "constant image": (["denoise", "{constant}"], "constant"),
    "complex image": (["denoise", "{complex}"], "complex"),
    "bool image": (["denoise", "{bool}"], "bool"),
    "empty image": (["denoise", "{empty}"], "empty"),
    "one pixel": (["denoise", "{pixel}", "--axes", "YX"], "too small"),
    "unreadable": (["denoise", "{garbage}"], "Could not read"),
    "missing input": (["denoise", "{dir}/nothing.tif"], "does not exist"),
    "missing model": (["denoise", "{noisy}", "--model", "{dir}/nomodel"], "neither a model directory"),
    "corrupted model": (["denoise", "{noisy}", "--model", "{broken}"], "corrupted"),
    "2D model on 3D": (["denoise", "{volume}", "--axes", "ZYX"], "2D model"),
    "negative epochs": (["train", "{noisy}", "--axes", "YX", "--epochs", "-3"], "at least 1"),
    "bad learning rate": (["train", "{noisy}", "--axes", "YX", "--learning-rate", "-1"], "learning_rate"),
    "target shape": (["train", "{noisy}", "--axes", "YX", "--algorithm", "care", "--target", "{small}"], "match"),
    "target for n2v": (["train", "{noisy}", "--axes", "YX", "--target", "{noisy}"], "drop the targets"),
    "bad extension": (["denoise", "{dir}/x.jpg"], "extension"),
    "config is a folder": (["train", "{noisy}", "--axes", "YX", "--config", "{dir}"], "is a folder"),
    "evaluate shapes": (["evaluate", "{noisy}", "--target", "{small}"], "same shape"),
}


def _bad_case(files, folder, case):
    """A BAD case's command line, with the files it names written into ``folder``."""
    rng = np.random.default_rng(0)
    paths = {
        "noisy": files / "noisy.tif", "dir": folder, "broken": folder / "broken",
        "nan": _write(folder, "nan.npy", np.full((32, 32), np.nan)),
        "constant": _write(folder, "constant.npy", np.full((32, 32), 3.0)),
        "complex": _write(folder, "complex.npy", np.ones((32, 32), complex)),
        "bool": _write(folder, "bool.npy", np.ones((32, 32), bool)),
        "empty": _write(folder, "empty.npy", np.ones((0, 32))),
        "pixel": _write(folder, "pixel.npy", np.ones((1, 1))),
        "volume": _write(folder, "volume.tif", rng.random((8, 32, 32)).astype(np.float32)),
        "small": _write(folder, "small.tif", rng.random((64, 64)).astype(np.float32)),
    }
    (folder / "garbage.tif").write_bytes(b"II*\x00 this is not a tiff")
    paths["garbage"] = folder / "garbage.tif"
    (folder / "broken").mkdir()
    (folder / "broken" / "model.json").write_text("{not json")
    args = [a.format(**paths) for a in BAD[case][0] if a is not None]
    if args[0] == "denoise":
        args += ["--output", folder / "out.tif"]
        if "--model" not in args:
            args += ["--model", files / "model"]
    if args[0] == "train":
        args += ["--output", folder / "trained"]
    return args, {p: _digest(p) for p in paths.values() if p.is_file()}


# Each BAD case is mostly Python and JAX starting (3 s). These run as commands of their own; the others one
# after another through the command's entry point (``cli.main``) in one more process, which starts once.
OWN_PROCESS = ("nan image", "corrupted model", "negative epochs", "unreadable")
IN_ONE_PROCESS = """
import contextlib, io, json, sys
from napari_flax_denoise.cli import main

results = []
for argv in json.loads(sys.stdin.read()):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit:  # argparse's own refusals
            status = exit.code
    results.append([status, stderr.getvalue()])
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_runs(files, tmp_path_factory):
    """Every BAD case, each in its own folder: a real process per case for OWN_PROCESS, one for the rest."""
    folders = {case: tmp_path_factory.mktemp("bad") for case in BAD}
    cases = {case: _bad_case(files, folder, case) for case, folder in folders.items()}
    shared = [case for case in BAD if case not in OWN_PROCESS]
    together = subprocess.Popen([sys.executable, "-c", IN_ONE_PROCESS], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    own = flax_denoise_together(*[cases[case][0] for case in OWN_PROCESS])
    out, err = together.communicate(json.dumps([list(map(str, cases[case][0])) for case in shared]))
    assert together.returncode == 0, err
    runs = dict(zip(OWN_PROCESS, own))
    runs.update({case: subprocess.CompletedProcess(cases[case][0], status, "", stderr)
                 for case, (status, stderr) in zip(shared, json.loads(out.splitlines()[-1]))})
    return {case: (folders[case], inputs, runs[case]) for case, (_, inputs) in cases.items()}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_exit_2_without_traceback(bad_runs, case):
    folder, inputs, run = bad_runs[case]
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr
    assert BAD[case][1] in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("flax-denoise ")  # the error is the last line
    assert "batch/s" not in run.stderr and "step/s" not in run.stderr  # and no progress bar came before it
    assert not (folder / "out.tif").exists()
    assert {p: _digest(p) for p in inputs} == inputs  # inputs never modified


OUTPUT_CASES = {  # output arguments -> what the sentence says; checked before anything is read or computed
    "output is the input": (["--output", "{noisy}"], "would overwrite the input"),
    "output is the input store": (["--output", "{store}"], "would overwrite the input"),
    "output inside the input store": (["--output", "{store}/out.tif"], "would overwrite the input"),
    "uncertainty is the output": (["--output", "{dir}/out.tif", "--uncertainty", "{dir}/out.tif"], "same file"),
    "uncertainty extension": (["--output", "{dir}/out.tif", "--uncertainty", "{dir}/std.jpg"], "extension"),
    "format with one output file": (["--output", "{dir}/out.tif", "--format", "npy"], "--format applies"),
    "output under a file": (["--output", "{plain}/out.tif"], "which is a file"),
    "output name too long": (["--output", "{dir}/" + "n" * 230 + ".tif"], "too long"),
}


@pytest.mark.parametrize("case", sorted(OUTPUT_CASES))
def test_outputs_that_would_lose_data_or_fail_late_are_refused_first(files, tmp_path, case):
    import zarr

    noisy = tmp_path / "in.tif"
    noisy.write_bytes((files / "noisy.tif").read_bytes())
    store = tmp_path / "in.zarr"
    zarr.open_array(store, mode="w", shape=(64, 64), dtype="float32")[...] = 1.0
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").write_text("a file, not a folder")
    paths = {"noisy": noisy, "store": store, "dir": tmp_path, "folder": tmp_path / "folder", "plain": tmp_path / "plain"}
    args, fragment = OUTPUT_CASES[case]
    source = store if "store" in case else noisy
    before = {p: _digest(p) for p in [noisy, *store.rglob("*")] if p.is_file()}
    listing = sorted(tmp_path.rglob("*"))
    run = flax_denoise("denoise", source, "--model", files / "model", "--axes", "YX",
                       *[a.format(**paths) for a in args])
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
    assert fragment in run.stderr
    assert {p: _digest(p) for p in before} == before and sorted(tmp_path.rglob("*")) == listing  # nothing written


def test_many_inputs_go_into_a_folder_each_keeping_its_name(files, tmp_path, noisy, tiny_model):
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", noisy)
    np.save(folder / "b.npy", noisy[:64, :96])
    np.save(folder / "flat.npy", np.ones((32, 32), np.float32))
    (folder / ".hidden.tif").write_bytes(b"not read")
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "c.tif"
    tifffile.imwrite(single, noisy[::2, ::2])
    clash = tmp_path / "clash"
    clash.mkdir()
    tifffile.imwrite(clash / "d.tif", noisy)
    np.save(clash / "d.npy", noisy)
    (tmp_path / "existing").mkdir()
    before = {p: _digest(p) for p in tmp_path.rglob("*") if p.is_file()}
    model = ("--model", files / "model", "--no-fusion", "--quiet")
    many, clashing, into = flax_denoise_together(
        ("denoise", folder, single, "--output", tmp_path / "out", *model),
        ("denoise", clash / "d.*", "--output", tmp_path / "both", "--format", "npy", *model),  # our glob, no shell
        ("denoise", single, "--output", tmp_path / "existing", *model))
    assert many.returncode == 2 and "Traceback" not in many.stderr, many.stderr  # one input failed, the rest written
    assert "Skipped" in many.stderr and "flat.npy" in many.stderr and "constant" in many.stderr
    assert "Denoised 3 of 4 images" in many.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.tif", "b.npy", "c.tif"]
    expected = {"a.tif": noisy, "b.npy": noisy[:64, :96], "c.tif": noisy[::2, ::2]}
    for name, image in expected.items():
        path = tmp_path / "out" / name
        written = np.load(path) if name.endswith(".npy") else tifffile.imread(path)
        np.testing.assert_allclose(written, denoise(image, tiny_model, axes="YX", fusion=False), atol=1e-4)
    assert clashing.returncode == 2 and "would both be written to 'd.npy'" in clashing.stderr, clashing.stderr
    assert not (tmp_path / "both").exists()
    assert into.returncode == 0, into.stderr
    assert [p.name for p in (tmp_path / "existing").iterdir()] == ["c.tif"]
    assert {p: _digest(p) for p in before} == before


def test_a_model_folder_that_is_an_input_is_refused_before_training(files, tmp_path):
    noisy = tmp_path / "in.tif"
    noisy.write_bytes((files / "noisy.tif").read_bytes())
    run = flax_denoise("train", noisy, "--axes", "YX", "--output", noisy)
    assert run.returncode == 2 and "would overwrite the input" in run.stderr, run.stderr
    assert _digest(noisy) == _digest(files / "noisy.tif")


def test_outputs_get_the_users_umask(files, tmp_path):
    command = 'umask 027 && exec "$0" -m napari_flax_denoise.cli "$@"'  # a shell sets it: no fork of this process
    run = subprocess.run(["sh", "-c", command, sys.executable, "denoise", str(files / "noisy.tif"),
                          "--model", str(files / "model"), "--output", str(tmp_path / "out.tif"), "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "out.tif").stat().st_mode & 0o777 == 0o640  # mkstemp alone gave 0600


def test_evaluate_handles_tiny_and_colour_images(tmp_path):
    rng = np.random.default_rng(0)
    for name, shape in {"tiny": (5, 5), "colour": (32, 32, 3), "dot": (2, 2)}.items():
        np.save(tmp_path / f"{name}_a.npy", rng.random(shape).astype(np.float32))
        np.save(tmp_path / f"{name}_b.npy", rng.random(shape).astype(np.float32))
    for name in ("tiny", "colour"):
        run = flax_denoise("evaluate", tmp_path / f"{name}_a.npy", "--target", tmp_path / f"{name}_b.npy", "--json")
        assert run.returncode == 0, run.stderr
        assert -1 <= json.loads(run.stdout)["ssim"] <= 1
    run = flax_denoise("evaluate", tmp_path / "dot_a.npy", "--target", tmp_path / "dot_b.npy")
    assert run.returncode == 2 and "too small for SSIM" in run.stderr


def test_an_internal_error_asks_for_a_report_and_logs_its_traceback(tmp_path):
    # A bug planted in this process only: the command's own code raises where no user can help.
    script = ("import sys; from napari_flax_denoise import cli; "
              "cli._models = lambda args: {}['planted bug']; sys.exit(cli.main(['models']))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert run.returncode == 1
    assert "please report it" in run.stderr and "Traceback" not in run.stderr
    [log] = (tmp_path / "napari-flax-denoise" / "errors").iterdir()
    assert str(log) in run.stderr
    assert "Traceback" in log.read_text() and "planted bug" in log.read_text()
