"""Whole runs: pre-training, fine-tuning, evaluation and the README's main job.

Each function writes one run folder (layout in `docs/training.md`):

    <output_dir>/config.json, model.safetensors, configuration_himtm.py, modeling_himtm.py   (save_pretrained)
    <output_dir>/scaler.json        train-split standardisation (SeriesScaler.save)
    <output_dir>/run_args.json      every argument + the command line
    <output_dir>/log.jsonl          one JSON object per logging event
    <output_dir>/metrics.json       fine-tuning / evaluation: test and val MSE/MAE; pre-training: diagnostics
    <output_dir>/forecast_plot.png  fine-tuning / evaluation: a few test forecasts vs truth
    <output_dir>/pretraining_diagnostics.png  pre-training: skill, feature spread and linear probe over steps
    <output_dir>/checkpoints/       complete checkpoints (step-N), with --save_steps
    <output_dir>/.himtm-run.json    the marker: what the run wrote (what --overwrite_output_dir may remove)

Every folder is claimed through `himtm_hf.output_folders` (new/empty or marked, never an input, locked while the run
writes it) before anything is written there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import Dataset, default_collate
from transformers import AutoConfig, AutoModelForTimeSeriesPrediction, PreTrainedModel

from ..configuration_himtm import HiMTMConfig
from ..data import PretrainingCorpus
from ..modeling_himtm import HiMTMForPrediction, HiMTMForPretraining
from ..output_folders import claim_output_dir
from ..pretraining_diagnostics import PretrainingDiagnostics, plot_pretraining_diagnostics, seasonal_period
from .arguments import (
    SHARED_WITH_DATA,
    DataArguments,
    FinetuneArguments,
    MainJobArguments,
    ModelArguments,
    PretrainArguments,
)
from .loop import (
    DIAGNOSTICS_PLOT_FILE,
    LOG_FILE,
    METRICS_FILE,
    PLOT_FILE,
    RUN_ARGS_FILE,
    JsonlLogger,
    _jsonable,
    claim_run_dir,
    find_checkpoint,
    iterate_forecasts,
    make_accelerator,
    train_head_then_model,
    train_model,
    write_run_args,
)

__all__ = [
    "EVALUATE_LAYOUT",
    "MAIN_JOB_LAYOUT",
    "build_config",
    "data_inputs",
    "default_evaluation_dir",
    "evaluate_model",
    "finetune",
    "forecast_metrics",
    "format_metrics_table",
    "load_prediction_model",
    "plot_forecasts",
    "pretrain",
    "run_main_job",
]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------------
# Inputs of a run (an output folder may not be, contain or lie inside one of them)
# ----------------------------------------------------------------------------------------------------------------------


def data_inputs(data_args: Any) -> list[tuple[str, Any]]:
    """The local data a run reads, as `(role, path)`: for every dataset it names (several for multi-domain
    pre-training), the data file or dataset folder if it is a path, else the folder the benchmark files come from (`data_dir`,
    `$HIMTM_DATA_DIR` or the default), once."""
    from ..data import default_data_dir, split_dataset_list

    inputs: list[tuple[str, Any]] = []
    for entry in split_dataset_list(str(data_args.dataset)):  # left-out entries too: stricter, never looser
        dataset = Path(entry).expanduser()
        pair = ((("dataset folder" if dataset.is_dir() else "data file"), dataset) if dataset.exists() else
                ("data folder", data_args.data_dir if data_args.data_dir is not None else default_data_dir()))
        if pair not in inputs:
            inputs.append(pair)
    return inputs


# ----------------------------------------------------------------------------------------------------------------------
# Models from arguments
# ----------------------------------------------------------------------------------------------------------------------


def _checked_overrides(model_args: ModelArguments, data_args: DataArguments, num_channels: int) -> dict[str, Any]:
    kwargs = model_args.to_config_kwargs()
    for name in SHARED_WITH_DATA:
        given = kwargs.pop(name, None)
        wanted = int(getattr(data_args, name))
        if given is not None and int(given) != wanted:
            raise ValueError(
                f"ModelArguments.{name}={given} differs from DataArguments.{name}={wanted}; the model and the windows "
                f"must agree (on the command line --{name} sets both)."
            )
    channels = kwargs.pop("num_input_channels", None)
    if channels is not None and int(channels) != num_channels:
        raise ValueError(
            f"--num_input_channels {channels} but the data has {num_channels} columns; leave it out (it defaults to "
            "the data's column count) or choose the columns with --target_columns."
        )
    if "patch_length" in kwargs and "patch_stride" not in kwargs:
        kwargs["patch_stride"] = kwargs["patch_length"]  # HiMTM needs non-overlapping patches
    return kwargs


def build_config(model_args: ModelArguments, data_args: DataArguments, num_channels: int) -> HiMTMConfig:
    """`HiMTMConfig` from the given model fields, with L/H from the data arguments and the data's channel count."""
    kwargs = _checked_overrides(model_args, data_args, num_channels)
    return HiMTMConfig(
        context_length=int(data_args.context_length),
        prediction_length=int(data_args.prediction_length),
        num_input_channels=int(num_channels),
        **kwargs,
    )


def load_prediction_model(
    pretrained_model_path: str | os.PathLike[str],
    model_args: ModelArguments,
    data_args: DataArguments,
    num_channels: int,
    linear_probe: bool = False,
) -> HiMTMForPrediction:
    """`HiMTMForPrediction` with the pre-trained encoder of `pretrained_model_path` and a freshly initialised head.

    The horizon and channel count come from the data; fields given in `model_args` override the checkpoint's (only
    those that do not change weight shapes make sense, e.g. dropout or head options).
    """
    kwargs = _checked_overrides(model_args, data_args, num_channels)
    pretrained = AutoConfig.from_pretrained(str(pretrained_model_path))
    if getattr(pretrained, "model_type", None) != "himtm":
        raise ValueError(f"{pretrained_model_path} holds a {pretrained.model_type!r} model, not HiMTM.")
    if int(pretrained.context_length) != int(data_args.context_length):
        raise ValueError(
            f"The model in {pretrained_model_path} was pre-trained with context_length={pretrained.context_length} but "
            f"--context_length is {data_args.context_length}; use --context_length {pretrained.context_length}."
        )
    freeze = bool(linear_probe or kwargs.pop("freeze_encoder", False))
    return HiMTMForPrediction.from_pretrained(
        str(pretrained_model_path),
        prediction_length=int(data_args.prediction_length),
        num_input_channels=int(num_channels),
        freeze_encoder=freeze,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Metrics and plots
# ----------------------------------------------------------------------------------------------------------------------


def forecast_metrics(
    model: PreTrainedModel,
    dataset: Dataset,
    scaler: Any | None = None,
    batch_size: int = 128,
    accelerator: Accelerator | None = None,
    max_windows: int | None = None,
    num_workers: int = 0,
    desc: str = "test",
    disable_tqdm: bool = False,
) -> dict[str, Any]:
    """MSE/MAE over every window of `dataset` (or an evenly strided `max_windows` subset), computed batch by batch
    with `himtm_hf.evaluation.compute_forecast_metrics` and combined exactly (weighted by observed values).

    Returns `{"mse", "mae", "mse_original_units", "mae_original_units", "num_windows", "num_values"}`; the first
    two in the dataset's standardised units, the original-unit ones through `scaler.inverse_transform` (omitted
    without a scaler), or for panel windows (`himtm_hf.panel`) through each window's own series statistics.
    """
    from ..evaluation import compute_forecast_metrics

    sums = {"mse": 0.0, "mae": 0.0, "mse_original_units": 0.0, "mae_original_units": 0.0}
    in_original_units = scaler is not None
    values = 0.0
    windows = 0
    for item in iterate_forecasts(model, dataset, batch_size, accelerator, num_workers, max_windows, desc=desc,
                                  disable_tqdm=disable_tqdm):
        prediction = item["predictions"].numpy().astype(np.float64)
        target = item["targets"].numpy().astype(np.float64)
        mask = item["observed_mask"].numpy() > 0.5
        windows += prediction.shape[0]
        count = float(mask.sum())
        if count == 0:
            continue
        standard = compute_forecast_metrics(prediction, target, mask)
        sums["mse"] += standard["mse"] * count
        sums["mae"] += standard["mae"] * count
        if scaler is not None or "series_mean" in item:
            original = compute_forecast_metrics(_original_units(prediction, item, scaler),
                                                _original_units(target, item, scaler), mask)
            sums["mse_original_units"] += original["mse"] * count
            sums["mae_original_units"] += original["mae"] * count
            in_original_units = True
        values += count
    result: dict[str, Any] = {k: (v / values if values else float("nan")) for k, v in sums.items()}
    if not in_original_units:
        result.pop("mse_original_units")
        result.pop("mae_original_units")
    result["num_windows"] = int(windows)
    result["num_values"] = int(values)
    return result


def _original_units(array: np.ndarray, item: dict[str, Any], scaler: Any | None) -> np.ndarray:
    """`array` `(batch, steps, C)` in original units: through the windows' own series statistics when the item has
    them (panel windows), else through `scaler`."""
    if "series_mean" in item:
        mean, std = (np.asarray(item[key], dtype=np.float64) for key in ("series_mean", "series_std"))
        return array * std + mean  # (batch, 1, C) broadcast over the steps
    return np.asarray(scaler.inverse_transform(array), dtype=np.float64)


@torch.no_grad()
def plot_forecasts(
    model: PreTrainedModel,
    dataset: Dataset,
    path: str | os.PathLike[str],
    scaler: Any | None = None,
    columns: list[str] | None = None,
    num_windows: int = 3,
    num_channels: int = 3,
    title: str | None = None,
) -> Path | None:
    """Plots `num_windows` evenly spaced windows of `dataset` (history tail, truth, forecast) for up to `num_channels`
    channels (spread over the columns, the last one included: the usual target such as ETT's OT), in original units
    when a scaler is given. Uses the Agg canvas (no display needed). Returns the path, or None if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(dataset)
    if n == 0 or num_windows <= 0 or num_channels <= 0:
        return None
    indices = sorted({int(i) for i in np.linspace(0, n - 1, num=min(num_windows, n)).round()})
    batch = default_collate([dataset[i] for i in indices])
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    inputs = {"past_values": batch["past_values"].to(device)}
    if "past_observed_mask" in batch:
        inputs["past_observed_mask"] = batch["past_observed_mask"].to(device)
    prediction = model(**inputs).prediction_outputs.float().cpu().numpy()
    model.train(was_training)
    past = batch["past_values"].numpy().astype(np.float64)
    future = batch["future_values"].numpy().astype(np.float64)
    prediction = prediction.astype(np.float64)
    if scaler is not None or "series_mean" in batch:
        past, future, prediction = (_original_units(a, batch, scaler) for a in (past, future, prediction))
    total_channels = past.shape[-1]
    channels = sorted({int(c) for c in np.linspace(0, total_channels - 1, num=min(num_channels, total_channels)).round()})
    horizon = future.shape[1]
    shown_history = min(past.shape[1], max(2 * horizon, 96))

    figure = Figure(figsize=(4.2 * len(indices), 2.6 * len(channels)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(channels), len(indices), squeeze=False)
    history_x = np.arange(-shown_history, 0)
    future_x = np.arange(horizon)
    for row, channel in enumerate(channels):
        name = columns[channel] if columns is not None and channel < len(columns) else f"channel {channel}"
        for col, window in enumerate(indices):
            ax = axes[row][col]
            ax.plot(history_x, past[col, -shown_history:, channel], color="0.45", lw=1.0, label="history")
            ax.plot(future_x, future[col, :, channel], color="tab:blue", lw=1.2, label="truth")
            ax.plot(future_x, prediction[col, :, channel], color="tab:red", lw=1.2, label="forecast")
            ax.axvline(0, color="0.7", lw=0.8, ls="--")
            ax.set_title(f"{name} | test window {window}", fontsize=9)
            ax.tick_params(labelsize=7)
    axes[0][0].legend(fontsize=7, loc="upper left")
    if title:
        figure.suptitle(title, fontsize=10)
    path = Path(path)
    figure.savefig(path, dpi=90)
    return path


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------------------
# Pre-training
# ----------------------------------------------------------------------------------------------------------------------


def pretrain(model_args: ModelArguments, data_args: DataArguments, train_args: PretrainArguments) -> Path:
    """Pre-trains `HiMTMForPretraining` on the train split of `data_args` (validation on the val split) and saves it.

    The windows are look-back only (`context_length` rows; pre-training reads no future). A `dataset` naming several
    datasets (comma-separated) is a channel-independent corpus (`DataArguments.load_pretraining`): the model gets
    `num_input_channels=1` and the folder a `corpus.json` instead of `scaler.json`.

    Args:
        model_args: a `ModelArguments` (any HiMTMConfig field; not given = config default).
        data_args: dataset, window lengths and split options.
        train_args: a `PretrainArguments` (any `TrainArguments` works).

    Returns:
        The output folder: `config.json`, `model.safetensors`, the two code files, `scaler.json` (one dataset) or
        `corpus.json` (several), `run_args.json`, `log.jsonl`, `metrics.json` and `pretraining_diagnostics.png`
        (`himtm_hf.pretraining_diagnostics`, at every validation unless `--diagnostics_windows 0`), and
        `checkpoints/` with `--save_steps`.
    """
    accelerator = make_accelerator(train_args)
    # Look-back-only windows: a SplitData (one dataset) or a PretrainingCorpus (several, univariate windows). Bad
    # dataset arguments fail here, before the output folder is touched.
    splits = data_args.load_pretraining()
    with claim_run_dir(train_args.output_dir, train_args.overwrite_output_dir, bool(train_args.resume_from_checkpoint),
                       accelerator, inputs=data_inputs(data_args)) as output_dir:
        if train_args.resume_from_checkpoint:  # a missing or incomplete checkpoint fails before anything is written
            find_checkpoint(output_dir, train_args.resume_from_checkpoint)
        set_seed(train_args.seed)
        config = build_config(model_args, data_args, splits.num_channels)
        model = HiMTMForPretraining(config)
        write_run_args(output_dir, accelerator, model_args=model_args, data_args=data_args, train_args=train_args,
                       config=config.to_dict(), script="pretrain")
        diagnostics = _pretraining_diagnostics(train_args, data_args, splits)
        result = train_model(model, splits.train, splits.val, train_args, accelerator, is_pretraining=True,
                             prepare_output=False, eval_callback=diagnostics)
        if accelerator.is_main_process:
            result.model.save_pretrained(output_dir)
            if isinstance(splits, PretrainingCorpus):
                splits.save(output_dir)  # corpus.json: every dataset's windows and its own scaler
            else:
                splits.scaler.save(output_dir)
            summary = _write_pretraining_metrics(output_dir, result, train_args, data_args, splits, diagnostics)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        logger.info("Pre-training done: %d steps, best val %s %s (step %s) -> %s", result.global_step,
                    train_args.metric_for_best_model, result.best_val_loss, result.best_step, output_dir)
        print(summary, flush=True)
    return output_dir


def _probe_windows(splits: Any, prediction_length: int) -> tuple[Dataset, Dataset] | None:
    """Forecasting windows (`prediction_length` ahead) over the rows of the pre-training train and val splits, for
    the diagnostics' linear probe. Pre-training windows are look-back only, so they are re-cut from the splits'
    stored rows; `None` (probe skipped) when the splits do not hold rows (a multi-dataset corpus) or are too short."""
    from ..data import ForecastWindowDataset

    probe = []
    for name in ("train", "val"):
        split = getattr(splits, name, None)
        values, observed = getattr(split, "values", None), getattr(split, "observed_mask", None)
        if not isinstance(values, torch.Tensor) or not isinstance(observed, torch.Tensor) or prediction_length < 1:
            return None
        windows = ForecastWindowDataset(values, int(split.context_length), int(prediction_length),
                                        observed_mask=observed, start=int(split.start), name=f"probe {name}")
        if len(windows) == 0:
            return None
        probe.append(windows)
    return probe[0], probe[1]


def _pretraining_diagnostics(train_args: Any, data_args: DataArguments, splits: Any) -> PretrainingDiagnostics | None:
    """The diagnostics run at every validation (`--diagnostics_windows`, 0: none) on the pre-training val windows:
    masks seeded by the run's seed, the period from `--diagnostics_period` or the timestamps, the linear probe on
    `--prediction_length` forecasting windows when the data allows."""
    windows = int(getattr(train_args, "diagnostics_windows", 0) or 0)
    val = getattr(splits, "val", None)
    if windows <= 0 or val is None or len(val) == 0:
        return None
    period = getattr(train_args, "diagnostics_period", None)
    period = seasonal_period(getattr(splits, "timestamps", None)) if period is None else (int(period) or None)
    return PretrainingDiagnostics(val, num_windows=windows, seed=int(train_args.seed), period=period,
                                  batch_size=int(train_args.per_device_eval_batch_size),
                                  probe=_probe_windows(splits, int(data_args.prediction_length)))


def _write_pretraining_metrics(
    output_dir: Path, result: Any, train_args: Any, data_args: DataArguments, splits: Any,
    diagnostics: PretrainingDiagnostics | None,
) -> str:
    """Writes the pre-training's `metrics.json` (diagnostics of the kept weights, every validation record of
    `log.jsonl`, best step and loss) and `pretraining_diagnostics.png`; returns a one-line summary."""
    history = [r for r in _read_log(output_dir) if r.get("split") == "val"]  # the whole run, also when resumed
    final = diagnostics.diagnose(result.model) if diagnostics is not None else None
    seconds = diagnostics.seconds if diagnostics is not None else []
    probe = diagnostics is not None and diagnostics.kwargs["probe"] is not None
    name = getattr(splits, "name", None) or ",".join(getattr(splits, "names", [])) or str(data_args.dataset)
    metrics = {
        "kind": "pretraining",
        "dataset": name,
        "context_length": int(data_args.context_length),
        "probe_prediction_length": int(data_args.prediction_length) if probe else None,
        "steps": result.global_step, "epochs": result.epochs, "stopped_early": result.stopped_early,
        "best_step": result.best_step, "best_val_loss": result.best_val_loss,
        "metric_for_best_model": train_args.metric_for_best_model,
        "diagnostics": final,
        "diagnostics_seconds_per_evaluation": float(np.mean(seconds)) if seconds else None,
        "history": history,
    }
    _write_json(output_dir / METRICS_FILE, metrics)
    plot_pretraining_diagnostics(history, output_dir / DIAGNOSTICS_PLOT_FILE,
                                 title=f"{name} pre-training diagnostics (L={data_args.context_length})")
    return _diagnostics_summary(final, result.best_step, metrics["diagnostics_seconds_per_evaluation"])


def _read_log(output_dir: Path) -> list[dict[str, Any]]:
    path = output_dir / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _diagnostics_summary(final: dict[str, Any] | None, best_step: int | None, seconds: float | None) -> str:
    """One line for the end of a pre-training: finest skill, best trivial predictor, linear probe."""
    if final is None:
        return "Pre-training diagnostics: none (no validation windows, or --diagnostics_windows 0)."
    text = (f"Pre-training diagnostics (weights of step {best_step}): finest skill {final['skill']:.3f} "
            f"(L_R {final['hierarchy'][0]['reconstruction']:.4f} vs best trivial {final['best_trivial_predictor']} "
            f"{final['best_trivial']:.4f})")
    if final.get("linear_probe_mse") is not None:
        text += (f"; linear probe MSE {final['linear_probe_mse']:.4f} (look-back ridge "
                 f"{final['linear_probe_lookback_mse']:.4f}, instance mean {final['linear_probe_mean_mse']:.4f})")
    return text + (f"; {seconds:.2f} s per evaluation" if seconds is not None else "")


# ----------------------------------------------------------------------------------------------------------------------
# Fine-tuning
# ----------------------------------------------------------------------------------------------------------------------


def finetune(model_args: ModelArguments, data_args: DataArguments, train_args: FinetuneArguments) -> dict[str, Any]:
    """Fine-tunes (or trains from scratch) `HiMTMForPrediction`, evaluates the best weights and saves everything.

    `train_args.pretrained_model_path` = a pre-training folder (encoder transferred, head initialised) or None (from
    scratch); `train_args.linear_probe` freezes the encoder; `train_args.head_only_epochs` (or `head_only_steps`) trains
    the head alone first ([`train_head_then_model`]). The test metrics use every test window unless
    `train_args.max_test_windows` is given.

    Returns:
        The `metrics.json` content: `{"dataset", "prediction_length", "context_length", "test": {"mse", "mae",
        "mse_original_units", "mae_original_units", "num_windows", ...}, "val": {...}, "best_val_loss", "epochs",
        "steps", "wall_time_s", ...}`.
    """
    start = time.time()
    accelerator = make_accelerator(train_args)
    splits = data_args.load()  # bad dataset arguments fail before the output folder is touched
    inputs = [*data_inputs(data_args), ("pre-training", train_args.pretrained_model_path)]
    with claim_run_dir(train_args.output_dir, train_args.overwrite_output_dir, bool(train_args.resume_from_checkpoint),
                       accelerator, inputs=inputs) as output_dir:
        return _finetune_into(output_dir, model_args, data_args, train_args, splits, accelerator, start)


def _finetune_into(output_dir: Path, model_args: ModelArguments, data_args: DataArguments,
                   train_args: FinetuneArguments, splits: Any, accelerator: Accelerator, start: float) -> dict[str, Any]:
    """The body of [`finetune`], in its prepared (and held) run folder."""
    if train_args.resume_from_checkpoint:  # a missing or incomplete checkpoint fails before anything is written
        find_checkpoint(output_dir, train_args.resume_from_checkpoint)
    set_seed(train_args.seed)
    channels = len(splits.columns)
    if train_args.pretrained_model_path:
        model = load_prediction_model(train_args.pretrained_model_path, model_args, data_args, channels,
                                      train_args.linear_probe)
    else:
        config = build_config(model_args, data_args, channels)
        if train_args.linear_probe:
            config.freeze_encoder = True
        model = HiMTMForPrediction(config)
    write_run_args(output_dir, accelerator, model_args=model_args, data_args=data_args, train_args=train_args,
                   config=model.config.to_dict(), script="finetune")
    if train_args.trains_head_first:
        result = train_head_then_model(model, splits.train, splits.val, train_args, train_args.head_only_epochs,
                                       accelerator, prepare_output=False, head_only_steps=train_args.head_only_steps)
    else:
        result = train_model(model, splits.train, splits.val, train_args, accelerator, is_pretraining=False,
                             prepare_output=False)
    model = result.model
    eval_batch = train_args.per_device_eval_batch_size
    test = forecast_metrics(model, splits.test, splits.scaler, eval_batch, accelerator, train_args.max_test_windows,
                            train_args.num_workers, desc="test", disable_tqdm=train_args.disable_tqdm)
    val = forecast_metrics(model, splits.val, splits.scaler, eval_batch, accelerator, train_args.max_eval_windows,
                           train_args.num_workers, desc="val", disable_tqdm=train_args.disable_tqdm)
    test["full_test_split"] = train_args.max_test_windows is None or test["num_windows"] == len(splits.test)
    metrics = {
        "dataset": splits.name,
        "prediction_length": int(data_args.prediction_length),
        "context_length": int(data_args.context_length),
        "num_channels": channels,
        "test": test,
        "val": val,
        "best_val_loss": result.best_val_loss,
        "best_step": result.best_step,
        "epochs": result.epochs,
        "steps": result.global_step,
        "stopped_early": result.stopped_early,
        "wall_time_s": round(time.time() - start, 2),
        "train_wall_time_s": round(result.wall_time_s, 2),
        "num_processes": accelerator.num_processes,
        "pretrained_model_path": str(train_args.pretrained_model_path) if train_args.pretrained_model_path else None,
        "linear_probe": bool(train_args.linear_probe),
        "head_only_epochs": float(train_args.head_only_epochs),
        "head_only_steps": int(train_args.head_only_steps),
    }
    if accelerator.is_main_process:
        model.save_pretrained(output_dir)
        splits.scaler.save(output_dir)
        _write_json(output_dir / METRICS_FILE, metrics)
        plot_forecasts(model, splits.test, output_dir / PLOT_FILE, splits.scaler, splits.columns,
                       train_args.plot_windows, train_args.plot_channels,
                       title=f"{splits.name} H={data_args.prediction_length}: test MSE {test['mse']:.3f}, "
                             f"MAE {test['mae']:.3f}")
        JsonlLogger(output_dir).log(step=result.global_step, epoch=result.epochs, split="test", loss=test["mse"],
                                    mse=test["mse"], mae=test["mae"], num_windows=test["num_windows"])
    accelerator.wait_for_everyone()
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Evaluation of a saved model
# ----------------------------------------------------------------------------------------------------------------------


EVALUATE_LAYOUT = (METRICS_FILE, PLOT_FILE, RUN_ARGS_FILE)
"""What an evaluation writes into its folder (and what its `--overwrite_output_dir` removes)."""


def default_evaluation_dir(model_dir: str | os.PathLike[str], dataset: str) -> Path:
    """`<model_dir>-eval-<dataset>`, next to the model folder: never inside it (an output never lies in an input)."""
    base = Path(model_dir)
    base = base if base.name else base.resolve()
    return base.with_name(f"{base.name}-eval-{Path(str(dataset)).name}")


def _checked_forecaster_config(model_dir: Path, prediction_length: int | None, context_length: int | None) -> Any:
    config = AutoConfig.from_pretrained(str(model_dir))
    architectures = list(getattr(config, "architectures", None) or [])
    if architectures and not any("Prediction" in a or "Forecast" in a for a in architectures):
        raise ValueError(
            f"{model_dir} holds {architectures}, not a forecaster; fine-tune it first (scripts/finetune.py "
            f"--pretrained_model_path {model_dir})."
        )
    horizon = int(config.prediction_length)
    if prediction_length is not None and int(prediction_length) != horizon:
        raise ValueError(
            f"The model in {model_dir} forecasts prediction_length={horizon}, not {prediction_length}; fine-tune a "
            f"model for H={prediction_length} or leave --prediction_length out."
        )
    if context_length is not None and int(context_length) != int(config.context_length):
        raise ValueError(
            f"The model in {model_dir} reads context_length={config.context_length}, not {context_length}: an "
            f"evaluation uses the model's own look-back. Leave --context_length out (or pass {config.context_length})."
        )
    return config


def evaluate_model(
    model_dir: str | os.PathLike[str],
    dataset: str = "ETTh1",
    *,
    data_dir: str | None = None,
    prediction_length: int | None = None,
    context_length: int | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    overwrite_output_dir: bool = False,
    per_device_eval_batch_size: int = 128,
    max_test_windows: int | None = None,
    max_eval_windows: int | None = None,
    timestamp_column: str | None = None,
    target_columns: str | None = None,
    split_fractions: str | None = None,
    split_dates: str | None = None,
    sort_timestamps: bool = False,
    dataset_config: str | None = None,
    id_column: str | None = None,
    freq: str | None = None,
    short_series: str = "skip",
    mixed_precision: str = "auto",
    use_cpu: bool = False,
    num_workers: int = 0,
    seed: int = 42,
    plot_windows: int = 3,
    plot_channels: int = 3,
    write: bool = True,
    disable_tqdm: bool = False,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """Evaluates a saved forecaster (`HiMTMForPrediction`, or any `AutoModelForTimeSeriesPrediction` folder such as
    PatchTST) on the test split (every window unless `max_test_windows`) and the val split of `dataset`, with the
    model's own context and prediction length (`prediction_length` / `context_length`, if given, must match them).

    Writes `metrics.json`, `forecast_plot.png` and `run_args.json` to `output_dir` (default
    `<model_dir>-eval-<dataset>`, see `himtm_hf.output_folders` for the rules: never the model or data folder, a
    non-empty folder only if an earlier evaluation wrote it and `overwrite_output_dir`) when `write`. Returns the
    metrics (same schema as fine-tuning's `metrics.json`).
    """
    from ..data import load_splits

    start = time.time()
    model_dir = Path(model_dir)
    config = _checked_forecaster_config(model_dir, prediction_length, context_length)
    horizon = int(config.prediction_length)
    accelerator = accelerator or make_accelerator(SimpleNamespace(mixed_precision=mixed_precision, use_cpu=use_cpu))
    data_args = DataArguments(dataset=dataset, data_dir=data_dir, context_length=int(config.context_length),
                              prediction_length=horizon, timestamp_column=timestamp_column,
                              target_columns=target_columns, split_fractions=split_fractions, split_dates=split_dates,
                              sort_timestamps=sort_timestamps, dataset_config=dataset_config, id_column=id_column,
                              freq=freq, short_series=short_series)
    splits = load_splits(**data_args.load_kwargs())
    with contextlib.ExitStack() as held:
        if write:
            output_dir = Path(output_dir) if output_dir is not None else default_evaluation_dir(model_dir, dataset)
            held.enter_context(claim_output_dir(
                output_dir, kind="evaluate", written=EVALUATE_LAYOUT, overwrite=overwrite_output_dir,
                inputs=[("model", model_dir), *data_inputs(data_args)], accelerator=accelerator,
            ))
        set_seed(seed)
        model = AutoModelForTimeSeriesPrediction.from_pretrained(str(model_dir))
        channels = len(splits.columns)
        if getattr(model.config, "num_input_channels", channels) != channels:
            raise ValueError(
                f"The model expects {model.config.num_input_channels} channels but {dataset} has {channels}; choose "
                "the columns with target_columns=... (a HiMTM model can also be reloaded with num_input_channels=...)."
            )
        test = forecast_metrics(model, splits.test, splits.scaler, per_device_eval_batch_size, accelerator,
                                max_test_windows, num_workers, desc="test", disable_tqdm=disable_tqdm)
        val = forecast_metrics(model, splits.val, splits.scaler, per_device_eval_batch_size, accelerator,
                               max_eval_windows, num_workers, desc="val", disable_tqdm=disable_tqdm)
        test["full_test_split"] = max_test_windows is None or test["num_windows"] == len(splits.test)
        metrics = {
            "dataset": splits.name,
            "prediction_length": horizon,
            "context_length": int(config.context_length),
            "num_channels": channels,
            "test": test,
            "val": val,
            "best_val_loss": None,
            "epochs": None,
            "steps": None,
            "wall_time_s": round(time.time() - start, 2),
            "model_dir": str(model_dir),
            "num_processes": accelerator.num_processes,
        }
        metrics.update(_scaler_check(model_dir, splits.scaler))
        if write and accelerator.is_main_process:
            output_dir = Path(output_dir)
            _write_json(output_dir / METRICS_FILE, metrics)
            write_run_args(output_dir, accelerator, evaluate_args=dict(
                model_dir=str(model_dir), dataset=dataset, data_dir=data_dir, prediction_length=prediction_length,
                per_device_eval_batch_size=per_device_eval_batch_size, max_test_windows=max_test_windows,
                max_eval_windows=max_eval_windows, seed=seed), script="evaluate")
            plot_forecasts(model.to(accelerator.device), splits.test, output_dir / PLOT_FILE, splits.scaler,
                           splits.columns, plot_windows, plot_channels,
                           title=f"{splits.name} H={horizon}: test MSE {test['mse']:.3f}, MAE {test['mae']:.3f}")
        accelerator.wait_for_everyone()
    return metrics


def _scaler_check(model_dir: Path, scaler: Any) -> dict[str, bool]:
    """`{"scaler_matches_model_dir": ...}` if the model folder has a `scaler.json` (else nothing)."""
    if not (model_dir / "scaler.json").is_file():
        return {}
    from ..panel import load_scaler

    saved = load_scaler(model_dir)
    return {"scaler_matches_model_dir": bool(
        saved.mean is not None and saved.mean.shape == scaler.mean.shape
        and np.allclose(saved.mean, scaler.mean) and np.allclose(saved.std, scaler.std)
    )}


def format_metrics_table(rows: list[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table of `(label, metrics)` rows (metrics as in `metrics.json`'s test/val entries)."""
    lines = [
        "| run | windows | MSE | MAE | MSE (original units) | MAE (original units) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, m in rows:
        lines.append(
            f"| {label} | {m.get('num_windows', '')} | {m['mse']:.4f} | {m['mae']:.4f} | "
            f"{m.get('mse_original_units', float('nan')):.4f} | {m.get('mae_original_units', float('nan')):.4f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# The main job
# ----------------------------------------------------------------------------------------------------------------------


MAIN_JOB_LAYOUT = ("pretrain", "finetune", "evaluate", METRICS_FILE, PLOT_FILE, "summary.md")
"""What the main job writes into its folder (and what its `--overwrite_output_dir` removes)."""


def run_main_job(args: MainJobArguments) -> dict[str, Any]:
    """Pre-train -> fine-tune -> evaluate on one dataset with a small HiMTM, print the test MSE/MAE table.

    Writes `<output_dir>/pretrain/`, `<output_dir>/finetune/` (the forecasting checkpoint), `<output_dir>/evaluate/`
    (re-evaluation of the saved checkpoint), and at the top `metrics.json`, `forecast_plot.png` and `summary.md`.
    """
    start = time.time()
    accelerator = make_accelerator(args)
    data_args = DataArguments(dataset=args.dataset, data_dir=args.data_dir, context_length=args.context_length,
                              prediction_length=args.prediction_length)
    with claim_output_dir(args.output_dir, kind="main_job", written=MAIN_JOB_LAYOUT, overwrite=args.overwrite_output_dir,
                          inputs=data_inputs(data_args), accelerator=accelerator) as root:
        return _main_job_in(root, args, data_args, accelerator, start)


def _main_job_in(root: Path, args: MainJobArguments, data_args: DataArguments, accelerator: Accelerator,
                 start: float) -> dict[str, Any]:
    """The body of [`run_main_job`], in its prepared (and held) folder."""
    heads = int(args.num_attention_heads)
    model_args = ModelArguments(
        patch_length=args.patch_length, num_hierarchies=args.num_hierarchies, d_model=args.d_model,
        num_layers=args.num_layers, num_attention_heads=heads, ffn_dim=args.ffn_dim, dropout=args.dropout,
        mask_ratio=args.mask_ratio, decoder_num_attention_heads=heads, csa_num_attention_heads=heads,
    )
    common = dict(
        overwrite_output_dir=args.overwrite_output_dir, per_device_train_batch_size=args.batch_size,
        eval_every_steps=args.eval_every_steps, early_stopping_patience=args.early_stopping_patience,
        max_train_windows=args.max_train_windows, max_eval_windows=args.max_eval_windows, seed=args.seed,
        mixed_precision=args.mixed_precision, use_cpu=args.use_cpu, logging_steps=10, disable_tqdm=args.disable_tqdm,
        warmup_ratio=0.1,
    )
    pretrain_args = PretrainArguments(output_dir=str(root / "pretrain"), learning_rate=args.pretrain_learning_rate,
                                      max_steps=args.pretrain_steps, **common)
    pretrain_dir = pretrain(model_args, data_args, pretrain_args)
    finetune_args = FinetuneArguments(output_dir=str(root / "finetune"), learning_rate=args.finetune_learning_rate,
                                      max_steps=args.finetune_steps, pretrained_model_path=str(pretrain_dir),
                                      linear_probe=args.linear_probe, **common)
    finetune_metrics = finetune(ModelArguments(dropout=args.dropout), data_args, finetune_args)
    evaluation = evaluate_model(root / "finetune", args.dataset, data_dir=args.data_dir,
                                output_dir=root / "evaluate", overwrite_output_dir=args.overwrite_output_dir,
                                max_eval_windows=args.max_eval_windows, mixed_precision=args.mixed_precision,
                                use_cpu=args.use_cpu, disable_tqdm=args.disable_tqdm, accelerator=accelerator)
    table = format_metrics_table([
        (f"{finetune_metrics['dataset']} H={args.prediction_length} val", finetune_metrics["val"]),
        (f"{finetune_metrics['dataset']} H={args.prediction_length} test", evaluation["test"]),
    ])
    summary = {
        "dataset": finetune_metrics["dataset"],
        "prediction_length": int(args.prediction_length),
        "context_length": int(args.context_length),
        "test": evaluation["test"],
        "val": finetune_metrics["val"],
        "best_val_loss": finetune_metrics["best_val_loss"],
        "epochs": finetune_metrics["epochs"],
        "steps": finetune_metrics["steps"],
        "pretrain_dir": str(pretrain_dir),
        "finetune_dir": str(root / "finetune"),
        "finetune_test_matches_evaluate": bool(
            np.isclose(finetune_metrics["test"]["mse"], evaluation["test"]["mse"], rtol=1e-5)
        ),
        "wall_time_s": round(time.time() - start, 2),
        "main_job_args": asdict(args),
    }
    if accelerator.is_main_process:
        _write_json(root / METRICS_FILE, summary)
        plot = root / "finetune" / PLOT_FILE
        if plot.is_file():
            shutil.copyfile(plot, root / PLOT_FILE)
        text = (
            f"# HiMTM main job: {summary['dataset']}, L={args.context_length}, H={args.prediction_length}\n\n"
            f"Standardised test split, every window ({evaluation['test']['num_windows']}); "
            f"wall time {summary['wall_time_s']:.0f} s on {accelerator.num_processes} process(es).\n\n{table}\n"
        )
        (root / "summary.md").write_text(text, encoding="utf-8")
        print("\n" + text, flush=True)
        # Where the run's artefacts are, so that a user need not look them up in the README.
        plot_note = f", plot {root / PLOT_FILE}" if (root / PLOT_FILE).is_file() else ""
        print(f"Saved: checkpoint {summary['finetune_dir']} (HiMTMForPrediction.from_pretrained), metrics "
              f"{root / METRICS_FILE}{plot_note}, summary {root / 'summary.md'}.", flush=True)
    accelerator.wait_for_everyone()
    return summary
