"""The one exception type for mistakes a user can fix."""


class UserInputError(ValueError):
    """Bad input that the user can correct.

    The message is one plain sentence that says what is wrong and what to do.
    The CLI prints it without a traceback and exits with status 2; the napari
    widgets show it as a notification.
    """
