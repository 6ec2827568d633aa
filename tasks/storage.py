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
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file() and p.name != SEAL}
    return atomic_write_json(folder / SEAL, {"files": files})


def is_sealed(folder: Path) -> bool:
    """The folder was sealed and still holds every file it was sealed with, at the same size."""
    try:
        files = json.loads((Path(folder) / SEAL).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((Path(folder) / name).is_file() and (Path(folder) / name).stat().st_size == size for name, size in files.items())


@contextlib.contextmanager
def atomic_dir(final: Path, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder; seal it and rename it to `final` when the block succeeds.

    With replace=True an existing `final` is swapped out (moved aside, then deleted) so readers see
    either the old complete folder or the new complete folder, never a mixture.
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


def fsync_tree_parent(path: Path) -> None:
    """Make a rename into path's folder durable."""
    fd = os.open(Path(path).parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path, holder: str) -> Iterator[None]:
    """Hold an exclusive lock on folder/.lock while the block runs; a second holder is refused at once
    with who holds it. The operating system releases the lock when its process ends, however it ends."""
    import fcntl
    import socket
    import time

    from tasks.errors import FolderBusy

    path = Path(folder) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = path.read_text(encoding="utf-8", errors="replace").strip() or "another process"
            raise FolderBusy(f"{folder} is in use by {owner}: wait for it to finish, or choose another run_name") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{holder} (pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')})".encode())
        yield
    finally:
        os.close(fd)
