"""Exceptions that mean "the request was wrong", as opposed to a bug.

Every ``LayerpruneError`` carries a one-line message that names the offending key, path, name or
block; the CLI prints it without a traceback and exits with code 2.
"""

from __future__ import annotations


def first_line(exc: BaseException, empty: str | None = None) -> str:
    """The first line of an exception's message, for a one-line error that quotes it; ``empty``
    (default: the exception's class name) when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else (type(exc).__name__ if empty is None else empty)


class LayerpruneError(Exception):
    """Base class for errors caused by bad input (exit code 2 on the command line)."""

    exit_code = 2


class UnknownNameError(LayerpruneError, LookupError):
    """A name (model, dataset, criterion, ...) that no registry knows."""

    def __str__(self) -> str:  # LookupError would quote the message like a dict key
        return str(self.args[0]) if self.args else ""


class DatasetError(LayerpruneError):
    """A dataset that cannot be built: missing files, no network, bad option."""


class CheckpointError(LayerpruneError):
    """A checkpoint that cannot be read or does not fit the model."""


class FetchError(LayerpruneError):
    """A file that could not be downloaded (no network, HTTP error, truncated, wrong hash): names
    the URL (after ``subject``, what it was for, when given), what went wrong and what to do
    instead (``how``, which a caller may reword for its own key or option)."""

    def __init__(self, url: str, problem: str, how: str, subject: str | None = None) -> None:
        self.url, self.problem, self.how, self.subject = url, problem, how, subject
        super().__init__(f"{subject + ': ' if subject else ''}{url}: {problem}; {how}")

    def instead(self, how: str) -> "FetchError":
        """The same failure (of the same class), telling the user to do ``how`` instead."""
        return type(self)(self.url, self.problem, how, self.subject)


class DatasetFetchError(FetchError, DatasetError):
    """A data set's files that could not be downloaded."""


class ModelError(LayerpruneError):
    """A model that cannot be created as asked (e.g. weights that cannot be had)."""


class SurgeryError(LayerpruneError):
    """A block that cannot be removed (unknown, not removable, last of its stage, ...)."""


class MissingExtraError(LayerpruneError):
    """An optional dependency that is not installed (names the extra that brings it)."""


class ExportMismatchError(LayerpruneError):
    """An exported model whose outputs differ from PyTorch's by more than the tolerance: the
    export ran but is wrong, which is not bad input (exit code 1)."""

    exit_code = 1


class OutputError(LayerpruneError):
    """An output location that cannot be written: a parent that is a file, a read-only or
    forbidden folder (exit code 2: the path asked for is wrong)."""


class StorageFullError(OutputError):
    """A write that ran out of room (no space left, file size limit, quota): the request was fine,
    the storage was not (exit code 1); nothing half-written is left, and a rerun resumes."""

    exit_code = 1


class DirectoryInUseError(LayerpruneError):
    """A run or bench directory that another live process is writing into."""
