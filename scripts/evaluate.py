#!/usr/bin/env python
"""Evaluate a saved forecasting model on a dataset's test split (every window) and print/write the metrics.

    python scripts/evaluate.py --model_dir outputs/etth1-96 --dataset ETTh1 [--prediction_length 96]
        [--context_length 512] [--output_dir DIR (default: <model_dir>-eval-<dataset>)] [--overwrite_output_dir]

The model's own context and prediction length are used (`--context_length` / `--prediction_length`, if given, must
match them). The output folder is never the model or data folder, nor inside them; an existing one is replaced only
with `--overwrite_output_dir`, and only if an earlier evaluation wrote it (an evaluation has nothing to resume).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

# `python scripts/evaluate.py` puts scripts/ first on sys.path, where this file would shadow the `evaluate` package.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.training import (  # noqa: E402
    EvaluateArguments,
    evaluate_model,
    format_metrics_table,
    parse_args,
    setup_logging,
)


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((EvaluateArguments,), argv)
    setup_logging()
    kwargs = asdict(args)
    metrics = evaluate_model(kwargs.pop("model_dir"), kwargs.pop("dataset"), **kwargs)
    label = f"{metrics['dataset']} H={metrics['prediction_length']}"
    print("\n" + format_metrics_table([(f"{label} val", metrics["val"]), (f"{label} test", metrics["test"])]))
    print(json.dumps({"test": metrics["test"], "val": metrics["val"]}, indent=2), flush=True)
    return metrics


if __name__ == "__main__":
    main()
