"""Prefect homes whose database is already migrated, for the servers the tests start.

A Prefect server on an empty home first runs every Alembic migration into a new SQLite database: about
9 CPU seconds on this project's 2-core box, more than the rest of its start. The suite starts dozens of
servers, so most start from a copy of one migrated database instead, as a user's second run does. The
first run on an empty home keeps tests of its own: `nerflow train` on its own temporary server
(test_cli_guards.py), `make install-check` and `make demo`."""

from __future__ import annotations

import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from unittest import mock

_MIGRATE = "import asyncio; from prefect.server.database import provide_database_interface as db; asyncio.run(db().create_db())"


def migrated_database() -> Path:
    """A SQLite database at Alembic head for the installed Prefect: made once per machine and version,
    by Prefect's own migrations in a process of its own (the pytest workers share it under a lock)."""
    from importlib.metadata import version

    target = Path(tempfile.gettempdir()) / f"nerflow-tests-prefect-{version('prefect')}.db"
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            with tempfile.TemporaryDirectory() as home:
                fresh = Path(home) / "prefect.db"
                env = {
                    **os.environ,
                    "PREFECT_HOME": home,
                    "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{fresh}",
                }
                subprocess.run([sys.executable, "-c", _MIGRATE], env=env, check=True, capture_output=True, timeout=300)
                partial = target.with_name(target.name + f".tmp-{os.getpid()}")
                with closing(sqlite3.connect(fresh)) as source, closing(sqlite3.connect(partial)) as copy:
                    source.backup(copy)  # one self-contained file: nothing left behind in a -wal file
                partial.rename(target)
    return target


def seeded_home(home: Path) -> Path:
    """home (created) with a migrated prefect.db where it has none yet."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "prefect.db").exists():
        shutil.copyfile(migrated_database(), home / "prefect.db")
    return home


@contextmanager
def seeded_test_harness(server_startup_timeout: int = 120) -> Iterator[None]:
    """Prefect's prefect_test_harness, its temporary database a migrated copy."""
    import prefect.testing.utilities as utilities

    def folder_with_database() -> str:
        folder = tempfile.mkdtemp()
        shutil.copyfile(migrated_database(), Path(folder) / "prefect-test.db")  # the name the harness uses
        return folder

    with (
        mock.patch.object(utilities, "mkdtemp", folder_with_database),
        utilities.prefect_test_harness(server_startup_timeout=server_startup_timeout),
    ):
        yield
