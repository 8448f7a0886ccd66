"""User-facing errors.

Every failure a user can cause is a LesionError whose message is one line:
what went wrong, which file, and what to do. The CLI prints it without a
traceback and exits with status 2.
"""


class LesionError(Exception):
    """A problem the user can fix; str(error) is the whole message."""


class DataError(LesionError):
    """Bad or missing input data."""


class ConfigError(LesionError):
    """An invalid parameter or an inconsistent configuration."""


class TrainingError(LesionError):
    """Training diverged (a NaN or infinite loss); the run is marked FAILED and can be resumed."""
