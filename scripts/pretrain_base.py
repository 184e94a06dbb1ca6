#!/usr/bin/env python
"""Pre-train the ``himtm-base`` checkpoint on the train splits of every local benchmark (ETTh1, ETTh2, ETTm1, ETTm2,
weather; channel-independent, look-back-only windows), then write its model card and the push_to_hub dry-run folder.

    python scripts/pretrain_base.py                            # -> outputs/himtm-base, outputs/himtm-base-hub
    python scripts/pretrain_base.py --leave_out ETTh1          # -> outputs/himtm-base-without-ETTh1 (+ -hub)
    accelerate launch --config_file himtm_hf/accelerate_configs/single_gpu.yaml scripts/pretrain_base.py
    python scripts/pretrain_base.py --max_steps 20 --d_model 16 --output_dir /tmp/base   # a smoke run

Budget flags (--max_steps, --per_device_train_batch_size, --learning_rate, --max_windows_per_dataset, ...) are the
fields of ``himtm_hf.base_checkpoint.BaseCheckpointConfig``; every HiMTMConfig field is a flag too (default: the
config's defaults). Upload later with
``python scripts/push_to_hub.py --output_dir outputs/himtm-base --repo_id <org>/himtm-base
--card_template outputs/himtm-base/README.md``. See docs/training.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.base_checkpoint import BaseCheckpointConfig, BaseRunResult, run_base_pretraining  # noqa: E402
from himtm_hf.training import ModelArguments, parse_args, setup_logging  # noqa: E402


def main(argv: list[str] | None = None) -> BaseRunResult:
    config, model_args = parse_args((BaseCheckpointConfig, ModelArguments), argv)
    setup_logging()
    result = run_base_pretraining(config, model_args)
    if result.card is not None:
        print(f"Pre-trained base checkpoint: {result.output_dir}\nModel card: {result.card}", flush=True)
        print(result.dry_run.summary(), flush=True)
    return result


if __name__ == "__main__":
    main()
