"""One model's runs under a benchmark budget: pre-training, fine-tuning and the test-split evaluation.

Shared by the accuracy benchmark (`himtm_hf.benchmarks.accuracy`) and the ablation (`himtm_hf.benchmarks.ablation`);
everything trains through the project's training library (`himtm_hf.training`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from ..data import SplitData
from ..evaluation import compute_forecast_metrics
from ..modeling_himtm import HiMTMForPrediction, HiMTMForPretraining
from ..training.arguments import PretrainArguments
from .budgets import ALL_MODELS, PRETRAINING_OF, Budget, himtm_config, patchtst_config

# HiMTM's pre-training keeps the weights pretrain.py keeps (PretrainArguments' default: the lowest validation
# reconstruction loss; the distillation part of the total can fall while the encoder learns nothing,
# docs/architecture.md). PatchTST reports only `loss` (its reconstruction loss).
HIMTM_PRETRAIN_METRIC: str = PretrainArguments.metric_for_best_model
# Validation windows the pre-training diagnostics score (`himtm_hf.pretraining_diagnostics`), as `pretrain.py` does.
DIAGNOSTICS_WINDOWS: int = PretrainArguments.diagnostics_windows


def _train_args(budget: Budget, phase: str, output_dir: Path, seed: int, disable_tqdm: bool = True,
                metric_for_best_model: str = "loss"):
    """The `TrainArguments` of one phase (`"pretrain"` or fine-tuning) under `budget`."""
    from ..training.arguments import TrainArguments

    pre = phase == "pretrain"
    return TrainArguments(
        metric_for_best_model=metric_for_best_model,
        output_dir=str(output_dir),
        overwrite_output_dir=True,
        per_device_train_batch_size=budget.batch_size,
        per_device_eval_batch_size=max(256, budget.batch_size),
        learning_rate=budget.pretrain_learning_rate if pre else budget.finetune_learning_rate,
        num_train_epochs=budget.pretrain_epochs if pre else budget.finetune_epochs,
        max_steps=budget.max_steps_pretrain if pre else budget.max_steps_finetune,
        early_stopping_patience=budget.early_stopping_patience,
        max_train_windows=budget.max_train_windows,
        max_eval_windows=budget.max_eval_windows,
        seed=seed,
        logging_steps=50,
        disable_tqdm=disable_tqdm,
    )


def _evaluate(model, splits: SplitData, budget: Budget, accelerator=None) -> dict[str, Any]:
    """Test metrics of `model` on the budget's test windows, with how many were scored."""
    from ..training.loop import predict

    out = predict(model, splits.test, batch_size=256, accelerator=accelerator, max_windows=budget.max_test_windows,
                  disable_tqdm=True)
    metrics = compute_forecast_metrics(out["predictions"], out["targets"], out["observed_mask"])
    metrics["num_test_windows"] = int(out["predictions"].shape[0])
    metrics["full_test_split"] = metrics["num_test_windows"] == len(splits.test)
    return metrics


def pretrain_model(model_name: str, splits: SplitData, budget: Budget, seed: int, work_dir: Path,
                   himtm_overrides: dict[str, Any] | None = None, metric_for_best_model: str | None = None,
                   probe_splits: SplitData | None = None) -> tuple[Path, dict[str, Any]]:
    """Pre-trains HiMTM or self-supervised PatchTST on `splits` (forecasting or look-back-only windows); returns the
    saved folder and a summary. `metric_for_best_model`: the validation loss that picks the kept checkpoint (not
    given: `HIMTM_PRETRAIN_METRIC` for HiMTM, `loss` for PatchTST). A HiMTM summary also holds the diagnostics of the
    kept weights (`pretrain_diagnostics`), whose linear probe forecasts `probe_splits`' horizon (default `splits`)."""
    from transformers import PatchTSTForPretraining

    from ..training.loop import train_model

    if metric_for_best_model is None:
        metric_for_best_model = HIMTM_PRETRAIN_METRIC if model_name == "himtm" else "loss"
    set_seed(seed)
    # Look-back-only windows have no horizon; the configs need one, and pre-training never reads it.
    L, H, C = splits.context_length, max(splits.prediction_length, 1), splits.num_channels
    if model_name == "himtm":
        model = HiMTMForPretraining(himtm_config(splits.name, L, H, C, budget, **(himtm_overrides or {})))
    else:
        model = PatchTSTForPretraining(patchtst_config("selfsupervised", splits.name, L, H, C, budget))
    out_dir = work_dir / f"{model_name}-pretrain"
    result = train_model(model, splits.train, splits.val,
                         _train_args(budget, "pretrain", out_dir, seed, metric_for_best_model=metric_for_best_model),
                         is_pretraining=True)
    result.model.save_pretrained(out_dir)
    summary = {"pretrain_steps": result.global_step, "pretrain_epochs": result.epochs,
               "pretrain_best_val_loss": result.best_val_loss, "pretrain_best_step": result.best_step,
               "pretrain_metric_for_best_model": metric_for_best_model, "pretrain_wall_time_s": round(result.wall_time_s, 2),
               "pretrain_final_train_loss": _last_train_loss(result.history)}
    if model_name == "himtm":
        summary["pretrain_windows"] = "look-back only" if splits.prediction_length == 0 else "forecasting"
        summary["pretrain_diagnostics"] = pretraining_diagnostics(result.model, splits, seed, probe_splits)
    del result
    return out_dir, summary


def pretraining_diagnostics(model: torch.nn.Module, splits: SplitData, seed: int,
                            probe_splits: SplitData | None = None) -> dict[str, Any]:
    """Does the kept pre-training learn? Finest-hierarchy skill over the best trivial predictor, per-hierarchy skill,
    feature spread and the frozen-encoder linear probe on `DIAGNOSTICS_WINDOWS` validation windows with masks seeded
    by `seed` (`himtm_hf.pretraining_diagnostics.diagnose_pretraining`). The probe forecasts the horizon of
    `probe_splits` (default `splits`; none when that has no horizon)."""
    from ..pretraining_diagnostics import diagnose_pretraining, seasonal_period

    probe_splits = probe_splits or splits
    probe = (probe_splits.train, probe_splits.val) if probe_splits.prediction_length > 0 else None
    result = diagnose_pretraining(model, splits.val, num_windows=DIAGNOSTICS_WINDOWS, seed=seed,
                                  period=seasonal_period(splits.timestamps), batch_size=256, probe=probe)
    keep = ("skill", "best_trivial", "best_trivial_predictor", "student_spread", "teacher_spread",
            "linear_probe_mse", "linear_probe_lookback_mse", "linear_probe_mean_mse")
    return {**{k: result.get(k) for k in keep},
            "probe_prediction_length": probe_splits.prediction_length if probe is not None else None,
            "skill_by_hierarchy": [level["skill"] for level in result["hierarchy"]],
            "reconstruction_by_hierarchy": [level["reconstruction"] for level in result["hierarchy"]]}


def _last_train_loss(history: list[dict[str, Any]]) -> float | None:
    """The last logged training loss of a run's history (None when none was logged)."""
    losses = [h.get("loss") for h in history if h.get("split") == "train" and h.get("loss") is not None]
    return float(losses[-1]) if losses else None


def build_forecaster(model_name: str, splits: SplitData, budget: Budget, pretrained: Path | None,
                     himtm_overrides: dict[str, Any] | None = None):
    """The forecaster `finetune_model` trains: HiMTM from `pretrained` (or from scratch), supervised PatchTST, or
    self-supervised PatchTST from its pre-training. Call `set_seed` first for the benchmark's initialisation."""
    from transformers import PatchTSTForPrediction

    L, H, C = splits.context_length, splits.prediction_length, splits.num_channels
    if model_name == "himtm":
        if pretrained is not None:
            return HiMTMForPrediction.from_pretrained(pretrained, prediction_length=H, num_input_channels=C,
                                                      **(himtm_overrides or {}))
        return HiMTMForPrediction(himtm_config(splits.name, L, H, C, budget, **(himtm_overrides or {})))
    if model_name == "patchtst_supervised":
        return PatchTSTForPrediction(patchtst_config("supervised", splits.name, L, H, C, budget))
    if PRETRAINING_OF.get(model_name) != "patchtst_selfsupervised":
        raise ValueError(f"Unknown benchmark model {model_name!r}; choose from {list(ALL_MODELS)}.")
    config = patchtst_config("selfsupervised", splits.name, L, H, C, budget)
    config.do_mask_input = False
    return PatchTSTForPrediction.from_pretrained(pretrained, config=config)


def finetune_model(model_name: str, splits: SplitData, budget: Budget, seed: int, work_dir: Path,
                   pretrained: Path | None, himtm_overrides: dict[str, Any] | None = None,
                   head_only_epochs: float = 0.0) -> dict[str, Any]:
    """Fine-tunes (from `pretrained`) or trains from scratch, then evaluates on the test split. `head_only_epochs` > 0:
    that many of the budget's fine-tuning epochs train the head alone first (`train_head_then_model`, LP-FT)."""
    from ..training.loop import train_head_then_model, train_model

    set_seed(seed)
    model = build_forecaster(model_name, splits, budget, pretrained, himtm_overrides)
    out_dir = work_dir / f"{model_name}-H{splits.prediction_length}"
    train_args = _train_args(budget, "finetune", out_dir, seed)
    if head_only_epochs > 0:
        result = train_head_then_model(model, splits.train, splits.val, train_args, head_only_epochs)
    else:
        result = train_model(model, splits.train, splits.val, train_args)
    metrics = _evaluate(result.model, splits, budget)
    if head_only_epochs > 0:
        metrics["finetune_head_only_epochs"] = head_only_epochs
    metrics.update({"finetune_steps": result.global_step, "finetune_epochs": result.epochs,
                    "best_val_loss": result.best_val_loss, "finetune_wall_time_s": round(result.wall_time_s, 2),
                    "finetune_final_train_loss": _last_train_loss(result.history),
                    "num_parameters": sum(p.numel() for p in result.model.parameters())})
    return metrics
