"""Errors the app reports to users, each with its BIDS-Apps exit code.

Every class also subclasses the matching builtin, so code using the Python API
(:mod:`bids_app.api`) can catch ``ValueError`` or ``FileNotFoundError`` as usual.
"""

from __future__ import annotations

# Exit codes from the BIDS-Apps execution-spec draft.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_FILES_SELECTED = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_CANT_CREATE = 73


class AppError(Exception):
    """An error with a message meant for the user and an exit code."""

    exit_code = EXIT_FAILURE

    def __str__(self) -> str:  # OSError subclasses would otherwise format "[Errno ...]"
        return str(self.args[0]) if self.args else ""


class UsageError(AppError, ValueError):
    """Bad command-line usage."""

    exit_code = EXIT_USAGE


class ConfigError(AppError, ValueError):
    """Invalid configuration: the message names the key (dotted path) and the problem."""

    exit_code = EXIT_USAGE


class InputDataError(AppError, ValueError):
    """Bad input data: the message names the file and the problem."""

    exit_code = EXIT_DATA


class NoInputError(AppError, FileNotFoundError):
    """A required input (folder, preprocessed BOLD, participant outputs) does not exist."""

    exit_code = EXIT_NO_INPUT


class NothingSelectedError(AppError, LookupError):
    """The selection (labels, space, filters) matched no file; the message lists what exists."""

    exit_code = EXIT_NO_FILES_SELECTED


class OutputError(AppError, OSError):
    """The output folder (or a file in it) cannot be created."""

    exit_code = EXIT_CANT_CREATE
