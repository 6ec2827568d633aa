"""Errors that mean the user's input cannot be used: their messages say what, where and what to do.

They are not bugs, so nerflow shows them as one message (exit code 2 on the command line, the state
message of a failed run in the Prefect UI) instead of a traceback; the traceback stays in the run's log.
"""

from __future__ import annotations

MAX_LISTED_PROBLEMS = 20


class InputError(ValueError):
    """Bad data, settings, parameters or files: fixable by the user, pointless to retry."""


class FolderBusy(InputError):
    """Another run holds the folder (tasks.storage.folder_lock)."""


class DatasetValidationError(InputError):
    """The dataset cannot be trained on; the message lists each problem with file, split, row, field."""

    def __init__(self, problems: list[str], total: int | None = None):
        self.problems = problems
        total = total if total is not None else len(problems)
        shown = "\n".join(f"  - {p}" for p in problems)
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"dataset validation failed ({total} problem(s)):\n{shown}{more}")
