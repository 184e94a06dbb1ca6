"""Does a pre-training learn? Numbers that say so, measured the same way at every evaluation.

A masked-reconstruction loss means little on its own: after per-instance scaling, predicting 0 (the instance mean)
already scores about 1, and a smooth series is reconstructed well by interpolating across the masked block. This
module scores the masked elements of a fixed set of validation windows with the model and with trivial predictors,
and reports:

- per hierarchy `i`, the model's validation reconstruction loss `L_R^i` beside the trivial predictors of the SAME
  masked, observed elements (scaled space, exactly the elements `masked_reconstruction_loss` scores) and the skill
  `1 - L_R^i / best trivial` (> 0: better than every trivial predictor; <= 0: it has learned nothing they cannot do);
- the spread of the student's and the teacher's encoder features over tokens (a collapsed encoder gives every token
  the same feature vector: spread ~0);
- a frozen-encoder linear probe: closed-form ridge from the encoder's coarsest-hierarchy features of the look-back to
  the future, scored on validation windows, beside the same ridge on the raw (instance-scaled) look-back and the
  instance-mean forecast, so a reader can tell whether the features carry anything a linear map of the input lacks.

Masks are drawn once from a generator seeded by `seed` (the model's `mask_noise` argument), and the windows are an
evenly strided subset, so two evaluations of the same weights give the same numbers and a curve over steps moves only
because the weights do. `diagnose_pretraining` runs the model in eval mode without gradients and leaves its
training mode as it found it; it uses no global RNG, so calling it inside a training loop does not change training.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "RIDGE_GRID",
    "TRIVIAL_PREDICTORS",
    "PretrainingDiagnostics",
    "diagnose_pretraining",
    "flatten_diagnostics",
    "linear_probe",
    "plot_pretraining_diagnostics",
    "seasonal_period",
    "skill_score",
    "trivial_predictions",
]

TRIVIAL_PREDICTORS = ("visible_mean", "interpolation", "period_copy")
"""The trivial predictors, in the order they are reported."""

RIDGE_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""Ridge strengths tried by the linear probe, relative to the mean feature variance (so one grid fits any width)."""

DEFAULT_RIDGE = 1e-2
"""Ridge strength used when the probe has too few training windows to hold some out for the choice."""

# Daily period (in steps) for the sampling intervals of the benchmark data; anything else has no default period.
_DAILY_PERIODS = {600: 144, 900: 96, 1800: 48, 3600: 24, 86400: 7}


# ----------------------------------------------------------------------------------------------------------------------
# Period
# ----------------------------------------------------------------------------------------------------------------------


def seasonal_period(timestamps: Any) -> int | None:
    """The daily period, in steps, of a series sampled at `timestamps` (weekly for daily data).

    10-minute data -> 144, 15-minute -> 96, 30-minute -> 48, hourly -> 24, daily -> 7; any other interval, numeric
    timestamps or none -> `None`. The interval is the median step of the first 1,000 timestamps, so a few gaps do
    not change it.
    """
    if timestamps is None:
        return None
    try:
        import pandas as pd

        index = pd.DatetimeIndex(timestamps[:1000])
    except (TypeError, ValueError):
        return None  # numeric or unparsable time axis: no calendar period
    if len(index) < 2:
        return None
    # In seconds whatever the index's resolution (pandas 2 keeps ns, us or s).
    seconds = np.asarray((index[1:] - index[:-1]).total_seconds(), dtype=np.float64)
    if not np.isfinite(seconds).any():
        return None
    return _DAILY_PERIODS.get(int(round(float(np.nanmedian(seconds)))))


# ----------------------------------------------------------------------------------------------------------------------
# Trivial predictors on scaled values
# ----------------------------------------------------------------------------------------------------------------------


def _interpolation(values: torch.Tensor, anchor: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Linear interpolation between the last anchor (visible, observed element) before each position and the first
    one after it; the nearest anchor at the window's edges, `mean` for a series without anchors."""
    length = values.shape[1]
    positions = torch.arange(length, device=values.device).expand_as(values)
    # The last anchor at or before t (cumulative max of anchor positions) and the first at or after t (the same from
    # the right): vectorised, so one call handles every masked block of every series.
    before = torch.where(anchor, positions, torch.full_like(positions, -1)).cummax(dim=1).values
    after = torch.where(anchor, positions, torch.full_like(positions, length)).flip(1).cummin(dim=1).values.flip(1)
    has_before, has_after = before >= 0, after < length
    value_before = values.gather(1, before.clamp(min=0))
    value_after = values.gather(1, after.clamp(max=length - 1))
    weight = (positions - before).to(values.dtype) / (after - before).clamp(min=1).to(values.dtype)
    between = value_before + (value_after - value_before) * weight
    edge = torch.where(has_before, value_before, torch.where(has_after, value_after, mean.expand_as(values)))
    return torch.where(has_before & has_after, between, edge)


def _period_copy(
    values: torch.Tensor, anchor: torch.Tensor, period: int, fallback: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The value one period earlier and/or later (their average when both are anchors), `fallback` where neither
    is; also returns where a period neighbour existed."""
    total = torch.zeros_like(values)
    count = torch.zeros_like(values)
    if 0 < period < values.shape[1]:
        earlier_ok = anchor[:, :-period].to(values.dtype)  # element t - period, placed at t
        later_ok = anchor[:, period:].to(values.dtype)  # element t + period, placed at t
        total[:, period:] += values[:, :-period] * earlier_ok
        count[:, period:] += earlier_ok
        total[:, :-period] += values[:, period:] * later_ok
        count[:, :-period] += later_ok
    covered = count > 0
    return torch.where(covered, total / count.clamp(min=1), fallback), covered


def trivial_predictions(
    values: torch.Tensor, masked: torch.Tensor, observed: torch.Tensor, period: int | None = None
) -> dict[str, torch.Tensor]:
    """Predictions of every element by the trivial predictors, from the visible, observed elements only.

    Args:
        values (`torch.Tensor` of shape `(series, length)`): scaled values (the window's patches joined in order).
        masked (`torch.Tensor` of shape `(series, length)`): True where the element is masked.
        observed (`torch.Tensor` of shape `(series, length)`): True (or 1) where the element is observed.
        period: steps of one season; `None` or 0: no `period_copy`.

    Returns:
        `{"visible_mean", "interpolation"[, "period_copy", "period_covered"]}`, each `(series, length)`:
        `visible_mean` is the mean of the series' visible observed values (0, the instance mean, if it has none);
        `interpolation` joins the last visible observed value before a masked block to the first one after it (the
        nearest one at the window's edges); `period_copy` is the value one period earlier or later (their average when
        both are visible and observed), the interpolation where neither is; `period_covered` (bool) says where a
        period neighbour existed.
    """
    anchor = ~masked.bool() & observed.bool()
    weight = anchor.to(values.dtype)
    mean = (values * weight).sum(dim=1, keepdim=True) / weight.sum(dim=1, keepdim=True).clamp(min=1)
    interpolation = _interpolation(values, anchor, mean)
    predictions = {"visible_mean": mean.expand_as(values), "interpolation": interpolation}
    if period:
        predictions["period_copy"], predictions["period_covered"] = _period_copy(
            values, anchor, int(period), interpolation
        )
    return predictions


def skill_score(reconstruction_loss: float, best_trivial: float) -> float:
    """`1 - L_R / best trivial`: 0 = no better than the best trivial predictor, 1 = perfect; NaN when undefined."""
    if not (math.isfinite(reconstruction_loss) and math.isfinite(best_trivial)) or best_trivial <= 0:
        return float("nan")
    return 1.0 - reconstruction_loss / best_trivial


# ----------------------------------------------------------------------------------------------------------------------
# Reconstruction and feature spread on fixed masks
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _Totals:
    """Running sums over the diagnosed windows (all in float64: the counts reach millions of elements)."""

    count: float = 0.0  # masked, observed elements scored
    covered: float = 0.0  # of those, with a period neighbour
    series: float = 0.0
    model: list[float] = field(default_factory=list)  # per hierarchy: sum of L_R^i * count over batches
    trivial: dict[str, float] = field(default_factory=dict)  # sum of squared errors
    student: list[float] = field(default_factory=list)  # per hierarchy: sum over series of the spread
    teacher: list[float] = field(default_factory=list)

    @staticmethod
    def add(values: list[float], new: Sequence[float]) -> None:
        """Adds `new` element-wise to the per-hierarchy sums `values` (created on first use)."""
        if not values:
            values.extend(0.0 for _ in new)
        for i, value in enumerate(new):
            values[i] += float(value)


def _feature_spread(features: torch.Tensor) -> torch.Tensor:
    """Per series: std over tokens of each feature, averaged over features; `(series, tokens, d)` -> `(series,)`.

    A collapsed encoder (the same vector at every position) gives 0 whatever the features' scale elsewhere. With a
    single token there is no spread to measure, so the result is 0 too.
    """
    features = features.double()
    if features.shape[1] < 2:
        return features.new_zeros(features.shape[0])
    return features.std(dim=1, unbiased=False).mean(dim=1)


def _teacher_features(model: torch.nn.Module, patches: torch.Tensor) -> list[torch.Tensor]:
    """The teacher's per-hierarchy encoder features of the whole window, before HSD's target normalisation.

    The EMA teacher has its own modules; the shared teacher is the student's embedding and HMT run on the full
    window, which is also the stand-in when the model has no HSD.
    """
    hsd = getattr(model, "hsd", None)
    if hsd is not None and getattr(hsd, "teacher_encoder", None) is not None:
        return hsd.teacher_encoder(hsd.teacher_embedding(patches)).features
    return model.model.encode(patches).features


def _batch_diagnostics(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], noise: torch.Tensor, period: int | None, totals: _Totals
) -> None:
    """Adds one batch's model and trivial-predictor errors and its feature spreads to `totals`."""
    from .modeling_himtm import split_indices

    config = model.config
    past = batch["past_values"]
    observed_mask = batch.get("past_observed_mask")
    output = model(past_values=past, past_observed_mask=observed_mask, mask_noise=noise, return_dict=True)
    # The model's own scaled patches (its reconstruction targets: pre-training may scale with the visible part's
    # statistics) and its observed mask cut the same way (padding included), so the trivial predictors score exactly
    # the elements and values the model's L_R does.
    patches = output.patch_input.reshape(-1, *output.patch_input.shape[2:])  # (series, num_patches, patch_length)
    observed = model.model.prepare_patches(past, observed_mask)[1]
    series = patches.shape[0]
    patch_mask = output.mask.reshape(series, -1) > 0.5  # (series, num_patches), the mask the model drew
    values = patches.reshape(series, -1).double()
    observed_values = observed.reshape(series, -1) > 0.5
    masked = patch_mask.repeat_interleave(config.patch_length, dim=1)
    scored = (masked & observed_values).double()
    count = float(scored.sum())
    totals.count += count
    # L_R^i of this batch is an MSE over exactly these elements at every hierarchy (the mask is drawn at the coarsest
    # unit), so weighting by the count gives the exact element mean over all windows.
    totals.add(totals.model, [float(v) * count for v in output.hierarchy_reconstruction_losses])
    predictions = trivial_predictions(values, masked, observed_values, period)
    if "period_covered" in predictions:
        totals.covered += float((predictions.pop("period_covered").double() * scored).sum())
    for name, prediction in predictions.items():
        totals.trivial[name] = totals.trivial.get(name, 0.0) + float((((prediction - values) ** 2) * scored).sum())
    visible_index, _ = split_indices(patch_mask, config.num_masked_patches)
    # With DED the student encodes the visible patches only; for the SimMIM ablation (`use_ded=False`, mask tokens in
    # the encoder) this is the same encoder on the visible patches, a close stand-in.
    student = model.model.encode(patches, visible_index).features
    totals.add(totals.student, [float(_feature_spread(f).sum()) for f in student])
    totals.add(totals.teacher, [float(_feature_spread(f).sum()) for f in _teacher_features(model, patches)])
    totals.series += series


def _summarise(totals: _Totals, period: int | None, num_windows: int) -> dict[str, Any]:
    """The nested result of [`diagnose_pretraining`] from the running sums."""
    count = max(totals.count, 1.0)
    trivial = {name: totals.trivial[name] / count if name in totals.trivial else None for name in TRIVIAL_PREDICTORS}
    available = {k: v for k, v in trivial.items() if v is not None}
    best_name = min(available, key=available.get)
    best = available[best_name]
    hierarchies = []
    for loss_sum in totals.model:
        loss = loss_sum / count
        hierarchies.append({"reconstruction": loss, **trivial, "best_trivial": best,
                            "best_trivial_predictor": best_name, "skill": skill_score(loss, best)})
    series = max(totals.series, 1.0)
    return {
        "num_windows": int(num_windows),
        "num_scored_values": int(totals.count),
        "period": period,
        "period_copy_coverage": totals.covered / count if period else None,
        "hierarchy": hierarchies,
        "skill": hierarchies[0]["skill"],
        "best_trivial": best,
        "best_trivial_predictor": best_name,
        "student_spread": [s / series for s in totals.student],
        "teacher_spread": [s / series for s in totals.teacher],
    }


def _model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: batch[k].to(device) for k in ("past_values", "past_observed_mask") if k in batch}


@torch.no_grad()
def diagnose_pretraining(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    num_windows: int = 256,
    seed: int = 0,
    period: int | None = None,
    batch_size: int = 64,
    probe: tuple[Dataset, Dataset] | None = None,
    probe_train_windows: int | None = None,
) -> dict[str, Any]:
    """Reconstruction skill per hierarchy, feature spreads and (optionally) a linear probe of a pre-training model.

    Args:
        model: a `HiMTMForPretraining` (anything with its `forward(..., mask_noise=...)`, `.model.prepare_patches`,
            `.model.encode` and `hierarchy_reconstruction_losses` works).
        dataset: windows with `past_values` (and `past_observed_mask`), usually the validation split.
        num_windows: evenly strided windows of `dataset` to score (first and last included).
        seed: seeds the one draw of mask noise, so every call scores the same masked elements.
        period: season length in steps for `period_copy` (`seasonal_period` of the timestamps); `None`/0: not used.
        batch_size: windows per forward.
        probe: `(train_windows, val_windows)` forecasting datasets (items with `future_values`) for
            [`linear_probe`]; `None` skips it.
        probe_train_windows: at most this many (evenly strided) training windows fit the probe; default
            `4 * num_windows` (1024 with the defaults), so one number sets the cost of the whole diagnosis.

    Returns:
        `{"num_windows", "num_scored_values", "period", "period_copy_coverage", "hierarchy": [{"reconstruction",
        "visible_mean", "interpolation", "period_copy", "best_trivial", "best_trivial_predictor", "skill"}, ...]
        (finest first), "skill" (finest), "best_trivial", "best_trivial_predictor", "student_spread": [...],
        "teacher_spread": [...]}` plus the [`linear_probe`] keys when `probe` is given. Losses are MSEs in the
        per-instance scaled space over masked, observed elements; `period_copy` is `None` without a period.
    """
    from .training.loop import cap_windows

    windows = cap_windows(dataset, num_windows)
    if len(windows) == 0:
        raise ValueError("diagnose_pretraining needs at least one window.")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    config = model.config
    period = int(period) if period else None
    # One draw for all windows (CPU generator: the same noise on any device and for any batch size).
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.rand(len(windows), config.num_input_channels, config.num_masking_units, generator=generator)
    totals = _Totals()
    try:
        loader = DataLoader(windows, batch_size=batch_size, shuffle=False)
        start = 0
        for batch in loader:
            inputs = _model_inputs(batch, device)
            size = inputs["past_values"].shape[0]
            _batch_diagnostics(model, inputs, noise[start:start + size].to(device), period, totals)
            start += size
        result = _summarise(totals, period, len(windows))
        if probe is not None:
            train_windows = probe_train_windows if probe_train_windows is not None else 4 * int(num_windows)
            result.update(linear_probe(model, probe[0], probe[1], train_windows=train_windows,
                                       val_windows=num_windows, batch_size=batch_size))
    finally:
        model.train(was_training)
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Linear probe: closed-form ridge on frozen features
# ----------------------------------------------------------------------------------------------------------------------


@dataclass
class _RidgeStats:
    """Sufficient statistics of a least-squares fit with a bias column: the windows never need to be kept, so the
    probe's memory does not grow with the number of windows or channels."""

    xx: torch.Tensor | None = None  # (d + 1, d + 1), last row/column = bias
    xy: torch.Tensor | None = None  # (d + 1, H)
    yy: float = 0.0
    rows: float = 0.0

    def add(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> None:
        """Adds rows `x (rows, d)`, `y (rows, H)`; each row's squared error counts `weight**2` times (0 = left out)."""
        keep = weight != 0  # rows of the other part (fit / held out) cost nothing
        x, y, weight = x[keep], y[keep], weight[keep]
        x = torch.cat([x, torch.ones_like(x[:, :1])], dim=1) * weight[:, None]
        y = y * weight[:, None]
        xx, xy = (x.T @ x).cpu(), (x.T @ y).cpu()
        self.xx = xx if self.xx is None else self.xx + xx
        self.xy = xy if self.xy is None else self.xy + xy
        self.yy += float((y**2).sum())
        self.rows += float((weight**2).sum())

    def __add__(self, other: _RidgeStats) -> _RidgeStats:
        if self.xx is None:
            return other
        if other.xx is None:
            return self
        return _RidgeStats(self.xx + other.xx, self.xy + other.xy, self.yy + other.yy, self.rows + other.rows)

    def solve(self, strength: float) -> torch.Tensor:
        """Ridge weights `(d + 1, H)` (bias last, not penalised). `strength` is relative to the mean variance of the
        features, so the same grid suits post-LayerNorm features and raw scaled values."""
        d = self.xx.shape[0] - 1
        mean = self.xx[:d, d] / max(self.rows, 1.0)
        variance = (self.xx[:d, :d].diagonal().sum() / max(self.rows, 1.0) - (mean**2).sum()) / d
        penalty = torch.full((d + 1,), strength * float(variance.clamp(min=1e-12)) * self.rows, dtype=self.xx.dtype)
        penalty[d] = 0.0
        return torch.linalg.solve(self.xx + torch.diag(penalty), self.xy)

    def mse(self, weights: torch.Tensor) -> float:
        """Mean squared error of `weights` on the rows these statistics hold, without the rows themselves."""
        sse = self.yy - 2.0 * float((weights * self.xy).sum()) + float((weights * (self.xx @ weights)).sum())
        return sse / max(self.rows * self.xy.shape[1], 1.0)


def _probe_rows(model: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """One batch as channel-independent rows (`batch * channels`): the encoder's coarsest-hierarchy tokens flattened,
    the instance-scaled look-back, the instance-scaled future (the regression target) and what un-scales it."""
    encoder = getattr(model, "model", model)
    past = batch["past_values"].to(device)
    observed = batch.get("past_observed_mask")
    output = encoder(past_values=past, past_observed_mask=None if observed is None else observed.to(device),
                     return_dict=True)
    coarsest = output.hierarchy_features[-1]  # (batch, channels, tokens, d)
    batch_size, channels = coarsest.shape[:2]
    rows = batch_size * channels
    future = batch["future_values"].to(device).double().transpose(1, 2).reshape(rows, -1)
    future_observed = batch.get("future_observed_mask")
    future_observed = (torch.ones_like(future) if future_observed is None
                       else future_observed.to(device).double().transpose(1, 2).reshape(rows, -1))
    loc = output.loc.double().transpose(1, 2).reshape(rows, 1)
    scale = output.scale.double().transpose(1, 2).reshape(rows, 1)
    return {
        "encoder": coarsest.double().reshape(rows, -1),
        "lookback": output.patch_input.double().reshape(rows, -1),
        "target": (future - loc) / scale,
        "future": future, "future_observed": future_observed, "loc": loc, "scale": scale,
    }


def _window_loader(dataset: Dataset, max_windows: int, batch_size: int) -> tuple[Dataset, DataLoader]:
    from .training.loop import cap_windows

    windows = cap_windows(dataset, max_windows)
    return windows, DataLoader(windows, batch_size=batch_size, shuffle=False)


def _fit_probes(
    model: torch.nn.Module, dataset: Dataset, max_windows: int, batch_size: int, device: torch.device,
    holdout_fraction: float,
) -> tuple[dict[str, tuple[_RidgeStats, _RidgeStats]], int]:
    """Ridge statistics of both probes on the training windows, split into a fitting part and a held-out tail (the
    latest windows: a temporal hold-out, as forecasting is scored)."""
    windows, loader = _window_loader(dataset, max_windows, batch_size)
    cut = len(windows) - int(round(len(windows) * holdout_fraction)) if len(windows) >= 5 else len(windows)
    stats = {name: (_RidgeStats(), _RidgeStats()) for name in ("encoder", "lookback")}
    start = 0
    for batch in loader:
        rows = _probe_rows(model, batch, device)
        size = batch["past_values"].shape[0]
        channels = rows["target"].shape[0] // size
        window = torch.arange(start, start + size, device=device).repeat_interleave(channels)
        usable = rows["future_observed"].min(dim=1).values  # only rows whose whole future is observed fit the map
        # Weighted by the instance scale: the squared error in the standardised units it is scored in. Unweighted,
        # windows with a near-constant look-back (scale at its floor, huge scaled targets) would dominate the fit.
        usable = usable * rows["scale"][:, 0]
        for name, (fit, held) in stats.items():
            fit.add(rows[name], rows["target"], usable * (window < cut).double())
            held.add(rows[name], rows["target"], usable * (window >= cut).double())
        start += size
    return stats, len(windows)


def _choose_strength(fit: _RidgeStats, held: _RidgeStats, grid: Sequence[float]) -> float:
    """The grid value with the lowest held-out MSE (`DEFAULT_RIDGE` when nothing is held out)."""
    if held.xx is None or held.rows == 0 or fit.xx is None or fit.rows == 0:
        return DEFAULT_RIDGE
    return min(grid, key=lambda strength: held.mse(fit.solve(strength)))


@torch.no_grad()
def linear_probe(
    model: torch.nn.Module,
    train_dataset: Dataset,
    val_dataset: Dataset,
    *,
    train_windows: int = 1024,
    val_windows: int = 256,
    batch_size: int = 64,
    grid: Sequence[float] = RIDGE_GRID,
    holdout_fraction: float = 0.2,
) -> dict[str, Any]:
    """Forecast MSE of a ridge regression on the frozen encoder's features, and of two references.

    The probe reads the coarsest hierarchy's tokens of the look-back (every token's features, flattened: the
    coarsest level summarises the whole window in few tokens, so the map stays small), plus a bias, and predicts the
    instance-scaled future. It is channel-independent like HiMTM's forecaster: every (window, channel) is one row
    and all channels share the map. Fitted on up to `train_windows` evenly strided training windows; the ridge
    strength is the value of `grid` (relative to the mean feature variance) with the lowest MSE on the latest
    `holdout_fraction` of them, then the map is refitted on all of them, so the reported score is not tuned on the
    windows it is measured on. Scored on up to `val_windows` validation windows, un-scaled with each window's
    instance mean and std, over observed future values, in the dataset's (standardised) units.

    Returns:
        `{"linear_probe_mse", "linear_probe_lookback_mse", "linear_probe_mean_mse", "linear_probe_ridge",
        "linear_probe_lookback_ridge", "linear_probe_train_windows", "linear_probe_val_windows"}`: the encoder
        probe, the same ridge on the instance-scaled look-back (an NLinear-style reference) and the forecast
        "instance mean of the look-back"; NaN MSEs when no training row has a fully observed future.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        stats, fitted = _fit_probes(model, train_dataset, train_windows, batch_size, device, holdout_fraction)
        strengths, weights = {}, {}
        for name, (fit, held) in stats.items():
            total = fit + held
            if total.xx is None or total.rows == 0:
                continue
            strengths[name] = _choose_strength(fit, held, grid)
            weights[name] = total.solve(strengths[name]).to(device)
        windows, loader = _window_loader(val_dataset, val_windows, batch_size)
        sse = {"encoder": 0.0, "lookback": 0.0, "mean": 0.0}
        count = 0.0
        for batch in loader:
            rows = _probe_rows(model, batch, device)
            mask = rows["future_observed"]
            count += float(mask.sum())
            sse["mean"] += float((((rows["loc"] - rows["future"]) ** 2) * mask).sum())
            for name, weight in weights.items():
                scaled = rows[name] @ weight[:-1] + weight[-1]
                prediction = scaled * rows["scale"] + rows["loc"]
                sse[name] += float((((prediction - rows["future"]) ** 2) * mask).sum())
    finally:
        model.train(was_training)
    mse = {name: (sse[name] / count if count and (name == "mean" or name in weights) else float("nan"))
           for name in sse}
    return {
        "linear_probe_mse": mse["encoder"],
        "linear_probe_lookback_mse": mse["lookback"],
        "linear_probe_mean_mse": mse["mean"],
        "linear_probe_ridge": strengths.get("encoder"),
        "linear_probe_lookback_ridge": strengths.get("lookback"),
        "linear_probe_train_windows": int(fitted),
        "linear_probe_val_windows": len(windows),
    }


# ----------------------------------------------------------------------------------------------------------------------
# In a training loop
# ----------------------------------------------------------------------------------------------------------------------


class PretrainingDiagnostics:
    """[`diagnose_pretraining`] with fixed arguments, as the `eval_callback` of `himtm_hf.training.train_model`.

    Calling it returns the flat numbers for the validation record ([`flatten_diagnostics`]) and times the call
    (`seconds`: kept here, not logged, so that logs of identical runs stay identical); `diagnose(model)` returns the
    nested result (e.g. for the best weights at the end).
    """

    def __init__(
        self, dataset: Dataset, *, num_windows: int = 256, seed: int = 0, period: int | None = None,
        batch_size: int = 64, probe: tuple[Dataset, Dataset] | None = None,
    ) -> None:
        self.dataset = dataset
        self.kwargs: dict[str, Any] = {"num_windows": num_windows, "seed": seed, "period": period,
                                       "batch_size": batch_size, "probe": probe}
        self.seconds: list[float] = []

    def diagnose(self, model: torch.nn.Module) -> dict[str, Any]:
        start = time.perf_counter()
        result = diagnose_pretraining(model, self.dataset, **self.kwargs)
        self.seconds.append(time.perf_counter() - start)
        return result

    def __call__(self, model: torch.nn.Module, step: int) -> dict[str, float]:
        return flatten_diagnostics(self.diagnose(model))


# ----------------------------------------------------------------------------------------------------------------------
# Logging and plotting
# ----------------------------------------------------------------------------------------------------------------------


def flatten_diagnostics(diagnostics: dict[str, Any], prefix: str = "diag_") -> dict[str, float]:
    """The numbers of [`diagnose_pretraining`]'s result as one flat mapping for a log line.

    Keys: `diag_skill` (finest), `diag_best_trivial`, `diag_visible_mean`, `diag_interpolation`,
    `diag_period_copy` (with a period), and per hierarchy `i` `diag_reconstruction_h{i}`, `diag_skill_h{i}`,
    `diag_student_spread_h{i}`, `diag_teacher_spread_h{i}`; with the probe `diag_linear_probe_mse`,
    `diag_linear_probe_lookback_mse`, `diag_linear_probe_mean_mse`. `None` values are left out.
    """
    flat: dict[str, float | None] = {"skill": diagnostics["skill"], "best_trivial": diagnostics["best_trivial"]}
    finest = diagnostics["hierarchy"][0]
    for name in TRIVIAL_PREDICTORS:
        flat[name] = finest.get(name)
    for i, level in enumerate(diagnostics["hierarchy"]):
        flat[f"reconstruction_h{i}"] = level["reconstruction"]
        flat[f"skill_h{i}"] = level["skill"]
    for kind in ("student", "teacher"):
        for i, value in enumerate(diagnostics[f"{kind}_spread"]):
            flat[f"{kind}_spread_h{i}"] = value
    for name in ("linear_probe_mse", "linear_probe_lookback_mse", "linear_probe_mean_mse"):
        flat[name] = diagnostics.get(name)
    return {prefix + k: float(v) for k, v in flat.items() if v is not None}


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(r["step"], r[key]) for r in history if r.get(key) is not None and "step" in r]
    return [p[0] for p in points], [p[1] for p in points]


def _levels(history: Sequence[dict[str, Any]], stem: str) -> list[int]:
    keys = {k for r in history for k in r if k.startswith(stem)}
    return sorted(int(k[len(stem):]) for k in keys if k[len(stem):].isdigit())


def plot_pretraining_diagnostics(
    history: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str | None = None
) -> Path | None:
    """PNG of the diagnostics over training steps, from records with `step` and the [`flatten_diagnostics`] keys
    (the `"val"` records of `log.jsonl`): finest-hierarchy L_R vs the trivial predictors, skill per hierarchy,
    student/teacher feature spread per hierarchy, and the linear probe vs the look-back ridge and the mean forecast.
    Uses the Agg canvas (no display needed). Returns the path, or `None` when no record has diagnostics."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = [r for r in history if "diag_skill" in r]
    if not history:
        return None
    figure = Figure(figsize=(11, 7), layout="constrained")
    FigureCanvasAgg(figure)
    (rec, skill), (spread, probe) = figure.subplots(2, 2, squeeze=False)
    rec.plot(*_series(history, "diag_reconstruction_h0"), "k-o", ms=3, label="model L_R (finest)")
    for name, style in zip(TRIVIAL_PREDICTORS, ("--", "-.", ":")):
        rec.plot(*_series(history, f"diag_{name}"), style, label=name)
    rec.set_title("masked reconstruction, scaled MSE", fontsize=9)
    for i in _levels(history, "diag_skill_h"):
        skill.plot(*_series(history, f"diag_skill_h{i}"), "-o", ms=3, label=f"hierarchy {i}")
    skill.axhline(0.0, color="0.6", lw=0.8, ls="--")
    skill.set_title("skill = 1 - L_R / best trivial (> 0: beats them)", fontsize=9)
    for i in _levels(history, "diag_student_spread_h"):
        line = spread.plot(*_series(history, f"diag_student_spread_h{i}"), "-o", ms=3, label=f"student h{i}")[0]
        spread.plot(*_series(history, f"diag_teacher_spread_h{i}"), "--", color=line.get_color(),
                    label=f"teacher h{i}")
    spread.set_title("feature spread over tokens (~0: collapse)", fontsize=9)
    for key, label, style in (("diag_linear_probe_mse", "encoder probe", "-o"),
                              ("diag_linear_probe_lookback_mse", "look-back ridge", "--"),
                              ("diag_linear_probe_mean_mse", "instance mean", ":")):
        probe.plot(*_series(history, key), style, ms=3, label=label)
    probe.set_title("linear-probe forecast MSE (val, standardised)", fontsize=9)
    for ax in (rec, skill, spread, probe):
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=10)
    path = Path(path)
    figure.savefig(path, dpi=90)
    return path
