import subprocess
import sys

CORE = ["axes", "config", "model", "masking", "patches", "data", "steps", "training", "prediction",
        "checkpoint", "resume", "files", "metrics", "baselines", "cli", "samples",
        "plugin.layers", "plugin.jobs", "plugin.training_process", "plugin.registry", "plugin.file_io", "dicom", "nifti", "zarr_store",
        "embedded", "cluster", "devices"]


def _modules_after(code):
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_core_imports_no_gui():
    imports = "; ".join(f"import napari_flax_denoise.{m}" for m in CORE)
    loaded = _modules_after(imports)
    assert "jax" in loaded  # the imports really happened
    assert not {m for m in loaded if m.split(".")[0] in {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui"}}


def test_package_import_does_not_load_jax():
    loaded = _modules_after("import napari_flax_denoise")
    assert "napari_flax_denoise" in loaded and "jax" not in loaded and "flax" not in loaded
