"""The demo's work without Prefect: the same plain step functions called in order (orchestration baseline)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json-out")
    args = parser.parse_args()
    started = time.perf_counter()

    from bench.common import nerflow_steps
    from nerflow.tasks.card import render_model_card, widget_predictions
    from nerflow.tasks.settings import load_settings

    s = load_settings(args.config, args.overrides)
    run_dir = Path(s.output_dir) / (s.run_name or "bare")
    dataset, tokenized, model, evaluation = nerflow_steps(s, run_dir)
    card = render_model_card(model, evaluation, dataset, tokenized, s, run_dir.name)
    widget_predictions(model.path, card.widget_examples)  # the flow shows them in its run summary
    result = {
        "wall_s": time.perf_counter() - started,
        "train_s": model.train_runtime_s,
        "test_f1": evaluation.test["f1"],
    }
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
