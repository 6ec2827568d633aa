"""Crash-safe folders: a swap of a model folder never leaves a reader without one, and what a kill
inside a swap leaves is cleared on the next run. Kills are real SIGKILLs of a writing process."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import REPO
from nerflow.tasks.runtime.files import SEAL, atomic_dir, exchange, is_sealed, recover_interrupted_swaps


def write_model(folder: Path, version: str) -> None:
    with atomic_dir(folder, replace=True) as tmp:
        (tmp / "config.json").write_text(f'{{"version": "{version}"}}')
        (tmp / "model.safetensors").write_bytes(version.encode() * 1000)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux's")
def test_the_exchange_is_atomic_on_linux(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "from-a").write_text("a")
    assert exchange(tmp_path / "a", tmp_path / "b") is True
    assert (tmp_path / "b" / "from-a").is_file() and not (tmp_path / "a" / "from-a").exists()


def test_readers_never_find_the_folder_missing_while_it_is_swapped(tmp_path):
    model = tmp_path / "model"
    write_model(model, "v0")
    missing, done = [], threading.Event()

    def read() -> None:
        while not done.is_set():
            if not (model / "config.json").is_file():
                missing.append(1)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for version in range(1, 200):
            write_model(model, f"v{version}")
    finally:
        done.set()
        reader.join()
    assert missing == [] and is_sealed(model) and (model / "config.json").read_text() == '{"version": "v199"}'


KILLED_SWAP = """
import os, shutil, signal, sys
from pathlib import Path
import nerflow.tasks.runtime.files as storage
if sys.argv[2] == "renames":
    storage.exchange = lambda a, b: False  # as on an OS without an atomic exchange
    real = os.replace
    def replace(src, dst):
        real(src, dst)
        if ".old-" in str(dst):
            os.kill(os.getpid(), signal.SIGKILL)  # between the two renames
    os.replace = replace
else:
    shutil.rmtree = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)  # right after the exchange
with storage.atomic_dir(Path(sys.argv[1]), replace=True) as tmp:
    (tmp / "config.json").write_text('{"version": "new"}')
"""


@pytest.mark.parametrize("swap", ["exchange", "renames"])
def test_a_kill_inside_the_swap_leaves_a_complete_folder_and_the_next_run_clears_the_rest(tmp_path, swap):
    model = tmp_path / "run" / "model"
    write_model(model, "old")
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_SWAP), str(model), swap], cwd=REPO, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr
    leftovers = [p.name for p in model.parent.iterdir() if p.name != "model"]
    assert leftovers, "the kill left nothing to clear: it did not happen inside the swap"
    if swap == "exchange":
        assert (model / "config.json").read_text() == '{"version": "new"}' and is_sealed(model)
    else:
        assert not model.exists()  # the one moment two renames leave a reader without the folder
    done = recover_interrupted_swaps(model.parent)
    assert sorted(p.name for p in model.parent.iterdir()) == ["model"] and is_sealed(model)
    assert (model / SEAL).is_file() and done
    if swap == "renames":
        assert (
            model / "config.json"
        ).read_text() == '{"version": "old"}' and "restored model from an interrupted swap" in done
