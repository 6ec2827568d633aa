"""Reading from the Hugging Face Hub: whether a dataset or checkpoint is there (or cached, offline),
and which Hub errors are the user's to fix (one line, no retry) rather than the network's.

A mistyped id, a private or gated repository, a revision that does not exist, or a repository not in
the local cache while the Hub is off (HF_HUB_OFFLINE=1) fail the same way every time: retrying them
only delays the message. Connection errors while online are the network's, and are retried.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nerflow.tasks.runtime.errors import InputError

_ON = ("1", "true", "yes", "on")


def offline(datasets: bool = False) -> bool:
    """The Hub is off for this process (HF_HUB_OFFLINE, TRANSFORMERS_OFFLINE; HF_DATASETS_OFFLINE for datasets)."""
    names = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"] + (["HF_DATASETS_OFFLINE"] if datasets else [])
    return any(os.environ.get(n, "").strip().lower() in _ON for n in names)


def _chain(exc: BaseException):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_offline_cache_miss(exc: BaseException) -> bool:
    """The Hub is off and what was asked for is not in the local cache: the same next time."""
    if not offline(datasets=True):
        return False
    return any(
        type(e).__name__ in ("LocalEntryNotFoundError", "OfflineModeIsEnabled")
        or "OfflineModeIsEnabled" in str(e)
        or "couldn't find them in the cached files" in str(e)
        for e in _chain(exc)
    )


def hub_error(exc: BaseException, what: str) -> InputError | None:
    """The one-line InputError for a Hub error a retry would only repeat; None for any other error.
    `what` names the setting and its value, e.g. "base_model.name 'bert-base-cased'"."""
    names = {type(e).__name__: e for e in _chain(exc)}
    text = " ".join(str(e) for e in names.values())
    if "GatedRepoError" in names:
        return InputError(
            f"{what} is gated on the Hub: accept its terms on huggingface.co with your account and set HF_TOKEN"
        )
    if "RevisionNotFoundError" in names:
        return InputError(f"{what}: no such revision on the Hub")
    if (
        "RepositoryNotFoundError" in names
        or "DatasetNotFoundError" in names
        or "is not a valid model identifier" in text
    ):
        return InputError(f"{what}: no such repository on the Hub (a typo? a private one needs HF_TOKEN)")
    if is_offline_cache_miss(exc):
        return offline_miss(what)
    return None


@contextmanager
def explained(what: str) -> Iterator[None]:
    """Turn a Hub error a retry would only repeat into its one-line InputError; others pass as they are."""
    try:
        yield
    except InputError:
        raise
    except Exception as e:
        if (error := hub_error(e, what)) is not None:
            raise error from e
        raise


def offline_miss(what: str) -> InputError:
    return InputError(
        f"{what} is not a folder here and not in the local Hugging Face cache, and the Hub is off (HF_HUB_OFFLINE=1): "
        "download it once with the Hub on, or name a local folder"
    )


def _cached(repo_id: str, repo_type: str, revision: str | None) -> bool:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(repo_id, repo_type=repo_type, revision=revision, local_files_only=True)
        return True
    except Exception:  # not (completely) in the Hub cache
        pass
    if repo_type == "dataset":  # datasets keeps prepared copies in a cache of its own
        cache = Path(
            os.environ.get("HF_DATASETS_CACHE")
            or Path(os.environ.get("HF_HOME") or "~/.cache/huggingface") / "datasets"
        ).expanduser()
        return (cache / repo_id.replace("/", "___")).is_dir()
    return False


def check_available(repo_id: str, repo_type: str, revision: str | None, what: str) -> None:
    """InputError within seconds if a Hub repository cannot be had: offline and not cached, or the Hub
    says it is missing, gated or lacks the revision. A Hub that does not answer is left to the step's
    retries (it may be a hiccup)."""
    if offline(datasets=repo_type == "dataset"):
        if not _cached(repo_id, repo_type, revision):
            raise offline_miss(what)
        return
    from huggingface_hub import HfApi

    try:
        info = HfApi().dataset_info if repo_type == "dataset" else HfApi().model_info
        info(repo_id, revision=revision, timeout=10)
    except Exception as e:
        if (error := hub_error(e, what)) is not None:
            raise error from None
