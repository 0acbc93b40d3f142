import subprocess
import sys
from pathlib import Path

import napari_flax_denoise

GUI = {"plugin.denoise_widget", "plugin.train_widget", "plugin.running", "plugin.loss_plot"}
PACKAGE = Path(napari_flax_denoise.__file__).parent
# Every module but the widgets' Qt side: the core, the CLI and the plugin's GUI-free helpers.
CORE = sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
              if p.name != "__init__.py" and ".".join(p.relative_to(PACKAGE).with_suffix("").parts) not in GUI)


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
