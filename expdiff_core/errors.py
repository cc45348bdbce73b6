"""One exception family. Every message names the file (or object) and the problem."""

from __future__ import annotations

from os import PathLike


class ExpDiffError(Exception):
    """Base of every error ExpDiff raises on purpose."""


class ExpDiffInputError(ExpDiffError, ValueError):
    """A file or value given to ExpDiff is missing, unreadable or malformed.

    ``path`` is the offending file (or ``None`` for in-memory values); the message always starts with it.
    """

    def __init__(self, path: str | PathLike | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class TemplateMismatchError(ExpDiffInputError):
    """A mesh does not match the model's template topology (vertex count, connectivity or UVs)."""


class UnsafeModelFileError(ExpDiffInputError):
    """A model file is not safetensors (pickle checkpoints are refused)."""


class ExpDiffEnvironmentError(ExpDiffError):
    """The machine failed, not the input: no space left, a read-only file system, no permission, a path
    component that is not a folder. Retrying does not help (tasks do not retry these); the message names the
    path and the cause. ``errno`` is the OS error number when one is known."""

    def __init__(self, path: str | PathLike | None, problem: str, errno: int | None = None):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.errno = errno
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class PublishError(ExpDiffError):
    """A published output would be overwritten or could not be written atomically."""
