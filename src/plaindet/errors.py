"""The errors plaindet raises for input a user can fix, and the lazy import of optional dependencies.

Every error caused by the user's input (a dataset, a config, a checkpoint or weights file, an
option, a missing optional dependency) is a :class:`UserError`, whose message names the file or
setting and says what is wrong. Subclasses are also the built-in type a caller would expect
(:class:`NotFound` is a ``FileNotFoundError``, :class:`MissingExtra` an ``ImportError``).
The command line turns a :class:`UserError` into ``error: <message>`` and exit code 2, in one place
(:mod:`plaindet.cli`); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class UserError(ValueError):
    """Input that cannot be used; the message names the file or setting and the problem."""


class ConfigError(UserError):
    """A setting names an unknown field or has the wrong type or value."""


class DatasetError(UserError):
    """A dataset cannot be read. The message names the file and the problem."""


class CheckpointError(UserError):
    """A checkpoint file is missing, corrupt or not a plaindet checkpoint. The message names the file."""


class WeightsError(UserError):
    """Pretrained weights that can't be read safely, or that don't fit the model. The message says which and why."""


class NotFound(UserError, FileNotFoundError):
    """A file or folder the user named does not exist; the message names it."""


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that installs it."""


class TrainingDiverged(UserError):
    """Too many non-finite losses in a row; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training after saving a checkpoint; ``signum`` says which."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def require_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import ``module`` (a package of the ``extra``, or one of its submodules) or raise
    :class:`MissingExtra` saying ``pip install 'plaindet[extra]'`` is needed for ``purpose``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtra(f"{purpose} needs {module.partition('.')[0]}: pip install 'plaindet[{extra}]' ({e})") from None
