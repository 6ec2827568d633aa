"""The `predict_ner` flow: batch prediction as a Prefect run, on the GPU pool like training.

Input and output are local paths or s3:// URIs (downloaded first, uploaded once complete); the model is
a run's model folder on the worker. With `labelled`, the input's tags are the gold standard and
word-level seqeval scores are written beside the predictions (OUTPUT.scores.json) and shown as an
artifact.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from nerflow.flows.policy import check_predict_policy
from nerflow.tasks.prediction.files import predict_file
from nerflow.tasks.runtime import s3
from nerflow.tasks.runtime.errors import InputError
from nerflow.tasks.runtime.logs import invalid_input, quiet_input_errors_on_console


def _fetch(uri: str, folder: Path) -> Path:
    if not uri.startswith("s3://"):
        return Path(uri)
    bucket, key = s3.parse_s3_uri(uri)
    local = folder / Path(key).name
    s3.client().download_file(bucket, key, str(local))
    return local


def _deliver(local: Path, uri: str) -> None:
    if uri.startswith("s3://"):
        bucket, key = s3.parse_s3_uri(uri)
        s3.client().upload_file(str(local), bucket, key)


@task(name="predict-file", cache_policy=NO_CACHE)
def predict_file_task(
    model_dir: str,
    input_path: str,
    output_path: str,
    input_format: str,
    labelled: bool,
    batch_size: int,
    stride: int,
    backend: str = "auto",
) -> dict[str, Any]:
    logger = get_run_logger()
    with tempfile.TemporaryDirectory() as tmp:
        local_in = _fetch(input_path, Path(tmp))
        local_out = Path(tmp) / Path(output_path).name if output_path.startswith("s3://") else Path(output_path)

        def progress(done: int, total: int) -> None:
            if done % 50 == 0 or done == total:
                logger.info("batch %d of %d", done, total)

        summary = predict_file(
            model_dir, local_in, local_out, input_format, labelled, batch_size, stride, progress, backend=backend
        )
        _deliver(local_out, output_path)
        if labelled:
            _deliver(Path(str(local_out) + ".scores.json"), output_path + ".scores.json")
    return summary | {"output": output_path}


@flow(
    name="predict_ner",
    description="Tag every document of a file (text, jsonl or CoNLL; local or s3://) with a trained model.",
)
def predict_ner(
    model_dir: str,
    input_path: str,
    output_path: str,
    input_format: str = "auto",
    labelled: bool = False,
    batch_size: int = 32,
    stride: int = 32,
    backend: Literal["auto", "torch", "onnx"] = "auto",
) -> dict[str, Any]:
    """The model folder, the input and the output must lie where this worker's policy allows
    (nerflow.flows.policy), checked before anything is read; unusable input ends the run Failed "Invalid input"."""
    quiet_input_errors_on_console()
    try:
        check_predict_policy(model_dir, input_path, output_path)
        summary = predict_file_task(
            model_dir, input_path, output_path, input_format, labelled, batch_size, stride, backend
        )
    except InputError as exc:
        return invalid_input(exc)
    create_table_artifact(key="prediction-summary", table=[dict(summary)], description="Batch prediction")
    return summary
