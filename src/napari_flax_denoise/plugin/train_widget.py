"""The Train / Fine-tune widget: train on layers in a child process with a live loss plot and preview."""

from __future__ import annotations

import threading
from pathlib import Path

import napari
from magicgui.widgets import CheckBox, ComboBox, Container, FileEdit, FloatSpinBox, Label, LineEdit, ProgressBar
from magicgui.widgets import PushButton, Select, SpinBox, create_widget
from napari.utils.notifications import show_info, show_warning

from ..models.checkpoint import save_model
from ..axes import spatial_dims
from ..config import FINE_TUNE_LEARNING_RATE, Config
from ..errors import UserInputError
from ..training.prepare import check_inputs, default_sizes
from ..training.run import LossWatch
from . import running
from .jobs import export_for_zoo
from .training_process import train_in_child
from .layers import check_axes_override, infer_axes, layer_data, preview_layer, view_centre
from .loss_plot import LossPlot
from .registry import MODELS
from .settings import Remembered, recall, remember

NEW_MODEL = "(new model)"
# One line per algorithm in its drop-down: what it learns from.
ALGORITHM_CHOICES = [
    ("n2v2: noisy images only (recommended)", "n2v2"),
    ("n2v: noisy images only (the original Noise2Void)", "n2v"),
    ("care: noisy images and clean targets", "care"),
    ("n2n: two noisy images of each scene", "n2n"),
]


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes >= 1 else f"{max(1, round(seconds))} s"


def _folder(value) -> Path | None:
    return None if str(value) in ("", ".") else Path(value)


class TrainWidget(Container):
    """Train a model from scratch or fine-tune one, on image layers.

    Start runs :func:`~napari_flax_denoise.plugin.jobs.train_with_preview` in
    a child process (:mod:`.training_process`), watched from a worker
    thread. Stop ends training after the current step and keeps the best
    weights. The trained model joins the Denoise widget's picker and can
    be saved to a folder.
    """

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self.viewer = viewer
        self.worker = self.result = self._layer = self._axes = self._pace = None
        self._stop = threading.Event()
        defaults = Config()
        self.images = Select(label="Noisy layer(s)", choices=self._image_layers,
                             tooltip="The noisy images to learn from (the active layer is chosen for you; "
                                     "Ctrl-click for several). They are not changed.")
        self.images.native.setMaximumHeight(90)  # a few rows; it scrolls
        self.target = create_widget(annotation=napari.layers.Image | None, label="Target (care, n2n)")
        self.target.tooltip = ("care: the clean image; n2n: a second noisy image of the same scene. "
                               "Same shape as the noisy layer. Not used by n2v / n2v2.")
        self.algorithm = ComboBox(label="Algorithm", choices=ALGORITHM_CHOICES, value=defaults.algorithm,
                                  tooltip="n2v2 / n2v learn from the noisy images alone; care needs clean targets, "
                                          "n2n a second noisy image of the same scene.")
        self.start_from = ComboBox(label="Start from", choices=lambda _: [NEW_MODEL, *MODELS.names()],
                                   tooltip="Fine-tune a trained model (faster, needs less data) or train a new one.")
        self.model_folder = FileEdit(label="Load model", mode="d", tooltip="A saved model to fine-tune.")
        self.epochs = SpinBox(label="Epochs", value=defaults.epochs, min=1, max=100_000,
                              tooltip="Training length: epochs x steps per epoch optimiser steps; the model is "
                                      "validated and kept at its best after every epoch.")
        self.steps_per_epoch = SpinBox(label="Steps per epoch", value=defaults.steps_per_epoch, min=1, max=100_000,
                                       tooltip="Optimiser steps between two validations.")
        self.length = Label(value="")
        self.advanced = CheckBox(text="Show advanced settings",
                                 tooltip="Axes, patch and batch size, learning rate, validation and preview.")
        self.axes = LineEdit(label="Axes", tooltip="Leave empty to infer. Letters: Y X (image), Z (depth), "
                                                   "T (time), C (channels), S (separate images), e.g. YX, ZYX, TYX.")
        sizes = default_sizes(2)  # larger on an accelerator
        self.patch_size = SpinBox(label="Patch size", value=sizes["patch_size"], min=8, max=1024, step=8,
                                  tooltip="Side of the square (cube, in 3D) patches cut from the images each step.")
        self.batch_size = SpinBox(label="Batch size", value=sizes["batch_size"], min=1, max=1024,
                                  tooltip="Patches per step: more is steadier and slower per step.")
        self.learning_rate = FloatSpinBox(label="Learning rate", value=defaults.learning_rate, min=1e-6, max=1.0,
                                          step=1e-5, tooltip="Lower when fine-tuning a trained model.")
        self.val_fraction = FloatSpinBox(label="Validation fraction", value=defaults.val_fraction, min=0.0,
                                         max=0.5, step=0.05,
                                         tooltip="Share of the patches held out to validate and keep the best model.")
        self.preview_every = SpinBox(label="Preview every (steps)", value=25, min=0, max=100_000,
                                     tooltip="0 turns the live preview off.")
        self.precision = ComboBox(label="Precision", choices=["float32", "bfloat16"], value=defaults.precision,
                                  tooltip="bfloat16: mixed precision (bfloat16 arithmetic, float32 weights), faster "
                                          "on GPUs with tensor cores; slower on a CPU.")
        self.folder = FileEdit(label="Model folder", mode="d",
                               tooltip="Where the model is saved (during training if set before Start).")
        self.defaults_button = PushButton(text="Restore defaults", tooltip="Put every setting back to its default.")
        self.start_button = PushButton(text="Start", tooltip="Train in a separate process; napari stays responsive.")
        self.stop_button = PushButton(text="Stop", enabled=False, tooltip="End after the current step, keeping the "
                                                                          "best model so far.")
        self.save_button = PushButton(text="Save model", enabled=False, tooltip="Save the trained model to the "
                                                                                "model folder.")
        self.export_button = PushButton(text="Export for the BioImage Model Zoo", enabled=False,
                                        tooltip="Write the trained model as a zoo package (ONNX weights) beside "
                                                "the model folder, as <folder>.bioimageio.zip; needs the bmz extra.")
        self.progress = ProgressBar(value=0, min=0, max=1, label="Progress")
        self.status = Label(value="")
        self.device = Label(value=running.device_label())
        self.help = running.help_links()
        self.plot = LossPlot()
        self.extend([self.images, self.target, self.algorithm, self.start_from, self.model_folder, self.epochs,
                     self.steps_per_epoch, self.length, self.advanced, self.axes, self.patch_size, self.batch_size,
                     self.learning_rate, self.val_fraction, self.preview_every, self.precision, self.folder,
                     self.defaults_button,
                     self.start_button, self.stop_button, self.save_button, self.export_button, self.progress,
                     self.status, self.device,
                     self.help])
        self.native.layout().addWidget(self.plot)
        self.settings = Remembered("train", {
            "algorithm": self.algorithm, "epochs": self.epochs, "steps_per_epoch": self.steps_per_epoch,
            "advanced": self.advanced, "patch_size": self.patch_size, "batch_size": self.batch_size,
            "val_fraction": self.val_fraction, "preview_every": self.preview_every, "precision": self.precision})
        self.defaults_button.changed.connect(self._restore_defaults)
        for control in (self.algorithm, self.advanced, self.epochs, self.steps_per_epoch, self.patch_size,
                        self.batch_size, self.precision):
            control.changed.connect(self._show)
        self._watch = LossWatch()
        self._select_active_layer()
        self._show()
        self.start_button.changed.connect(self.start)
        self.stop_button.changed.connect(self.stop)
        self.save_button.changed.connect(self.save)
        self.export_button.changed.connect(self.export)
        self.model_folder.changed.connect(lambda folder: running.load_model_folder(folder, self.start_from))
        running.follow(MODELS.changed, self, self.start_from.reset_choices)
        self.start_from.changed.connect(self._suggest_learning_rate)
        self.images.changed.connect(self._suggest_patches)

    def reset_choices(self, *_):
        """Refresh the layer and model lists (napari calls this when layers change)."""
        super().reset_choices()
        self._select_active_layer()

    def _image_layers(self, _widget=None) -> list:
        """The viewer's image layers, less the live previews this widget lays over them."""
        return [(layer.name, layer) for layer in self.viewer.layers if type(layer).__name__ == "Image"
                and "preview_of" not in layer.metadata.get("napari_flax_denoise", {})]

    def _select_active_layer(self):
        active = self.viewer.layers.selection.active
        if not self.images.value and active is not None:  # by name: napari hands plugins proxies of its layers
            self.images.value = [layer for layer in self.images.choices if layer.name == active.name]

    def _show(self, *_):
        """Target only for care / n2n, advanced settings on request, and the length in steps."""
        supervised = self.algorithm.value in ("care", "n2n")
        self.target.enabled = supervised
        if not supervised:
            self.target.value = None
        for control in (self.axes, self.patch_size, self.batch_size, self.learning_rate, self.val_fraction,
                        self.preview_every, self.precision):
            control.visible = bool(self.advanced.value)
        steps = self.epochs.value * self.steps_per_epoch.value
        pace = recall(self._pace_key())
        estimate = "" if pace is None else f" · about {_duration(steps * pace)} at the last such run's pace"
        self.length.value = f"{steps} steps in all{estimate}"

    def _pace_key(self) -> str:
        """Runs of the same algorithm, sizes, precision and device train at the same pace."""
        return (f"pace {self.algorithm.value} {self.patch_size.value} {self.batch_size.value} "
                f"{self.precision.value} {self.device.value}")

    def _restore_defaults(self, *_):
        self.settings.restore_defaults()
        self.start_from.value = NEW_MODEL  # sets the learning rate to its default too

    def _suggest_learning_rate(self, start_from):
        """A trained model is fine-tuned gently, a new one trained at the default rate."""
        self.learning_rate.value = Config().learning_rate if start_from == NEW_MODEL else FINE_TUNE_LEARNING_RATE

    def _suggest_patches(self, layers):
        """A layer with a Z axis gets the 3D patch and batch defaults, others the 2D ones,
        unless the fields were changed by hand."""
        try:
            dims = spatial_dims(infer_axes(layers[0])) if layers else 2
        except UserInputError:
            return
        two, three = (tuple(default_sizes(d).values()) for d in (2, 3))
        if (self.patch_size.value, self.batch_size.value) in (two, three):
            self.patch_size.value, self.batch_size.value = three if dims == 3 else two

    def start(self):
        """Start training (a notification explains anything that prevents it)."""
        try:
            layers = list(self.images.value)
            if not layers:
                raise UserInputError("Choose at least one noisy image layer to train on.")
            init = None if self.start_from.value == NEW_MODEL else MODELS.get(self.start_from.value)
            dims = init.config.dims if init is not None else None
            axes = check_axes_override(self.axes.value, layers[0]) or infer_axes(layers[0], dims)
            images = [layer_data(layer) for layer in layers]  # lazy (dask) data stays lazy
            targets = [layer_data(self.target.value)] * len(images) if self.target.value is not None else None
            check_inputs(images, axes=axes, targets=targets, algorithm=self.algorithm.value)  # before the child starts
        except UserInputError as error:
            running.report(error, "Training")
            return
        self._stop.clear()
        self.plot.clear()
        self.result, self._watch, self._name, self._pace = None, LossWatch(), layers[0].name, None
        self._layer, self._axes = layers[0], axes
        self._running(True)
        self.worker = running.start(
            train_in_child, images, owner=self, axes=axes, targets=targets, init=init,
            output=_folder(self.folder.value),
            stop=self._stopping, preview_every=self.preview_every.value, action="Training",
            preview_centre=view_centre(self.viewer, layers[0]),  # the preview shows what the user looks at
            algorithm=self.algorithm.value, epochs=self.epochs.value, steps_per_epoch=self.steps_per_epoch.value,
            patch_size=self.patch_size.value, batch_size=self.batch_size.value,
            learning_rate=self.learning_rate.value, val_fraction=self.val_fraction.value,
            precision=self.precision.value,
            on_yield=lambda update: self._on_update(layers[0], update), on_return=self._on_result,
            on_finish=lambda: self._running(False))

    def stop(self):
        """Ask training to end after the current step; the best weights are kept."""
        self._stop.set()

    def _stopping(self) -> bool:
        """Stop was pressed, this widget went away, or napari cancelled the job (closing the viewer does)."""
        return self._stop.is_set() or (self.worker is not None and self.worker.abort_requested)

    def save(self):
        """Save the last trained model to the chosen folder."""
        folder = _folder(self.folder.value)
        if folder is None or self.result is None:
            running.report(UserInputError("Choose a model folder first, then click Save model."), "Saving")
            return
        save_model(self.result.model, folder)
        MODELS.add(folder.name, self.result.model)
        show_info(f"Model saved to {folder}.")

    def export(self):
        """Export the last trained model for the BioImage Model Zoo, beside its model folder."""
        folder = _folder(self.folder.value)
        if folder is None or self.result is None:
            running.report(UserInputError("Choose a model folder first, then export."), "Exporting")
            return
        target = folder.parent / f"{folder.name}.bioimageio.zip"
        layer = self._layer
        self.export_button.enabled = False
        self.status.value = f"Exporting to {target.name} (converting to ONNX takes a few seconds) ..."
        self.worker = running.start(
            export_for_zoo, self.result.model, target, owner=self, test_image=layer_data(layer),
            test_axes=self._axes, action="Exporting", on_yield=lambda _: None,
            on_return=lambda path: setattr(self.status, "value", f"Exported to {path}."),
            on_finish=lambda: setattr(self.export_button, "enabled", self.result is not None))

    def _running(self, on: bool):
        self.start_button.enabled, self.stop_button.enabled = not on, on
        self.save_button.enabled = not on and self.result is not None
        self.export_button.enabled = not on and self.result is not None
        if on:
            self.progress.max, self.progress.value = 1, 0
            self.status.value = "Starting the training process; the first step also compiles the network ..."
        elif self.result is None:
            self.status.value = "Training did not finish (stopped before its first step, or failed: see the message)."

    def _on_update(self, layer, update):
        event = update.progress
        self.progress.max, self.progress.value = event.total, event.done
        if event.done < event.total and event.eta_seconds > 0:  # the core's own measure of a step's time
            self._pace = event.eta_seconds / (event.total - event.done)
        warning = self._watch.add(event.train_loss)
        if warning is not None:
            show_warning(warning)
        self.plot.add(event.done, event.train_loss, event.val_loss)
        minutes, seconds = divmod(int(event.eta_seconds), 60)
        val = f" · val {event.val_loss:.4g}" if event.val_loss is not None else ""
        self.status.value = (f"epoch {event.epoch}/{event.epochs} · step {event.done}/{event.total} · "
                             f"loss {event.train_loss:.4g}{val} · ETA {minutes}:{seconds:02d}")
        if update.preview is not None:
            data, kwargs, _ = preview_layer(layer, update.crop, update.preview)
            if kwargs["name"] in self.viewer.layers:
                shown = self.viewer.layers[kwargs["name"]]
                shown.data, shown.contrast_limits = data, kwargs["contrast_limits"]
            else:
                self.viewer.add_image(data, **kwargs)

    def _on_result(self, result):
        self.result = result
        if self._pace is not None:
            remember(self._pace_key(), self._pace)
            self._show()
        folder = _folder(self.folder.value)
        steps = self.progress.value
        name = folder.name if folder else f"{self._name} · {result.model.config.algorithm} · {steps} steps"
        problem = self._watch.problem(result)
        if problem is None:
            name = MODELS.add(name, result.model)
            show_info(f"Training ended ({result.stopped.replace('_', ' ')}); '{name}' is ready in the Denoise widget.")
        else:
            name = MODELS.add(f"{name} ({problem})", result.model, flagged=True)
            show_warning(f"Training {problem}, so '{name}' is listed in the Denoise widget but not chosen; "
                         "train longer or with a lower learning rate before you rely on it.")
