"""The run settings, where users and entry points look for them; they live in tasks.settings, below the steps."""

from tasks.settings import (  # noqa: F401
    CardSettings,
    DatasetSettings,
    EvaluationSettings,
    ModelSettings,
    PublishSettings,
    RunSettings,
    SettingsError,
    TokenizeSettings,
    TrackingSettings,
    TrainSettings,
    describe_validation_error,
    load_settings,
    settings_reference,
    settings_to_yaml,
)
