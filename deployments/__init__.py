"""The deployments (`prefect.yaml`), the work-pool job templates (`pools/`) and the multi-node Job;
installed as package data of `nerflow.deployments`, so `nerflow serve` and `nerflow pool create` find
them without a source checkout."""

from importlib.resources import files
from pathlib import Path

FOLDER = Path(str(files(__name__)))
PREFECT_FILE = FOLDER / "prefect.yaml"
POOL_TEMPLATES = FOLDER / "pools"
