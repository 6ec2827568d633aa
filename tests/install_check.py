"""The wheel as a user installs it: built from this checkout, installed (not editable) into a fresh venv,
run from an empty folder where no source tree is importable.

It trains the demo (a short one), starts `nerflow serve` (server, pool, deployments from the packaged
prefect.yaml, worker) and creates a docker pool from the packaged template with `nerflow pool create`.
The venv borrows the dependencies already installed in .venv through a path entry (downloading torch
again proves nothing about nerflow's packaging); nerflow itself comes only from the wheel.

Run as `make install-check`; exits non-zero with the step that failed.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import site
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def step(what: str) -> None:
    print(f"install-check: {what}", flush=True)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if done.returncode != 0:
        sys.exit(
            f"install-check: {' '.join(map(str, cmd))} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
        )
    return done


def fresh_venv(root: Path) -> Path:
    step("building the wheel and installing it into a fresh venv")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"), str(REPO)])
    run([sys.executable, "-m", "venv", str(root / "venv")])
    venv_site = next((root / "venv" / "lib").glob("python*/site-packages"))
    # Dependencies from .venv; the editable nerflow there is a .pth finder, which a path entry does not run.
    (venv_site / "_nerflow_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    wheel = next((root / "dist").glob("nerflow-*.whl"))
    run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--quiet", str(wheel)])
    return root / "venv" / "bin"


def check_imports(bin_dir: Path, cwd: Path) -> None:
    code = "import nerflow.tasks, nerflow.flows, nerflow.deployments as d; print(nerflow.tasks.__file__, d.PREFECT_FILE.is_file())"
    where, packaged = run([str(bin_dir / "python"), "-c", code], cwd=cwd).stdout.split()
    if not where.startswith(str(bin_dir.parent)) or packaged != "True":
        sys.exit(f"install-check: nerflow imported from {where} (packaged prefect.yaml: {packaged}), not the wheel")


def train_demo(bin_dir: Path, cwd: Path, env: dict) -> None:
    step("nerflow train -c configs/demo.yaml (1 epoch, 300 sentences) from an empty folder")
    overrides = [
        "dataset.max_train_samples=300",
        "dataset.max_eval_samples=100",
        "train.epochs=1",
        "run_name=installed",
    ]
    cmd = [str(bin_dir / "nerflow"), "train", "-c", str(REPO / "configs" / "demo.yaml")]
    run(cmd + [a for o in overrides for a in ("--set", o)], cwd=cwd, env=env)
    metrics = json.loads((cwd / "runs" / "installed" / "metrics.json").read_text())
    step(f"demo trained: word-level test F1 {metrics['word_level']['test']['f1']:.4f}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, auth: str, path: str, body: dict) -> object:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api{path}",
        data=json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": "Basic " + base64.b64encode(auth.encode()).decode(),
        },
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def serve_and_create_pool(bin_dir: Path, cwd: Path, env: dict) -> None:
    step("nerflow serve (packaged deployments), then nerflow pool create --type docker against it")
    port, home = free_port(), cwd / "prefect-home"
    cmd = [str(bin_dir / "nerflow"), "serve", "--port", str(port), "--workdir", "serve", "--home", str(home)]
    server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not any(line.startswith("deployments:") for line in lines):
            line = server.stdout.readline()
            if not line and server.poll() is not None:
                sys.exit("install-check: nerflow serve exited:\n" + "".join(lines))
            lines.append(line)
        auth = (home / "nerflow-api-auth").read_text().strip()
        names = {d["name"] for d in api(port, auth, "/deployments/filter", {})}
        if not {"wikiann-bn", "batch", "crash-recovery"} <= names:
            sys.exit(f"install-check: serve created the deployments {sorted(names)}")
        pool_env = {**env, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_API_AUTH_STRING": auth}
        run(
            [str(bin_dir / "nerflow"), "pool", "create", "--type", "docker", "--name", "installed-docker"],
            cwd=cwd,
            env=pool_env,
        )
        pools = {p["name"]: p["type"] for p in api(port, auth, "/work_pools/filter", {})}
        if pools.get("installed-docker") != "docker" or pools.get("gpu") != "process":
            sys.exit(f"install-check: work pools {pools}")
        step(f"serve answered with deployments {sorted(names)}; pools {pools}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="nerflow-install-") as tmp:
        root = Path(tmp)
        bin_dir = fresh_venv(root)
        cwd = root / "elsewhere"
        cwd.mkdir()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"PREFECT_HOME": str(root / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        check_imports(bin_dir, cwd)
        train_demo(bin_dir, cwd, env)
        serve_and_create_pool(bin_dir, cwd, env)
    step("passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
