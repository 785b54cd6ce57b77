"""Errors the app reports to users, each with its BIDS-Apps exit code."""

from __future__ import annotations

# Exit codes from the BIDS-Apps execution-spec draft.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BIDS_INVALID = 16
EXIT_UNKNOWN_LEVEL = 17
EXIT_NO_FILES_SELECTED = 18
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_INPUT = 66
EXIT_CANT_CREATE = 73


class AppError(Exception):
    """An error with a message meant for the user and an exit code."""

    exit_code = EXIT_FAILURE


class UsageError(AppError):
    exit_code = EXIT_USAGE


class ConfigError(AppError):
    exit_code = EXIT_USAGE


class InputDataError(AppError):
    """Bad input data: the message names the file and the problem."""

    exit_code = EXIT_DATA


class NoInputError(AppError):
    exit_code = EXIT_NO_INPUT


class NothingSelectedError(AppError):
    exit_code = EXIT_NO_FILES_SELECTED


class OutputError(AppError):
    exit_code = EXIT_CANT_CREATE


class RunExcluded(Exception):
    """A run has too little usable data; it is recorded as excluded, others go on."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
