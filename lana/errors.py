"""One error family for everything a user can get wrong.

Every message says what was expected, what was found and what to do. The CLI turns a
``LanaError`` into one line on stderr and a non-zero exit code (``--debug`` shows the
traceback).
"""


class LanaError(Exception):
    """Base class of every error lana reports to a user as one line."""

    exit_code = 2


class ConfigError(LanaError):
    """A config file or option is malformed, unknown or inconsistent."""


class UnknownModelError(LanaError):
    """A teacher model name or factory cannot be found."""


class CheckpointError(LanaError):
    """A checkpoint is missing, corrupted or does not fit the model."""


class BlockDiscoveryError(LanaError):
    """No replaceable blocks could be found (or a listed block does not exist)."""


class UnknownOpError(LanaError):
    """An op name or pattern matches nothing in the op zoo."""


class DataError(LanaError):
    """A dataset is missing, empty or has the wrong shape."""


class DeviceError(LanaError):
    """A requested device (e.g. ``cuda``) is not available."""


class RunFolderError(LanaError):
    """A run folder is missing a stage's output, or was made from another teacher/config."""


class TableError(LanaError):
    """A candidates table is missing, corrupted or lacks required columns."""


class BudgetError(LanaError):
    """A budget string cannot be parsed."""


class InfeasibleError(LanaError):
    """No selection meets the limits; the message names the least reachable value."""

    exit_code = 3


class SolverUnavailableError(LanaError):
    """A solver back-end is unknown or its library is not installed."""


class ExportError(LanaError):
    """The exported model does not reload or does not match the eager model."""


class TeacherOutputError(LanaError):
    """A teacher's output is not a tensor, or a tuple / list / dict of tensors; or a
    student's output does not have the teacher's structure."""
