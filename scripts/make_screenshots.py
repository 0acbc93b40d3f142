"""Screenshots of the widgets for the README, taken in a real napari window.

Run under a virtual display on a machine without one::

    xvfb-run -a python scripts/make_screenshots.py

It trains a model in the Train / Fine-tune widget on the shipped noisy nuclei
sample (about a minute on 2 CPU cores), denoises the sample with it in the
Denoise widget, and writes ``docs/train_widget.png`` and
``docs/denoise_widget.png``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import imageio.v3 as iio
import napari
from qtpy.QtWidgets import QApplication

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLUGIN = "napari-flax-denoise"


def wait_until(condition, timeout=900):
    """Let Qt process events until ``condition()`` holds."""
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError("the widget did not finish in time")
        QApplication.processEvents()
        time.sleep(0.05)


def snap(viewer, name):
    for _ in range(20):  # let the canvas and the docks repaint
        QApplication.processEvents()
        time.sleep(0.05)
    iio.imwrite(DOCS / name, viewer.screenshot(canvas_only=False, flash=False))
    print(f"wrote docs/{name}")


def main():
    os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp()  # the widgets' defaults, not this user's remembered settings
    DOCS.mkdir(exist_ok=True)
    viewer = napari.Viewer(title="napari-flax-denoise")
    viewer.window._qt_window.resize(1700, 950)
    [layer] = viewer.open_sample(PLUGIN, "nuclei_2d")
    _, trainer = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / Fine-tune")
    trainer.images.value = [layer]
    trainer.epochs.value, trainer.steps_per_epoch.value, trainer.preview_every.value = 6, 25, 10
    trainer.start_button.native.click()
    wait_until(lambda: trainer.result is not None and trainer.start_button.enabled)
    snap(viewer, "train_widget.png")
    viewer.window.remove_dock_widget("all")
    viewer.layers.remove("nuclei (noisy) preview")
    _, denoiser = viewer.window.add_plugin_dock_widget(PLUGIN, "Denoise")
    denoiser.image.value = layer
    denoiser.tta.value = True
    denoiser.run_button.native.click()
    wait_until(lambda: "nuclei (noisy) denoised" in viewer.layers and denoiser.run_button.enabled)
    viewer.grid.enabled = True
    viewer.reset_view()
    time.sleep(6)  # let the "training ended" notification fade
    snap(viewer, "denoise_widget.png")
    viewer.close()


if __name__ == "__main__":
    main()
