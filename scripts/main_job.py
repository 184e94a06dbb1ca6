#!/usr/bin/env python
"""The README's main job: pre-train -> fine-tune -> evaluate HiMTM on real ETTh1 in a few minutes on a CPU.

    python scripts/main_job.py                                  # writes outputs/main_job
    python scripts/main_job.py --output_dir outputs/mj2 --pretrain_steps 500 --finetune_steps 500
    python scripts/main_job.py --overwrite_output_dir           # re-run into an existing folder

Prints the test MSE/MAE table (standardised and original units, every test window) and writes the pre-training,
fine-tuning and evaluation folders, metrics.json, forecast_plot.png and summary.md under --output_dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.training import MainJobArguments, parse_args, run_main_job, setup_logging  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    (args,) = parse_args((MainJobArguments,), argv)
    setup_logging()
    return run_main_job(args)


if __name__ == "__main__":
    main()
