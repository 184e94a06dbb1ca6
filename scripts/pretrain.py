#!/usr/bin/env python
"""Pre-train HiMTM (masked modelling + self-distillation) on a dataset's train split.

    python scripts/pretrain.py --dataset ETTh1 --output_dir outputs/pretrain-etth1 --max_steps 1000
    # several datasets, channel-independently (num_input_channels=1, corpus.json); see also scripts/pretrain_base.py
    python scripts/pretrain.py --dataset ETTh1,ETTh2,weather --max_windows_per_dataset 50000 --output_dir outputs/pt-mix
    accelerate launch --config_file himtm_hf/accelerate_configs/multi_gpu.yaml scripts/pretrain.py ...
    python scripts/pretrain.py args.yaml          # every argument from one JSON/YAML file

Every HiMTMConfig field is a flag (e.g. --d_model 64 or --d_model 32,64,128). See docs/training.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from himtm_hf.training import (  # noqa: E402
    DataArguments,
    ModelArguments,
    PretrainArguments,
    parse_args,
    pretrain,
    setup_logging,
)


def main(argv: list[str] | None = None) -> Path:
    model_args, data_args, train_args = parse_args((ModelArguments, DataArguments, PretrainArguments), argv)
    setup_logging()
    output_dir = pretrain(model_args, data_args, train_args)
    print(f"Pre-trained model saved to {output_dir}", flush=True)
    return output_dir


if __name__ == "__main__":
    main()
