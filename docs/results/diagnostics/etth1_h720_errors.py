"""Where HiMTM's ETTh1 H = 720 gap to supervised PatchTST sits (NOTES point (18)): a one-off analysis, kept so that
its numbers can be reproduced.

    python docs/results/diagnostics/etth1_h720_errors.py train himtm PRETRAIN_DIR   # the recipe, from its pre-training
    python docs/results/diagnostics/etth1_h720_errors.py train patchtst
    python docs/results/diagnostics/etth1_h720_errors.py analyse

`train` fine-tunes exactly as `scripts/benchmark_accuracy.py --budget full --seeds 2021` does at H = 720 (HiMTM from
the pre-training folder of `--himtm_variant width_32_dropout_0.3_hsd_instance_norm_head_init_zeros`, whose model it
rebuilds) and saves the validation and test forecasts; `analyse` prints the errors by channel, lead time and bias.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

OUT = Path("outputs/diagnostics/etth1_h720")
CHANNELS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]


def train(which: str, pretrained: str | None) -> None:
    from transformers import set_seed

    from himtm_hf.benchmarking import BUDGETS, _train_args, build_forecaster
    from himtm_hf.data import load_splits
    from himtm_hf.training.loop import predict, train_model

    budget, seed, horizon = BUDGETS["full"], 2021, 720
    splits = load_splits("ETTh1", context_length=512, prediction_length=horizon)
    set_seed(seed)
    if which == "himtm":
        # `freeze_encoder=False`: the frozen-encoder variant's pre-training folder (the same weights) also works.
        model = build_forecaster("himtm", splits, budget, Path(pretrained), {"freeze_encoder": False})
    else:
        model = build_forecaster("patchtst_supervised", splits, budget, None)
    result = train_model(model, splits.train, splits.val, _train_args(budget, "finetune", OUT / which, seed))
    arrays = {}
    for name, dataset in (("val", splits.val), ("test", splits.test)):
        out = predict(result.model, dataset, batch_size=256, disable_tqdm=True)
        arrays[f"{name}_pred"], arrays[f"{name}_target"] = out["predictions"], out["targets"]
        print(which, name, "MSE", float(((out["predictions"] - out["targets"]) ** 2).mean()), flush=True)
    np.savez(OUT / f"{which}.npz", **arrays)


def analyse() -> None:
    runs = {m: np.load(OUT / f"{m}.npz") for m in ("himtm", "patchtst")}
    for split in ("val", "test"):
        print(f"== {split}")
        for name, a in runs.items():
            err = a[f"{split}_pred"] - a[f"{split}_target"]  # (windows, 720, channels)
            by_channel = (err**2).mean(axis=(0, 1))
            by_lead = [(err[:, i : i + 180] ** 2).mean() for i in range(0, 720, 180)]
            print(f"{name:9s} MSE {(err**2).mean():.4f} | " + " ".join(f"{c} {v:.3f}" for c, v in zip(CHANNELS, by_channel)))
            print(f"{'':9s} by lead 0-180/180-360/360-540/540-720: " + " / ".join(f"{v:.4f}" for v in by_lead))
            print(f"{'':9s} bias " + " ".join(f"{c} {v:+.3f}" for c, v in zip(CHANNELS, err.mean(axis=(0, 1)))))


if __name__ == "__main__":
    if sys.argv[1] == "train":
        OUT.mkdir(parents=True, exist_ok=True)
        train(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None)
    else:
        analyse()
