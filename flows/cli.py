"""The `nerflow` command: train (runs the Prefect flow), predict, and show the run settings."""

from __future__ import annotations

import argparse
import json
import os
import sys

from flows.settings import RunSettings, SettingsError, load_settings, settings_to_yaml


def _add_settings_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", help="YAML file of run settings (see `nerflow settings`)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set train.epochs=3 (repeatable; values are YAML)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerflow", description="Fine-tune BERT-family NER models with Prefect.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run the finetune_ner flow")
    _add_settings_args(train)

    settings = sub.add_parser("settings", help="print the resolved run settings as YAML (or the JSON schema)")
    _add_settings_args(settings)
    settings.add_argument("--schema", action="store_true", help="print the JSON schema instead")

    predict = sub.add_parser("predict", help="print the entities a trained model finds")
    predict.add_argument("model_dir", help="a run's model folder (RUN_DIR/model)")
    predict.add_argument("text", nargs="+", help="one or more sentences")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def cmd_train(settings: RunSettings) -> int:
    from flows.finetune import finetune_ner

    result = finetune_ner(settings=settings)
    print()
    print(f"run folder : {result.run_dir}")
    print(f"model      : {result.model_dir}")
    print(f"model card : {result.card_path}")
    print(f"metrics    : {result.metrics_path}")
    print(f"test F1    : {result.test_f1:.4f} (word level; precision {result.test_precision:.4f}, recall {result.test_recall:.4f})")
    return 0


def cmd_predict(model_dir: str, texts: list[str], as_json: bool) -> int:
    from flows.predict import load_ner_pipeline, predict_entities

    results = predict_entities(load_ner_pipeline(model_dir), texts)
    if as_json:
        print(json.dumps([{"text": t, "entities": r} for t, r in zip(texts, results)], ensure_ascii=False, indent=2))
        return 0
    for text, entities in zip(texts, results):
        print(text)
        if not entities:
            print("  (no entities)")
        for e in entities:
            print(f"  {e['entity']:<8} {e['text']!r:<32} score {e['score']:.3f}  chars {e['start']}-{e['end']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Quiet, local-first defaults; a user's own settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "predict":
            return cmd_predict(args.model_dir, args.text, args.json)
        if args.command == "settings" and args.schema:
            print(json.dumps(RunSettings.model_json_schema(), indent=2))
            return 0
        settings = load_settings(args.config, args.overrides)
        if args.command == "settings":
            print(settings_to_yaml(settings), end="")
            return 0
        return cmd_train(settings)
    except (SettingsError, FileNotFoundError) as e:
        print(f"nerflow: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
