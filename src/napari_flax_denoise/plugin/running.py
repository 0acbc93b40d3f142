"""Running core generators in napari's worker threads, and reporting their errors."""

from __future__ import annotations

from magicgui.widgets import Label
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error

from ..errors import UserInputError, report_bug


def report(error: BaseException, action: str) -> None:
    """Show ``error`` as a napari notification: user errors as they are, others with their type."""
    if isinstance(error, UserInputError):
        show_error(str(error))
    else:
        show_error(report_bug(error, action))


def start(job, *args, owner, action: str, on_yield, on_return, on_finish, **kwargs):
    """Run generator function ``job`` in a worker thread; the viewer stays responsive.

    Parameters
    ----------
    job : generator function
        A core generator (yields progress, returns a result).
    owner : magicgui Widget
        The widget the callbacks update: once it is destroyed (its dock or the
        viewer closed) they are no longer called, and the job is asked to quit.
    action : str
        What the job does, for error messages ("Denoising").
    on_yield, on_return, on_finish : callable
        Called in the GUI thread with each yielded value, the result, and
        nothing once the job ends in any way (done, failed or cancelled).

    Returns
    -------
    worker : napari.qt.threading.GeneratorWorker
        ``worker.quit()`` cancels between two yields.
    """
    gone = []

    def while_open(callback):
        return lambda *value: None if gone else callback(*value)

    # Handlers go in through _connect: given an "errored" handler, napari does not re-raise in the GUI thread.
    connect = {"yielded": while_open(on_yield), "returned": while_open(on_return), "finished": while_open(on_finish),
               "errored": lambda error: report(error, action)}
    worker = create_worker(job, *args, _connect=connect, _start_thread=False, **kwargs)
    owner.native.destroyed.connect(lambda *_: (gone.append(True), worker.quit()))
    worker.start()
    return worker


def follow(signal, widget, callback) -> None:
    """Connect ``callback`` to a psygnal ``signal`` until ``widget`` (magicgui) is destroyed.

    The model registry outlives dock widgets; a closed widget must not be called.
    """
    signal.connect(callback)
    widget.native.destroyed.connect(lambda *_: signal.disconnect(callback))


def load_model_folder(folder, picker) -> None:
    """Register the model directory ``folder`` and select it in ``picker`` (a ComboBox).

    An empty path does nothing; a folder that is not a model gives a notification.
    """
    from .registry import MODELS

    if str(folder) in ("", "."):
        return
    try:
        name = MODELS.add_folder(folder)
    except UserInputError as error:
        report(error, "Loading the model")
        return
    picker.reset_choices()
    picker.value = name


def device_label() -> str:
    """Where jobs run, in words: the device JAX computes on, and a hint when a GPU is present but unused."""
    import os

    from ..runtime.backend import describe

    about = describe()
    kind = about["devices"][0].split(": ", 1)[-1].rsplit(" (", 1)[0] if about["devices"] else "unknown"
    if about["platform"] == "cpu":
        text = f"Runs on: CPU ({os.cpu_count()} cores)"
        if os.path.exists("/proc/driver/nvidia/version"):
            text += " — an NVIDIA GPU is present; to use it: pip install -U \"jax[cuda12]\""
        return text
    count = len(about["devices"])
    return f"Runs on: {about['platform'].upper()} ({kind}{f' x {count}' if count > 1 else ''})"


def help_links() -> Label:
    """A row of links: the user guide and where to report a problem (from the package's metadata)."""
    from importlib.metadata import PackageNotFoundError, metadata

    try:
        urls = dict(entry.split(", ", 1) for entry in metadata("napari-flax-denoise").get_all("Project-URL") or [])
    except PackageNotFoundError:
        urls = {}
    source = urls.get("Source Code", "https://github.com/napari-flax-denoise/napari-flax-denoise")
    issues = urls.get("Bug Tracker", f"{source}/issues")
    label = Label(value=f'<a href="{source}/blob/main/docs/napari.md">Help</a> · '
                        f'<a href="{source}#readme">Documentation</a> · <a href="{issues}">Report a problem</a>',
                  tooltip="Opens in your web browser. A report helps most with the output of `flax-denoise info`.")
    label.native.setOpenExternalLinks(True)
    return label
