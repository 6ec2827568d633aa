"""What a run may touch: the operator's policy, checked before any work (threat model: docs/security.md).

A deployment run's parameters come from whoever may start runs (the UI form, the API, an event), and
its flow-run process holds the Prefect API credential, which reads every Secret block. So no parameter
may lead it to code, files, hosts or secrets the operator did not choose. The policy comes from the
operator, in the environment of the worker (or baked into the pool template or the image), never from
a run: the pool templates expose neither the command nor the environment as job variables.

The policy is in force in every flow-run process a worker starts (Prefect sets PREFECT__FLOW_RUN_ID
there) and wherever one of the variables below is set. A local `nerflow train` runs its owner's own
settings and is unrestricted unless its environment sets a policy. In force, a variable left unset
means the narrowest choice:

| variable | what it allows | unset |
|---|---|---|
| `NERFLOW_ALLOWED_ROOTS` | folders (`:`-separated) holding every local path a run names | the run's working folder |
| `NERFLOW_ALLOWED_PACKAGES` | modules a `package:` checkpoint may name (`,`) | none |
| `NERFLOW_ALLOW_REMOTE_CODE` | `1`: `base_model.trust_remote_code` may be true | no checkpoint code runs |
| `NERFLOW_ALLOWED_TRACKING_URIS` | MLflow servers a run may log to (`,`) | the worker's MLFLOW_TRACKING_URI only |
| `NERFLOW_ALLOWED_S3` | `s3://bucket/prefix` places a run may read or write (`,`) | none |
| `NERFLOW_ALLOWED_HUB_NAMESPACES` | Hub owners a run may publish to (`,`) | none |
| `NERFLOW_ALLOWED_RENDEZVOUS` | `host:port` of multi-node rendezvous (`,`) | none |
| `NERFLOW_SECRET_BLOCKS` | which Secret block serves which use: `hub=hf-token,wandb=...,mlflow=...` | settings' names |

Always checked, in force or not: the W&B key's and the MLflow credentials' blocks are not the Hub
token's (a secret reaches one service only), and s3:// URIs have no `.` or `..` segments.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.settings import DatasetSettings, RunSettings, SettingsError

POLICY_VARIABLES = (
    "NERFLOW_ALLOWED_ROOTS",
    "NERFLOW_ALLOWED_PACKAGES",
    "NERFLOW_ALLOW_REMOTE_CODE",
    "NERFLOW_ALLOWED_TRACKING_URIS",
    "NERFLOW_ALLOWED_S3",
    "NERFLOW_ALLOWED_HUB_NAMESPACES",
    "NERFLOW_ALLOWED_RENDEZVOUS",
    "NERFLOW_SECRET_BLOCKS",
)
# Each Secret block setting, the use it serves and the block it names by default.
SECRET_USES = {
    "hub": ("publish.hf_token_block", "hf-token"),
    "wandb": ("tracking.wandb_api_key_block", "wandb-api-key"),
    "mlflow": ("tracking.mlflow_credentials_block", "mlflow-credentials"),
    "aws": ("publish.aws_credentials_block", None),
}


class RunRefused(InputError):
    """A parameter is outside what this worker allows; the message names each and why."""


def _items(env: Mapping[str, str], name: str, sep: str = ",") -> list[str]:
    return [item.strip() for item in env.get(name, "").split(sep) if item.strip()]


def _secret_bindings(env: Mapping[str, str]) -> dict[str, str | None]:
    bindings = {use: default for use, (_, default) in SECRET_USES.items()}
    for item in _items(env, "NERFLOW_SECRET_BLOCKS"):
        use, sep, block = item.partition("=")
        if not sep or use.strip() not in SECRET_USES:
            raise SettingsError(
                f"NERFLOW_SECRET_BLOCKS: {item!r} is not USE=BLOCK with USE one of {', '.join(SECRET_USES)}"
            )
        bindings[use.strip()] = block.strip() or None
    named = [b for b in bindings.values() if b]
    if len(named) != len(set(named)):
        raise SettingsError(f"NERFLOW_SECRET_BLOCKS binds one Secret block to several uses: {bindings}")
    return bindings


class RunPolicy(BaseModel):
    """What runs on this worker may name; built by the operator's environment (from_environment)."""

    enforced: bool
    roots: list[Path] = []
    packages: list[str] = []
    remote_code: bool = False
    tracking_uris: list[str] = []
    s3_prefixes: list[str] = []
    hub_namespaces: list[str] = []
    rendezvous: list[str] = []
    secret_blocks: dict[str, str | None] = {}

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> RunPolicy:
        env = os.environ if env is None else env
        # A worker sets PREFECT__FLOW_RUN_ID for the process of every deployment run it starts.
        enforced = "PREFECT__FLOW_RUN_ID" in env or any(name in env for name in POLICY_VARIABLES)
        roots = _items(env, "NERFLOW_ALLOWED_ROOTS", os.pathsep) or [os.getcwd()]
        tracking = _items(env, "NERFLOW_ALLOWED_TRACKING_URIS") or _items(env, "MLFLOW_TRACKING_URI")
        return cls(
            enforced=enforced,
            roots=[Path(p).expanduser().resolve() for p in roots],
            packages=_items(env, "NERFLOW_ALLOWED_PACKAGES"),
            remote_code=env.get("NERFLOW_ALLOW_REMOTE_CODE", "").strip().lower() in ("1", "true", "yes"),
            tracking_uris=[u.rstrip("/") for u in tracking],
            s3_prefixes=[p.rstrip("/") for p in _items(env, "NERFLOW_ALLOWED_S3")],
            hub_namespaces=_items(env, "NERFLOW_ALLOWED_HUB_NAMESPACES"),
            rendezvous=_items(env, "NERFLOW_ALLOWED_RENDEZVOUS"),
            secret_blocks=_secret_bindings(env),
        )

    def outside_roots(self, name: str, value: str) -> list[str]:
        place = Path(value).expanduser().resolve()  # symlinks followed: a link out of a root is outside
        if any(place == root or root in place.parents for root in self.roots):
            return []
        return [
            f"{name}={value!r} is outside the allowed folders ({', '.join(map(str, self.roots))}; "
            "NERFLOW_ALLOWED_ROOTS)"
        ]

    def outside_s3(self, name: str, uri: str) -> list[str]:
        if any(uri.rstrip("/") == p or uri.startswith(p + "/") for p in self.s3_prefixes):
            return []
        return [
            f"{name}={uri!r} is outside the allowed S3 places ({', '.join(self.s3_prefixes) or 'none'}; "
            "NERFLOW_ALLOWED_S3)"
        ]

    def place_problems(self, name: str, value: str) -> list[str]:
        """A local path or an s3:// URI that a run reads or writes."""
        problems = s3_segment_problems(name, value)
        if not self.enforced:
            return problems
        return problems + (
            self.outside_s3(name, value) if value.startswith("s3://") else self.outside_roots(name, value)
        )


def s3_segment_problems(name: str, uri: str) -> list[str]:
    if uri.startswith("s3://") and any(part in (".", "..") for part in uri[5:].split("/")):
        return [f"{name}={uri!r}: '.' and '..' segments are not allowed in an s3:// URI"]
    return []


def looks_like_path(value: str) -> bool:
    return value.startswith(("/", "~", "./", "../")) or "/" in value or value.endswith((".json", ".yaml", ".yml"))


def local_base_model(checkpoint: str) -> bool:
    if checkpoint.startswith("package:"):
        return False
    return checkpoint.startswith((".", "/", "~")) or Path(checkpoint).expanduser().exists()


def _strings(value: Any, name: str) -> Iterator[tuple[str, str]]:
    """Every string inside a trainer_args value, with its dotted name."""
    if isinstance(value, str):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _strings(item, f"{name}[{i}]")


def dataset_problems(dataset: DatasetSettings, policy: RunPolicy) -> list[str]:
    from nerflow.tasks.data.sources import is_local_source

    if dataset.source.startswith("s3://") or is_local_source(dataset):
        return policy.place_problems("dataset.source", dataset.source)
    return []


def code_problems(settings: RunSettings, policy: RunPolicy) -> list[str]:
    """Settings that run code: a checkpoint's own Python, a `package:` module's import."""
    problems = []
    name = settings.base_model.name
    if name.startswith("package:") and name[8:] not in policy.packages:
        problems.append(
            f"base_model.name={name!r}: package not in NERFLOW_ALLOWED_PACKAGES "
            f"({', '.join(policy.packages) or 'none'})"
        )
    if settings.base_model.trust_remote_code and not policy.remote_code:
        problems.append(
            "base_model.trust_remote_code=true: this worker runs no code shipped with a checkpoint "
            "(NERFLOW_ALLOW_REMOTE_CODE)"
        )
    return problems


def destination_problems(settings: RunSettings, policy: RunPolicy) -> list[str]:
    """Hosts a run sends to: an MLflow server, a Hub namespace, a rendezvous endpoint."""
    problems = []
    uri = settings.tracking.mlflow_tracking_uri
    if "mlflow" in settings.tracking.backends and uri and uri.rstrip("/") not in policy.tracking_uris:
        problems.append(
            f"tracking.mlflow_tracking_uri={uri!r} is not an allowed MLflow server "
            f"({', '.join(policy.tracking_uris) or 'none'}; NERFLOW_ALLOWED_TRACKING_URIS)"
        )
    repo = settings.publish.hub_repo_id
    if "hub" in settings.publish.targets and repo and repo.split("/")[0] not in policy.hub_namespaces:
        problems.append(
            f"publish.hub_repo_id={repo!r}: namespace {repo.split('/')[0]!r} is not allowed "
            f"({', '.join(policy.hub_namespaces) or 'none'}; NERFLOW_ALLOWED_HUB_NAMESPACES)"
        )
    compute = settings.compute
    if compute.nnodes > 1 and compute.rdzv_endpoint not in policy.rendezvous:
        problems.append(
            f"compute.rdzv_endpoint={compute.rdzv_endpoint!r} is not an allowed rendezvous "
            f"({', '.join(policy.rendezvous) or 'none'}; NERFLOW_ALLOWED_RENDEZVOUS)"
        )
    return problems


def secret_problems(settings: RunSettings, policy: RunPolicy) -> list[str]:
    """Which Secret block serves which use. Always: no key shared with the Hub token's block. In
    force: each use reads the block the operator bound to it, and only that one."""
    named = {
        "hub": settings.publish.hf_token_block,
        "wandb": settings.tracking.wandb_api_key_block,
        "mlflow": settings.tracking.mlflow_credentials_block,
        "aws": settings.publish.aws_credentials_block,
    }
    problems = []
    for use, service in (("wandb", "W&B"), ("mlflow", "the MLflow server")):
        if use in settings.tracking.backends and named[use] == named["hub"]:
            field = SECRET_USES[use][0]
            problems.append(
                f"{field} names the Hub token's block ({named[use]!r}): the Hub token would be sent to "
                f"{service}; name its own Secret block"
            )
    if policy.enforced:
        for use, block in named.items():
            if block != policy.secret_blocks[use]:
                bound = policy.secret_blocks[use]
                problems.append(
                    f"{SECRET_USES[use][0]}={block!r}: this worker binds {use} credentials to "
                    f"{repr(bound) if bound else 'the environment (no block)'} (NERFLOW_SECRET_BLOCKS)"
                )
    return problems


def place_problems(settings: RunSettings, policy: RunPolicy) -> list[str]:
    """Local folders and S3 places a run reads or writes, trainer_args paths included."""
    problems = policy.place_problems("output_dir", settings.output_dir)
    if settings.cache_dir:
        problems += policy.place_problems("cache_dir", settings.cache_dir)
    problems += dataset_problems(settings.dataset, policy)
    if local_base_model(settings.base_model.name):
        problems += policy.place_problems("base_model.name", settings.base_model.name)
    if settings.publish.s3_uri:
        problems += policy.place_problems("publish.s3_uri", settings.publish.s3_uri)
    if policy.enforced:
        # DeepSpeed, FSDP and accelerate configs are files, and hold paths (offload folders) themselves.
        for name, value in _strings(settings.train.trainer_args, "train.trainer_args"):
            if looks_like_path(value):
                problems += policy.place_problems(name, value)
    return problems


def policy_problems(settings: RunSettings, env: Mapping[str, str] | None = None) -> list[str]:
    policy = RunPolicy.from_environment(env)
    problems = place_problems(settings, policy) + secret_problems(settings, policy)
    if policy.enforced:
        problems += code_problems(settings, policy) + destination_problems(settings, policy)
    return problems


def refuse(problems: list[str]) -> None:
    if problems:
        raise RunRefused("run refused before any work:\n" + "\n".join(f"  - {p}" for p in problems))


def check_run_policy(settings: RunSettings, env: Mapping[str, str] | None = None) -> None:
    """Raise RunRefused naming every setting this worker does not allow; then, the paths allowed, what
    transformers says of train.trainer_args (it reads the config files they name)."""
    from nerflow.tasks.settings.trainer_args import check_trainer_values

    refuse(policy_problems(settings, env))
    check_trainer_values(settings.train.trainer_args)


def check_dataset_policy(dataset: DatasetSettings, env: Mapping[str, str] | None = None) -> None:
    """The dataset watcher's check: the source it reads."""
    refuse(dataset_problems(dataset, RunPolicy.from_environment(env)))


def check_predict_policy(
    model_dir: str, input_path: str, output_path: str, env: Mapping[str, str] | None = None
) -> None:
    """Batch prediction's check: the model folder it loads, the file it reads, the one it writes."""
    policy = RunPolicy.from_environment(env)
    names = (("model_dir", model_dir), ("input_path", input_path), ("output_path", output_path))
    refuse([problem for name, value in names for problem in policy.place_problems(name, value)])
