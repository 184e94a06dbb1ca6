"""Forecasting a ``pandas.DataFrame`` with a trained or a pre-trained HiMTM model.

>>> pipe = HiMTMForecastPipeline.from_pretrained("outputs/etth1-96")    # model + scaler.json
>>> forecast = pipe(history_df, timestamp_column="date", horizon=96)   # DataFrame of future rows
>>> forecasts = pipe(long_df, id_column="item_id")                     # many series: one forecast per id
>>> zero_shot = HiMTMForecastPipeline.from_pretrained("checkpoints/himtm-base")(any_df)  # no fine-tuning

A folder (or Hub repo) saved from ``HiMTMForPretraining`` forecasts zero-shot with
:meth:`~himtm_hf.modeling_himtm.HiMTMForPretraining.forecast` (the future is what the pre-training model
reconstructs). It is channel-independent, so it takes a frame with any value columns, each forecast as its own
series; without a ``scaler.json`` every series is standardised with the mean/std of its own history (the last
section says why that changes nothing with ``scaling="std"``). Each model call forecasts ``prediction_length`` steps
(the config's, or ``from_pretrained(..., prediction_length=H)``) from the last ``forecast_look_back(H)`` rows, the
rest of the model's window being the masked future.

What happens to the frame:

1. checks: a timestamp column that parses as datetimes (or is numeric), sorted, without duplicates and at a regular
   step; value columns that are exactly the scaler's columns (by name, any order); numeric values (NaN = missing);
   at least one patch (``config.patch_length``) of rows. With ``id_column`` the frame is a *long* table of many
   series (each id's rows need not be contiguous): the id column must exist and have no missing id, and every
   series (its rows, in frame order) must pass these checks on its own; an error names the series' id;
2. every value column is standardised. With a plain ``scaler.json`` (a :class:`~himtm_hf.data.SeriesScaler`: the
   training split's global mean/std) every series uses it: the same transform as in training. A model fine-tuned
   on a panel saves a :class:`~himtm_hf.panel.PanelScaler` (one mean/std per series id): a series whose id the
   panel held uses its saved statistics (again the training transform), and a series it did not hold (or any
   frame given without ``id_column``) is standardised with the mean/std of its own given history (why that is
   sound: below); missing values are marked unobserved;
3. the look-back is the last ``look_back`` rows (``context_length`` for a fine-tuned forecaster,
   ``forecast_look_back(prediction_length)`` for a pre-training model); a shorter history is left-padded with zeros
   whose observed mask is 0, so the model's per-instance scaling ignores them. The look-backs of all series of a
   long frame are forecast together in batches (``batch_size`` series per model call; every look-back is exactly
   ``look_back`` rows after padding, so a batch gives each series the forecast it gets alone);
4. the model forecasts ``prediction_length`` steps. A longer ``horizon`` is rolled out autoregressively: each
   forecast is appended to the history as if observed and the model is run again. Errors compound with every
   roll-out step, so forecasts far beyond ``prediction_length`` are increasingly unreliable;
5. forecasts are inverse-transformed to the original units (with the statistics that standardised the series) and
   returned with timestamps that continue the input's frequency (``pd.infer_freq``; if pandas finds no frequency
   alias but the steps are all equal, that step), per series for a long frame, which may mix frequencies.

Series the panel did not hold
-----------------------------
Why such a series may be standardised with the mean/std of its own history: the standardisation is a per-channel
affine map ``z = (x - mean) / std`` applied to the input and inverted on the output, and the model normalises every
look-back window by its own instance statistics first (``config.scaling="std"``, the default: the observed mean and
std of the window, per channel; unobserved steps are set to 0 *after* that normalisation). That normalisation
removes any affine map of the window, so the forecast in original units does not depend on which mean/std was used,
as long as the same ones standardise the input and invert the output (up to float32 rounding and the
``minimum_scale`` floor): the series' own statistics are as good as the training ones. With ``scaling="mean"``
(scale only) or ``None`` the statistics do matter; the series' own mean/std is then the same kind of transform that
panel training applied to each series (the mean/std of its own train rows), the closest stand-in for one it never
saw.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .configuration_himtm import HiMTMConfig
from .data import SeriesScaler
from .modeling_himtm import HiMTMForPrediction, HiMTMForPretraining, _local_location
from .panel import PanelScaler, load_scaler

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


def _scaler_columns(scaler: SeriesScaler | PanelScaler) -> list[str]:
    if isinstance(scaler, PanelScaler):
        return list(scaler.columns)
    return list(scaler.columns or [str(i) for i in range(scaler.num_columns)])


@dataclass
class _Series:
    """One series of a frame, ready for the model: its id (None for a single-series frame), its values in the
    pipeline's column order, the scaler that standardises it, its time axis and the input frame's value columns."""

    key: Any
    values: np.ndarray
    scaler: SeriesScaler
    columns: list[Any]
    axis: TimeAxis


class HiMTMForecastPipeline:
    """Forecasts a DataFrame with a :class:`HiMTMForPrediction` and the scaler it was trained with, or zero-shot with
    a :class:`HiMTMForPretraining`.

    Args:
        model: the forecaster (its ``num_input_channels`` must equal the scaler's column count), or a pre-training
            model, which forecasts by masked reconstruction (``num_input_channels`` 1: every column is its own series;
            else the scaler's column count).
        scaler: the scaler saved with the model (``scaler.json``): a :class:`~himtm_hf.data.SeriesScaler` (the
            training split's statistics, used for every series) or a :class:`~himtm_hf.panel.PanelScaler` (a model
            fine-tuned on a panel: one scaler per series id; see the module docstring for series it did not hold).
            Its column names are the value columns the frame must have. ``None`` (pre-training models only): the
            frame's value columns, whichever they are, each standardised with its own history's mean/std.
        device: where to run the model (default: the model's device).

    ``batch_size`` (default 256) is how many series of a long frame go through the model in one call.
    """

    batch_size: int = 256

    def __init__(
        self,
        model: HiMTMForPrediction | HiMTMForPretraining,
        scaler: SeriesScaler | PanelScaler | None,
        device: str | torch.device | None = None,
    ):
        self.zero_shot = isinstance(model, HiMTMForPretraining)
        self.scaler = scaler
        self.columns = self._checked_columns(model, scaler)
        self.model = model.eval()
        if device is not None:
            self.model.to(device)

    def _checked_columns(self, model: HiMTMForPrediction | HiMTMForPretraining,
                         scaler: SeriesScaler | PanelScaler | None) -> list[str] | None:
        """The scaler's value columns, checked against the model; None without a scaler (a pre-training model with one
        channel: the columns are the frame's, known only when it is given)."""
        channels = model.config.num_input_channels
        if scaler is None:
            if not self.zero_shot:
                raise ValueError(
                    "A fine-tuned HiMTMForPrediction needs the scaler it was trained with; load it from the model's "
                    "scaler.json (HiMTMForecastPipeline.from_pretrained(folder) does)."
                )
            if channels != 1:
                raise ValueError(
                    f"Without a scaler the frame's columns are known only when it is given, so the pre-training model "
                    f"must take one channel (it has {channels}); load it with num_input_channels=1: every column is "
                    "then forecast as its own series."
                )
            return None
        if isinstance(scaler, PanelScaler):
            if not scaler.columns:
                raise ValueError("The panel scaler names no columns; load it from the model's scaler.json.")
        elif scaler.mean is None or scaler.std is None:
            raise ValueError("The scaler is not fitted; load it from the model's scaler.json.")
        columns = _scaler_columns(scaler)
        # A one-channel pre-training model forecasts every column as its own series (`_call_model`).
        if channels != len(columns) and not (self.zero_shot and channels == 1):
            raise ValueError(
                f"The model expects {channels} channels but the scaler has {len(columns)} "
                f"columns {columns}; load the model with num_input_channels={len(columns)}."
            )
        return list(columns)

    # ------------------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        model_name_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        scaler: SeriesScaler | PanelScaler | None = None,
        **model_kwargs: Any,
    ) -> HiMTMForecastPipeline:
        """Loads the model and ``scaler.json`` from a trained output folder, a pre-training folder or a Hub repo id.

        ``scaler.json`` may hold either kind of scaler (:func:`himtm_hf.panel.load_scaler`): a
        :class:`~himtm_hf.data.SeriesScaler` or, for a model fine-tuned on a panel, a
        :class:`~himtm_hf.panel.PanelScaler`. Extra keyword arguments go to the model's ``from_pretrained``
        (e.g. ``revision``, ``cache_dir``, ``token``, which are also used to fetch ``scaler.json`` from the Hub, or
        ``prediction_length``). ``scaler`` overrides the saved one.

        A checkpoint saved from ``HiMTMForPretraining`` (such as ``checkpoints/himtm-base``) loads as a zero-shot
        forecaster with one channel: without a ``scaler.json`` (or a ``scaler``) it forecasts any value columns,
        each standardised with its own history's statistics.
        """
        # A path that can only be local and does not exist is named as such, not reported as a bad Hub repo id.
        model_name_or_path = _local_location(model_name_or_path)
        hub_kwargs = {k: model_kwargs[k] for k in ("revision", "cache_dir", "token") if k in model_kwargs}
        zero_shot = _saved_from_pretraining(model_name_or_path, hub_kwargs)
        if scaler is None:
            scaler = _saved_scaler(model_name_or_path, hub_kwargs, required=not zero_shot)
        if zero_shot:
            model_kwargs.setdefault("num_input_channels", 1)  # channel-independent: every column is a series
            model = HiMTMForPretraining.from_pretrained(model_name_or_path, **model_kwargs)
            model.forecast_look_back(model.config.prediction_length)  # a horizon it cannot forecast fails here
            return cls(model, scaler, device=device)
        model_kwargs.setdefault("num_input_channels", len(_scaler_columns(scaler)))
        model = HiMTMForPrediction.from_pretrained(model_name_or_path, **model_kwargs)
        return cls(model, scaler, device=device)

    @property
    def context_length(self) -> int:
        return int(self.model.config.context_length)

    @property
    def look_back(self) -> int:
        """History rows one model call reads: ``context_length`` for a forecaster; for a pre-training model the window
        less the masked units that hold ``prediction_length`` (``forecast_look_back``)."""
        if self.zero_shot:
            return int(self.model.forecast_look_back(self.prediction_length))
        return self.context_length

    @property
    def prediction_length(self) -> int:
        return int(self.model.config.prediction_length)

    @property
    def patch_length(self) -> int:
        return int(self.model.config.patch_length)

    # ------------------------------------------------------------------------------------------------------------
    def _check_columns(
        self, frame: pd.DataFrame, timestamp_column: str | None, id_column: Any = None
    ) -> list[str]:
        value_columns = [c for c in frame.columns if c != timestamp_column and (id_column is None or c != id_column)]
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
            hint = ""
            if id_column is None:
                ids = [c for c, n in zip(value_columns, names) if n in extra and _looks_like_ids(frame[c])]
                if ids:
                    hint = (f" If {str(ids[0])!r} tells several series apart, pass id_column={str(ids[0])!r} to "
                            "forecast each of them.")
            raise ValueError(
                f"The frame's value columns do not match the columns the model was trained on: {'; '.join(parts)}. "
                f"Expected exactly {self.columns} besides the timestamp column {timestamp_column!r}"
                + (" (select them with df[[timestamp_column, *columns]])." if id_column is None else
                   f" and the id column {id_column!r} (select them with df[[id_column, timestamp_column, *columns]]).")
                + hint
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

    @staticmethod
    def _check_frame(df: pd.DataFrame, timestamp_column: str | None) -> None:
        if not isinstance(df, pd.DataFrame):
            raise ValueError(f"Expected a pandas.DataFrame, got {type(df).__name__}.")
        if timestamp_column is None:
            if not isinstance(df.index, pd.DatetimeIndex):
                raise ValueError(
                    "timestamp_column=None needs a DatetimeIndex; pass the name of the timestamp column instead."
                )
        elif timestamp_column not in df.columns:
            raise ValueError(
                f"No timestamp column {timestamp_column!r} in the frame; columns are {list(map(str, df.columns))}. "
                "Pass timestamp_column=<name of the column with the timestamps>."
            )
        if len(df) == 0:
            raise ValueError("The frame is empty.")

    def _validate(self, df: pd.DataFrame, timestamp_column: str | None) -> tuple[np.ndarray, list[Any], TimeAxis]:
        self._check_frame(df, timestamp_column)
        stamps: Any = df.index if timestamp_column is None else df[timestamp_column]
        columns = self._check_columns(df, timestamp_column)
        if len(df) < self.patch_length:
            raise ValueError(
                f"The frame has {len(df)} row(s), fewer than one patch (patch_length={self.patch_length}); give at "
                f"least {self.patch_length} rows of history (the model looks back up to {self.look_back})."
            )
        values = self._numeric_values(df, columns)
        axis = infer_time_axis(stamps, str(timestamp_column) if timestamp_column is not None else "index")
        return values, columns, axis

    def _series_scaler(self, key: Any, values: np.ndarray) -> SeriesScaler:
        """The scaler of one series: the plain scaler; a panel's saved statistics of a known id; else (an id the panel
        did not hold, or ``key`` None) the mean/std of the series' own history (see the module docstring)."""
        if not isinstance(self.scaler, PanelScaler):
            return self.scaler
        known = None if key is None else self.scaler.for_item(key)
        if known is not None:
            return known
        empty = [self.columns[i] for i in np.flatnonzero(np.isnan(values).all(axis=0))]
        if empty:
            raise ValueError(
                f"Column(s) {empty} have no observed value in the history; the model cannot forecast a series it does "
                "not see (and a series the panel did not hold is standardised with the statistics of its history)."
            )
        return SeriesScaler().fit(values, columns=self.columns)

    def _long_frame_series(
        self, df: pd.DataFrame, timestamp_column: str | None, id_column: Any
    ) -> list[_Series]:
        """Splits a long frame into its series (ids in order of first appearance) and checks each one."""
        self._check_frame(df, timestamp_column)
        if id_column not in df.columns:
            raise ValueError(
                f"No id column {id_column!r} in the frame; columns are {list(map(str, df.columns))}. Pass "
                "id_column=<name of the column that tells the series apart>, or id_column=None for a frame that "
                "holds one series."
            )
        if timestamp_column is not None and id_column == timestamp_column:
            raise ValueError(f"id_column and timestamp_column are both {id_column!r}; they must be different columns.")
        self._check_columns(df, timestamp_column, id_column)
        ids = df[id_column]
        if isinstance(ids, pd.DataFrame):
            raise ValueError(f"The frame has several columns named {id_column!r}; the id column must be unique.")
        missing = ids.isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing))
            raise ValueError(
                f"The id column {id_column!r} is empty (NaN) at row {row} ({int(missing.sum())} row(s) in all); every "
                "row needs the id of its series: fill or drop those rows (df.dropna(subset=[id_column]))."
            )
        codes, keys = pd.factorize(ids, sort=False)  # keys in order of first appearance
        texts: dict[str, Any] = {}
        for key in keys:
            other = texts.setdefault(str(key), key)
            if other is not key:
                raise ValueError(
                    f"The ids {other!r} and {key!r} of column {id_column!r} are the same as text ({str(key)!r}); ids "
                    "are compared as text (as in the saved scaler), so give the series distinct ids."
                )
        positions = pd.Series(codes).groupby(codes, sort=True).indices
        frame = df.drop(columns=[id_column])
        series = []
        for code, key in enumerate(keys):
            part = frame.iloc[positions[code]]
            if timestamp_column is not None:
                part = part.reset_index(drop=True)
            try:
                values, columns, axis = self._validate(part, timestamp_column)
                scaler = self._series_scaler(key, values)
            except ValueError as error:
                raise ValueError(
                    f"Series {key!r} (the {len(part)} rows where {id_column} == {key!r}; row numbers count that "
                    f"series' rows from 0): {error} Fix or drop that series (df[df[{id_column!r}] != {key!r}])."
                ) from error
            series.append(_Series(key, values, scaler, columns, axis))
        return series

    # ------------------------------------------------------------------------------------------------------------
    def _window(self, values: np.ndarray, observed: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The last ``look_back`` rows of a standardised history (NaN -> 0 and unobserved), left-padded with
        unobserved zeros to exactly ``look_back`` rows."""
        context = self.look_back
        history = torch.as_tensor(np.nan_to_num(values, nan=0.0), dtype=torch.float32)
        mask = torch.as_tensor(observed, dtype=torch.float32)
        window, window_mask = (history * mask)[-context:], mask[-context:]
        if window.shape[0] < context:
            pad = context - window.shape[0]
            window = torch.cat([window.new_zeros(pad, window.shape[1]), window])
            window_mask = torch.cat([window_mask.new_zeros(pad, window.shape[1]), window_mask])
        return window, window_mask

    @torch.no_grad()
    def _predict_windows(
        self, windows: torch.Tensor, masks: torch.Tensor, horizon: int, keys: list[Any] | None = None
    ) -> np.ndarray:
        """Forecasts ``horizon`` steps for a batch of ``(batch, look_back, channels)`` look-backs (rolled out
        beyond ``prediction_length``); returns ``(batch, horizon, channels)`` in scaler units. ``keys`` name the
        series in errors."""
        device = next(self.model.parameters()).device
        windows, masks = windows.to(device), masks.to(device)
        unseen = masks.sum(1) == 0  # (batch, channels)
        if bool(unseen.any()):
            row = int(torch.nonzero(unseen.any(1)).flatten()[0])
            empty = [self.columns[i] for i in torch.nonzero(unseen[row]).flatten().tolist()]
            where = "" if keys is None else f"Series {keys[row]!r}: "
            raise ValueError(
                f"{where}Column(s) {empty} have no observed value in the last {self.look_back} rows; the model "
                "cannot forecast a series it does not see."
            )
        outputs = []
        produced = 0
        while produced < horizon:
            forecast = self._call_model(windows, masks)
            outputs.append(forecast)
            produced += forecast.shape[1]
            # Roll-out: feed the forecast back as observed input (errors compound with every step).
            windows = torch.cat([windows, forecast], dim=1)[:, -self.look_back:]
            masks = torch.cat([masks, torch.ones_like(forecast)], dim=1)[:, -self.look_back:]
        return torch.cat(outputs, dim=1)[:, :horizon].cpu().numpy().astype(np.float64)

    def _call_model(self, windows: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """One model call: ``(batch, look_back, channels)`` -> ``(batch, prediction_length, channels)``."""
        if not self.zero_shot:
            return self.model(past_values=windows, past_observed_mask=masks).prediction_outputs
        batch, steps, channels = windows.shape
        if self.model.config.num_input_channels == channels:
            return self.model.forecast(windows, self.prediction_length, masks).prediction_outputs
        # One-channel model: every column of every window is a series of its own (the model is channel-independent).
        as_series = lambda x: x.transpose(1, 2).reshape(batch * channels, steps, 1)  # noqa: E731
        forecast = self.model.forecast(as_series(windows), self.prediction_length, as_series(masks)).prediction_outputs
        return forecast.reshape(batch, channels, -1).transpose(1, 2)  # (batch, prediction_length, channels)

    def predict_scaled(self, values: np.ndarray, observed: np.ndarray, horizon: int) -> np.ndarray:
        """Forecasts ``horizon`` steps from a standardised history.

        Args:
            values: ``(rows, channels)`` history in scaler units (anything where ``observed`` is 0).
            observed: ``(rows, channels)`` 1 = observed, 0 = missing.
            horizon: steps to forecast (roll-out beyond ``prediction_length``).
        Returns:
            ``(horizon, channels)`` forecast in scaler units.
        """
        window, mask = self._window(values, observed)
        return self._predict_windows(window[None], mask[None], horizon)[0]

    def _forecast_series(self, series: list[_Series], horizon: int) -> list[np.ndarray]:
        """Each series' ``(horizon, channels)`` forecast in original units, in batches of ``batch_size``."""
        forecasts: list[np.ndarray] = []
        step = max(1, int(self.batch_size))
        for start in range(0, len(series), step):
            chunk = series[start:start + step]
            pairs = [self._window(np.asarray(s.scaler.transform(s.values), dtype=np.float64), ~np.isnan(s.values))
                     for s in chunk]
            scaled = self._predict_windows(torch.stack([w for w, _ in pairs]), torch.stack([m for _, m in pairs]),
                                           horizon, [s.key for s in chunk])
            forecasts += [np.asarray(s.scaler.inverse_transform(f), dtype=np.float64) for s, f in zip(chunk, scaled)]
        return forecasts

    def __call__(
        self,
        df: pd.DataFrame,
        timestamp_column: str | None = "date",
        horizon: int | None = None,
        id_column: str | None = None,
    ) -> pd.DataFrame:
        """Forecasts the rows that follow ``df``.

        Args:
            df: history with a timestamp column and exactly the scaler's value columns (any order); with
                ``id_column``, a long frame of many series (plus the id column; each id's rows in time order, not
                necessarily contiguous).
            timestamp_column: name of the timestamp column (``None``: use the frame's DatetimeIndex).
            horizon: steps to forecast (default ``prediction_length``); longer horizons are rolled out
                autoregressively, and their error compounds.
            id_column: name of the column that tells the series of a long frame apart (``None``: the frame is one
                series). Each series is forecast on its own (see the module docstring for its standardisation).
        Returns:
            A DataFrame with ``horizon`` rows: the future timestamps (column ``timestamp_column``, or the index when
            it is None) and one column per value column, in original units, in the input's column order. With
            ``id_column``: ``horizon`` rows per series, ids in order of first appearance, the id column first.
        """
        horizon = self.prediction_length if horizon is None else horizon
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"horizon must be a positive int, got {horizon!r}.")
        if self.scaler is None:
            return self._with_columns_of(df, timestamp_column, id_column)(df, timestamp_column, horizon, id_column)
        if id_column is None:
            values, columns, axis = self._validate(df, timestamp_column)
            series = [_Series(None, values, self._series_scaler(None, values), columns, axis)]
        else:
            series = self._long_frame_series(df, timestamp_column, id_column)
        forecasts = self._forecast_series(series, int(horizon))
        input_order = [c for c in df.columns if c != timestamp_column and (id_column is None or c != id_column)]
        frames = []
        for entry, forecast in zip(series, forecasts):
            future = entry.axis.future(int(horizon))
            by_name = dict(zip(entry.columns, forecast.T))
            data = {c: by_name[c] for c in input_order}
            ids = {} if id_column is None else {id_column: [entry.key] * int(horizon)}
            if timestamp_column is None:
                index = pd.DatetimeIndex(future, name=df.index.name)
                frames.append(pd.DataFrame({**ids, **data}, index=index))
            else:
                frames.append(pd.DataFrame({**ids, timestamp_column: future, **data}))
        if len(frames) == 1:
            return frames[0]
        return pd.concat(frames, ignore_index=timestamp_column is not None)

    def _with_columns_of(self, df: pd.DataFrame, timestamp_column: str | None, id_column: Any) -> HiMTMForecastPipeline:
        """A copy of this scaler-less pipeline bound to ``df``'s value columns, each series standardised with its own
        history's statistics (an empty panel: no series is held)."""
        self._check_frame(df, timestamp_column)
        columns = [str(c) for c in df.columns if c != timestamp_column and (id_column is None or c != id_column)]
        if not columns:
            raise ValueError(
                f"The frame has no value column besides the timestamp column {timestamp_column!r}"
                + ("" if id_column is None else f" and the id column {id_column!r}") + "; there is nothing to forecast."
            )
        bound = copy.copy(self)
        bound.scaler, bound.columns = PanelScaler({}, columns), columns
        return bound

    def __repr__(self) -> str:
        if self.scaler is None:
            return (f"HiMTMForecastPipeline(zero-shot, columns=any, context_length={self.context_length}, "
                    f"look_back={self.look_back}, prediction_length={self.prediction_length})")
        kind = f", series={len(self.scaler.scalers)}" if isinstance(self.scaler, PanelScaler) else ""
        return (
            f"HiMTMForecastPipeline(columns={self.columns}{kind}, context_length={self.context_length}, "
            f"prediction_length={self.prediction_length})"
        )


def _saved_from_pretraining(model_name_or_path: str | os.PathLike[str], hub_kwargs: dict[str, Any]) -> bool:
    """Whether the checkpoint's ``config.json`` says it was saved from ``HiMTMForPretraining``. A checkpoint whose
    config cannot be read counts as a forecaster, whose loading then reports what is missing."""
    path = Path(model_name_or_path)
    try:
        if path.is_dir():
            config = json.loads((path / "config.json").read_text(encoding="utf-8"))
            architectures = config.get("architectures") if isinstance(config, dict) else None
        else:
            architectures = HiMTMConfig.from_pretrained(str(model_name_or_path), **hub_kwargs).architectures
    except (OSError, ValueError):
        return False
    return "HiMTMForPretraining" in (architectures or [])


def _saved_scaler(
    model_name_or_path: str | os.PathLike[str], hub_kwargs: dict[str, Any], required: bool
) -> SeriesScaler | PanelScaler | None:
    """The ``scaler.json`` of a local folder or Hub repo; None when there is none and it is not ``required`` (a
    pre-training checkpoint forecasts with each series' own statistics)."""
    path = Path(model_name_or_path)
    if path.is_dir():
        if not required and not (path / SeriesScaler.FILE_NAME).is_file():
            return None
        return load_scaler(path)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return load_scaler(hf_hub_download(str(model_name_or_path), SeriesScaler.FILE_NAME, **hub_kwargs))
    except EntryNotFoundError:
        if required:
            raise
        return None


def _looks_like_ids(column: pd.Series) -> bool:
    """Whether an unexpected column probably names series (text, or a name such as ``item_id``)."""
    name = str(column.name).lower()
    return name in ("item_id", "id", "series_id", "unique_id") or not (
        pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column)
    )
