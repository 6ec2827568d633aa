"""Crash-safe writes: a file or folder appears under its final name only when it is complete, and its
bytes are on disk (fsynced) before it does; sealed folders say what they hold so a reader can check."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def hash_file(digest, path: Path):
    """Feed a file's bytes into a hashlib digest, a MiB at a time; returns the digest."""
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest


def sha256_file(path: Path) -> str:
    return hash_file(hashlib.sha256(), path).hexdigest()


def atomic_write_text(path: Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are ordinary, shareable files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def fsync_tree(folder: Path) -> None:
    """Flush every file below folder, and the folders themselves, to disk (a rename is durable only
    once what it points to is)."""
    for path in sorted(Path(folder).rglob("*"), reverse=True):
        if path.is_file() and not path.is_symlink():
            with path.open("rb") as fh:
                os.fsync(fh.fileno())
    for path in [*(p for p in Path(folder).rglob("*") if p.is_dir()), Path(folder)]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


SEAL = ".nerflow-complete.json"


def seal(folder: Path) -> Path:
    """Mark a finished folder complete: fsync its files, then write (last) a list of them with sizes."""
    folder = Path(folder)
    fsync_tree(folder)
    files = {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != SEAL
    }
    return atomic_write_json(folder / SEAL, {"files": files})


def is_sealed(folder: Path) -> bool:
    """The folder was sealed and still holds every file it was sealed with, at the same size."""
    try:
        files = json.loads((Path(folder) / SEAL).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        (Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == size for name, size in files.items()
    )


@contextlib.contextmanager
def atomic_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; seal it and rename it to `final` when the block succeeds.

    With replace=True an existing `final` is swapped for the new folder in one atomic exchange where
    the OS has one (Linux), so a reader finds the old complete folder or the new one, never none;
    elsewhere the old folder is moved aside first. What a kill leaves behind (the old folder, a
    temporary one) is cleared by `recover_interrupted_swaps` on the next run.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        seal(tmp)
        if final.exists():
            if not replace and is_sealed(final):
                # Someone else finished the same work first; theirs is complete, keep it.
                shutil.rmtree(tmp)
                return
            if exchange(tmp, final):  # final is the new folder now, tmp the old one
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_tree_parent(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 with RENAME_EXCHANGE); False where the OS or the
    filesystem cannot, and the caller falls back to two renames."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def recover_interrupted_swaps(folder: Path) -> list[str]:
    """Clear what killed writes left in a folder (its holder's lock held): temporary files and folders
    of unfinished writes, and the old half of an interrupted swap. Where the swap's final folder is
    missing (two renames, killed between them), its newest complete old copy is put back first.
    Returns what was done, one line each."""
    done = []
    folder = Path(folder)
    leftovers = sorted(
        (p for p in folder.glob(".*") if ".tmp-" in p.name or ".old-" in p.name or p.name.endswith(".tmp")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for path in leftovers:
        name = path.name[1:].split(".old-")[0].split(".tmp-")[0]
        final = folder / name
        if ".old-" in path.name and path.is_dir() and not final.exists() and is_sealed(path):
            os.replace(path, final)
            done.append(f"restored {final.name} from an interrupted swap")
            continue
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        done.append(f"removed {path.name}, left by an interrupted write")
    return done


def fsync_tree_parent(path: Path) -> None:
    """Make a rename into path's folder durable."""
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


TRAINING_LOCK = ".training.lock"
# How long a new holder of a run folder waits for the training processes of an earlier attempt to be
# gone (they die with their flow process within moments; see nerflow.tasks.runtime.lifeline).
TRAINING_GONE_WAIT_S = 60.0


@contextlib.contextmanager
def folder_lock(folder: Path, holder: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on folder/.lock while the block runs; a second holder waits up to wait_s
    (default: not at all), then is refused with who holds it. The operating system releases the lock
    when its process ends, however it ends.

    Training processes of the run (torchrun's ranks) hold folder/.training.lock shared for as long as
    they live, so the folder is not given to a new holder until the last of them is gone."""
    import fcntl
    import socket
    import time

    from nerflow.tasks.runtime.errors import FolderBusy

    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    owner = path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
                    raise FolderBusy(
                        f"{folder} is in use by {owner}: wait for it to finish, or choose another run_name"
                    ) from None
                time.sleep(0.2)
        wait_for_training_processes(Path(folder))
        os.ftruncate(fd, 0)
        os.write(
            fd,
            f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S')})".encode(),
        )
        yield
    finally:
        os.close(fd)


def wait_for_training_processes(folder: Path, wait_s: float = TRAINING_GONE_WAIT_S) -> None:
    """Return once no training process holds folder/.training.lock; FolderBusy after wait_s."""
    import fcntl
    import time

    from nerflow.tasks.runtime.errors import FolderBusy

    fd = os.open(Path(folder) / TRAINING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return  # closing the fd releases it again
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise FolderBusy(
                        f"{folder}: training processes of an earlier attempt are still running after {wait_s:.0f} s"
                    ) from None
                time.sleep(0.2)
    finally:
        os.close(fd)


_HELD: list[int] = []


def hold_training_lock(folder: Path) -> None:
    """This process is one of the run's training processes: hold folder/.training.lock (shared) until it
    exits, whichever way it exits (the kernel releases it)."""
    import fcntl

    fd = os.open(Path(folder) / TRAINING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_SH)
    _HELD.append(fd)
