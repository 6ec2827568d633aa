"""The one description of a nerflow run, and how it is read.

`RunSettings` is the single source of truth: the CLI (`--config run.yaml` plus `--set key=value`), the
Prefect flow's parameters (and so the run form in the Prefect UI) and YAML files are all built from it.
Sections decide one thing each (`sections`); older setting names are migrated once, by version
(`migration`); transformers' own TrainingArguments are checked against the installed version
(`trainer_args`). Secrets are never fields: settings name the Prefect Secret block to read.
"""

from nerflow.tasks.settings.loading import (
    SettingsError,
    apply_overrides,
    describe_validation_error,
    did_you_mean,
    load_settings,
    setting_names,
    settings_reference,
    settings_to_yaml,
)
from nerflow.tasks.settings.sections import (
    TAG_NAME,
    AlertSettings,
    AlignmentStrategy,
    AnalysisSettings,
    BaseModelSettings,
    CardSettings,
    ComputeSettings,
    DatasetSettings,
    EvaluationSettings,
    ExportSettings,
    PublishSettings,
    RecordSettings,
    RunSettings,
    TokenizeSettings,
    TrackingSettings,
    TrainSettings,
)

__all__ = [
    "TAG_NAME",
    "AlertSettings",
    "AlignmentStrategy",
    "AnalysisSettings",
    "BaseModelSettings",
    "CardSettings",
    "ComputeSettings",
    "DatasetSettings",
    "EvaluationSettings",
    "ExportSettings",
    "PublishSettings",
    "RecordSettings",
    "RunSettings",
    "SettingsError",
    "TokenizeSettings",
    "TrackingSettings",
    "TrainSettings",
    "apply_overrides",
    "describe_validation_error",
    "did_you_mean",
    "load_settings",
    "setting_names",
    "settings_reference",
    "settings_to_yaml",
]
