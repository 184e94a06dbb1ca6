"""Forecast metrics: the shipped offline ``evaluate`` modules and a fast numpy path.

The metric modules live in ``himtm_hf/metrics/{mse,mae,mase}/`` and are loaded *by path*, so no
Hub access is needed (``evaluate.load("mse")`` would need the Hub)::

    from himtm_hf.evaluation import compute_forecast_metrics, load_metric

    mse = load_metric("mse")
    mse.compute(predictions=[2.5, 0.0], references=[3.0, -0.5])

    compute_forecast_metrics(predictions, references)  # {"mse": ..., "mae": ...}

``compute_forecast_metrics`` is the one to use for full test sets (millions of values): it
averages over every element (every window, horizon step and channel, i.e. the standard
long-term-forecasting MSE/MAE on the standardised test split) in float64 with numpy, in chunks.
``use_evaluate=True`` routes the same flattened values through the ``evaluate`` modules instead
(slower; the two agree to floating-point rounding).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["METRICS_DIR", "METRIC_NAMES", "compute_forecast_metrics", "load_metric", "metric_path"]

METRICS_DIR = Path(__file__).resolve().parent / "metrics"
"""Folder holding the shipped ``evaluate`` metric modules."""

METRIC_NAMES: tuple[str, ...] = ("mse", "mae", "mase")

_CHUNK = 1 << 22  # elements per chunk of the numpy path


def metric_path(name: str) -> Path:
    """Folder of the shipped metric module ``name`` (``"mse"``, ``"mae"`` or ``"mase"``)."""
    key = name.strip().lower()
    if key not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; the shipped metrics are {', '.join(METRIC_NAMES)}.")
    path = METRICS_DIR / key
    if not (path / f"{key}.py").is_file():
        raise FileNotFoundError(f"Metric module {path / (key + '.py')} is missing from the installation.")
    return path


def load_metric(name: str, config_name: str | None = None, **kwargs: Any) -> Any:
    """Load a shipped metric with ``evaluate.load(<path>)`` (works offline, e.g. HF_HUB_OFFLINE=1).

    ``config_name="multilist"`` forces 2-D (samples, outputs) inputs; by default 1-D and 2-D
    inputs are both accepted. Extra keyword arguments go to ``evaluate.load``.
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), config_name, **kwargs)


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    array = np.asarray(x)
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}.")
    return array


def compute_forecast_metrics(
    predictions: Any,
    references: Any,
    mask: Any | None = None,
    use_evaluate: bool = False,
) -> dict[str, float]:
    """MSE and MAE averaged over every element of ``predictions`` vs ``references``.

    Args:
        predictions: array of any shape, e.g. (windows, prediction_length, channels); numpy or
            torch.
        references: array of the same shape.
        mask: optional array of the same shape (bool or 0/1): only elements where it is true are
            counted (e.g. the ``future_observed_mask`` of the windows).
        use_evaluate: compute through the shipped ``evaluate`` modules instead of numpy (slow
            for millions of values; meant for cross-checking).

    Returns:
        ``{"mse": float, "mae": float}`` (NaN if no element is counted).
    """
    pred = _to_numpy(predictions, "predictions")
    ref = _to_numpy(references, "references")
    if pred.shape != ref.shape:
        raise ValueError(f"predictions {pred.shape} and references {ref.shape} differ in shape.")
    keep: np.ndarray | None = None
    if mask is not None:
        keep = _to_numpy(mask, "mask").astype(bool, copy=False)
        if keep.shape != pred.shape:
            raise ValueError(f"mask {keep.shape} and predictions {pred.shape} differ in shape.")

    pred, ref = pred.reshape(-1), ref.reshape(-1)
    if keep is not None:
        keep = keep.reshape(-1)

    if use_evaluate:
        if keep is not None:
            pred, ref = pred[keep], ref[keep]
        if pred.size == 0:
            return {"mse": float("nan"), "mae": float("nan")}
        p64, r64 = pred.astype(np.float64), ref.astype(np.float64)
        mse = load_metric("mse").compute(predictions=p64, references=r64)["mse"]
        mae = load_metric("mae").compute(predictions=p64, references=r64)["mae"]
        return {"mse": float(mse), "mae": float(mae)}

    squared_sum = 0.0
    absolute_sum = 0.0
    count = 0
    for begin in range(0, pred.size, _CHUNK):
        diff = pred[begin : begin + _CHUNK].astype(np.float64) - ref[begin : begin + _CHUNK].astype(
            np.float64
        )
        if keep is not None:
            diff = diff[keep[begin : begin + _CHUNK]]
        squared_sum += float(np.dot(diff, diff))
        absolute_sum += float(np.abs(diff).sum())
        count += diff.size
    if count == 0:
        return {"mse": float("nan"), "mae": float("nan")}
    return {"mse": squared_sum / count, "mae": absolute_sum / count}
