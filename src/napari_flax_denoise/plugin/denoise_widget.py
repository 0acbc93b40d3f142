"""The Denoise widget: an image layer and a model in, a denoised layer beside it out."""

from __future__ import annotations

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, Label, LineEdit, ProgressBar, PushButton
from magicgui.widgets import create_widget

from .._version import __version__
from ..errors import UserInputError
from ..inference.fusion import fusion_applies
from ..inference.prediction import denoise_iter
from . import running
from .layers import check_axes_override, infer_axes, layer_data, result_layer
from .registry import MODELS


class DenoiseWidget(Container):
    """Denoise the chosen image layer with the chosen model in a worker thread.

    The result is added as "<input> denoised" with the input's scale,
    translate, rotation, affine and metadata; the model and settings are
    recorded in ``layer.metadata["napari_flax_denoise"]``. The input layer is
    never modified.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.worker = None
        self.image = create_widget(annotation=napari.layers.Image, label="Image")
        self.axes = LineEdit(label="Axes", tooltip="Leave empty to infer (e.g. YX, ZYX, TYX, YXC).")
        self.model = ComboBox(label="Model", choices=lambda _: MODELS.names())
        self.model_folder = FileEdit(label="Load model", mode="d", tooltip="A model folder saved by training.")
        self.tta = CheckBox(text="Test-time augmentation (8 passes, better)")
        self.uncertainty = CheckBox(text="Add an uncertainty layer (uses TTA)")
        self.fusion = CheckBox(text="Fuse with the noisy pixels", value=True,
                               tooltip="Weigh each noisy pixel back in where the noise allows (n2v / n2v2 "
                                       "models and general-2d): restores detail that blind-spot models blur "
                                       "and that general-2d smooths at weak noise.")
        self.precision = ComboBox(label="Precision", choices=["float32", "bfloat16"], value="float32",
                                  tooltip="bfloat16 is about twice as fast on GPUs with tensor cores, at a small "
                                          "cost in quality (a few hundredths of a dB on the bench images).")
        self.info = Label(value="")
        self.device = Label(value=running.device_label())
        self.run_button = PushButton(text="Denoise")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.progress = ProgressBar(value=0, min=0, max=1, label="Progress")
        self.extend([self.image, self.axes, self.model, self.model_folder, self.tta, self.uncertainty, self.fusion,
                     self.precision, self.info, self.run_button, self.cancel_button, self.progress, self.device])
        self.run_button.changed.connect(self.start)
        self.cancel_button.changed.connect(self.cancel)
        self.model_folder.changed.connect(lambda folder: running.load_model_folder(folder, self.model))
        self.uncertainty.changed.connect(lambda on: on and setattr(self.tta, "value", True))
        self.image.changed.connect(self._show_axes)
        self.model.changed.connect(self._show_axes)
        running.follow(MODELS.changed, self, self._models_changed)
        self._models_changed()

    def reset_choices(self, *_):
        """Refresh the layer and model lists (napari calls this when layers change)."""
        super().reset_choices()
        self._show_axes()

    def _models_changed(self):
        self.model.reset_choices()
        if MODELS.preferred() in MODELS.names():
            self.model.value = MODELS.preferred()

    def _show_axes(self, *_):
        try:
            dims = MODELS.get(self.model.value).config.dims
            self.info.value = f"Inferred axes: {infer_axes(self.image.value, dims)}"
        except UserInputError:
            self.info.value = ""

    def start(self):
        """Start denoising (a notification explains anything that prevents it)."""
        try:
            model = MODELS.get(self.model.value)
            layer = self.image.value
            data = layer_data(layer)
            axes = check_axes_override(self.axes.value, layer) or infer_axes(layer, model.config.dims)
        except UserInputError as error:
            running.report(error, "Denoising")
            return
        tta, std = bool(self.tta.value or self.uncertainty.value), bool(self.uncertainty.value)
        fusion = bool(self.fusion.value) and fusion_applies(model.config)
        settings = {"model": self.model.value, "algorithm": model.config.algorithm, "axes": axes, "tta": tta,
                    "fusion": fusion, "precision": self.precision.value, "version": __version__}
        self._running(True)
        self.worker = running.start(
            denoise_iter, data, model, owner=self, axes=axes, tta=tta, return_std=std, fusion=fusion,
            precision=self.precision.value, action="Denoising",
            on_yield=self._on_progress, on_return=lambda result: self._add_result(layer, settings, result),
            on_finish=lambda: self._running(False))

    def cancel(self):
        """Stop the running job after the current tile."""
        if self.worker is not None:
            self.worker.quit()

    def _running(self, on: bool):
        self.run_button.enabled, self.cancel_button.enabled = not on, on
        if on:
            self.progress.value = 0

    def _on_progress(self, progress):
        self.progress.max, self.progress.value = progress.total, progress.done

    def _add_result(self, layer, settings, result):
        denoised, std = result if isinstance(result, tuple) else (result, None)
        same_scale = settings["algorithm"] != "care"  # care answers on its targets' scale, not the input's
        data, kwargs, _ = result_layer(layer, denoised, f"{layer.name} denoised", settings, contrast=same_scale)
        self.viewer.add_image(data, **kwargs)
        if std is not None:
            data, kwargs, _ = result_layer(layer, std, f"{layer.name} uncertainty", settings, contrast=False)
            self.viewer.add_image(data, **kwargs)
