"""The one exception type for mistakes a user can fix, and the report of everything else."""

from __future__ import annotations

BUG_TRACKER = "https://github.com/napari-flax-denoise/napari-flax-denoise/issues"


class UserInputError(ValueError):
    """Bad input that the user can correct.

    The message is one plain sentence that says what is wrong and what to do.
    The CLI prints it without a traceback and exits with status 2; the napari
    widgets show it as a notification.
    """


def report_bug(error: BaseException, action: str) -> str:
    """Write ``error``'s traceback to a log file and return one sentence for the user.

    A genuine bug should reach us with its traceback, but the traceback is not
    the first thing a user should read. The log goes under
    ``~/.cache/napari-flax-denoise/errors`` (or the temporary folder when that
    cannot be written).

    Parameters
    ----------
    error : BaseException
        Raised; its ``__traceback__`` is written.
    action : str
        What failed, e.g. ``"flax-denoise denoise"``.
    """
    import os
    import platform
    import tempfile
    import time
    import traceback
    from pathlib import Path

    from ._version import __version__

    text = (f"{action} failed on {time.strftime('%Y-%m-%d %H:%M:%S')}\nnapari-flax-denoise {__version__}, "
            f"Python {platform.python_version()} on {platform.platform()}\n\n"
            + "".join(traceback.format_exception(type(error), error, error.__traceback__)))
    name = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "napari-flax-denoise" / "errors"
    where = None
    for folder in (cache, Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            where = folder / name
            break
        except OSError:
            continue
    log = f"with the log {where}" if where else "with the steps that led to it"
    return (f"{action} failed ({type(error).__name__}: {error}); this is a bug in napari-flax-denoise, "
            f"please report it at {BUG_TRACKER} {log}.")
