"""Errors that mean the user's input cannot be used: their messages say what, where and what to do.

They are not bugs, so nerflow shows them as one message (exit code 2 on the command line, the state
message of a failed run in the Prefect UI) instead of a traceback; the traceback stays in the run's log.
"""

from __future__ import annotations

MAX_LISTED_PROBLEMS = 20


class InputError(ValueError):
    """Bad data, settings, parameters or files: fixable by the user, pointless to retry."""


class PublishError(RuntimeError):
    """Publishing cannot succeed without a change by the user (credentials, permissions, names)."""


class ExportError(RuntimeError):
    """An export that would not behave as the trained model does; nothing of it was written."""


class FolderBusy(InputError):
    """Another run holds the folder (nerflow.tasks.runtime.files.folder_lock)."""


class DatasetValidationError(InputError):
    """The dataset cannot be trained on; the message lists each problem with file, split, row, field."""

    def __init__(self, problems: list[str], total: int | None = None, unlisted: int | None = None):
        """`total` problems in all, `unlisted` of them in none of the lines (default: total - lines)."""
        self.problems = problems
        total = total if total is not None else len(problems)
        unlisted = total - len(problems) if unlisted is None else unlisted
        if total == 1 and len(problems) == 1:
            super().__init__(f"dataset validation failed: {problems[0]}")
            return
        shown = "\n".join(f"  - {p}" for p in problems)
        more = f"\n  ... and {unlisted} more" if unlisted > 0 else ""
        super().__init__(f"dataset validation failed ({total} problem(s)):\n{shown}{more}")
