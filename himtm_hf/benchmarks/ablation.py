"""The HiMTM ablation: pre-train + fine-tune per variant (`himtm_hf.benchmarks.variants`), dataset and seed; the
harness behind `scripts/ablate.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..data import SplitData, load_splits
from .baselines import ensure_baselines
from .budgets import Budget
from .records import HIMTM_DEFAULTS_VERSION, RESULTS_DIR, base_record, kept_record, write_record
from .runs import finetune_model
from .variants import ABLATION_VARIANTS, finetune_overrides, head_only_epochs, pretrain_variant


def run_ablation(datasets: list[str], variants: list[str], horizons: list[int], budget: Budget, seeds: list[int],
                 work_dir: Path, results_dir: Path = RESULTS_DIR, data_dir: str | None = None,
                 context_length: int = 512, overwrite: bool = False,
                 baselines: bool = True) -> list[dict[str, Any]]:
    """Pre-train + fine-tune HiMTM per variant, dataset and seed; a record per horizon. Each (dataset, variant, seed)
    pre-trains once, on look-back-only windows of the train split (pre-training reads no future, so it does not
    depend on the horizon), and every horizon fine-tunes from that checkpoint. Cells that already have a record in
    `results_dir` are kept and skipped unless `overwrite`. `baselines`: first write the closed-form baseline records
    of each dataset and horizon (`ensure_baselines`; kept when up to date)."""
    records = []
    for dataset in datasets:
        if baselines:
            for horizon in horizons:
                ensure_baselines(dataset, context_length, horizon, results_dir, data_dir)
        lookback = load_splits(dataset, data_dir=data_dir, context_length=context_length, prediction_length=0)
        by_horizon = {h: load_splits(dataset, data_dir=data_dir, context_length=context_length, prediction_length=h)
                      for h in horizons}
        for variant in variants:
            for seed in seeds:
                # each record's identity (the fields that name its file, and the variant's overrides); the skip
                # check and the new record share it
                cells = {h: {"dataset": lookback.name, "budget": budget.name, "seed": seed, "model": "himtm",
                             "himtm_defaults": HIMTM_DEFAULTS_VERSION, "variant": variant,
                             "overrides": ABLATION_VARIANTS[variant], "prediction_length": h} for h in horizons}
                todo = []
                for h, cell in cells.items():
                    if (kept := kept_record(results_dir, "ablation", cell, overwrite)) is not None:
                        records.append(kept)
                    else:
                        todo.append(h)
                if todo:
                    records += _ablation_seed(lookback, {h: by_horizon[h] for h in todo}, cells, budget, seed,
                                              work_dir / lookback.name / variant / f"seed{seed}", results_dir)
    return records


def _ablation_seed(lookback: SplitData, by_horizon: dict[int, SplitData], cells: dict[int, dict[str, Any]],
                   budget: Budget, seed: int, run_dir: Path, results_dir: Path) -> list[dict[str, Any]]:
    """One pre-training of a variant (the probe of its diagnostics forecasts the shortest horizon), then one
    fine-tuning and record per horizon of `by_horizon`."""
    variant = next(iter(cells.values()))["variant"]
    overrides = ABLATION_VARIANTS[variant]
    start = time.time()
    ckpt, pre_summary = pretrain_variant(variant, lookback, budget, seed, run_dir, by_horizon[min(by_horizon)])
    pretrain_seconds = time.time() - start
    records = []
    for horizon, splits in by_horizon.items():
        start = time.time()
        metrics = finetune_model("himtm", splits, budget, seed, run_dir, ckpt, finetune_overrides(overrides, ckpt),
                                 head_only_epochs(variant, budget))
        record = {**base_record(splits.name, budget, seed, splits.context_length), **cells[horizon], **pre_summary,
                  **metrics, "wall_time_s": round(pretrain_seconds + time.time() - start, 2)}
        path = write_record(results_dir, "ablation", record)
        records.append(record)
        print(f"{splits.name} {variant} seed {seed} H={horizon}: MSE {metrics['mse']:.4f} MAE {metrics['mae']:.4f} "
              f"-> {path}", flush=True)
    return records
