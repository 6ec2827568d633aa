"""Settings from a YAML file and `--set KEY=VALUE` overrides, with errors that name the field (and the
setting meant when a name is mistyped or is transformers' own), and the reference tables of docs/settings.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.settings.sections import RunSettings


class SettingsError(InputError):
    """A run description that cannot be used; the message names the field."""


def setting_names() -> list[str]:
    """Every setting as section.field (top-level fields bare)."""
    names = []
    for name, field in RunSettings.model_fields.items():
        section = field.get_default(call_default_factory=True)
        names += [f"{name}.{key}" for key in type(section).model_fields] if isinstance(section, BaseModel) else [name]
    return names


def did_you_mean(loc: tuple) -> str:
    """A hint for an unknown setting name: the nerflow setting a transformers/run_ner.py name maps to,
    else the closest names."""
    import difflib

    from nerflow.tasks.settings.trainer_args import SETTING_ALIASES

    dotted, key = ".".join(map(str, loc)), str(loc[-1])
    if key in SETTING_ALIASES:
        return f"; did you mean {SETTING_ALIASES[key]}? ({key} is transformers' name)"
    names = setting_names()
    close = difflib.get_close_matches(dotted, names, n=2, cutoff=0.8)
    close = close or [
        n
        for n in names
        if n.rsplit(".", 1)[-1]
        in difflib.get_close_matches(key, [m.rsplit(".", 1)[-1] for m in names], n=2, cutoff=0.75)
    ]
    return f"; did you mean {', '.join(close)}?" if close else "; `nerflow settings` lists every setting"


def describe_validation_error(err: ValidationError, origin: str = "settings") -> str:
    lines = [f"invalid run settings ({origin}):"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(root)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {field}: not a nerflow setting{did_you_mean(tuple(e['loc']))}")
        elif e["type"] == "value_error":  # the validator's own message, which names what it checked
            lines.append(f"  {field}: " + e["msg"].removeprefix("Value error, ").removeprefix(f"{field}: "))
        else:
            lines.append(f"  {field}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise SettingsError(f"--set expects KEY=VALUE, got {item!r}")
    # YAML gives typed scalars and lists: 3 -> int, 1e-4 -> float, [a, b] -> list, null -> None.
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise SettingsError(f"--set {key}: cannot parse value {raw!r}: {e}") from e
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = _parse_override(item)
        node = data
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SettingsError(f"--set {item}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return data


# Settings that name places: a relative value written in a config file is read from that file's
# folder (wherever the command runs); on the command line, from the working folder.
_PATH_SETTINGS = (("output_dir",), ("cache_dir",))
_PATH_OR_ID_SETTINGS = (("dataset", "source"), ("base_model", "name"), ("model", "checkpoint"))


def resolve_config_paths(data: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Relative paths in a config file's data made absolute against the file's folder. A dataset
    source or checkpoint is a path if it starts with ./ ../ ~ or / or names something in that folder;
    anything else stays as written (a Hub id, s3://, package:)."""

    def place(section: dict, key: str, always: bool) -> None:
        value = section.get(key)
        if not isinstance(value, str) or value.startswith(("s3://", "package:")) or Path(value).is_absolute():
            return
        candidate = (folder / value).expanduser() if not value.startswith("~") else Path(value).expanduser()
        if always or value.startswith((".", "~")) or candidate.exists():
            section[key] = str(candidate.resolve())

    for path, always in [(p, True) for p in _PATH_SETTINGS] + [(p, False) for p in _PATH_OR_ID_SETTINGS]:
        section = data if len(path) == 1 else data.get(path[0])
        if isinstance(section, dict):
            place(section, path[-1], always)
    trainer_args = (data.get("train") or {}).get("trainer_args") if isinstance(data.get("train"), dict) else None
    for key in trainer_args or {}:  # deepspeed, fsdp_config, accelerator_config: files beside the config
        if isinstance(trainer_args[key], str):
            place(trainer_args, key, False)
    return data


def load_settings(config: str | Path | None = None, overrides: list[str] | None = None) -> RunSettings:
    """Build settings from an optional YAML file plus KEY=VALUE overrides; fail naming the field."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if config is not None:
        path = Path(config)
        origin = str(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise SettingsError(f"config file not found: {path}") from e
        except yaml.YAMLError as e:
            raise SettingsError(f"{path}: not valid YAML: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise SettingsError(f"{path}: expected a mapping of settings, got {type(loaded).__name__}")
        data = resolve_config_paths(loaded or {}, path.resolve().parent)
    if overrides:
        data = apply_overrides(data, overrides)
        origin += " + --set"
    try:
        return RunSettings.model_validate(data)
    except ValidationError as e:
        raise SettingsError(describe_validation_error(e, origin)) from e


def settings_reference() -> str:
    """Every setting as Markdown tables, one per section: name, default, description (docs/settings.md)."""

    def default(field) -> str:
        value = field.get_default(call_default_factory=True)
        if isinstance(value, BaseModel):
            return ""
        return (
            "`"
            + (
                yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")
                if value is not None
                else "null"
            )
            + "`"
        )

    lines = ["# Run settings", "", "Generated by `nerflow settings --markdown` from `tasks/settings/sections.py`.", ""]
    top = [
        (name, f)
        for name, f in RunSettings.model_fields.items()
        if not isinstance(f.get_default(call_default_factory=True), BaseModel)
    ]
    for name, field in RunSettings.model_fields.items():
        section = field.get_default(call_default_factory=True)
        if not isinstance(section, BaseModel):
            continue
        lines += [f"## `{name}`: {type(section).__doc__}", "", "| setting | default | what it does |", "|---|---|---|"]
        lines += [
            f"| `{name}.{key}` | {default(f)} | {f.description} |" for key, f in type(section).model_fields.items()
        ]
        lines.append("")
    lines += ["## Top level", "", "| setting | default | what it does |", "|---|---|---|"]
    lines += [f"| `{name}` | {default(f)} | {f.description} |" for name, f in top]
    return "\n".join(lines) + "\n"


def settings_to_yaml(settings: RunSettings) -> str:
    return yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
