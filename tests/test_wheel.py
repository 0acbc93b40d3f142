"""The wheel a user gets from the napari hub: built, installed into a fresh venv, discovered by npe2."""

import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ["README.md", "cell2d_clean.tif", "cell2d_noisy.tif", "ct2d.tif", "fmri3d_noisy.tif", "nuclei2d_noisy.tif"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("build")
    source = tmp_path_factory.mktemp("source") / "repo"  # build in a copy: the checkout stays clean
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info",
                                                                "__pycache__", ".pytest_cache"))
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(source)],
                   check=True, capture_output=True, text=True)
    [built] = out.glob("napari_flax_denoise-*.whl")
    return built


def test_wheel_holds_manifest_samples_and_hub_metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "napari_flax_denoise/napari.yaml" in names
    assert {f"napari_flax_denoise/sample_data/{name}" for name in SAMPLES} <= names
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names)
    assert "[napari.manifest]" in entry_points and "napari-flax-denoise = napari_flax_denoise:napari.yaml" in entry_points
    for line in ("Classifier: Framework :: napari", "Summary: Deep-learning denoising", "Project-URL: Source Code",
                 "Description-Content-Type: text/markdown"):
        assert line in metadata
    assert "Requires-Dist: PyQt" not in metadata.split("Provides-Extra")[0]  # Qt only in extras


def test_installed_wheel_is_valid_for_npe2_and_opens_its_samples(wheel, tmp_path):
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    python = env / "bin" / "python"
    # The new venv sees the dependencies this interpreter sees (its own venv's or tox's when the suite runs in one,
    # not only the system's), after its own site-packages; the package itself comes from the wheel only: the
    # folders of this interpreter's path are listed, less the checkout and any copy of the package.
    own = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                         capture_output=True, text=True).stdout.strip()
    folders = [p for p in map(Path, filter(None, sys.path)) if p.is_dir() and not p.is_relative_to(ROOT)
               and not (p / "napari_flax_denoise").exists()]
    Path(own, "_dependencies.pth").write_text("".join(f"{folder}\n" for folder in folders))
    subprocess.run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], check=True)
    check = (
        "import napari_flax_denoise, sys\n"
        f"assert napari_flax_denoise.__file__.startswith({str(env)!r}), napari_flax_denoise.__file__\n"
        "import npe2\n"
        "pm = npe2.PluginManager.instance(); pm.discover()\n"
        "[layer] = pm.get_manifest('napari-flax-denoise').contributions.sample_data[1].exec()\n"
        "print(layer[0].shape)\n"
    )
    shown = subprocess.run([python, "-c", check], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert shown.stdout.strip() == "(24, 96, 128)"
    validated = subprocess.run([python, "-m", "npe2", "validate", "napari-flax-denoise"], capture_output=True,
                               text=True, cwd=tmp_path)
    assert validated.returncode == 0 and "valid" in validated.stdout, validated.stdout + validated.stderr
