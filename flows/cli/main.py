"""The `nerflow` command: train, publish, predict, settings; pool create, trigger and serve for deployments."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.settings import (
    PublishSettings,
    RunSettings,
    SettingsError,
    describe_validation_error,
    load_settings,
    settings_reference,
    settings_to_yaml,
)


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


# `nerflow publish` flags: PublishSettings fields under the command's own names. A name starting with
# "no:" sets a boolean field to False (--public creates a public repository: hub_private=False).
PUBLISH_FLAGS = {
    "targets": "--target",
    "hub_repo_id": "--repo-id",
    "s3_uri": "--s3-uri",
    "hub_private": "no:--public",
    "hub_create_pr": "--create-pr",
    "hub_tag_runs": "--tag",
    "min_f1": "--min-f1",
    "require_improvement": "--require-improvement",
    "hf_token_block": "--hf-token-block",
    "aws_credentials_block": "--aws-credentials-block",
}


def add_setting_flags(parser: argparse.ArgumentParser, model: type[BaseModel], flags: dict[str, str]) -> None:
    """Command-line flags for fields of a settings model: type, choices and help come from the field."""
    for name, flag in flags.items():
        field = model.model_fields[name]
        options: dict[str, Any] = {"dest": name, "default": None, "help": field.description}
        if flag.startswith("no:"):
            flag, options["action"], options["const"] = flag[3:], "store_const", False
            options["help"] = f"sets {name} to false; {name}: {field.description}"
        elif field.annotation is bool:
            options.update(action="store_const", const=True)
        elif get_origin(field.annotation) is list:
            (item,) = get_args(field.annotation)
            options.update(
                action="append", choices=list(get_args(item)) or None, required=field.is_required() or name == "targets"
            )
        else:
            numbers = [t for t in get_args(field.annotation) or (field.annotation,) if t in (int, float)]
            options["type"] = numbers[0] if numbers else str
        parser.add_argument(flag, **options)


def settings_from_flags(args: argparse.Namespace, model: type[BaseModel], flags: dict[str, str], origin: str):
    """The settings model from the flags that were given (the model's defaults for the rest)."""
    given = {name: getattr(args, name) for name in flags if getattr(args, name) is not None}
    try:
        return model.model_validate(given)
    except ValidationError as e:
        raise SettingsError(describe_validation_error(e, origin)) from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nerflow", description="Fine-tune BERT-family NER models with Prefect.")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show the progress bars and load reports of datasets and transformers (NERFLOW_VERBOSE=1)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="run the finetune_ner flow")
    _add_settings_args(train)

    settings = sub.add_parser("settings", help="print the resolved run settings as YAML (or the JSON schema)")
    _add_settings_args(settings)
    settings.add_argument("--schema", action="store_true", help="print the JSON schema instead")
    settings.add_argument(
        "--markdown", action="store_true", help="print every setting as Markdown tables (docs/settings.md)"
    )

    publish = sub.add_parser("publish", help="publish a finished run (no retraining)")
    publish.add_argument("run_dir", help="a run folder (OUTPUT_DIR/RUN_NAME)")
    add_setting_flags(publish, PublishSettings, PUBLISH_FLAGS)
    publish.add_argument("--model-name", help="stable model name (S3 folder); default: from the run's settings")

    export = sub.add_parser("export", help="export a finished run's model to ONNX (fp32 and int8) with a parity report")
    export.add_argument("run_dir", help="a run folder (OUTPUT_DIR/RUN_NAME)")
    export.add_argument("--no-int8", action="store_true", help="write only the fp32 model")
    export.add_argument("--int8-f1-tolerance", type=float, default=None, help="default: export.int8_f1_tolerance")

    _add_pool_parser(sub)
    _add_sweep_parser(sub)
    _add_alerts_parser(sub)
    _add_hooks_parser(sub)
    _add_trigger_and_serve_parsers(sub)
    _add_predict_parser(sub)
    return parser


def _add_pool_parser(sub) -> None:
    pool = sub.add_parser("pool", help="work pools for the deployments")
    pool_sub = pool.add_subparsers(dest="pool_command", required=True)
    pool_create = pool_sub.add_parser("create", help="create the GPU work pool from deployments/pools/TYPE.json")
    pool_create.add_argument("--type", dest="pool_type", choices=["process", "docker", "kubernetes"], required=True)
    pool_create.add_argument("--name", default="gpu", help="pool name (the deployments use 'gpu')")
    pool_create.add_argument("--working-dir", help="process pools: folder the flow runs start in (runs/ goes there)")
    pool_create.add_argument(
        "--image", help="docker and kubernetes pools: the image flow runs start from (default nerflow-gpu:latest)"
    )
    pool_create.add_argument("--namespace", help="kubernetes pools: the namespace of the Jobs (default nerflow)")
    pool_create.add_argument("--overwrite", action="store_true", help="update the pool's template if it exists")


def _add_sweep_parser(sub) -> None:
    sweep = sub.add_parser(
        "sweep", help="train one run per point of a hyperparameter grid; publish the validation-best"
    )
    _add_settings_args(sweep)
    sweep.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="a setting and its values, e.g. train.learning_rate=1e-5,3e-5 (repeatable)",
    )
    sweep.add_argument("--name", help="sweep name (trial run names are NAME-t1, NAME-t2, ...)")
    sweep.add_argument(
        "--deployment", help="run trials as runs of this deployment (e.g. finetune_ner/wikiann-bn) on its pool"
    )
    sweep.add_argument("--parallel", type=int, default=2, help="trials at a time with --deployment")


def _add_alerts_parser(sub) -> None:
    alerts = sub.add_parser("alerts", help="failure alerts of unattended runs")
    alerts_sub = alerts.add_subparsers(dest="alerts_command", required=True)
    alerts_create = alerts_sub.add_parser("create", help="save the notification block failed runs are reported to")
    alerts_create.add_argument(
        "--webhook", required=True, help="URL that receives a JSON POST {subject, body} per failed run"
    )
    alerts_create.add_argument(
        "--name", default="nerflow-alerts", help="block name (alerts.notification_block: custom-webhook/NAME)"
    )


def _add_hooks_parser(sub) -> None:
    hooks = sub.add_parser("hooks", help="receive Hub webhooks and S3 event notifications as dataset-update events")
    hooks.add_argument(
        "--config", required=True, help="which repos and buckets train which dataset (deployments/hooks.yaml)"
    )
    hooks.add_argument(
        "--host", default="127.0.0.1", help="listen address (default 127.0.0.1: put a TLS proxy in front)"
    )
    hooks.add_argument("--port", type=int, default=4300)
    hooks.add_argument("--state-dir", default="hooks", help="where the revisions already delivered are kept")


def _add_trigger_and_serve_parsers(sub) -> None:
    trigger = sub.add_parser("trigger", help="emit nerflow.dataset.updated for a dataset (as the watcher does)")
    trigger.add_argument("dataset", help="dataset name of the event resource, e.g. wikiann-bn")
    trigger.add_argument("--revision", help="the new revision, passed to the triggered run")

    serve = sub.add_parser("serve", help="local Prefect server + gpu pool + deployments + worker (make serve)")
    serve.add_argument("--port", type=int, default=4200)
    serve.add_argument("--pool", default="gpu")
    serve.add_argument("--prefect-file", default=None, help="default: deployments/prefect.yaml")
    serve.add_argument("--workdir", default="work", help="where runs, logs and caches go")
    serve.add_argument("--home", default=None, help="PREFECT_HOME for the server (default: Prefect's)")


def _add_predict_parser(sub) -> None:
    _predict_options(sub.add_parser("predict", help="the entities a trained model finds, in sentences or a whole file"))


def predict_parser() -> argparse.ArgumentParser:
    """`nerflow predict` on its own: its options may come anywhere on the line (parse_intermixed_args,
    which a parser with subcommands cannot use)."""
    return _predict_options(
        argparse.ArgumentParser(prog="nerflow predict", description="The entities a trained model finds.")
    )


def _predict_options(predict: argparse.ArgumentParser) -> argparse.ArgumentParser:
    predict.add_argument("model_dir", help="a run's model folder (RUN_DIR/model)")
    predict.add_argument("text", nargs="*", help="one or more sentences (or use --input)")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")
    predict.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "onnx"],
        help="torch, onnx (the model's ONNX export), or auto: onnx when exported and there is no GPU",
    )
    predict.add_argument(
        "--input",
        help=(
            "file of documents: .txt (one per line, or word-per-line blocks), .jsonl (text or tokens), .conll, "
            ".csv/.tsv"
        ),
    )
    predict.add_argument(
        "--output",
        help="where to write one JSON line per input document (with --input); a .conll output gets word-per-line tags",
    )
    predict.add_argument(
        "--format",
        default="auto",
        choices=["auto", "text", "jsonl", "conll", "csv", "tsv"],
        help="input format (default: by extension and content)",
    )
    predict.add_argument(
        "--labelled",
        action="store_true",
        help="the input's tags are gold: also write OUTPUT.scores.json (seqeval, word level)",
    )
    predict.add_argument(
        "--scheme",
        default="source",
        choices=["source", "iob1", "iob2", "bioes", "bilou", "io"],
        help="tagging scheme of the written tags (source: the one the model was trained from)",
    )
    predict.add_argument("--batch-size", type=int, default=32, help="windows per forward pass")
    predict.add_argument(
        "--stride", type=int, default=32, help="subwords shared by consecutive windows of a long document"
    )
    return predict


def preflight(settings: RunSettings) -> None:
    """What can be checked in seconds before a server starts: the run policy, that the dataset and the
    checkpoint can be had (a folder that is there, a Hub id that exists, or is cached while offline),
    a local folder's labels.txt. Raises InputError; the flow checks every row later."""
    from pathlib import Path

    from nerflow.flows.policy import check_run_policy
    from nerflow.tasks.data.checks import labels_file_agreeing
    from nerflow.tasks.data.sources import check_source, is_local_source
    from nerflow.tasks.training.pretrained import check_base_model

    check_run_policy(settings)
    check_source(settings.dataset)
    if is_local_source(settings.dataset):
        labels_file_agreeing(settings.dataset, Path(settings.dataset.source).expanduser())
    check_base_model(settings.base_model)


def cmd_train(settings: RunSettings) -> int:
    from nerflow.flows.cli.serve import temporary_server_when_needed

    preflight(settings)
    with temporary_server_when_needed() as use_server:
        from nerflow.flows.finetune import finetune_ner  # the pipeline's libraries load while the server boots
        from nerflow.tasks.runtime.logs import INVALID_INPUT, quiet_input_errors_on_console

        quiet_input_errors_on_console(caller_prints=True)  # nerflow prints a bad input's message itself, once
        with use_server():
            state = finetune_ner(settings=settings, return_state=True)
    if state.is_failed():
        print(
            f"nerflow: {state.message}" if state.name == INVALID_INPUT else f"nerflow: the run failed: {state.message}",
            file=sys.stderr,
        )
        return 2 if state.name == INVALID_INPUT else 1
    result = state.result()
    if result is None:  # a secondary node of a multi-node run: rank 0's node evaluates and publishes
        print("training done on this node; the node holding rank 0 evaluates and publishes")
        return 0
    print()
    print(f"run folder : {result.run_dir}")
    print(f"model      : {result.model_dir}")
    print(f"model card : {result.card_path}")
    print(f"metrics    : {result.metrics_path}")
    print(
        f"test F1    : {result.test_f1:.4f} (word level; precision {result.test_precision:.4f}, recall "
        f"{result.test_recall:.4f})"
    )
    print(f"published  : {result.published_to if result.published else 'no'} ({result.gate})")
    return 0


def cmd_sweep(settings: RunSettings, args: argparse.Namespace) -> int:
    from nerflow.flows.cli.serve import temporary_server_when_needed

    preflight(settings)
    with temporary_server_when_needed() as use_server:
        from nerflow.flows.sweep import parse_grid, sweep_ner
        from nerflow.tasks.runtime.logs import quiet_input_errors_on_console

        quiet_input_errors_on_console(caller_prints=True)
        grid = parse_grid(args.grid)
        with use_server():
            result = sweep_ner(
                settings=settings, grid=grid, name=args.name, deployment=args.deployment, max_parallel=args.parallel
            )
    print(f"{'trial':<6} {'validation F1':<14} {'test F1':<8} settings")
    for trial in sorted(result.trials, key=lambda t: t.number):
        val, test = (f"{v:.4f}" if v is not None else trial.state for v in (trial.validation_f1, trial.test_f1))
        print(f"{trial.number:<6} {val:<14} {test:<8} {json.dumps(trial.overrides)}")
    best = result.best
    print(
        f"best: trial {best.number} ({best.run_dir}); published: "
        f"{result.publication.location() if result.publication.published else 'no'} ({result.publication.gate.reason})"
    )
    return 0


PUBLISH_LOCK_WAIT_S = 600.0


def saved_settings(run_dir: Path) -> RunSettings:
    """The settings a run folder was trained with (its settings.json)."""
    saved = run_dir / "settings.json"
    if not saved.is_file():
        raise SettingsError(f"{saved} not found: not a nerflow run folder")
    try:
        return RunSettings.model_validate_json(saved.read_text(encoding="utf-8"))
    except ValidationError as e:
        raise SettingsError(describe_validation_error(e, str(saved))) from e


def cmd_hooks(args: argparse.Namespace) -> int:
    import logging

    from nerflow.flows.cli.hooks import serve_hooks

    handler = logging.StreamHandler(sys.stderr)  # one line per delivery, whatever logging Prefect set up
    handler.setFormatter(logging.Formatter("%(asctime)s nerflow hooks: %(message)s"))
    log = logging.getLogger("nerflow.hooks")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    server = serve_hooks(Path(args.config), args.host, args.port, Path(args.state_dir))
    print(
        f"nerflow hooks: listening on http://{args.host}:{server.server_address[1]} (POST /hub, POST /s3)", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from nerflow.flows.pipeline import PLAIN, run_steps
    from nerflow.tasks.export import export_model, model_decoding, parity_table
    from nerflow.tasks.refs import RunContext
    from nerflow.tasks.runtime.errors import ExportError
    from nerflow.tasks.runtime.files import folder_lock
    from nerflow.tasks.runtime.logs import quiet_third_party

    quiet_third_party()
    run_dir = Path(args.run_dir).resolve()
    if not (run_dir / "model" / "config.json").is_file():
        raise InputError(f"{run_dir}: not a finished nerflow run (no model/config.json)")
    settings = saved_settings(run_dir)
    cfg = settings.export.model_copy(update={"onnx": True, "int8": settings.export.int8 and not args.no_int8})
    if args.int8_f1_tolerance is not None:
        cfg = cfg.model_copy(update={"int8_f1_tolerance": args.int8_f1_tolerance})
    ctx = RunContext.for_run(settings, run_dir.name, run_dir)
    tokenized = run_steps(settings, ctx, PLAIN, until="tokenize").tokenized  # the test split, from the cache
    try:
        with folder_lock(run_dir, f"ONNX export of {run_dir.name}", wait_s=PUBLISH_LOCK_WAIT_S):
            decoding, batch = model_decoding(run_dir / "model"), settings.compute.eval_batch_size
            ref = export_model(run_dir / "model", tokenized, cfg, decoding, batch)
    except ExportError as e:
        print(f"nerflow: {e}", file=sys.stderr)
        return 1
    for row in parity_table(ref.parity):
        print("  ".join(f"{k}={v}" for k, v in row.items()))
    print(f"{ref.parity.get('int8', 'int8 not asked for')}\nwritten to {ref.path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nerflow.tasks.publish import publish_run
    from nerflow.tasks.runtime.errors import PublishError

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise InputError(f"{run_dir}: no such run folder")
    publish = settings_from_flags(args, PublishSettings, PUBLISH_FLAGS, "publish options")
    model_name = args.model_name
    if not model_name:
        try:
            run_settings = saved_settings(run_dir)
        except SettingsError as e:
            raise SettingsError(f"{e}\n(pass --model-name to publish without it)") from e
        model_name = run_settings.model_copy(update={"publish": publish}).resolved_model_name()
    from nerflow.tasks.runtime.files import folder_lock

    try:
        # One publisher per run folder at a time, and never while a run trains into it: a second
        # publish waits, then finds the content already published.
        with folder_lock(run_dir, f"publish of {run_dir.name}", wait_s=PUBLISH_LOCK_WAIT_S):
            result = publish_run(run_dir, publish, model_name)
    except PublishError as e:
        print(f"nerflow: {e}", file=sys.stderr)
        return 1
    print(result.gate.reason)
    if not result.published:
        print("not published")
        return 3
    for label, value in (("hub commit", result.hub_commit_url), ("s3", result.s3_uri), ("local", result.local_path)):
        if value:
            print(f"{label:<10} : {value}")
    return 0


def cmd_pool_create(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nerflow.flows.cli.pools import create_pool

    given = {
        "working_dir": str(Path(args.working_dir).resolve()) if args.working_dir else None,
        "image": args.image,
        "namespace": args.namespace,
    }
    try:
        outcome = create_pool(
            args.name, args.pool_type, overwrite=args.overwrite, fixed={k: v for k, v in given.items() if v}
        )
    except ValueError as e:
        raise InputError(str(e)) from e
    print(f"work pool {args.name!r} ({args.pool_type}) {outcome}")
    return 0


def cmd_trigger(dataset: str, revision: str | None) -> int:
    from prefect.settings import get_current_settings

    from nerflow.flows.watcher import resource_id, send_dataset_updated

    if not get_current_settings().api.url:
        print("nerflow: no Prefect API to send the event to (set PREFECT_API_URL)", file=sys.stderr)
        return 1
    try:
        event_id = send_dataset_updated(dataset, revision)
    except Exception as e:  # no API, refused credentials, a server that is down: say so, exit 1
        print(
            f"nerflow: the event was not accepted ({type(e).__name__}: {str(e)[:200]}); is PREFECT_API_URL set?",
            file=sys.stderr,
        )
        return 1
    print(f"emitted nerflow.dataset.updated for {resource_id(dataset)} (revision {revision}) as event {event_id}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from nerflow.flows.cli.serve import DEFAULT_PREFECT_FILE, serve

    prefect_file = Path(args.prefect_file) if args.prefect_file else DEFAULT_PREFECT_FILE
    home = Path(args.home).resolve() if args.home else None
    return serve(args.port, args.pool, prefect_file.resolve(), Path(args.workdir).resolve(), home)


def cmd_predict_file(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from nerflow.tasks.prediction.files import predict_file
    from nerflow.tasks.runtime.logs import quiet_third_party

    quiet_third_party()
    if not args.output:
        raise InputError("--input needs --output (a .jsonl file to write)")
    bar = tqdm(total=None, unit="batch", desc="predicting", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    summary = predict_file(
        args.model_dir,
        args.input,
        args.output,
        args.format,
        args.labelled,
        args.batch_size,
        args.stride,
        progress,
        args.scheme,
        args.backend,
    )
    bar.close()
    print(json.dumps(summary) if args.json else "\n".join(f"{k:<9}: {v}" for k, v in summary.items()))
    return 0


def cmd_predict(model_dir: str, texts: list[str], as_json: bool, backend: str = "auto") -> int:
    from nerflow.tasks.prediction.tagger import NerPredictor
    from nerflow.tasks.runtime.logs import quiet_third_party

    quiet_third_party()
    if not texts:
        raise InputError("give sentences to tag, or --input FILE --output FILE.jsonl")
    results = NerPredictor(model_dir, backend=backend).predict(texts)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["predict"]:
        args = predict_parser().parse_intermixed_args(argv[1:])
        args.command = "predict"
        return args
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Quiet, local-first defaults; a user's own settings win.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if getattr(args, "verbose", False):
        os.environ["NERFLOW_VERBOSE"] = "1"
    try:
        if args.command == "predict":
            return (
                cmd_predict_file(args)
                if args.input
                else cmd_predict(args.model_dir, args.text, args.json, args.backend)
            )
        if args.command == "publish":
            return cmd_publish(args)
        if args.command == "export":
            return cmd_export(args)
        if args.command == "hooks":
            return cmd_hooks(args)
        if args.command == "pool":
            return cmd_pool_create(args)
        if args.command == "alerts":
            from nerflow.flows.alerts import create_webhook_block

            print(
                f"saved notification block {create_webhook_block(args.webhook, args.name)}: failed and crashed "
                "runs are reported to it"
            )
            return 0
        if args.command == "trigger":
            return cmd_trigger(args.dataset, args.revision)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "settings" and args.schema:
            print(json.dumps(RunSettings.model_json_schema(), indent=2))
            return 0
        if args.command == "settings" and args.markdown:
            print(settings_reference(), end="")
            return 0
        settings = load_settings(args.config, args.overrides)
        if args.command == "sweep":
            return cmd_sweep(settings, args)
        if args.command == "settings":
            print(settings_to_yaml(settings), end="")
            return 0
        return cmd_train(settings)
    except (InputError, FileNotFoundError) as e:
        print(f"nerflow: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
