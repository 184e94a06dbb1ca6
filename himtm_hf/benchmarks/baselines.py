"""Closed-form reference forecasts, scored exactly like the networks: where do the trained models stand?

Two baselines, both channel-independent and deterministic (no seed, no training loop):

- :func:`naive_last_value`: every channel's last observed look-back value, repeated over the horizon.
- :func:`linear_ridge`: an NLinear-style linear forecaster (Zeng et al. 2023, "Are Transformers Effective for Time
  Series Forecasting?"): each window's last look-back value is subtracted, one linear map from the L look-back steps
  to the H future steps (plus a bias) is shared by all channels, and the last value is added back. The map is fitted
  in closed form (ridge regression, float64 normal equations accumulated in chunks: ``X^T X`` is only
  ``(L + 1) x (L + 1)``) on the train windows; its ridge strength is chosen from :data:`RIDGE_LAMBDAS` by the MSE on
  the val windows; it is scored on the test windows.

Both forecasters are small ``torch.nn.Module`` s with the networks' forward interface (``past_values``,
``past_observed_mask`` -> ``.prediction_outputs``), and both are scored by
:func:`himtm_hf.training.forecast_metrics`, the function that scores the fine-tuned networks: every test window
(stride 1), observed targets only, standardised units (train-split statistics). So their numbers sit beside a
model's test metrics with the same schema (``mse``, ``mae``, ``mse_original_units``, ``mae_original_units``,
``num_windows``, ``num_values``, ``full_test_split``).

Also here: their records, one per (dataset, look-back, horizon) under ``docs/results/baselines/``
(:func:`ensure_baselines`, :func:`run_baselines`, :func:`load_baselines`), which the tables of ``docs/results.md``
show beside the networks.

    from himtm_hf.data import load_splits
    from himtm_hf.benchmarks.baselines import linear_ridge, naive_last_value

    splits = load_splits("ETTh1", context_length=512, prediction_length=96)
    naive_last_value(splits)["mse"], linear_ridge(splits)["mse"]
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import ForecastWindowDataset, SplitData, load_splits
from .records import (
    RESULTS_DIR,
    ROOT,
    command_line,
    device_name,
    git_commit,
    json_default,
    load_records,
    portable_path,
)

__all__ = [
    "BASELINES_KIND",
    "BASELINES_VERSION",
    "BASELINE_LABELS",
    "RIDGE_LAMBDAS",
    "Baselines",
    "LastValueLinearForecaster",
    "RidgeFit",
    "baseline_record_path",
    "baseline_settings",
    "ensure_baselines",
    "evaluate_forecaster",
    "fit_linear_ridge",
    "linear_ridge",
    "load_baselines",
    "naive_last_value",
    "run_baselines",
]

# The ridge strengths tried, per training sample: the fit minimises mean squared error + lambda * ||W||^2 (the bias
# is not penalised), so one grid suits every dataset size. Standardised inputs minus the last value are O(1), so
# 1e-4 is nearly least squares and 1e2 shrinks the map nearly to zero (the naive forecast).
RIDGE_LAMBDAS: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
# Samples (window x channel) per chunk of the normal equations: 8192 x (L + H) float64 values, ~80 MB at L = 512,
# H = 720.
_CHUNK_SAMPLES = 8192
# Windows per batch when scoring (through `forecast_metrics`).
_EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class _ForecastOutput:
    """What the networks return, as far as the evaluation loop reads it."""

    prediction_outputs: torch.Tensor


def _last_observed(past_values: torch.Tensor, past_observed_mask: torch.Tensor | None) -> torch.Tensor:
    """`(batch, 1, channels)`: each channel's last observed look-back value (0, the train mean, if none is)."""
    if past_observed_mask is None:
        return past_values[:, -1:, :]
    observed = past_observed_mask.bool()
    steps = torch.arange(past_values.shape[1], device=past_values.device).view(1, -1, 1)
    last = torch.where(observed, steps, torch.full_like(steps, -1)).amax(dim=1, keepdim=True)  # (B, 1, C)
    value = past_values.gather(1, last.clamp(min=0))
    return torch.where(last >= 0, value, torch.zeros_like(value))


class LastValueLinearForecaster(torch.nn.Module):
    """``forecast = last + (past - last) @ weight + bias`` per channel (`last`: the channel's last observed value).

    ``weight`` `(L, H)` and ``bias`` `(H,)` are float64 and shared by all channels. All zeros is the naive
    last-value forecast. Not trainable (no gradients): the weights come from :func:`fit_linear_ridge`.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if weight.ndim != 2 or bias.shape != (weight.shape[1],):
            raise ValueError(f"weight must be (L, H) and bias (H,), got {tuple(weight.shape)} and {tuple(bias.shape)}.")
        self.weight = torch.nn.Parameter(weight.to(torch.float64), requires_grad=False)
        self.bias = torch.nn.Parameter(bias.to(torch.float64), requires_grad=False)

    @classmethod
    def naive(cls, context_length: int, prediction_length: int) -> LastValueLinearForecaster:
        """The last observed value repeated over the horizon."""
        return cls(torch.zeros(context_length, prediction_length, dtype=torch.float64),
                   torch.zeros(prediction_length, dtype=torch.float64))

    @property
    def context_length(self) -> int:
        return int(self.weight.shape[0])

    @property
    def prediction_length(self) -> int:
        return int(self.weight.shape[1])

    def forward(self, past_values: torch.Tensor, past_observed_mask: torch.Tensor | None = None) -> _ForecastOutput:
        """`past_values` `(batch, L, channels)` -> `.prediction_outputs` `(batch, H, channels)` float32."""
        if past_values.shape[1] != self.context_length:
            raise ValueError(f"past_values has {past_values.shape[1]} steps; this forecaster reads "
                             f"{self.context_length}.")
        past = past_values.to(torch.float64)
        last = _last_observed(past, past_observed_mask)
        future = (past - last).transpose(1, 2) @ self.weight + self.bias  # (B, C, H)
        return _ForecastOutput(prediction_outputs=(future.transpose(1, 2) + last).to(torch.float32))


def evaluate_forecaster(model: torch.nn.Module, dataset: ForecastWindowDataset, scaler: Any | None = None,
                        batch_size: int = _EVAL_BATCH_SIZE) -> dict[str, Any]:
    """Test metrics of `model` on every window of `dataset`, by the networks' own metric function
    (:func:`himtm_hf.training.forecast_metrics`), plus ``full_test_split`` (always true here)."""
    from ..training import forecast_metrics

    metrics = forecast_metrics(model.cpu(), dataset, scaler, batch_size=batch_size, desc=dataset.name,
                               disable_tqdm=True)
    metrics["full_test_split"] = metrics["num_windows"] == len(dataset)
    return metrics


def naive_last_value(splits: SplitData) -> dict[str, Any]:
    """Metrics of the naive forecast (each channel's last observed look-back value, repeated over the horizon) on
    every test window of `splits`, in the schema of a model's test metrics."""
    model = LastValueLinearForecaster.naive(splits.context_length, splits.prediction_length)
    return evaluate_forecaster(model, splits.test, splits.scaler)


# ----------------------------------------------------------------------------------------------------------------------
# The closed-form linear forecaster
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RidgeFit:
    """A fitted linear forecaster and how it was chosen."""

    model: LastValueLinearForecaster
    ridge_lambda: float
    val_mse_by_lambda: dict[float, float]
    train_windows: int
    train_samples: int
    val_windows: int
    val_samples: int


@dataclass
class _NormalEquations:
    """Sufficient statistics of a least-squares problem ``Y ~ [X, 1] W`` over `samples` rows (float64)."""

    gram: torch.Tensor  # (L + 1, L + 1): [X, 1]^T [X, 1]
    cross: torch.Tensor  # (L + 1, H): [X, 1]^T Y
    target_sq: float  # sum of Y^2
    samples: int


def _window_indices(dataset: ForecastWindowDataset, max_windows: int | None) -> np.ndarray:
    """Every window of `dataset`, or the evenly strided subset the training loop would take (`cap_windows`)."""
    from ..training import cap_windows

    subset = cap_windows(dataset, max_windows)
    return np.asarray(getattr(subset, "indices", range(len(dataset))), dtype=np.int64)


def _normal_equations(dataset: ForecastWindowDataset, indices: np.ndarray) -> _NormalEquations:
    """Accumulates the normal equations of the last-value-normalised windows `indices` of `dataset`, chunk by chunk.
    A sample is one (window, channel); samples with any unobserved look-back or target value are left out."""
    L, H, C = dataset.context_length, dataset.prediction_length, dataset.num_channels
    windows = dataset.values.unfold(0, L + H, 1)  # (num_windows, C, L + H), a view
    observed = dataset.observed_mask.unfold(0, L + H, 1)
    gram = torch.zeros(L + 1, L + 1, dtype=torch.float64)
    cross = torch.zeros(L + 1, H, dtype=torch.float64)
    target_sq, samples = 0.0, 0
    step = max(1, _CHUNK_SAMPLES // max(1, C))
    for begin in range(0, len(indices), step):
        chunk = torch.from_numpy(indices[begin:begin + step])
        values = windows[chunk].to(torch.float64).reshape(-1, L + H)
        complete = observed[chunk].reshape(-1, L + H).all(dim=1)
        values = values[complete]
        if values.shape[0] == 0:
            continue
        last = values[:, L - 1:L]
        x = torch.cat([values[:, :L] - last, torch.ones_like(last)], dim=1)
        y = values[:, L:] - last
        gram += x.T @ x
        cross += x.T @ y
        target_sq += float((y * y).sum())
        samples += int(values.shape[0])
    return _NormalEquations(gram, cross, target_sq, samples)


def _solve_ridge(train: _NormalEquations, ridge_lambda: float) -> torch.Tensor:
    """`(L + 1, H)`: the minimiser of mean squared error + `ridge_lambda` * ||W||^2 (the bias row unpenalised)."""
    size = train.gram.shape[0]
    penalty = torch.full((size,), float(ridge_lambda), dtype=torch.float64)
    penalty[-1] = 0.0
    return torch.linalg.solve(train.gram / train.samples + torch.diag(penalty), train.cross / train.samples)


def _mse(equations: _NormalEquations, coefficients: torch.Tensor) -> float:
    """MSE of `coefficients` over the samples of `equations`, from the statistics alone (no second pass)."""
    sse = (float((coefficients * (equations.gram @ coefficients)).sum()) - 2.0 * float((coefficients *
           equations.cross).sum()) + equations.target_sq)
    return max(sse, 0.0) / (equations.samples * coefficients.shape[1])


def fit_linear_ridge(splits: SplitData, lambdas: tuple[float, ...] = RIDGE_LAMBDAS,
                     max_train_windows: int | None = None) -> RidgeFit:
    """Fits the NLinear-style map on the train windows of `splits` for each of `lambdas` and keeps the one with the
    lowest MSE on the val windows (ties: the first in `lambdas`). `max_train_windows`: an evenly strided subset of the
    train windows (as the training loop caps them); None (the default) uses every one."""
    if not lambdas or any(not (math.isfinite(v) and v >= 0) for v in lambdas):
        raise ValueError(f"lambdas must be finite values >= 0, got {lambdas!r}.")
    train_indices = _window_indices(splits.train, max_train_windows)
    train = _normal_equations(splits.train, train_indices)
    if train.samples == 0:
        raise ValueError(f"Series {splits.name!r}: no train window with every value observed; the linear baseline "
                         "has nothing to fit.")
    val = _normal_equations(splits.val, np.arange(len(splits.val), dtype=np.int64))
    solutions = {float(v): _solve_ridge(train, v) for v in lambdas}
    if val.samples:
        scores = {v: _mse(val, w) for v, w in solutions.items()}
        chosen = min(scores, key=scores.get)
    else:  # no val windows: the smallest penalty, said so by an empty score table
        scores, chosen = {}, min(solutions)
    coefficients = solutions[chosen]
    model = LastValueLinearForecaster(coefficients[:-1], coefficients[-1])
    return RidgeFit(model, chosen, scores, len(train_indices), train.samples, len(splits.val), val.samples)


def linear_ridge(splits: SplitData, lambdas: tuple[float, ...] = RIDGE_LAMBDAS,
                 max_train_windows: int | None = None) -> dict[str, Any]:
    """Metrics of the closed-form NLinear-style ridge forecaster (:func:`fit_linear_ridge`) on every test window of
    `splits`, in the schema of a model's test metrics, plus how it was fitted (``ridge_lambda``,
    ``ridge_lambdas``, ``val_mse_by_lambda``, ``train_windows``, ``train_samples``, ``val_windows``)."""
    fit = fit_linear_ridge(splits, lambdas, max_train_windows)
    metrics = evaluate_forecaster(fit.model, splits.test, splits.scaler)
    metrics.update(ridge_lambda=fit.ridge_lambda, ridge_lambdas=[float(v) for v in lambdas],
                   val_mse_by_lambda={f"{v:g}": s for v, s in fit.val_mse_by_lambda.items()},
                   train_windows=fit.train_windows, train_samples=fit.train_samples, val_windows=fit.val_windows)
    return metrics


# ----------------------------------------------------------------------------------------------------------------------
# Closed-form baselines (naive last value, NLinear-style ridge): one record per (dataset, L, H)
# ----------------------------------------------------------------------------------------------------------------------

BASELINES_KIND = "baselines"
# Bump when what the forecasters above compute changes: every record then differs in its settings and is recomputed.
BASELINES_VERSION = 1
# Record key -> the row / column name the tables give it.
BASELINE_LABELS: dict[str, str] = {"naive": "naive (last value)", "linear_ridge": "linear (ridge)"}


def baseline_settings(dataset: str, context_length: int, prediction_length: int) -> dict[str, Any]:
    """Everything that fixes a baseline record's numbers (with the data file): compared before a record is kept, and
    stored in it so that it can be regenerated (`scripts/benchmark_baselines.py` with these values)."""
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
        # where the data came from, without this machine's folders (`portable_path`)
        "data": {"dataset": portable_path(dataset, ROOT), "data_dir": portable_path(data_dir, ROOT),
                 "columns": splits.columns, "borders": {k: list(v) for k, v in splits.borders.items()}, "train_windows": len(splits.train),
                 "val_windows": len(splits.val), "test_windows": len(splits.test)},
        "device": device_name(), "git_commit": git_commit(), "command": command_line(),
        "torch_version": torch.__version__, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "wall_time_s": round(time.time() - start, 2),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=json_default) + "\n")
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


# Baseline records by (dataset, context length, horizon), as `load_baselines` returns them.
Baselines = dict[tuple[str, int, int], dict[str, Any]]


def load_baselines(results_dir: Path = RESULTS_DIR) -> Baselines:
    """Every baseline record under `results_dir/baselines/`, by (dataset, context length, horizon)."""
    return {(r["dataset"], int(r["context_length"]), int(r["prediction_length"])): r
            for r in load_records(results_dir, BASELINES_KIND)}
