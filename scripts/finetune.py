#!/usr/bin/env python
"""Fine-tune HiMTM for forecasting (from a pre-training folder, or from scratch) and evaluate on the test split.

    python scripts/finetune.py --dataset ETTh1 --prediction_length 96 \
        --pretrained_model_path outputs/pretrain-etth1 --output_dir outputs/etth1-96
    python scripts/finetune.py ... --linear_probe          # frozen encoder, head only
    python scripts/finetune.py args.yaml                   # every argument from one JSON/YAML file

Writes the model, scaler.json, log.jsonl, metrics.json and forecast_plot.png (docs/training.md).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.training import (  # noqa: E402
    DataArguments,
    FinetuneArguments,
    ModelArguments,
    finetune,
    format_metrics_table,
    parse_args,
    setup_logging,
)


def main(argv: list[str] | None = None) -> dict:
    model_args, data_args, train_args = parse_args((ModelArguments, DataArguments, FinetuneArguments), argv)
    setup_logging()
    metrics = finetune(model_args, data_args, train_args)
    label = f"{metrics['dataset']} H={metrics['prediction_length']}"
    print("\n" + format_metrics_table([(f"{label} val", metrics["val"]), (f"{label} test", metrics["test"])]))
    print(json.dumps({"output_dir": train_args.output_dir, "test": metrics["test"]}, indent=2), flush=True)
    return metrics


if __name__ == "__main__":
    main()
