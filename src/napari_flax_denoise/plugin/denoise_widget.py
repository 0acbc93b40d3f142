"""The Denoise widget: an image layer (or a folder of files) and a model in, denoised images out."""

from __future__ import annotations

import time
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from magicgui.widgets import create_widget
from napari.utils.notifications import show_info, show_warning

from .._version import __version__
from ..errors import UserInputError
from ..inference.batch import denoise_files
from ..inference.fusion import fusion_applies
from ..inference.prediction import denoise_iter
from ..models.embedded import DEFAULT, default_model_for
from ..noise.level import variance_line
from . import running
from .layers import (check_axes_override, describe_axes, describe_fusion, describe_noise, infer_axes, layer_data,
                     result_layer)
from .registry import MODELS
from .settings import Remembered

LAYER, FOLDER = "an image layer", "a folder of files (from disk)"
SAME_FORMAT = "same as each input"
FUSION_TIP = ("Weigh each noisy pixel back in where the noise allows (n2v / n2v2 models and general-2d): restores "
              "detail that blind-spot models blur and that general-2d smooths at weak noise.")
NOISE_TIP = ("Leave empty to estimate it from each image. Otherwise the noise's standard deviation in the image's "
             "intensity units (e.g. 25), or gain,variance for photon noise (variance = gain x intensity + variance).")
NO_NOISE_TIP = "Not for this model: it finds the noise level itself (noise-aware models, such as general-2d, take it)."
NO_FUSION_TIP = "Not for this model: its results are on its targets' intensity scale, not the noisy image's."


class DenoiseWidget(Container):
    """Denoise the chosen image layer, or every image of a folder, with the chosen model in a worker thread.

    A layer's result is added as "<input> denoised" with the input's scale,
    translate, rotation, affine and metadata; the model and settings are
    recorded in ``layer.metadata["napari_flax_denoise"]``. A folder's results
    are written to the output folder under their inputs' names. Inputs are
    never modified.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.worker, self._started = None, time.monotonic()
        self._preselected = None  # the model this widget chose (not the user), which it may change
        self.source = ComboBox(label="Denoise", choices=[LAYER, FOLDER], value=LAYER,
                               tooltip="An image layer of the viewer, or every image file in a folder on disk "
                                       "(written to an output folder; the model is loaded once).")
        self.image = create_widget(annotation=napari.layers.Image, label="Image")
        self.image.tooltip = "The noisy image layer; it is not changed."
        self.input_folder = FileEdit(label="Input folder", mode="d",
                                     tooltip="Its image files (TIFF, .npy, PNG, NIfTI, .dcm) and .zarr stores are "
                                             "denoised; subfolders are not searched.")
        self.output_folder = FileEdit(label="Output folder", mode="d",
                                      tooltip="Each result keeps its input's name; existing files of that name are "
                                              "replaced.")
        self.format = ComboBox(label="Format", choices=[SAME_FORMAT, ".tif", ".npy", ".png", ".nii.gz", ".zarr"],
                               value=SAME_FORMAT, tooltip="File format of the results (DICOM inputs become .tif).")
        self.model = ComboBox(label="Model", choices=lambda _: MODELS.names(),
                              tooltip="general-2d (2D images) and general-3d (stacks with Z) work with no "
                                      "training; models you train or load appear here.")
        self.model_folder = FileEdit(label="Load model", mode="d",
                                     tooltip="A model folder saved by training (Train / Fine-tune, or flax-denoise "
                                             "train).")
        self.info = Label(value="")
        self.tta = CheckBox(text="Test-time augmentation (8 passes, better)",
                            tooltip="Average the predictions of the 8 flips and quarter turns: slightly better, "
                                    "8x slower.")
        self.uncertainty = CheckBox(text="Add an uncertainty layer (uses TTA)",
                                    tooltip="The standard deviation of the 8 TTA predictions: where the result is "
                                            "least certain.")
        self.replace = CheckBox(text="Replace the previous result",
                                tooltip="Put a new result in place of the last one made from the same image "
                                        "instead of adding another layer.")
        self.advanced = CheckBox(text="Show advanced settings",
                                 tooltip="Axes, pixel fusion, noise level and precision.")
        self.axes = LineEdit(label="Axes", tooltip="Leave empty to infer. Letters: Y X (image), Z (depth), T (time), "
                                                   "C (channels), S (separate images), e.g. YX, ZYX, TYX, YXC.")
        self.fusion = CheckBox(text="Fuse with the noisy pixels", value=True, tooltip=FUSION_TIP)
        self.noise_level = LineEdit(label="Noise level", tooltip=NOISE_TIP)
        self.precision = ComboBox(label="Precision", choices=["float32", "bfloat16"], value="float32",
                                  tooltip="bfloat16 is about twice as fast on GPUs with tensor cores, at a small "
                                          "cost in quality (a few hundredths of a dB on the bench images).")
        self.defaults_button = PushButton(text="Restore defaults", tooltip="Put every setting back to its default.")
        self.run_button = PushButton(text="Denoise", tooltip="Start denoising in the background.")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip="Stop after the current tile.")
        self.progress = ProgressBar(value=0, min=0, max=1, label="Progress")
        self.status = Label(value="")
        self.device = Label(value=running.device_label())
        self.help = running.help_links()
        self.extend([self.source, self.image, self.input_folder, self.output_folder, self.format, self.model,
                     self.model_folder, self.info, self.tta, self.uncertainty, self.replace, self.advanced,
                     self.axes, self.fusion, self.noise_level, self.precision, self.defaults_button, self.run_button,
                     self.cancel_button, self.progress, self.status, self.device, self.help])
        self.settings = Remembered("denoise", {
            "source": self.source, "format": self.format, "tta": self.tta, "uncertainty": self.uncertainty,
            "replace": self.replace, "advanced": self.advanced, "fusion": self.fusion, "precision": self.precision})
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.defaults_button.changed.connect(self.settings.restore_defaults)
        self.model_folder.changed.connect(lambda folder: running.load_model_folder(folder, self.model))
        self.uncertainty.changed.connect(lambda on: on and setattr(self.tta, "value", True))
        self.image.changed.connect(lambda *_: self._preselect())
        for control in (self.image, self.model, self.source, self.advanced):
            control.changed.connect(self._show)
        running.follow(MODELS.changed, self, self._models_changed)
        self._models_changed()
        self._show()  # the remembered source and advanced settings, before napari first refreshes the widget

    def reset_choices(self, *_):
        """Refresh the layer and model lists (napari calls this when layers change)."""
        super().reset_choices()
        self._show()

    def _models_changed(self):
        self.model.reset_choices()
        self._preselect(force=True)

    def _preselect(self, force: bool = False):
        """Select the model for the image: after a model is trained or loaded (``force``), the newest of
        this session, else the embedded default for the image's dimensionality; when the image changes,
        general-2d and general-3d follow it (general-3d for a layer with Z), unless the user chose a model."""
        if not force and (self.model.value != self._preselected or self._preselected not in DEFAULT.values()):
            return
        try:
            layer = self.image.value
            default = default_model_for(infer_axes(layer), layer_data(layer).shape)[0]
        except UserInputError:  # no image layer yet
            default = None
        preferred = MODELS.preferred(default) if force else default
        if preferred in MODELS.names():
            self._preselected = preferred
            self.model.value = preferred

    def _show(self, *_):
        """Show the controls that apply, and say in words how the image will be read."""
        folder = self.source.value == FOLDER
        self.image.visible = not folder
        for control in (self.input_folder, self.output_folder, self.format):
            control.visible = folder
        self.replace.visible = not folder
        for control in (self.axes, self.fusion, self.noise_level, self.precision):
            control.visible = bool(self.advanced.value)
        try:
            model = MODELS.get(self.model.value)
        except UserInputError:
            self.info.value = ""
            return
        self.fusion.enabled = fusion_applies(model.config)
        self.fusion.tooltip = FUSION_TIP if self.fusion.enabled else NO_FUSION_TIP
        self.noise_level.enabled = model.config.noise_input
        self.noise_level.tooltip = NOISE_TIP if model.config.noise_input else NO_NOISE_TIP
        if folder:
            self.info.value = "Each file's axes come from the file (or Axes, under advanced settings)."
            return
        try:
            layer = self.image.value
            axes = infer_axes(layer, model.config.dims)
            self.info.value = describe_axes(axes, layer_data(layer).shape, infer_axes(layer))
        except UserInputError:
            self.info.value = ""

    def start(self):
        """Start denoising (a notification explains anything that prevents it)."""
        try:
            model = MODELS.get(self.model.value)
            options = dict(tta=bool(self.tta.value or self.uncertainty.value), precision=self.precision.value,
                           fusion=bool(self.fusion.value) and fusion_applies(model.config),
                           noise_level=self._noise_level(model))
            if self.source.value == FOLDER:
                job, args, kwargs, on_return = self._folder_job(model)
            else:
                job, args, kwargs, on_return = self._layer_job(model, options)
        except UserInputError as error:
            running.report(error, "Denoising")
            return
        self._running(True)
        self.worker = running.start(
            job, *args, owner=self, action="Denoising", on_yield=self._on_progress, on_return=on_return,
            on_finish=self._finished, **options, **kwargs)

    def _noise_level(self, model):
        """The noise level typed under advanced settings (None: estimated from each image), checked."""
        text = self.noise_level.value.strip()
        if not text or not model.config.noise_input:
            return None
        variance_line(text)  # a clear message for a typo, before anything starts
        return text

    def _layer_job(self, model, options):
        layer = self.image.value
        data = layer_data(layer)
        axes = check_axes_override(self.axes.value, layer) or infer_axes(layer, model.config.dims)
        settings = {"model": self.model.value, "algorithm": model.config.algorithm, "axes": axes, **options,
                    "version": __version__}
        report = {}
        kwargs = dict(axes=axes, return_std=bool(self.uncertainty.value), report=report)
        return denoise_iter, (data, model), kwargs, lambda result: self._add_result(layer, settings, result, report)

    def _folder_job(self, model):
        source, target = (None if str(v) in ("", ".") else Path(v)
                          for v in (self.input_folder.value, self.output_folder.value))
        if source is None or target is None:
            raise UserInputError("Choose an input folder and an output folder first.")
        suffix = None if self.format.value == SAME_FORMAT else self.format.value
        kwargs = dict(suffix=suffix, axes=(self.axes.value or "").strip() or None, planes=True,
                      uncertainty_folder=target / "uncertainty" if self.uncertainty.value else None)
        return denoise_files, ([source], target, model), kwargs, lambda result: self._report_files(result, target)

    def cancel(self):
        """Stop the running job after the current tile."""
        if self.worker is not None:
            self.worker.quit()
            self.status.value = "Cancelling after the current tile ..."

    def _running(self, on: bool):
        self.run_button.enabled, self.cancel_button.enabled = not on, on
        if on:
            self._started = time.monotonic()
            self.progress.max, self.progress.value = 1, 0
            self.status.value = "Starting; the first image of a size also compiles the network ..."

    def _finished(self):
        self._running(False)
        if self.status.value.startswith("Cancelling"):
            self.status.value = "Cancelled: nothing was added."
        elif self.status.value.startswith(("Starting", "file ", "Denoising")):
            self.status.value = "Stopped without a result (see the message)."

    def _on_progress(self, progress):
        self.progress.max, self.progress.value = progress.total, progress.done
        if self.status.value.startswith("Cancelling"):
            return
        left = ""
        if 0 < progress.done < progress.total:
            seconds = (time.monotonic() - self._started) * (progress.total - progress.done) / progress.done
            left = f" · about {int(seconds) // 60}:{int(seconds) % 60:02d} left"
        if getattr(progress, "files", 0):
            self.status.value = f"file {progress.file}/{progress.files}: {progress.name}{left}"
        else:
            self.status.value = f"Denoising · {100 * progress.done // max(progress.total, 1)}%{left}"

    def _add_result(self, layer, settings, result, report):
        denoised, std = result if isinstance(result, tuple) else (result, None)
        fusion, weights = describe_fusion(report), report.get("fusion_weights")
        if weights:
            settings = {**settings, "fusion_weight": float(sum(weights) / len(weights))}
        if report.get("noise_sigmas"):
            settings = {**settings, "noise_sigma": float(sum(report["noise_sigmas"]) / len(report["noise_sigmas"]))}
        same_scale = settings["algorithm"] != "care"  # care answers on its targets' scale, not the input's
        for data, name, contrast in ((denoised, f"{layer.name} denoised", same_scale),
                                     (std, f"{layer.name} uncertainty", False)):
            if data is None:
                continue
            data, kwargs, _ = result_layer(layer, data, name, settings, contrast=contrast)
            previous = self.viewer.layers[name] if self.replace.value and name in self.viewer.layers else None
            if previous is not None and "napari_flax_denoise" in previous.metadata:  # ours: take its place
                index = self.viewer.layers.index(previous)
                self.viewer.layers.remove(previous)
                added = self.viewer.add_image(data, **kwargs)
                if not isinstance(added, list):  # one layer per channel stays where napari puts them
                    self.viewer.layers.move(self.viewer.layers.index(added), index)
            else:
                self.viewer.add_image(data, **kwargs)
        noise = describe_noise(report, settings.get("noise_level") is not None)
        self.status.value = f"Done: '{layer.name} denoised' ({fusion}{'; ' + noise if noise else ''})."

    def _report_files(self, result, folder):
        count = len(result.written) + len(result.failed)
        self.status.value = f"Done: {len(result.written)} of {count} images written to {folder}."
        for note in result.notes:
            show_info(note)
        if result.failed:
            skipped = "; ".join(f"{path.name}: {reason}" for path, reason in result.failed[:3])
            more = f" (and {len(result.failed) - 3} more)" if len(result.failed) > 3 else ""
            show_warning(f"{len(result.failed)} of {count} images were skipped{more}. {skipped}")
