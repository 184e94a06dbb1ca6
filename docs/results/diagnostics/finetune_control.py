"""Fine-tuning-only control for NOTES point (19): the benchmark's HiMTM fine-tuning from an existing pre-training
folder, so that two fine-tuning protocols are compared on the very same pre-trained weights.

    python docs/results/diagnostics/finetune_control.py ETTh2 PRETRAIN_DIR --head_only_epochs 0 --horizons 96 192

`PRETRAIN_DIR` is the `himtm-pretrain` folder a `scripts/benchmark_accuracy.py --budget full` run left in its
`--work_dir`. Each horizon fine-tunes exactly as that script does (`himtm_hf.benchmarking.finetune_model`, budget
`full`, the seed given), end to end (`--head_only_epochs 0`) or head first (`--head_only_epochs 3`, what the
`..._lp_ft` variant does at this budget), and appends one JSON line (test MSE / MAE, steps, best validation loss,
commit, device, command) to `docs/results/diagnostics/finetune_control.jsonl`. Why it exists: pre-training is not
bit-identical across machines (floating-point kernels differ), so a variant's record from another machine is no exact
control for a fine-tuning change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from himtm_hf.benchmarking import BUDGETS, base_record, finetune_model
from himtm_hf.data import load_splits

LOG = Path(__file__).resolve().parent / "finetune_control.jsonl"


@dataclass
class ControlArguments:
    """What to fine-tune, from which pre-training."""

    dataset: str = field(metadata={"help": "Benchmark dataset, e.g. ETTh2."})
    pretrained: str = field(metadata={"help": "The himtm-pretrain folder of a `--budget full` benchmark run."})
    head_only_epochs: float = field(default=0.0, metadata={"help": "0: end to end; > 0: LP-FT (head first)."})
    horizons: list[int] = field(default_factory=lambda: [96, 192, 336, 720])
    seed: int = 2021
    work_dir: str = "outputs/finetune_control"


def main(args: ControlArguments) -> None:
    budget = BUDGETS["full"]
    pretrained = Path(args.pretrained)
    if not (pretrained / "config.json").is_file():
        raise FileNotFoundError(f"{pretrained} holds no config.json; pass the himtm-pretrain folder of a benchmark run.")
    for horizon in args.horizons:
        splits = load_splits(args.dataset, context_length=512, prediction_length=horizon)
        work = Path(args.work_dir) / f"{splits.name}-head{args.head_only_epochs:g}"
        metrics = finetune_model("himtm", splits, budget, args.seed, work, pretrained, {}, args.head_only_epochs)
        line = {**base_record(splits.name, budget, args.seed, 512), "prediction_length": horizon,
                "pretrained": str(pretrained), "head_only_epochs": args.head_only_epochs,
                **{k: metrics[k] for k in ("mse", "mae", "finetune_steps", "best_val_loss", "finetune_wall_time_s")}}
        line.pop("budget_detail")
        with LOG.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(f"{splits.name} H={horizon} head_only_epochs={args.head_only_epochs:g}: MSE {metrics['mse']:.4f} "
              f"MAE {metrics['mae']:.4f} ({metrics['finetune_steps']} steps)", flush=True)


if __name__ == "__main__":
    (parsed,) = HfArgumentParser(ControlArguments).parse_args_into_dataclasses()
    main(parsed)
