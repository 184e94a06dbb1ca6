"""Side-by-side benchmarks: HiMTM vs `transformers` PatchTST under one protocol, data, optimiser and budget.

Used by `scripts/benchmark_accuracy.py` and `scripts/ablate.py`. Every run writes one JSON record under
`docs/results/<kind>/` (dataset, horizon, model, mse, mae, budget, seed, epochs, wall time, device, git commit,
command) and `regenerate_results_md()` rebuilds `docs/results.md` from all records there.

Models (configured as in `HIMTM-NOTES.md`, "Configuring the PatchTST baseline faithfully"):

- `himtm`: `HiMTMForPretraining` on the train split, then `HiMTMForPrediction` fine-tuned from it (full fine-tune).
- `patchtst_supervised`: `PatchTSTForPrediction` trained from scratch, PatchTST/64 setting (patch 16, stride 8, 3
  layers, flatten head `pooling_type=None`, `scaling="std"`; d_model 16 / 4 heads / d_ff 128 / dropout 0.3 on ETTh,
  d_model 128 / 16 heads / d_ff 256 / dropout 0.2 elsewhere).
- `patchtst_selfsupervised`: `PatchTSTForPretraining` (patch 12, stride 12, mask 0.4, d_model 128, 16 heads, d_ff 512,
  3 layers, dropout 0.2), then `PatchTSTForPrediction` initialised from its encoder and fine-tuned.
- `patchtst_selfsupervised_lp_ft` (run by name, not by default): the same pre-training, fine-tuned head first as
  PatchTST's own scripts do (`train_head_then_model`, `HEAD_FIRST_MODELS`); the baseline to set beside a HiMTM
  variant fine-tuned head first, so that both sides get that protocol.

All three use the same splits, train-only standardisation, AdamW + warm-up/cosine schedule, early stopping on
validation loss, the same learning rates per phase and the same epoch/step budget.
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed

from .configuration_himtm import HiMTMConfig
from .data import SplitData, load_splits
from .evaluation import compute_forecast_metrics
from .modeling_himtm import HiMTMForPrediction, HiMTMForPretraining

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "docs" / "results"
MODELS = ("himtm", "patchtst_supervised", "patchtst_selfsupervised")
# Runs fine-tuned head first (`train_head_then_model`) spend this fraction of the budget's fine-tuning epochs on the
# head alone, the encoder frozen (PatchTST's scripts: 10 head-only epochs before 20 end-to-end ones, a third).
HEAD_ONLY_FRACTION = 0.3
# Models run only when named: self-supervised PatchTST fine-tuned head first, from the same pre-training as
# `patchtst_selfsupervised` (`PRETRAINING_OF`).
HEAD_FIRST_MODELS: tuple[str, ...] = ("patchtst_selfsupervised_lp_ft",)
ALL_MODELS = MODELS + HEAD_FIRST_MODELS
# The pre-training a model is fine-tuned from (the self-supervised models; one pre-training serves both PatchTSTs).
PRETRAINING_OF = {"himtm": "himtm", "patchtst_selfsupervised": "patchtst_selfsupervised",
                  "patchtst_selfsupervised_lp_ft": "patchtst_selfsupervised"}
SMALL_DATASETS = {"ETTh1", "ETTh2", "national_illness", "exchange_rate"}


@dataclass(frozen=True)
class Budget:
    """How much training every model gets (identical across models)."""

    name: str
    pretrain_epochs: float
    finetune_epochs: float
    max_steps_pretrain: int = -1
    max_steps_finetune: int = -1
    batch_size: int = 64
    max_train_windows: int | None = None
    max_eval_windows: int | None = None
    max_test_windows: int | None = None  # None = every test window (the protocol)
    early_stopping_patience: int = 3
    pretrain_learning_rate: float = 1e-3
    finetune_learning_rate: float = 1e-4
    tiny_models: bool = False


BUDGETS: dict[str, Budget] = {
    # CI smoke run: a few steps on a slice; numbers are meaningless, the point is that the scripts run.
    "quick": Budget("quick", 1, 1, max_steps_pretrain=3, max_steps_finetune=3, batch_size=8, max_train_windows=64,
                    max_eval_windows=32, max_test_windows=64, tiny_models=True),
    # About an hour for ETTh1 + ETTh2 (3 models x 4 horizons) on 2 CPU cores.
    # A short schedule, so fine-tuning gets a higher learning rate than the paper's 1e-4 (for every model alike).
    "cpu": Budget("cpu", 2, 2, batch_size=64, max_train_windows=4000, max_eval_windows=1000,
                  finetune_learning_rate=5e-4),
    # GPU: the whole train split, more epochs, early stopping.
    "full": Budget("full", 10, 10, batch_size=128, early_stopping_patience=3),
}
# `cpu` with fine-tuning at 1e-3 for every model: at 2 epochs the 5e-4 of `cpu` leaves every model short of what its
# 124 steps can reach, so this budget shows the comparison nearer convergence at the same cost (NOTES point (6)).
BUDGETS["cpu_lr1e-3"] = replace(BUDGETS["cpu"], name="cpu_lr1e-3", finetune_learning_rate=1e-3)
# `cpu_lr1e-3` with 4x the pre-training (8 epochs, ~500 steps): does a model's pre-training pay off past ~124 steps?
# On ETTh1 it did not, for HiMTM or self-supervised PatchTST (NOTES point (7)).
BUDGETS["cpu_long"] = replace(BUDGETS["cpu_lr1e-3"], name="cpu_long", pretrain_epochs=8)


# ----------------------------------------------------------------------------------------------------------------------
# Model configurations
# ----------------------------------------------------------------------------------------------------------------------


def himtm_config(dataset: str, context_length: int, prediction_length: int, num_channels: int, budget: Budget,
                 **overrides: Any) -> HiMTMConfig:
    """HiMTM at the project defaults (patch 16, 3 hierarchies, 1 block each), width by dataset size."""
    if budget.tiny_models:
        size = dict(d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                    csa_num_attention_heads=2)
    elif dataset in SMALL_DATASETS:
        size = dict(d_model=64, num_attention_heads=8, ffn_dim=128, decoder_num_attention_heads=8,
                    csa_num_attention_heads=8, dropout=0.2)
    else:
        size = dict(d_model=128, num_attention_heads=16, ffn_dim=256, decoder_num_attention_heads=16,
                    csa_num_attention_heads=16, dropout=0.2)
    return HiMTMConfig(context_length=context_length, prediction_length=prediction_length,
                       num_input_channels=num_channels, **{**size, **overrides})


def patchtst_config(kind: str, dataset: str, context_length: int, prediction_length: int, num_channels: int,
                    budget: Budget):
    """`PatchTSTConfig` of the PatchTST paper's scripts for `kind` in {'supervised', 'selfsupervised'}."""
    from transformers import PatchTSTConfig

    common = dict(context_length=context_length, prediction_length=prediction_length,
                  num_input_channels=num_channels, num_hidden_layers=3, scaling="std", pooling_type=None,
                  head_dropout=0.0)
    if budget.tiny_models:
        size = dict(d_model=16, num_attention_heads=2, ffn_dim=32, dropout=0.1)
    elif kind == "selfsupervised":
        size = dict(d_model=128, num_attention_heads=16, ffn_dim=512, dropout=0.2)
    elif dataset in SMALL_DATASETS:
        size = dict(d_model=16, num_attention_heads=4, ffn_dim=128, dropout=0.3)
    else:
        size = dict(d_model=128, num_attention_heads=16, ffn_dim=256, dropout=0.2)
    if kind == "selfsupervised":
        patching = dict(patch_length=12, patch_stride=12, mask_type="random", random_mask_ratio=0.4,
                        do_mask_input=True)
    else:
        patching = dict(patch_length=16, patch_stride=8)
    return PatchTSTConfig(**common, **size, **patching)


def speed_himtm_config(context_length: int, prediction_length: int, num_input_channels: int, d_model: int,
                       num_heads: int, ffn_dim: int, total_depth: int, **overrides: Any) -> HiMTMConfig:
    """HiMTM as `scripts/benchmark_speed.py` measures it (and `scripts/profile_step.py` profiles it): patch 16,
    3 hierarchies, `total_depth` blocks in all, every attention with `num_heads` heads."""
    hierarchies = 3
    return HiMTMConfig(
        context_length=context_length, prediction_length=prediction_length, num_input_channels=num_input_channels,
        patch_length=16, patch_stride=16, num_hierarchies=hierarchies, d_model=d_model,
        num_layers=max(1, total_depth // hierarchies), num_attention_heads=num_heads, ffn_dim=ffn_dim,
        decoder_num_attention_heads=num_heads, csa_num_attention_heads=num_heads, **overrides,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------------------------------


def _train_args(budget: Budget, phase: str, output_dir: Path, seed: int, disable_tqdm: bool = True,
                metric_for_best_model: str = "loss"):
    from .training.arguments import TrainArguments

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
    from .training.loop import predict

    out = predict(model, splits.test, batch_size=256, accelerator=accelerator, max_windows=budget.max_test_windows,
                  disable_tqdm=True)
    metrics = compute_forecast_metrics(out["predictions"], out["targets"], out["observed_mask"])
    metrics["num_test_windows"] = int(out["predictions"].shape[0])
    metrics["full_test_split"] = metrics["num_test_windows"] == len(splits.test)
    return metrics


# HiMTM's pre-training keeps the weights with the lowest validation reconstruction loss: the distillation part of the
# total can fall while the encoder learns nothing (docs/architecture.md). PatchTST reports only `loss` (its
# reconstruction loss).
HIMTM_PRETRAIN_METRIC = "reconstruction_loss"
# Validation windows the pre-training diagnostics score (`himtm_hf.pretraining_diagnostics`), as `pretrain.py` does.
DIAGNOSTICS_WINDOWS = 256


def pretrain_model(model_name: str, splits: SplitData, budget: Budget, seed: int, work_dir: Path,
                   himtm_overrides: dict[str, Any] | None = None, metric_for_best_model: str | None = None,
                   probe_splits: SplitData | None = None) -> tuple[Path, dict[str, Any]]:
    """Pre-trains HiMTM or self-supervised PatchTST on `splits` (forecasting or look-back-only windows); returns the
    saved folder and a summary. `metric_for_best_model`: the validation loss that picks the kept checkpoint (not
    given: `HIMTM_PRETRAIN_METRIC` for HiMTM, `loss` for PatchTST). A HiMTM summary also holds the diagnostics of the
    kept weights (`pretrain_diagnostics`), whose linear probe forecasts `probe_splits`' horizon (default `splits`)."""
    from transformers import PatchTSTForPretraining

    from .training.loop import train_model

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
    from .pretraining_diagnostics import diagnose_pretraining, seasonal_period

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
    from .training.loop import train_head_then_model, train_model

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


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os
    import platform

    return f"CPU ({platform.machine()}, {os.cpu_count()} cores)"


# What the benchmarks write themselves: changes there do not make the code that produced a record differ from its
# commit (a second benchmark command in the same checkout would otherwise be recorded as `-dirty`).
_BENCHMARK_OUTPUTS = ("docs/results.md", "docs/results")


def git_commit(root: Path = ROOT) -> str:
    """The project's commit (`-dirty` with uncommitted changes outside the benchmark outputs `docs/results.md` and
    `docs/results/`); `$HIMTM_GIT_COMMIT` where the tree has no `.git` (e.g. a copy sent to a GPU machine)."""
    import os

    if os.environ.get("HIMTM_GIT_COMMIT"):
        return os.environ["HIMTM_GIT_COMMIT"]
    try:
        proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=root,
                              timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                *(f":(exclude){path}" for path in _BENCHMARK_OUTPUTS)],
                               capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = proc.stdout.strip() or "unknown"
    return commit + ("-dirty" if dirty.stdout.strip() else "")


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


# HiMTM's defaults (or what they pre-train) changed three times (see `HIMTM_DEFAULTS`); a HiMTM record names the set
# it ran with, so a table never pools runs of two different models under one label. Records written before the field
# existed ran with set 0.
HIMTM_DEFAULTS_VERSION = 4
HIMTM_DEFAULTS: dict[int, str] = {
    0: "teacher_input='masked', csa_attention='global', positional_encoding_type='learned' (every HiMTM record "
       "before the field existed)",
    1: "teacher_input='full', csa_attention='local', positional_encoding_type='learned'",
    2: "teacher_input='full', csa_attention='local', positional_encoding_type='sincos'",
    3: "as v2, with DED's mask queries and positions initialised (std initializer_range); v0-v2 pre-trained with "
       "both left at zero",
    4: "as v3, with distillation_target_norm='instance', pre-training scaler statistics from the visible patches "
       "(floored at 0.5x the window's scale), look-back-only pre-training windows, context_padding='left', and the "
       "pre-training checkpoint kept by validation reconstruction loss",
}


def himtm_defaults_version(record: dict[str, Any]) -> int | None:
    """The HiMTM defaults set a record ran with (None for a PatchTST record)."""
    return int(record.get("himtm_defaults", 0)) if record.get("model") == "himtm" else None


def device_kind() -> str:
    """The kind of device a benchmark runs on here, part of each record's file name."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def record_path(results_dir: Path, kind: str, record: dict[str, Any]) -> Path:
    """The file of one benchmark cell under `results_dir/kind/`: one per (dataset, horizon, model, variant, budget,
    seed, HiMTM defaults set, device kind), so the record's own fields say where it lives."""
    stem = "-".join(str(record.get(k)) for k in ("dataset", "prediction_length", "model", "variant", "budget", "seed")
                    if record.get(k) is not None)
    version = himtm_defaults_version(record)
    if version:  # set 0 keeps its original file names
        stem += f"-d{version}"
    return Path(results_dir) / kind / f"{stem}-{record['device_kind']}.json"


def write_record(results_dir: Path, kind: str, record: dict[str, Any]) -> Path:
    """Writes one run's JSON record under `results_dir/kind/`."""
    path = record_path(results_dir, kind, record)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=_json_default))
    return path


def kept_record(results_dir: Path, kind: str, cell: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The record a cell (at least the naming fields of `record_path`, less the device kind) already has on this kind
    of device, unless `overwrite`. The benchmarks skip such cells: a re-run resumes an interrupted benchmark instead of
    replacing, and paying again for, results the user already has."""
    path = record_path(results_dir, kind, {**cell, "device_kind": device_kind()})
    if overwrite or not path.is_file():
        return None
    print(f"kept {path} (its cell has a record; --overwrite re-runs it)", flush=True)
    return json.loads(path.read_text())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


def base_record(dataset: str, budget: Budget, seed: int, context_length: int) -> dict[str, Any]:
    return {
        "dataset": dataset, "context_length": context_length, "budget": budget.name, "budget_detail": asdict(budget),
        "seed": seed, "device": device_name(), "device_kind": device_kind(),
        "git_commit": git_commit(), "command": command_line(), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


# ----------------------------------------------------------------------------------------------------------------------
# Accuracy benchmark
# ----------------------------------------------------------------------------------------------------------------------


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
                    pretrained[source] = _pretrain_variant(himtm_variant, base_splits, budget, seed, run_dir)
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
                    head_only_epochs = _head_only_epochs(himtm_variant if is_himtm else model_name, budget)
                    metrics = finetune_model(model_name, splits, budget, seed,
                                             work_dir / splits.name / f"seed{seed}" / himtm_variant, ckpt,
                                             _finetune_overrides(overrides, ckpt) if is_himtm else None,
                                             head_only_epochs)
                    record = {**base_record(splits.name, budget, seed, context_length), **cells[model_name, horizon],
                              **pre_summary, **metrics,
                              "wall_time_s": round(time.time() - start + pre_summary.get("pretrain_wall_time_s", 0), 2)}
                    path = write_record(results_dir, "accuracy", record)
                    records.append(record)
                    print(f"{splits.name} H={horizon} {_model_label(record)}: MSE {metrics['mse']:.4f} "
                          f"MAE {metrics['mae']:.4f}"
                          f" ({metrics['finetune_steps']} steps) -> {path}", flush=True)
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Ablation
# ----------------------------------------------------------------------------------------------------------------------

# Half the ETTh width with supervised PatchTST's small-data dropout (the `width_32_dropout_0.3` variants below).
_WIDTH_32_DROPOUT_03: dict[str, Any] = {"d_model": 32, "num_attention_heads": 4, "decoder_num_attention_heads": 4,
                                        "csa_num_attention_heads": 4, "dropout": 0.3}
# Supervised PatchTST/64's own small-data size (d_model 16, 4 heads, dropout 0.3): the `full` budget's width trend
# (64 -> 32 better on both ETTh datasets, NOTES point (16)) taken down to the baseline's width.
_WIDTH_16_DROPOUT_03: dict[str, Any] = {**_WIDTH_32_DROPOUT_03, "d_model": 16}
# Instance-normalised HSD targets with the zero-initialised forecast head (the `hsd_instance_norm_head_init_zeros`
# variants below).
_INSTANCE_TARGETS_ZERO_HEAD: dict[str, Any] = {"distillation_target_norm": "instance", "forecast_head_init": "zeros"}
# Both: the best recipe measured at the `full` budget (NOTES points (17)-(18)), the base of its diagnostics below.
_FULL_BUDGET_RECIPE: dict[str, Any] = {**_WIDTH_32_DROPOUT_03, **_INSTANCE_TARGETS_ZERO_HEAD}

ABLATION_VARIANTS: dict[str, dict[str, Any]] = {
    "full": {},
    "no_hmt": {"use_hmt": False},
    "no_ded": {"use_ded": False},
    "no_hsd": {"use_hsd": False},
    "no_csa": {"use_csa": False},
    "hierarchies_1": {"num_hierarchies": 1},
    "hierarchies_2": {"num_hierarchies": 2},
    # 3 hierarchies and mask ratio 0.5 are the defaults: that point of both sweeps is the "full" row.
    "hierarchies_4": {"num_hierarchies": 4},
    "mask_0.3": {"mask_ratio": 0.3},
    "mask_0.4": {"mask_ratio": 0.4},
    "mask_0.6": {"mask_ratio": 0.6},
    "mask_0.7": {"mask_ratio": 0.7},
    "teacher_ema": {"teacher_type": "ema"},
    "teacher_masked_input": {"teacher_input": "masked"},
    "csa_global": {"csa_attention": "global"},
    # Learned positions (defaults v1) instead of the fixed sine-cosine table (v2).
    "pos_learned": {"positional_encoding_type": "learned"},
    # The forecast projection starts at zero (a fresh head forecasts the look-back mean) instead of random weights.
    "head_init_zeros": {"forecast_head_init": "zeros"},
    # Both: on ETTm1 the HSD losses kept the 124-step pre-training's reconstruction at the mean (NOTES point (11)).
    "no_hsd_head_init_zeros": {"use_hsd": False, "forecast_head_init": "zeros"},
    # HSD targets standardised per feature over the window's tokens instead of per token (data2vec's instance norm
    # for 1-D signals): the shared teacher can then not lower the distillation loss with features that are the same
    # at every position (NOTES point (13)).
    "hsd_instance_norm": {"distillation_target_norm": "instance"},
    # Both: instance-normalised HSD targets and the zero-initialised forecast head (the HSD-keeping counterpart of
    # no_hsd_head_init_zeros).
    "hsd_instance_norm_head_init_zeros": dict(_INSTANCE_TARGETS_ZERO_HEAD),
    # Dropout before the forecast projection (the flatten head holds most of the forecaster's parameters).
    "head_dropout_0.3": {"head_dropout": 0.3},
    # Diagnostics of the accuracy gap (docs/results/NOTES.md): a masking unit of 32 steps instead of 64, no
    # pre-training at all (the same architecture trained on the forecasting loss only), and the width of the
    # large-dataset configuration (PatchTST's self-supervised model is 128 wide on every dataset).
    "patch_8": {"patch_length": 8, "patch_stride": 8},
    "no_pretrain": {},
    "width_128": {"d_model": 128, "num_attention_heads": 16, "decoder_num_attention_heads": 16,
                  "csa_num_attention_heads": 16, "ffn_dim": 256},
    # Closer to supervised PatchTST's small-dataset size (d_model 16, dropout 0.3): at the `full` budget HiMTM's
    # fine-tuning on ETTh1 peaks at epoch 1-3 and then over-fits (NOTES point (14)); half the width (the flatten head
    # then reads 56 tokens x 32 features, 1.8x the 63 x 16 of PatchTST's, instead of 3.6x) and PatchTST's dropout.
    "width_32_dropout_0.3": dict(_WIDTH_32_DROPOUT_03),
    # The two best `full`-budget changes on ETTh1 together (NOTES point (16)): the smaller, more regularised model
    # and the instance-target + zero-head pair; each alone was 1.017x and 1.008x supervised PatchTST there.
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros": dict(_FULL_BUDGET_RECIPE),
    # The recipe at supervised PatchTST's width (the flatten head then reads 56 tokens x 16 features, 0.9x PatchTST's
    # 63 x 16): does the width trend of NOTES point (16) go on below 32 at the `full` budget?
    "width_16_dropout_0.3_hsd_instance_norm_head_init_zeros": {**_WIDTH_16_DROPOUT_03, **_INSTANCE_TARGETS_ZERO_HEAD},
    # That recipe's H = 720 fine-tuning on ETTh1 peaks at epoch 1-2 and then over-fits (NOTES point (17)). Is it the
    # flatten head (dropout before it, as supervised PatchTST's `head_dropout` would do) or the encoder drifting
    # away from its pre-training (the encoder frozen: CSA-FT and the projection trained only, a diagnostic)?
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_head_dropout_0.3": {**_FULL_BUDGET_RECIPE, "head_dropout": 0.3},
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_frozen_encoder": {**_FULL_BUDGET_RECIPE,
                                                                              "freeze_encoder": True},
    # The recipe fine-tuned as PatchTST's own code fine-tunes its pre-trained encoder (`Learner.fine_tune`): the head
    # alone first (the encoder frozen, as in the diagnostic above), then everything at half the learning rate
    # (`HEAD_FIRST_VARIANTS`, same total epochs). Frozen, ETTh1's validation loss was lower at every horizon, but the
    # test MSE 0.5 % higher (NOTES point (18)): does the head fitted first help the end-to-end fine-tuning?
    "width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_lp_ft": dict(_FULL_BUDGET_RECIPE),
    # The best `cpu`-budget model on ETTm1 / ETTm2 (NOTES point (13)) fine-tuned head first the same way: does the
    # protocol that helped the recipe on ETTh2 help on the 15-minute datasets too?
    "hsd_instance_norm_head_init_zeros_lp_ft": dict(_INSTANCE_TARGETS_ZERO_HEAD),
    # The defaults' model, with the pre-training checkpoint (and its early stopping) chosen by the validation
    # reconstruction loss instead of the total: the HSD part's target moves with the weights (NOTES point (14)).
    # The default since defaults v4; the variant stays for the records of earlier sets.
    "select_by_reconstruction": {},
    # The pre-training checkpoint chosen by the total validation loss (reconstruction + distillation), the default
    # before v4.
    "select_by_total_loss": {},
    # The switches of defaults v4, each set back (docs/architecture.md, "Pre-training that learns"): per-token
    # LayerNorm distillation targets (v3's; with the shared teacher the encoder collapses), scaler statistics over
    # the whole window (masked values included), and DED positions from a fixed sine-cosine table.
    "hsd_token_norm": {"distillation_target_norm": "token"},
    "scaling_all": {"pretraining_scaling_statistics": "all"},
    "decoder_pos_sincos": {"decoder_positional_encoding_type": "sincos"},
    # `width_128` fine-tuned from a random start: its own reference for "does pre-training pay?". Pre-training paid on
    # ETTm1 (d_model 128) and not on ETTh1 / ETTh2 (d_model 64) at defaults v4 (NOTES, "Does pre-training pay?").
    "width_128_no_pretrain": {"d_model": 128, "num_attention_heads": 16, "decoder_num_attention_heads": 16,
                              "csa_num_attention_heads": 16, "ffn_dim": 256},
}
# Variants fine-tuned from a random initialisation instead of their own pre-training, and the pre-trained variant each
# is the reference of (the ablation tables' "× from scratch" column).
NO_PRETRAIN_VARIANTS = {"no_pretrain", "width_128_no_pretrain"}
SCRATCH_REFERENCE = {"width_128": "width_128_no_pretrain"}  # every other variant: "no_pretrain"
# What `scripts/ablate.py` runs unless told otherwise: the paper's ablation table (each of its four parts removed)
# and the two sweeps. The other variants are diagnostics and recipe candidates, run by name.
PAPER_ABLATION_VARIANTS: list[str] = ["full", "no_hmt", "no_ded", "no_hsd", "no_csa", "hierarchies_1", "hierarchies_2",
                                      "hierarchies_4", "mask_0.3", "mask_0.4", "mask_0.6", "mask_0.7"]
# HiMTM variants fine-tuned head first (`HEAD_ONLY_FRACTION`). Their names never collide with `ALL_MODELS`.
HEAD_FIRST_VARIANTS: tuple[str, ...] = ("width_32_dropout_0.3_hsd_instance_norm_head_init_zeros_lp_ft",
                                        "hsd_instance_norm_head_init_zeros_lp_ft")
# Variants whose pre-training keeps the checkpoint with the lowest value of this validation loss (others: "loss").
PRETRAIN_METRIC_VARIANTS = {"select_by_reconstruction": "reconstruction_loss", "select_by_total_loss": "loss"}


def _pretrain_variant(variant: str, splits: SplitData, budget: Budget, seed: int, work_dir: Path,
                      probe_splits: SplitData | None = None) -> tuple[Path | None, dict[str, Any]]:
    """Pre-trains HiMTM as `variant` (no checkpoint for the variants without pre-training)."""
    if variant in NO_PRETRAIN_VARIANTS:
        return None, {"pretrain_steps": 0}
    return pretrain_model("himtm", splits, budget, seed, work_dir, ABLATION_VARIANTS[variant],
                          metric_for_best_model=PRETRAIN_METRIC_VARIANTS.get(variant), probe_splits=probe_splits)


def _head_only_epochs(name: str, budget: Budget) -> float:
    """Head-only fine-tuning epochs of `name` (a HiMTM variant or a benchmark model) under `budget` (0: end to end
    from the start)."""
    fraction = HEAD_ONLY_FRACTION if name in HEAD_FIRST_VARIANTS or name in HEAD_FIRST_MODELS else 0.0
    if fraction and budget.max_steps_finetune > 0:
        raise ValueError(f"{name!r} splits the fine-tuning epochs, but budget {budget.name!r} counts "
                         f"steps (max_steps_finetune={budget.max_steps_finetune}); run it with an epoch budget.")
    return fraction * budget.finetune_epochs


def _finetune_overrides(overrides: dict[str, Any], checkpoint: Path | None) -> dict[str, Any]:
    """A variant's overrides for building its forecaster: all of them from scratch; from a checkpoint only
    `use_csa`, since the rest travel in the saved config."""
    return {k: v for k, v in overrides.items() if k == "use_csa"} if checkpoint is not None else dict(overrides)


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
    ckpt, pre_summary = _pretrain_variant(variant, lookback, budget, seed, run_dir, by_horizon[min(by_horizon)])
    pretrain_seconds = time.time() - start
    records = []
    for horizon, splits in by_horizon.items():
        start = time.time()
        metrics = finetune_model("himtm", splits, budget, seed, run_dir, ckpt, _finetune_overrides(overrides, ckpt),
                                 _head_only_epochs(variant, budget))
        record = {**base_record(splits.name, budget, seed, splits.context_length), **cells[horizon], **pre_summary,
                  **metrics, "wall_time_s": round(pretrain_seconds + time.time() - start, 2)}
        path = write_record(results_dir, "ablation", record)
        records.append(record)
        print(f"{splits.name} {variant} seed {seed} H={horizon}: MSE {metrics['mse']:.4f} MAE {metrics['mae']:.4f} "
              f"-> {path}", flush=True)
    return records


# ----------------------------------------------------------------------------------------------------------------------
# Closed-form baselines (naive last value, NLinear-style ridge): one record per (dataset, L, H)
# ----------------------------------------------------------------------------------------------------------------------

BASELINES_KIND = "baselines"
# Bump when what `himtm_hf.baselines` computes changes: every record then differs in its settings and is recomputed.
BASELINES_VERSION = 1
# Record key -> the row / column name the tables give it.
BASELINE_LABELS: dict[str, str] = {"naive": "naive (last value)", "linear_ridge": "linear (ridge)"}


def baseline_settings(dataset: str, context_length: int, prediction_length: int) -> dict[str, Any]:
    """Everything that fixes a baseline record's numbers (with the data file): compared before a record is kept, and
    stored in it so that it can be regenerated (`scripts/benchmark_baselines.py` with these values)."""
    from .baselines import RIDGE_LAMBDAS

    return {"dataset": dataset, "context_length": int(context_length), "prediction_length": int(prediction_length),
            "split": "test", "split_protocol": "load_splits defaults (the benchmark's fixed ETT borders, else "
                                                "70/10/20 by rows); train-split standardisation",
            "test_windows": "every window, stride 1", "ridge_lambdas": list(RIDGE_LAMBDAS),
            "ridge_lambda_selection": "lowest val MSE", "ridge_max_train_windows": None,
            "baselines_version": BASELINES_VERSION}


def baseline_record_path(results_dir: Path, dataset: str, context_length: int, prediction_length: int) -> Path:
    """The record of the closed-form baselines of one (dataset, L, H) cell: `results_dir/baselines/`."""
    return Path(results_dir) / BASELINES_KIND / f"{dataset}-L{int(context_length)}-H{int(prediction_length)}.json"


def ensure_baselines(dataset: str, context_length: int, prediction_length: int, results_dir: Path = RESULTS_DIR,
                     data_dir: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """The baseline record of (`dataset`, `context_length`, `prediction_length`): the existing one when its settings
    are those of `baseline_settings` (and not `overwrite`), else computed (seconds on a CPU) and written."""
    from .baselines import linear_ridge, naive_last_value

    splits = load_splits(dataset, data_dir=data_dir, context_length=context_length,
                         prediction_length=prediction_length)
    settings = json.loads(json.dumps(baseline_settings(splits.name, context_length, prediction_length)))
    path = baseline_record_path(results_dir, splits.name, context_length, prediction_length)
    if path.is_file() and not overwrite:
        existing = json.loads(path.read_text())
        if existing.get("settings") == settings:
            print(f"baselines up to date: {path}", flush=True)
            return existing
    start = time.time()
    naive = naive_last_value(splits)
    linear = linear_ridge(splits)
    record = {
        "kind": BASELINES_KIND, "dataset": splits.name, "context_length": int(context_length),
        "prediction_length": int(prediction_length), "naive": naive, "linear_ridge": linear, "settings": settings,
        "data": {"dataset": str(dataset), "data_dir": data_dir, "columns": splits.columns,
                 "borders": {k: list(v) for k, v in splits.borders.items()}, "train_windows": len(splits.train),
                 "val_windows": len(splits.val), "test_windows": len(splits.test)},
        "device": device_name(), "git_commit": git_commit(), "command": command_line(),
        "torch_version": torch.__version__, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_time_s": round(time.time() - start, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=_json_default) + "\n")
    print(f"{splits.name} L={context_length} H={prediction_length} baselines: naive {naive['mse']:.4f} / "
          f"{naive['mae']:.4f}, linear (ridge, lambda {linear['ridge_lambda']:g}) {linear['mse']:.4f} / "
          f"{linear['mae']:.4f} (test MSE / MAE, {naive['num_windows']} windows) -> {path}", flush=True)
    return record


def run_baselines(datasets: list[str], horizons: list[int], context_lengths: list[int],
                  results_dir: Path = RESULTS_DIR, data_dir: str | None = None,
                  overwrite: bool = False) -> list[dict[str, Any]]:
    """`ensure_baselines` for every (dataset, context length, horizon)."""
    return [ensure_baselines(dataset, context_length, horizon, results_dir, data_dir, overwrite)
            for dataset in datasets for context_length in context_lengths for horizon in horizons]


def load_baselines(results_dir: Path = RESULTS_DIR) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Every baseline record under `results_dir/baselines/`, by (dataset, context length, horizon)."""
    return {(r["dataset"], int(r["context_length"]), int(r["prediction_length"])): r
            for r in _load_records(results_dir, BASELINES_KIND)}


# ----------------------------------------------------------------------------------------------------------------------
# docs/results.md
# ----------------------------------------------------------------------------------------------------------------------


def _load_records(results_dir: Path, kind: str) -> list[dict[str, Any]]:
    folder = Path(results_dir) / kind
    return [json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))] if folder.exists() else []


def _mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


def regenerate_results_md(results_dir: Path = RESULTS_DIR, output: Path | None = None) -> Path:
    """Rebuilds `docs/results.md` from every JSON record under `results_dir` (accuracy, ablation, speed, transfer;
    the closed-form baselines under `baselines/` appear in the accuracy, ablation and transfer tables)."""
    results_dir = Path(results_dir)
    output = Path(output) if output else results_dir.parent / "results.md"
    lines = ["# Results", "",
             "Generated by `himtm_hf.benchmarking.regenerate_results_md()` from the JSON records under "
             "`docs/results/`; do not edit by hand. Every table names the command, budget, device and commit that "
             "produced its numbers. MSE/MAE are on the standardised test split (train-split statistics), every test "
             "window unless the budget says otherwise (`quick` caps them).", ""]
    accuracy = _load_records(results_dir, "accuracy")
    baselines = load_baselines(results_dir)
    # The headline first: without it a reader has to find the current model's averages in the long tables below.
    lines += _scoreboard_section(accuracy, baselines)
    notes = results_dir / "NOTES.md"
    if notes.is_file():  # hand-written reading of the numbers: what was seen, why, what changed since
        lines += [notes.read_text().strip(), ""]
    lines += _accuracy_section(accuracy, baselines)
    lines += _ablation_section(_load_records(results_dir, "ablation"), baselines)
    lines += _transfer_section(_load_records(results_dir, "transfer"), baselines)
    lines += _speed_section(results_dir / "speed")
    output.write_text("\n".join(lines) + "\n")
    return output


# Issue target: HiMTM's horizon-averaged MSE at most this times PatchTST's (both variants).
ACCURACY_TARGET_RATIO = 0.97


def _ratio_verdict(ratio: float) -> str:
    """`0.989 (missed)` / `0.950 (met)`: a HiMTM / PatchTST ratio against `ACCURACY_TARGET_RATIO`."""
    return f"{ratio:.3f} ({'met' if ratio <= ACCURACY_TARGET_RATIO else 'missed'})"


def _accuracy_groups(records: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """The accuracy records by (budget, device kind): one table each, never averaged across the two."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["budget"], r["device_kind"])].append(r)
    return [(budget, rows) for (budget, _device_kind), rows in sorted(groups.items())]


def _dataset_horizons(rows: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Every horizon seen per dataset in `rows` (by any model): what a model must have run to get an average."""
    horizons: dict[str, set[int]] = defaultdict(set)
    for r in rows:
        horizons[r["dataset"]].add(r["prediction_length"])
    return {dataset: sorted(hs) for dataset, hs in sorted(horizons.items())}


def _horizon_averages(rows: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[float, list[int]]]:
    """`(dataset, model label) -> (average MSE, seeds)` for every label that has each horizon of that dataset
    seen in `rows`: a horizon's MSE is first averaged over its seeds, then the horizons are averaged."""
    table: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        table[(r["dataset"], _model_label(r))][r["prediction_length"]].append(r)
    horizons = _dataset_horizons(rows)
    return {
        (dataset, label): (float(np.mean([np.mean([x["mse"] for x in runs]) for runs in by_h.values()])),
                           sorted({x["seed"] for runs in by_h.values() for x in runs}))
        for (dataset, label), by_h in table.items() if sorted(by_h) == horizons[dataset]
    }


def _baseline_cells(averages: dict[tuple[str, str], tuple[float, list[int]]], dataset: str,
                    himtm: tuple[float, list[int]]) -> list[str]:
    """Both PatchTST baselines' averages (seeds) and HiMTM's ratio to each, as table cells."""
    cells, ratios = [], []
    for baseline in ("patchtst_supervised", "patchtst_selfsupervised"):
        other = averages.get((dataset, baseline))
        cells.append(f"{other[0]:.4f} ({len(other[1])})" if other else "–")
        ratios.append("–" if other is None else _ratio_verdict(himtm[0] / other[0]))
    return cells + ratios


Baselines = dict[tuple[str, int, int], dict[str, Any]]
# What the naive and linear rows / columns are, said once per section that shows them.
_BASELINES_LEGEND = (
    "`naive (last value)`: each channel's last look-back value repeated over the horizon; `linear (ridge)`: one "
    "linear map from the look-back to the horizon shared by all channels, applied after subtracting each window's "
    "last value (NLinear-style), fitted in closed form on the train windows, ridge strength chosen on the val "
    "windows. Both scored like the networks on every test window of the same dataset, look-back and horizon "
    "(`himtm_hf/baselines.py`; records under `docs/results/baselines/`, written by `python "
    "scripts/benchmark_baselines.py`); – where a cell has no baseline record.")


def _cell_baseline(baselines: Baselines, dataset: str, runs: list[dict[str, Any]],
                   horizon: int | None = None) -> dict[str, Any] | None:
    """The baseline record of the (dataset, look-back, horizon) of `runs` (None when there is none, or when the runs
    name no look-back or more than one). `horizon`: the runs' own `prediction_length` unless given."""
    lengths = {r.get("context_length") for r in runs}
    horizons = {horizon} if horizon is not None else {r.get("prediction_length") for r in runs}
    if len(lengths) != 1 or None in lengths or len(horizons) != 1 or None in horizons:
        return None
    return baselines.get((dataset, int(next(iter(lengths))), int(next(iter(horizons)))))


def _baseline_metric_cell(record: dict[str, Any] | None, key: str, windows: set[Any] = frozenset()) -> str:
    """`MSE / MAE` of baseline `key` of `record` ("–" without one), marked `†` when a network in the row was scored
    on other test windows than all of them (`windows`: the rows' numbers of test windows)."""
    if record is None:
        return "–"
    metrics = record[key]
    capped = any(w is not None and int(w) != int(metrics["num_windows"]) for w in windows)
    return f"{metrics['mse']:.4f} / {metrics['mae']:.4f}" + (" †" if capped else "")


def _baseline_average(baselines: Baselines, dataset: str, runs: list[dict[str, Any]], horizons: list[int],
                      key: str) -> str:
    """The horizon-averaged test MSE of baseline `key` over `horizons` at the look-back of `runs` ("–" unless every
    horizon has a record)."""
    records = [_cell_baseline(baselines, dataset, runs, h) for h in horizons]
    if not horizons or any(r is None for r in records):
        return "–"
    return f"{float(np.mean([r[key]['mse'] for r in records])):.4f}"


def _baselines_provenance(used: list[dict[str, Any] | None], capped: bool = False) -> list[str]:
    """A line naming the commands and commits of the baseline records a table shows (none when it shows none)."""
    used = [r for r in used if r is not None]
    if not used:
        return []
    line = (f"Baselines: commands {'; '.join(f'`{c}`' for c in sorted({r['command'] for r in used}))}. Commits: "
            f"{', '.join(sorted({r['git_commit'] for r in used}))}.")
    if capped:
        line += (" †: the networks of that row were scored on a subset of the test windows (their budget caps them), "
                 "the baselines on every one.")
    return [line, ""]


def _scoreboard_section(records: list[dict[str, Any]], baselines: Baselines | None = None) -> list[str]:
    """One row per (budget, device, dataset): the current HiMTM defaults against both PatchTST baselines; then the
    best HiMTM variant measured per (budget, device, dataset), each with the closed-form baselines' horizon-averaged
    test MSE."""
    baselines = baselines or {}
    lines = ["## At a glance: the current HiMTM against PatchTST (generated from the records below)", "",
             f"Horizon-averaged test MSE (each horizon first averaged over its seeds), HiMTM at its current defaults "
             f"(set v{HIMTM_DEFAULTS_VERSION}, no variant), and HiMTM / PatchTST (the target is <= "
             f"{ACCURACY_TARGET_RATIO}). Only rows "
             "where a model ran every horizon of the dataset count; variants, older defaults sets, per-horizon "
             "numbers, commands and commits are in the tables further down. The last two columns: the closed-form "
             "naive (last value) and linear (ridge) forecasts on the same test windows, averaged over the same "
             "horizons (described under the accuracy tables).", "",
             "| budget | device | dataset | horizons | HiMTM (seeds) | PatchTST supervised (seeds) | "
             "PatchTST self-supervised (seeds) | HiMTM / supervised | HiMTM / self-supervised | naive | "
             "linear (ridge) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    best = ["Best HiMTM per budget and dataset: the defaults or any variant of the current set that ran every "
            "horizon, the one with the lowest horizon-averaged test MSE. Chosen on the test numbers themselves, so "
            "an optimistic reading of what HiMTM reaches; its recipe is named in the variant column.", "",
            "| budget | device | dataset | HiMTM variant | HiMTM (seeds) | PatchTST supervised (seeds) | "
            "PatchTST self-supervised (seeds) | HiMTM / supervised | HiMTM / self-supervised | naive | "
            "linear (ridge) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    header_lines = len(lines)
    best_header_lines = len(best)
    for budget, rows in _accuracy_groups(records):
        averages = _horizon_averages(rows)
        devices = ", ".join(sorted({r["device"] for r in rows}))
        for dataset, horizons in _dataset_horizons(rows).items():
            runs = [r for r in rows if r["dataset"] == dataset]
            simple = [_baseline_average(baselines, dataset, runs, horizons, key) for key in BASELINE_LABELS]
            himtm = averages.get((dataset, "himtm"))
            if himtm is not None:
                lines.append(f"| `{budget}` | {devices} | {dataset} | {'/'.join(map(str, horizons))} | "
                             f"{himtm[0]:.4f} ({len(himtm[1])}) | "
                             + " | ".join(_baseline_cells(averages, dataset, himtm) + simple) + " |")
            current = {label: value for (d, label), value in averages.items()
                       if d == dataset and label.split("@")[0] == "himtm" and "[v" not in label}
            if current:
                label, value = min(current.items(), key=lambda item: item[1][0])
                variant = label.partition("@")[2] or "defaults"
                best.append(f"| `{budget}` | {devices} | {dataset} | `{variant}` | {value[0]:.4f} ({len(value[1])}) | "
                            + " | ".join(_baseline_cells(averages, dataset, value) + simple) + " |")
    if len(lines) == header_lines:
        lines.append("| – | – | – | – | no complete HiMTM run at the current defaults yet | – | – | – | – | – | – |")
    return lines + [""] + (best + [""] if len(best) > best_header_lines else [])


def _accuracy_section(records: list[dict[str, Any]], baselines: Baselines | None = None) -> list[str]:
    baselines = baselines or {}
    lines = ["## Accuracy: HiMTM vs PatchTST (same splits, scaler, optimiser and budget)", ""]
    if not records:
        return lines + ["No accuracy records yet.", ""]
    lines += [f"The last two columns of each table: {_BASELINES_LEGEND}", ""]
    for budget, rows in _accuracy_groups(records):
        devices = sorted({r["device"] for r in rows})
        commands = sorted({r["command"] for r in rows})
        commits = sorted({r["git_commit"] for r in rows})
        lines += [f"### Budget `{budget}` on {', '.join(devices)}", "",
                  f"Commands: {'; '.join(f'`{c}`' for c in commands)}. Commits: {', '.join(commits)}. "
                  f"Budget: `{json.dumps(rows[0]['budget_detail'])}`.", ""]
        lines += _defaults_legend(rows)
        labels = {_model_label(r) for r in rows}
        models = [m for m in ALL_MODELS if m in labels] + sorted(labels - set(ALL_MODELS))
        lines.append("| dataset | H | " + " | ".join(f"{m} MSE / MAE" for m in models)
                     + " | " + " | ".join(f"{label} MSE / MAE" for label in BASELINE_LABELS.values()) + " |")
        lines.append("|---|---|" + "---|" * (len(models) + len(BASELINE_LABELS)))
        table: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            table[(r["dataset"], r["prediction_length"], _model_label(r))].append(r)
        horizon_averages = _horizon_averages(rows)
        averages = []
        used, capped = [], False
        for dataset, horizons in _dataset_horizons(rows).items():
            for h in horizons:
                cell_runs = [r for r in rows if r["dataset"] == dataset and r["prediction_length"] == h]
                simple = _cell_baseline(baselines, dataset, cell_runs)
                windows = {r.get("num_test_windows") for r in cell_runs}
                used.append(simple)
                cells = []
                for m in models:
                    runs = table.get((dataset, h, m), [])
                    if runs:
                        mse = float(np.mean([x["mse"] for x in runs]))
                        mae = float(np.mean([x["mae"] for x in runs]))
                        cells.append(f"{mse:.4f} / {mae:.4f}" + (f" (n={len(runs)})" if len(runs) > 1 else ""))
                    else:
                        cells.append("–")
                cells += [_baseline_metric_cell(simple, key, windows) for key in BASELINE_LABELS]
                capped = capped or any(cell.endswith("†") for cell in cells[-len(BASELINE_LABELS):])
                lines.append(f"| {dataset} | {h} | " + " | ".join(cells) + " |")
            complete = {m: horizon_averages[(dataset, m)][0] for m in models if (dataset, m) in horizon_averages}
            avg_cells = [f"**{complete[m]:.4f}**" if m in complete else "–" for m in models]
            dataset_runs = [r for r in rows if r["dataset"] == dataset]
            avg_cells += [_baseline_average(baselines, dataset, dataset_runs, horizons, key) for key in BASELINE_LABELS]
            lines.append(f"| {dataset} | avg | " + " | ".join(avg_cells) + " |")
            for himtm in [m for m in complete if m.startswith("himtm")]:
                ratios = {m: complete[himtm] / v for m, v in complete.items() if not m.startswith("himtm")}
                if ratios:
                    averages.append((dataset if himtm == "himtm" else f"{dataset} ({himtm})", ratios))
        lines.append("")
        lines += _baselines_provenance(used, capped)
        if averages:
            lines += [f"HiMTM / PatchTST ratio of the horizon-averaged MSE (target: <= {ACCURACY_TARGET_RATIO}):", ""]
            for dataset, ratios in averages:
                # The target is set against the baselines as the benchmark runs them (`MODELS`); a protocol variant
                # of one (`HEAD_FIRST_MODELS`) gets its ratio shown without a verdict, so a weaker way of fine-tuning
                # a baseline can never count as the target met.
                parts = [f"{m}: {_ratio_verdict(v)}" if m in MODELS else f"{m}: {v:.3f} (protocol variant, no verdict)"
                         for m, v in ratios.items()]
                lines.append(f"- {dataset}: " + ", ".join(parts))
            lines.append("")
        losses = [r for r in rows if r.get("pretrain_final_train_loss") is not None]
        if losses:
            lines += ["Final training losses seen (pre-training / fine-tuning, last logged step):", ""]
            for r in sorted(losses, key=lambda x: (x["dataset"], x["prediction_length"], _model_label(x))):
                kept = ""
                if r.get("pretrain_best_step") is not None:  # recorded since metric_for_best_model existed
                    kept = (f", pre-training checkpoint kept: step {r['pretrain_best_step']} of {r['pretrain_steps']} "
                            f"(lowest val {r.get('pretrain_metric_for_best_model', 'loss')} "
                            f"{_fmt(r.get('pretrain_best_val_loss'))})")
                lines.append(f"- {r['dataset']} H={r['prediction_length']} {_model_label(r)}: pretrain "
                             f"{_fmt(r.get('pretrain_final_train_loss'))}, finetune "
                             f"{_fmt(r.get('finetune_final_train_loss'))}, best val {_fmt(r.get('best_val_loss'))}"
                             f"{kept}")
            lines.append("")
    return lines


def _model_label(record: dict[str, Any]) -> str:
    """`himtm`, `patchtst_...`, or `himtm@<variant>` for a HiMTM variant run through the accuracy benchmark; HiMTM
    runs with an older defaults set get a `[v<N>]` suffix (`HIMTM_DEFAULTS`)."""
    variant = record.get("variant")
    label = record["model"] if variant in (None, "full") else f"{record['model']}@{variant}"
    return _tag_defaults(label, himtm_defaults_version(record))


def _tag_defaults(label: str, version: int | None) -> str:
    """`label`, with ` [v<N>]` appended for a HiMTM run of an older defaults set."""
    return label if version in (None, HIMTM_DEFAULTS_VERSION) else f"{label} [v{version}]"


def _defaults_legend(records: list[dict[str, Any]], marked: bool = True) -> list[str]:
    """A line saying what each HiMTM defaults set seen in `records` was (none when all are the current set).
    `marked`: the table tags older-set runs with `[vN]`; otherwise the line just names the sets its HiMTM runs used."""
    versions = sorted({v for v in map(himtm_defaults_version, records) if v is not None})
    if versions == [HIMTM_DEFAULTS_VERSION] or not versions:
        return []
    sets = "; ".join(f"v{v}: {HIMTM_DEFAULTS.get(v, 'unknown')}" for v in versions)
    if marked:
        return [f"HiMTM defaults sets (`[vN]` marks runs with an older set; unmarked = v{HIMTM_DEFAULTS_VERSION}): "
                f"{sets}.", ""]
    return [f"HiMTM defaults sets of the HiMTM runs in this table (current: v{HIMTM_DEFAULTS_VERSION}): {sets}.", ""]


def _fmt(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.4f}"


_ABLATION_COLUMNS = (
    "Pre-training skill: `1 - L_R / best trivial` of the kept pre-training at the finest hierarchy, on 256 validation "
    "windows with fixed masks (> 0: better than the visible mean, interpolation and a copy one period away; "
    "`himtm_hf.pretraining_diagnostics`; recorded since defaults v4). × from scratch: the variant's mean test MSE over "
    "`no_pretrain`'s (the same network fine-tuned from a random start, same budget and defaults set; "
    "`width_128_no_pretrain` for `width_128`); below 1 means its pre-training pays."
)


def _ablation_section(records: list[dict[str, Any]], baselines: Baselines | None = None) -> list[str]:
    baselines = baselines or {}
    lines = ["## Ablation (HiMTM, pre-train + fine-tune per variant; mean ± std over seeds)", ""]
    if not records:
        return lines + ["No ablation records yet.", ""]
    lines += [f"The last two rows of each table: {_BASELINES_LEGEND}", ""]
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["budget"], r["device"], r["dataset"], r["prediction_length"])].append(r)
    for (budget, device, dataset, horizon), rows in sorted(groups.items()):
        commands = sorted({r["command"] for r in rows})
        lines += [f"### {dataset}, H={horizon}, budget `{budget}`, {device}", "",
                  f"Commands: {'; '.join(f'`{c}`' for c in commands)}. Commits: "
                  f"{', '.join(sorted({r['git_commit'] for r in rows}))}.", "", *_defaults_legend(rows),
                  _ABLATION_COLUMNS, "", "| variant | overrides | seeds | pre-training skill | test MSE | "
                  "× from scratch | test MAE |", "|---|---|---|---|---|---|---|"]
        by_variant: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_variant[(himtm_defaults_version(r), r["variant"])].append(r)
        scratch = {key: float(np.mean([x["mse"] for x in runs])) for key, runs in by_variant.items()
                   if key[1] in NO_PRETRAIN_VARIANTS}
        known = {v: i for i, v in enumerate(ABLATION_VARIANTS)}
        # newest defaults set first, then the variants in ABLATION_VARIANTS order
        for version, variant in sorted(by_variant, key=lambda k: (-k[0], known.get(k[1], len(known)), k[1])):
            runs = by_variant[(version, variant)]
            overrides = f"`{json.dumps(runs[0].get('overrides', {}))}`"
            if variant in NO_PRETRAIN_VARIANTS:
                overrides += " (fine-tuned from a random initialisation: no pre-training)"
            if variant in HEAD_FIRST_VARIANTS:
                overrides += (f" (fine-tuned head first: {HEAD_ONLY_FRACTION:g} of the epochs with the "
                              "encoder frozen, then everything at half the learning rate)")
            if variant in PRETRAIN_METRIC_VARIANTS:
                overrides += f" (pre-training checkpoint chosen by the validation {PRETRAIN_METRIC_VARIANTS[variant]})"
            skills = [x["pretrain_diagnostics"]["skill"] for x in runs if x.get("pretrain_diagnostics")]
            reference = (version, SCRATCH_REFERENCE.get(variant, "no_pretrain"))
            ratio = (f"{np.mean([x['mse'] for x in runs]) / scratch[reference]:.3f}"
                     if reference in scratch and variant not in NO_PRETRAIN_VARIANTS else "–")
            lines.append(f"| {_tag_defaults(variant, version)} | {overrides} | {len(runs)} | "
                         f"{_mean_std(skills) if skills else '–'} | {_mean_std([x['mse'] for x in runs])} | {ratio} | "
                         f"{_mean_std([x['mae'] for x in runs])} |")
        simple = _cell_baseline(baselines, dataset, rows)
        windows = {r.get("num_test_windows") for r in rows}
        capped = False
        for key, label in BASELINE_LABELS.items():
            cell = _baseline_metric_cell(simple, key, windows)
            capped = capped or cell.endswith("†")
            how = "closed form, no training"
            if simple is not None and key == "linear_ridge":
                how += f", ridge lambda {simple[key]['ridge_lambda']:g} chosen on val"
            mse, _, mae = cell.partition(" / ")
            lines.append(f"| {label} | {how} | – | – | {mse} | – | {mae or '–'} |")
        lines.append("")
        lines += _baselines_provenance([simple], capped)
    return lines


def _transfer_section(records: list[dict[str, Any]], baselines: Baselines | None = None) -> list[str]:
    """One table per (budget, device): a row per pair, horizon, protocol, fraction and seed with HiMTM and PatchTST
    side by side, so that every compared pair of numbers comes from the same machine and budget, and the closed-form
    baselines on the target's test windows."""
    baselines = baselines or {}
    lines = ["## Transfer (pre-train on the source, fine-tune / linear-probe on the target)", ""]
    if not records:
        return lines + ["No transfer records yet.", ""]
    lines += [f"The naive and linear (ridge) columns: {_BASELINES_LEGEND} Here on the target's test windows; the "
              "linear forecaster is fitted on all of the target's train windows, whatever the row's fraction.", ""]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(str(r.get("budget")), str(r.get("device")))].append(r)
    for (budget, device), rows in sorted(groups.items()):
        cells: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
        for r in rows:
            key = (str(r.get("source_dataset")), str(r.get("target_dataset")), r.get("prediction_length"),
                   str(r.get("protocol")), float(r.get("fraction") or 0), r.get("seed"))
            cells[key][str(r.get("model"))] = r
        lines += [f"### Budget `{budget}` on {device}", "", *_defaults_legend(rows, marked=False),
                  "| source -> target | H | protocol | fraction of target train windows | HiMTM MSE | HiMTM MAE | "
                  "PatchTST MSE | PatchTST MAE | HiMTM / PatchTST (MSE) | "
                  + " | ".join(f"{label} MSE / MAE" for label in BASELINE_LABELS.values())
                  + " | commits (HiMTM / PatchTST) |",
                  "|---|---|---|---|---|---|---|---|---|---|" + "---|" * len(BASELINE_LABELS)]
        protocol_order = {"finetune": 0, "linear_probe": 1, "scratch": 2}
        used, capped = [], False
        for key in sorted(cells, key=lambda k: (k[0], k[1], k[2], protocol_order.get(k[3], 9), k[4], k[5])):
            himtm, patchtst = cells[key].get("himtm"), cells[key].get("patchtst")
            ratio = (f"{himtm['mse'] / patchtst['mse']:.3f}" if himtm and patchtst else "–")
            commits = " / ".join(str(r["git_commit"]) if r else "–" for r in (himtm, patchtst))
            runs = list(cells[key].values())
            simple = _cell_baseline(baselines, key[1], runs)
            used.append(simple)
            simple_cells = [_baseline_metric_cell(simple, k, {r.get("test_windows") for r in runs})
                            for k in BASELINE_LABELS]
            capped = capped or any(cell.endswith("†") for cell in simple_cells)
            lines.append(f"| {key[0]} -> {key[1]} | {key[2]} | {key[3]} | {key[4]:g} | "
                         f"{_fmt(himtm and himtm.get('mse'))} | {_fmt(himtm and himtm.get('mae'))} | "
                         f"{_fmt(patchtst and patchtst.get('mse'))} | {_fmt(patchtst and patchtst.get('mae'))} | "
                         f"{ratio} | " + " | ".join(simple_cells) + f" | {commits} |")
        commands = sorted({str(r.get("command")) for r in rows})
        lines += ["", "Commands: " + "; ".join(f"`{c}`" for c in commands) + ".", ""]
        lines += _baselines_provenance(used, capped)
    return lines


def _speed_section(folder: Path) -> list[str]:
    lines = ["## Speed and memory (HiMTM / PatchTST at matched width, depth and look-back)", ""]
    files = sorted(folder.glob("*.json")) if folder.exists() else []
    if not files:
        return lines + ["No speed records yet.", ""]
    for path in files:
        data = json.loads(path.read_text())
        lines += [f"### {data['device_name']} ({data['budget']}), commit {data['git_commit']}", "",
                  f"Command: `{data['command']}`; batch {data['arguments']['batch_size']}, "
                  f"{data['arguments']['num_input_channels']} channels, d_model {data['arguments']['d_model']}, "
                  f"total depth {data['arguments']['total_depth']}, median of {data['arguments']['repeats']}"
                  f"{_speed_execution(data['arguments'])}. "
                  f"HiMTM defaults set v{int(data.get('himtm_defaults', 0))}. {_memory_method(data)}", "",
                  "| kind | L | train throughput ratio | inference throughput ratio | train peak memory ratio |",
                  "|---|---|---|---|---|"]
        for r in data["summary"]["ratios"]:
            lines.append(f"| {r['kind']} | {r['context_length']} | {r['train_throughput_ratio']:.2f}x | "
                         f"{r['inference_throughput_ratio']:.2f}x | {r['train_peak_memory_ratio']:.2f}x |")
        lines += ["", "| model | L | train windows/s | inference windows/s | train peak MB |", "|---|---|---|---|---|"]
        for r in data["rows"]:
            lines.append(f"| {r['model']} | {r['context_length']} | {r['train']['windows_per_s']:.1f} | "
                         f"{r['inference']['windows_per_s']:.1f} | {r['train']['peak_memory_mb']:.1f} |")
        lines += ["", "| model | train-time growth, shortest -> longest L | growth / linear (target <= 1.5) |",
                  "|---|---|---|"]
        for model, g in data["summary"]["cost_growth"].items():
            lines.append(f"| {model} | {g['train_time_growth']:.2f}x | {g['growth_over_linear']:.2f} |")
        lines.append("")
    return lines


def _speed_execution(arguments: dict[str, Any]) -> str:
    """How the models ran, where it differs from plain float32 eager mode (older records lack the fields)."""
    parts = []
    if arguments.get("dtype", "float32") != "float32":
        parts.append(f"{arguments['dtype']} autocast")
    if arguments.get("compile", "none") != "none":
        parts.append(f"every model under `torch.compile(mode={arguments['compile']!r})`")
    return "".join(f", {p}" for p in parts)


def _memory_method(data: dict[str, Any]) -> str:
    if data["device"] == "cuda":
        return "Peak memory: `torch.cuda.max_memory_allocated`."
    if data["arguments"].get("compile", "none") != "none":
        return ("Peak memory: RSS growth of one training step / inference pass after the compiling warm-up step, "
                "measured in a child with a fixed mmap threshold.")
    if all(r.get("memory_method") for r in data["rows"]):
        return ("Peak memory: RSS growth of the first training step / one inference pass, measured in a child with a "
                "fixed mmap threshold (reproducible to ~0.1 MB).")
    return ("Peak memory: RSS growth of already-warm timed steps (the first method; mostly allocator noise, see the "
            "reading above).")


def budget_by_name(name: str, **changes: Any) -> Budget:
    if name not in BUDGETS:
        raise ValueError(f"Unknown budget {name!r}; choose one of {sorted(BUDGETS)}.")
    return replace(BUDGETS[name], **changes) if changes else BUDGETS[name]
