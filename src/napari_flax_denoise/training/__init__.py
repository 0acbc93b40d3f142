"""Training: from images to a model, as a generator of progress events.

``prepare``
    Checking inputs and settings, building a run; ``train`` and ``train_iter``.
``run``
    The run's state and its loop; the progress events and the result.
``steps``
    Loss, optimiser and the jitted train / validation steps.
``data``, ``patches``, ``masking``
    Training patches, their augmentation and blind-spot masking.
``resume``
    The resumable state of an interrupted run.
"""

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, {
    "train": "prepare",
    "train_iter": "prepare",
    "start_run": "prepare",
    "TrainingRun": "run",
    "TrainProgress": "run",
    "TrainResult": "run",
})
