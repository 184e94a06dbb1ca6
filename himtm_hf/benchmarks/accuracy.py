"""The accuracy benchmark: HiMTM vs `transformers` PatchTST (supervised and self-supervised) under one protocol,
data, optimiser and budget (`himtm_hf.benchmarks.budgets`); the harness behind `scripts/benchmark_accuracy.py`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..data import load_splits
from .baselines import ensure_baselines
from .budgets import PRETRAINING_OF, Budget
from .records import HIMTM_DEFAULTS_VERSION, RESULTS_DIR, base_record, kept_record, model_label, write_record
from .runs import finetune_model, pretrain_model
from .variants import ABLATION_VARIANTS, finetune_overrides, head_only_epochs, pretrain_variant


def run_accuracy(datasets: list[str], horizons: list[int], models: list[str], budget: Budget, seeds: list[int],
                 work_dir: Path, results_dir: Path = RESULTS_DIR, data_dir: str | None = None,
                 context_length: int = 512, himtm_variant: str = "full",
                 overwrite: bool = False, baselines: bool = True) -> list[dict[str, Any]]:
    """One pre-training per (dataset, self-supervised model, seed), one fine-tune per horizon; a record per run.

    `himtm_variant` (a key of `ABLATION_VARIANTS`) runs HiMTM with that variant's overrides; its records carry
    `variant` and sit beside the default model's in the tables as `himtm@<variant>`. Cells that already have a
    record in `results_dir` are kept and skipped (with their pre-training, when every horizon has one) unless
    `overwrite`. `baselines`: first write the closed-form baseline records of every (dataset, horizon) cell
    (`ensure_baselines`; kept when up to date)."""
    if himtm_variant not in ABLATION_VARIANTS:
        raise ValueError(f"Unknown HiMTM variant {himtm_variant!r}; choose from {list(ABLATION_VARIANTS)}.")
    overrides = ABLATION_VARIANTS[himtm_variant]
    variant_fields = {"himtm_defaults": HIMTM_DEFAULTS_VERSION}
    if himtm_variant != "full":
        variant_fields.update(variant=himtm_variant, overrides=overrides)
    records = []
    for dataset in datasets:
        if baselines:
            for horizon in horizons:
                ensure_baselines(dataset, context_length, horizon, results_dir, data_dir)
        for seed in seeds:
            base_splits = load_splits(dataset, data_dir=data_dir, context_length=context_length,
                                      prediction_length=min(horizons))
            # (model, horizon) -> its record's identity (the fields that name its file, and the variant's overrides);
            # the skip check and the new record share it
            cells = {(m, h): {"dataset": base_splits.name, "budget": budget.name, "seed": seed, "model": m,
                              **(variant_fields if m == "himtm" else {}), "prediction_length": h}
                     for m in models for h in horizons}
            kept = {key: record for key, cell in cells.items()
                    if (record := kept_record(results_dir, "accuracy", cell, overwrite)) is not None}
            records.extend(kept.values())
            pretrained: dict[str, tuple[Path | None, dict[str, Any]]] = {}
            for model_name in [m for m in models if any((m, h) not in kept for h in horizons)]:
                run_dir = work_dir / base_splits.name / f"seed{seed}" / himtm_variant
                source = PRETRAINING_OF.get(model_name)
                if source is None or source in pretrained:
                    continue
                if source == "himtm":
                    pretrained[source] = pretrain_variant(himtm_variant, base_splits, budget, seed, run_dir)
                else:
                    pretrained[source] = pretrain_model(source, base_splits, budget, seed, run_dir)
            for horizon in horizons:
                pending = [m for m in models if (m, horizon) not in kept]
                if not pending:
                    continue
                splits = load_splits(dataset, data_dir=data_dir, context_length=context_length,
                                     prediction_length=horizon)
                for model_name in pending:
                    start = time.time()
                    ckpt, pre_summary = pretrained.get(PRETRAINING_OF.get(model_name, ""), (None, {}))
                    is_himtm = model_name == "himtm"
                    head_only = head_only_epochs(himtm_variant if is_himtm else model_name, budget)
                    metrics = finetune_model(model_name, splits, budget, seed,
                                             work_dir / splits.name / f"seed{seed}" / himtm_variant, ckpt,
                                             finetune_overrides(overrides, ckpt) if is_himtm else None,
                                             head_only)
                    record = {**base_record(splits.name, budget, seed, context_length), **cells[model_name, horizon],
                              **pre_summary, **metrics,
                              "wall_time_s": round(time.time() - start + pre_summary.get("pretrain_wall_time_s", 0), 2)}
                    path = write_record(results_dir, "accuracy", record)
                    records.append(record)
                    print(f"{splits.name} H={horizon} {model_label(record)}: MSE {metrics['mse']:.4f} "
                          f"MAE {metrics['mae']:.4f}"
                          f" ({metrics['finetune_steps']} steps) -> {path}", flush=True)
    return records

