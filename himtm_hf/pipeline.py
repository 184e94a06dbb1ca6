"""Forecasting a ``pandas.DataFrame`` with a trained HiMTM model.

>>> pipe = HiMTMForecastPipeline.from_pretrained("outputs/etth1-96")    # model + scaler.json
>>> forecast = pipe(history_df, timestamp_column="date", horizon=96)   # DataFrame of future rows

What happens to the frame:

1. checks: a timestamp column that parses as datetimes (or is numeric), sorted, without duplicates and at a regular
   step; value columns that are exactly the scaler's columns (by name, any order); numeric values (NaN = missing);
   at least one patch (``config.patch_length``) of rows;
2. every value column is standardised with the saved scaler (the training split's global mean/std: the same
   transform as in training); missing values are marked unobserved;
3. the look-back is the last ``context_length`` rows; a shorter history is left-padded with zeros whose observed
   mask is 0, so the model's per-instance scaling ignores them;
4. the model forecasts ``prediction_length`` steps. A longer ``horizon`` is rolled out autoregressively: each
   forecast is appended to the history as if observed and the model is run again. Errors compound with every
   roll-out step, so forecasts far beyond ``prediction_length`` are increasingly unreliable;
5. forecasts are inverse-transformed to the original units and returned with timestamps that continue the input's
   frequency (``pd.infer_freq``; if pandas finds no frequency alias but the steps are all equal, that step).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .data import SeriesScaler
from .modeling_himtm import HiMTMForPrediction, _local_location

__all__ = ["HiMTMForecastPipeline", "TimeAxis", "infer_time_axis"]


@dataclass
class TimeAxis:
    """The regular time axis of an input frame: how to continue it."""

    last: Any
    freq: Any  # a pandas offset alias (str) or offset, a pd.Timedelta, or a number for numeric time columns
    kind: str  # "datetime" or "numeric"
    tz: Any = None

    def future(self, steps: int) -> pd.Index:
        if self.kind == "numeric":
            return pd.Index([self.last + self.freq * (k + 1) for k in range(steps)])
        if isinstance(self.freq, pd.Timedelta):
            return pd.DatetimeIndex([self.last + self.freq * (k + 1) for k in range(steps)])
        return pd.date_range(start=self.last, periods=steps + 1, freq=self.freq)[1:]  # an offset alias or object


def _alias(step: pd.Timedelta) -> str:
    try:
        return pd.tseries.frequencies.to_offset(step).freqstr
    except ValueError:
        return str(step)


def infer_time_axis(stamps: pd.Series | pd.Index, column: str) -> TimeAxis:
    """Validates a timestamp column and returns its :class:`TimeAxis`.

    Raises ``ValueError`` for unparsable, missing, duplicated, unsorted or irregular timestamps.
    """
    series = pd.Series(stamps).reset_index(drop=True)
    if pd.api.types.is_bool_dtype(series):
        raise ValueError(f"Timestamp column {column!r} holds booleans; it must hold datetimes or numbers.")
    numeric = pd.api.types.is_numeric_dtype(series)
    if numeric:
        values = series.astype(float)
    else:
        try:
            values = pd.to_datetime(series)
        except (ValueError, TypeError) as error:
            try:
                values = pd.to_datetime(series, format="mixed")
            except (ValueError, TypeError):
                raise ValueError(
                    f"Timestamp column {column!r} could not be parsed as datetimes ({error}). Pass the name of the "
                    "column holding the timestamps with timestamp_column=..."
                ) from error
    missing = values.isna().to_numpy()
    if missing.any():
        row = int(np.argmax(missing))
        raise ValueError(f"Timestamp column {column!r} has a missing value at row {row}; every row needs a timestamp.")
    duplicated = values.duplicated().to_numpy()
    if duplicated.any():
        row = int(np.argmax(duplicated))
        raise ValueError(
            f"Timestamp column {column!r} has duplicated timestamps: {str(values.iloc[row])} appears again at "
            f"row {row}. Aggregate or drop duplicates first (e.g. df.drop_duplicates({column!r}))."
        )
    if len(values) > 1:
        steps = values.diff().iloc[1:]
        backwards = (steps <= (0 if numeric else pd.Timedelta(0))).to_numpy()
        if backwards.any():
            row = int(np.argmax(backwards)) + 1
            raise ValueError(
                f"Timestamp column {column!r} is not sorted in increasing order: row {row} "
                f"({str(values.iloc[row])}) comes after row {row - 1} ({str(values.iloc[row - 1])}). "
                f"Sort the frame first (df.sort_values({column!r}))."
            )
    if len(values) < 2:
        raise ValueError(
            f"Timestamp column {column!r} has {len(values)} row(s); at least 2 are needed to infer the frequency."
        )
    if numeric:
        steps = np.diff(values.to_numpy())
        step = float(np.median(steps))
        if not np.allclose(steps, step, rtol=1e-9, atol=0.0):
            raise ValueError(
                f"Timestamp column {column!r} is irregular: steps range from {steps.min():g} to {steps.max():g}. "
                "Resample the series to a regular step first."
            )
        last = series.iloc[-1]
        if pd.api.types.is_integer_dtype(series) and float(step).is_integer():
            step = int(step)
        return TimeAxis(last=last, freq=step, kind="numeric")

    index = pd.DatetimeIndex(values)
    freq = None
    if len(index) >= 3:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pandas 3 warns that infer_freq will return an offset object
                freq = pd.infer_freq(index)
        except (TypeError, ValueError):
            freq = None
    if freq is None:
        deltas = index[1:] - index[:-1]
        step = deltas.median()
        if not (deltas == step).all():
            irregular = np.flatnonzero(np.asarray(deltas != step))
            row = int(irregular[0]) + 1
            raise ValueError(
                f"Timestamp column {column!r} is irregular: the usual step is {step}, but row {row} "
                f"({index[row]}) is {deltas[row - 1]} after the previous row ({len(irregular)} irregular step(s) in "
                f"all). Resample to a regular frequency first, e.g. df.set_index({column!r}).asfreq({_alias(step)!r}) "
                "(gaps become NaN, which the model treats as missing)."
            )
        freq = step
    return TimeAxis(last=index[-1], freq=freq, kind="datetime", tz=index.tz)


class HiMTMForecastPipeline:
    """Forecasts a DataFrame with a :class:`HiMTMForPrediction` and the scaler it was trained with.

    Args:
        model: the forecaster (its ``num_input_channels`` must equal the scaler's column count).
        scaler: the training split's :class:`~himtm_hf.data.SeriesScaler` (``scaler.json``); its column names
            are the value columns the frame must have.
        device: where to run the model (default: the model's device).
    """

    def __init__(self, model: HiMTMForPrediction, scaler: SeriesScaler, device: str | torch.device | None = None):
        if scaler.mean is None or scaler.std is None:
            raise ValueError("The scaler is not fitted; load it from the model's scaler.json.")
        columns = scaler.columns or [str(i) for i in range(scaler.num_columns)]
        if model.config.num_input_channels != len(columns):
            raise ValueError(
                f"The model expects {model.config.num_input_channels} channels but the scaler has {len(columns)} "
                f"columns {columns}; load the model with num_input_channels={len(columns)}."
            )
        self.model = model.eval()
        if device is not None:
            self.model.to(device)
        self.scaler = scaler
        self.columns = list(columns)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        scaler: SeriesScaler | None = None,
        **model_kwargs: Any,
    ) -> HiMTMForecastPipeline:
        """Loads the model and ``scaler.json`` from a trained output folder or a Hub repo id.

        Extra keyword arguments go to ``HiMTMForPrediction.from_pretrained`` (e.g. ``revision``, ``cache_dir``,
        ``token``, which are also used to fetch ``scaler.json`` from the Hub). ``scaler`` overrides the saved one.
        """
        # A path that can only be local and does not exist is named as such, not reported as a bad Hub repo id.
        model_name_or_path = _local_location(model_name_or_path)
        path = Path(model_name_or_path)
        if scaler is None:
            if path.is_dir():
                scaler = SeriesScaler.load(path)
            else:
                from huggingface_hub import hf_hub_download

                hub_kwargs = {k: model_kwargs[k] for k in ("revision", "cache_dir", "token") if k in model_kwargs}
                scaler_path = hf_hub_download(str(model_name_or_path), SeriesScaler.FILE_NAME, **hub_kwargs)
                scaler = SeriesScaler.load(scaler_path)
        model_kwargs.setdefault("num_input_channels", len(scaler.columns or []) or scaler.num_columns)
        model = HiMTMForPrediction.from_pretrained(model_name_or_path, **model_kwargs)
        return cls(model, scaler, device=device)

    @property
    def context_length(self) -> int:
        return int(self.model.config.context_length)

    @property
    def prediction_length(self) -> int:
        return int(self.model.config.prediction_length)

    @property
    def patch_length(self) -> int:
        return int(self.model.config.patch_length)

    # ------------------------------------------------------------------------------------------------------------
    def _check_columns(self, frame: pd.DataFrame, timestamp_column: str | None) -> list[str]:
        value_columns = [c for c in frame.columns if c != timestamp_column]
        names = [str(c) for c in value_columns]
        if len(set(names)) != len(names):
            raise ValueError(f"The frame has duplicated column names: {names}.")
        missing = [c for c in self.columns if c not in names]
        extra = [c for c in names if c not in self.columns]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing {missing}")
            if extra:
                parts.append(f"unexpected {extra}")
            raise ValueError(
                f"The frame's value columns do not match the columns the model was trained on: {'; '.join(parts)}. "
                f"Expected exactly {self.columns} besides the timestamp column {timestamp_column!r} "
                "(select them with df[[timestamp_column, *columns]])."
            )
        return [value_columns[names.index(c)] for c in self.columns]

    @staticmethod
    def _numeric_values(frame: pd.DataFrame, columns: list[Any]) -> np.ndarray:
        arrays = []
        for column in columns:
            series = frame[column]
            if pd.api.types.is_bool_dtype(series):
                arrays.append(series.astype(float).to_numpy())
                continue
            if pd.api.types.is_numeric_dtype(series):
                values = series.astype(float).to_numpy()
            else:
                values = pd.to_numeric(series, errors="coerce").astype(float).to_numpy()
                bad = np.isnan(values) & series.notna().to_numpy()
                if bad.any():
                    row = int(np.argmax(bad))
                    raise ValueError(
                        f"Column {column!r} has a non-numeric value {series.iloc[row]!r} at row {row}; every value "
                        "column must be numeric (use NaN for missing values)."
                    )
            if np.isinf(values).any():
                row = int(np.argmax(np.isinf(values)))
                raise ValueError(
                    f"Column {column!r} has an infinite value at row {row}; use NaN for a missing value."
                )
            arrays.append(values)
        return np.stack(arrays, axis=1)

    def _validate(self, df: pd.DataFrame, timestamp_column: str | None) -> tuple[np.ndarray, list[Any], TimeAxis]:
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"Expected a pandas.DataFrame, got {type(df).__name__}.")
        if timestamp_column is None:
            if not isinstance(df.index, pd.DatetimeIndex):
                raise ValueError(
                    "timestamp_column=None needs a DatetimeIndex; pass the name of the timestamp column instead."
                )
            stamps: Any = df.index
        else:
            if timestamp_column not in df.columns:
                raise ValueError(
                    f"No timestamp column {timestamp_column!r} in the frame; columns are {list(map(str, df.columns))}. "
                    "Pass timestamp_column=<name of the column with the timestamps>."
                )
            stamps = df[timestamp_column]
        if len(df) == 0:
            raise ValueError("The frame is empty.")
        columns = self._check_columns(df, timestamp_column)
        if len(df) < self.patch_length:
            raise ValueError(
                f"The frame has {len(df)} row(s), fewer than one patch (patch_length={self.patch_length}); give at "
                f"least {self.patch_length} rows of history (the model looks back up to {self.context_length})."
            )
        values = self._numeric_values(df, columns)
        axis = infer_time_axis(stamps, str(timestamp_column) if timestamp_column is not None else "index")
        return values, columns, axis

    # ------------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_scaled(self, values: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
        """Forecasts ``horizon`` steps from a standardised history.

        Args:
            values: ``(rows, channels)`` history in scaler units (anything where ``observed`` is 0).
            observed: ``(rows, channels)`` 1 = observed, 0 = missing.
            horizon: steps to forecast (roll-out beyond ``prediction_length``).
        Returns:
            ``(horizon, channels)`` forecast in scaler units.
        """
        device = next(self.model.parameters()).device
        context = self.context_length
        history = torch.as_tensor(np.nan_to_num(values, nan=0.0), dtype=torch.float32, device=device)
        mask = torch.as_tensor(observed, dtype=torch.float32, device=device)
        history = history * mask
        outputs = []
        produced = 0
        while produced < horizon:
            window, window_mask = history[-context:], mask[-context:]
            if window.shape[0] < context:
                pad = context - window.shape[0]
                window = torch.cat([window.new_zeros(pad, window.shape[1]), window])
                window_mask = torch.cat([window_mask.new_zeros(pad, window.shape[1]), window_mask])
            if not bool((window_mask.sum(0) > 0).all()):
                empty = [self.columns[i] for i in torch.nonzero(window_mask.sum(0) == 0).flatten().tolist()]
                raise ValueError(
                    f"Column(s) {empty} have no observed value in the last {context} rows; the model cannot "
                    "forecast a series it does not see."
                )
            forecast = self.model(past_values=window[None], past_observed_mask=window_mask[None]).prediction_outputs[0]
            outputs.append(forecast)
            produced += forecast.shape[0]
            # Roll-out: feed the forecast back as observed input (errors compound with every step).
            history = torch.cat([history, forecast])
            mask = torch.cat([mask, torch.ones_like(forecast)])
        return torch.cat(outputs)[:horizon].cpu().numpy().astype(np.float64)

    def __call__(
        self, df: pd.DataFrame, timestamp_column: str | None = "date", horizon: int | None = None
    ) -> pd.DataFrame:
        """Forecasts the rows that follow ``df``.

        Args:
            df: history with a timestamp column and exactly the scaler's value columns (any order).
            timestamp_column: name of the timestamp column (``None``: use the frame's DatetimeIndex).
            horizon: steps to forecast (default ``prediction_length``); longer horizons are rolled out
                autoregressively, and their error compounds.
        Returns:
            A DataFrame with ``horizon`` rows: the future timestamps (column ``timestamp_column``, or the index when
            it is None) and one column per value column, in original units, in the input's column order.
        """
        horizon = self.prediction_length if horizon is None else horizon
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}.")
        values, columns, axis = self._validate(df, timestamp_column)
        observed = ~np.isnan(values)
        scaled = np.asarray(self.scaler.transform(values), dtype=np.float64)
        forecast = self.predict_scaled(scaled, observed, int(horizon))
        forecast = np.asarray(self.scaler.inverse_transform(forecast), dtype=np.float64)
        future = axis.future(int(horizon))
        by_name = dict(zip(columns, forecast.T))
        input_order = [c for c in df.columns if c != timestamp_column]
        data = {c: by_name[c] for c in input_order}
        if timestamp_column is None:
            return pd.DataFrame(data, index=pd.DatetimeIndex(future, name=df.index.name))
        return pd.DataFrame({timestamp_column: future, **data})

    def __repr__(self) -> str:
        return (
            f"HiMTMForecastPipeline(columns={self.columns}, context_length={self.context_length}, "
            f"prediction_length={self.prediction_length})"
        )
