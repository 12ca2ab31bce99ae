"""Errors that gunctl knows how to report: one line, one exit code.

The core raises these; only the CLI's error boundary turns them into an exit code.
Exit codes: 0 success, 1 a check failed, 2 bad usage or bad input,
3 training failed (diverged, out of memory), 130 interrupted.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_TRAINING_FAILED = 3
EXIT_INTERRUPTED = 130


class GunctlError(Exception):
    """A failure that gunctl reports as one line, without a traceback."""

    exit_code = EXIT_BAD_INPUT


class UsageError(GunctlError):
    """Options that cannot go together, or a value out of range."""


class DataError(GunctlError):
    """A data set, label file, image or split that cannot be used."""


class SourceError(GunctlError):
    """A data source (Kaggle, folder, zip) that cannot be reached or read."""


class CheckpointError(GunctlError):
    """A checkpoint that is missing, corrupt, unsafe or for another model."""


class RunLockedError(GunctlError):
    """Another gunctl process is writing to the same run (or export folder)."""


class OutputError(GunctlError):
    """An output folder that cannot be written (read-only, disk full)."""


class ThresholdError(GunctlError):
    """A metric fell below the bar that the user set (e.g. --min-map50)."""

    exit_code = EXIT_CHECK_FAILED


class TrainingError(GunctlError):
    """Training cannot go on (out of memory, a failing rank)."""

    exit_code = EXIT_TRAINING_FAILED


class DivergedError(TrainingError):
    """A loss became NaN or infinite."""


def shorten(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut at a word boundary (never mid-token) with an ellipsis."""
    flat = " ".join(str(text).split())
    if len(flat) <= limit:
        return flat
    cut = flat[: limit - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type when empty), for a one-line error.

    DataLoader workers re-raise errors wrapped in an "Original Traceback"; the last line of
    that is the message that matters.
    """
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return shorten(text.splitlines()[0], limit) if text else type(exc).__name__


def cannot_write(path: object, exc: OSError) -> OutputError:
    """The one error for an output that the OS refused (read-only, disk full, no permission)."""
    return OutputError(f"{path}: cannot write ({exc.strerror or exc})")


class DetectionError(GunctlError):
    """`predict --fail-on-detection` found something."""

    exit_code = EXIT_CHECK_FAILED


def is_out_of_memory(exc: BaseException) -> bool:
    """An allocation failure of the CPU (MemoryError, or torch's allocator's RuntimeError)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in text or "not enough memory" in text
    )
