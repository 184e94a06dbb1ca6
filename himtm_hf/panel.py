"""Datasets of many series: the target-sequence schema and panel windows.

Most time-series datasets on the Hugging Face Hub hold one row per series rather than one column per channel (the
GluonTS layout of the Hub's ETT and Monash datasets, and Chronos-style arrow datasets). :func:`himtm_hf.data.
load_splits` recognises such a dataset by its sequence-valued columns and reads it here.

The schema
----------
* **targets**: ``target_columns`` if given, else the column ``target``, else every numeric sequence column except
  the time axis and GluonTS covariates (``feat_*``, ``past_feat_*``: HiMTM does not use covariates). A 1-D
  ``target`` is one channel (``target``); a 2-D ``target`` holds one sequence per channel (GluonTS: ``(channels,
  steps)``), named ``target_0``, ``target_1``, ...; several sequence columns (Chronos style) are one channel each,
  named after the column. A missing value (null or NaN) is unobserved, as in the wide tables.
* **series ids**: ``id_column`` if given, else ``item_id``, ``id``, ``series_id`` or ``unique_id``, else the row number.
* **time axis**: a sequence column of per-step timestamps (``timestamp``, ``timestamps``, ``time``, ``date``,
  ``datetime``, ``ds``, or ``timestamp_column``), else a ``start`` column with a frequency (a ``freq`` column or
  the ``freq`` argument, a pandas alias such as ``"h"``), else none. Timestamps are needed only for
  ``split_dates``; windows are consecutive steps either way.
* **splits**: a dataset with ``train`` and a ``validation`` (or ``val``, ``valid``, ``dev``) and/or ``test`` split
  uses them, in the GluonTS convention: each later split holds the same series *extended* by its new time steps
  (the earlier split's values are a prefix, checked), so a series' val rows are those beyond its train length and
  its test rows those beyond its val length; val and test windows look back into the rows before them, as in
  the long-term protocol. A split holding a series several times (rolling evaluation entries, each a prefix of
  the next) uses its longest entry. A dataset with only a train split (or one split) is split per series by the
  long-term protocol of :func:`himtm_hf.data.load_splits` (the dataset's name chooses it: a dataset named ETTh1
  gets the ETT borders), or by ``split_fractions`` / ``split_dates``.

Panels
------
Each series is standardised with the statistics of its *own* train rows (per channel) and windowed like a single
series (:func:`himtm_hf.data.series_splits`); the windows of all series are concatenated in series order
(:class:`PanelWindows`). A dataset with one series gives exactly the :class:`~himtm_hf.data.SplitData` of the same
values in a wide table. With several, a series whose train split holds no window is skipped (``short_series="skip"``,
with a warning that counts them) or refused (``"error"``); a series may lack val or test windows (it then trains
only). Panel windows carry the series' ``series_mean`` / ``series_std`` ``(1, channels)`` so that metrics and plots
are also reported in original units; the scaler (:class:`PanelScaler`, saved as ``scaler.json``) holds every
series' statistics by id.
"""

from __future__ import annotations

import bisect
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch.utils.data import Dataset

from .data import (
    _DEFAULT_FRACTIONS,
    _ETT_NAMES,
    SeriesScaler,
    SplitData,
    _check_fractions,
    _SlidingWindows,
    _split_sizes,
    resolve_benchmark_name,
    series_splits,
)

if TYPE_CHECKING:
    from .data import TimestampArg, _Source

__all__ = [
    "PanelScaler",
    "PanelSplitData",
    "PanelWindows",
    "is_target_schema",
    "load_scaler",
    "long_table_splits",
    "panel_splits",
]

_ID_COLUMNS = ("item_id", "id", "series_id", "unique_id")
_TIME_SEQUENCE_NAMES = ("timestamp", "timestamps", "time", "date", "datetime", "ds")
_COVARIATE_PREFIXES = ("feat_", "past_feat_")
_SPLIT_ROLES = {"train": "train", "validation": "val", "val": "val", "valid": "val", "dev": "val", "test": "test"}


def _is_sequence(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _splits_of(loaded: datasets.DatasetDict | datasets.Dataset) -> dict[str, datasets.Dataset]:
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}


def is_target_schema(loaded: datasets.DatasetDict | datasets.Dataset) -> bool:
    """Whether a loaded dataset holds one row per series (some column is a sequence) rather than a wide table."""
    first = next(iter(_splits_of(loaded).values()))
    return any(_is_sequence(kind) for kind in first.data.schema.types)


# ----------------------------------------------------------------------------------------------------------------------
# Reading the schema
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Roles:
    """Which column plays which part (see the module docstring)."""

    targets: list[str]
    ids: str | None
    time: str | None  # a sequence of per-step timestamps
    start: str | None
    freq: str | None  # a column holding each series' frequency


def _choose_roles(
    table: pa.Table, source: _Source, target_columns: Sequence[str] | str | None, timestamp_column: TimestampArg,
    id_column: str | None,
) -> _Roles:
    columns = [str(c) for c in table.column_names]
    sequences = [c for c in columns if _is_sequence(table.schema.field(c).type)]
    for name in [id_column] if id_column is not None else []:
        if name not in columns:
            raise ValueError(f"id_column {name!r} is not a column of {source.describe()}; columns are {columns}.")
    ids = id_column if id_column is not None else next((c for c in _ID_COLUMNS if c in columns), None)
    time = start = None
    if isinstance(timestamp_column, str):
        if timestamp_column not in columns:
            raise ValueError(
                f"timestamp_column {timestamp_column!r} is not a column of {source.describe()}; columns are {columns}."
            )
        time, start = (timestamp_column, None) if timestamp_column in sequences else (None, timestamp_column)
    elif timestamp_column is None:
        time = next((c for c in sequences if c.lower() in _TIME_SEQUENCE_NAMES), None)
        start = "start" if time is None and "start" in columns else None
    if target_columns is not None:
        targets = [target_columns] if isinstance(target_columns, str) else [str(c) for c in target_columns]
        wrong = [c for c in targets if c not in sequences]
        if wrong:
            raise ValueError(
                f"Target column(s) {wrong} of {source.describe()} are not sequence columns; its sequence columns are "
                f"{sequences}."
            )
    elif "target" in sequences:
        targets = ["target"]
    else:
        targets = [c for c in sequences if c != time and not c.startswith(_COVARIATE_PREFIXES)
                   and _numeric_leaf(table.schema.field(c).type)]
    if not targets:
        raise ValueError(
            f"{source.describe()} has sequence columns {sequences} but none holds the values to forecast: name them "
            f"with target_columns=[...] (--target_columns), or call the column 'target'."
        )
    return _Roles(targets, ids, time, start, "freq" if "freq" in columns else None)


def _numeric_leaf(kind: pa.DataType) -> bool:
    while _is_sequence(kind):
        kind = kind.value_type
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def _list_lengths(array: pa.Array) -> np.ndarray:
    return pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False).astype(np.int64)


def _floats(array: pa.Array, column: str, source: _Source) -> np.ndarray:
    if not _numeric_leaf(array.type):
        raise ValueError(
            f"Column {column!r} of {source.describe()} holds {array.type} values; a target sequence must hold numbers."
        )
    return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)  # nulls become NaN


def _column_series(column: pa.ChunkedArray, name: str, source: _Source) -> list[np.ndarray]:
    """Every row's values of a target column as a ``(steps, channels)`` float64 array."""
    array = column.combine_chunks()
    lengths = _list_lengths(array)
    inner = array.flatten()  # respects slicing and skips null rows
    if not _is_sequence(inner.type):
        flat = _floats(inner, name, source)
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        return [flat[bounds[r]:bounds[r + 1], None] for r in range(len(lengths))]
    steps = _list_lengths(inner)
    flat = _floats(inner.flatten(), name, source)
    bounds = np.concatenate([[0], np.cumsum(steps)])
    rows, first = [], 0
    for row, channels in enumerate(lengths):
        own = steps[first:first + channels]
        if channels and (own != own[0]).any():
            raise ValueError(
                f"Row {row} of {source.describe()}: the channels of its 2-D {name!r} have different lengths "
                f"{sorted(set(own.tolist()))}; every channel of a series needs one value per time step (NaN if missing)."
            )
        length = int(own[0]) if channels else 0
        block = flat[bounds[first]:bounds[first + channels]].reshape(channels, length)
        rows.append(block.T)  # GluonTS stores (channels, steps)
        first += channels
    return rows


def _channel_names(table: pa.Table, targets: list[str], widths: list[int]) -> list[str]:
    names = []
    for column, width in zip(targets, widths):
        two_d = _is_sequence(table.schema.field(column).type.value_type)
        names += [f"{column}_{i}" for i in range(width)] if two_d else [column]
    return names


def _timestamps(table: pa.Table, roles: _Roles, row: int, steps: int, freq: str | None) -> pd.Index | None:
    if roles.time is not None:
        stamps = table.column(roles.time)[row].as_py() or []
        index = pd.Index(stamps) if stamps and isinstance(stamps[0], (int, float)) else pd.DatetimeIndex(
            pd.to_datetime(stamps))
        if len(index) != steps:
            raise ValueError(f"Row {row}: {len(index)} timestamps in {roles.time!r} for {steps} target steps.")
        return index
    if roles.start is None:
        return None
    row_freq = table.column(roles.freq)[row].as_py() if roles.freq is not None else freq
    if row_freq is None:
        return None
    return pd.date_range(start=pd.Timestamp(table.column(roles.start)[row].as_py()), periods=steps, freq=row_freq)


@dataclass
class _Series:
    """One series of the dataset: values ``(steps, channels)``, timestamps and, with the dataset's own splits, its
    ``(train, val, test)`` rows."""

    item_id: str
    values: np.ndarray
    timestamps: pd.Index | None
    sizes: tuple[int, int, int] | None = None


def _read_split(
    dataset: datasets.Dataset, source: _Source, target_columns: Sequence[str] | str | None,
    timestamp_column: TimestampArg, id_column: str | None, freq: str | None,
) -> tuple[list[_Series], list[str]]:
    """The series of one split (in row order, ids as text) and the channel names."""
    table = dataset.with_format("arrow")[:]
    roles = _choose_roles(table, source, target_columns, timestamp_column, id_column)
    per_column = [_column_series(table.column(c), c, source) for c in roles.targets]
    ids = ([str(v) for v in table.column(roles.ids).to_pylist()] if roles.ids is not None
           else [str(row) for row in range(table.num_rows)])
    series = []
    for row in range(table.num_rows):
        parts = [rows[row] for rows in per_column]
        if len({len(p) for p in parts}) > 1:
            raise ValueError(
                f"Series {ids[row]!r} of {source.describe()}: its target columns {roles.targets} have different "
                f"lengths {[len(p) for p in parts]}; each needs one value per time step."
            )
        values = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        series.append(_Series(ids[row], values, _timestamps(table, roles, row, len(values), freq)))
    widths = [per_column[i][0].shape[1] if table.num_rows else 1 for i in range(len(roles.targets))]
    return series, _channel_names(table, roles.targets, widths)


def _longest_per_id(series: list[_Series], split: str, source: _Source) -> dict[str, _Series]:
    """One entry per id: the longest, after checking that the others are its prefixes (rolling-evaluation entries)."""
    chosen: dict[str, _Series] = {}
    for entry in series:
        other = chosen.get(entry.item_id)
        if other is None:
            chosen[entry.item_id] = entry
            continue
        short, long = sorted((other, entry), key=lambda s: len(s.values))
        if not np.array_equal(long.values[: len(short.values)], short.values, equal_nan=True):
            raise ValueError(
                f"Series {entry.item_id!r} appears more than once in the {split!r} split of {source.describe()} with "
                f"values that differ; give each series once (or as rolling entries, each a prefix of the next), or "
                f"name the column that tells them apart with --id_column."
            )
        chosen[entry.item_id] = long
    return chosen


def _merge_own_splits(by_role: dict[str, list[_Series]], source: _Source) -> list[_Series]:
    """Joins the dataset's own train/val/test splits (GluonTS convention: each later split extends the series)."""
    layers = {role: _longest_per_id(entries, role, source) for role, entries in by_role.items()}
    train = layers["train"]
    for role in ("val", "test"):
        strangers = [key for key in layers.get(role, {}) if key not in train]
        if strangers:
            raise ValueError(
                f"Series {strangers[:5]} of the {role} split of {source.describe()} are not in its train split: a "
                f"dataset's own splits must hold the same series, each later split extending them by new time steps "
                f"(the GluonTS convention), so that every series is standardised by its own train rows."
            )
    merged = []
    for key, first in train.items():
        sizes, longest = [len(first.values)], first
        for role in ("val", "test"):
            entry = layers.get(role, {}).get(key, longest)
            if len(entry.values) < len(longest.values) or not np.array_equal(
                    entry.values[: len(longest.values)], longest.values, equal_nan=True):
                raise ValueError(
                    f"Series {key!r}: its {role} entry in {source.describe()} does not start with the values of the "
                    f"split before it. A dataset's own splits must follow the GluonTS convention (each later split "
                    f"holds the series extended by its new time steps); otherwise keep only the train split and let "
                    f"split_fractions / split_dates split every series."
                )
            sizes.append(len(entry.values) - len(longest.values))
            longest = entry
        merged.append(_Series(key, longest.values, longest.timestamps, (sizes[0], sizes[1], sizes[2])))
    return merged


def read_series(
    loaded: datasets.DatasetDict | datasets.Dataset, source: _Source, target_columns: Sequence[str] | str | None = None,
    timestamp_column: TimestampArg = None, id_column: str | None = None, freq: str | None = None,
) -> tuple[list[_Series], list[str]]:
    """Every series of a target-schema dataset, joined over its own splits when it has them, and the channel names."""
    splits = _splits_of(loaded)
    roles: dict[str, list[_Series]] = {}
    channels: list[str] = []
    for name, dataset in splits.items():
        role = _SPLIT_ROLES.get(name.lower())
        if role is None and len(splits) > 1:
            raise ValueError(
                f"{source.describe()} has splits {list(splits)}; {name!r} is not train, validation (val, valid, dev) "
                f"or test. Load a dataset whose splits have those names, or save the series as one train split."
            )
        if role in roles:
            raise ValueError(f"{source.describe()} has two splits for {role}: {list(splits)}.")
        roles[role or "train"], split_channels = _read_split(dataset, source, target_columns, timestamp_column,
                                                             id_column, freq)
        if channels and split_channels != channels:
            raise ValueError(f"The splits of {source.describe()} have different channels: {channels} and "
                             f"{split_channels}.")
        channels = split_channels
    if "train" not in roles:
        raise ValueError(f"{source.describe()} has splits {list(splits)} but no train split.")
    if len(roles) == 1:
        return roles["train"], channels
    return _merge_own_splits(roles, source), channels


# ----------------------------------------------------------------------------------------------------------------------
# Scaler and windows
# ----------------------------------------------------------------------------------------------------------------------


class PanelScaler:
    """The per-series standardisation of a panel: one :class:`~himtm_hf.data.SeriesScaler` per series id.

    ``mean`` / ``std`` are ``(series, channels)`` arrays in series order. Saved as ``scaler.json`` with
    ``"format": "himtm-panel-scaler"``; :func:`load_scaler` reads either kind.
    """

    FILE_NAME = SeriesScaler.FILE_NAME
    FORMAT = "himtm-panel-scaler"

    def __init__(self, scalers: dict[str, SeriesScaler], columns: Sequence[str]) -> None:
        self.scalers = dict(scalers)
        self.columns = [str(c) for c in columns]

    @property
    def item_ids(self) -> list[str]:
        return list(self.scalers)

    @property
    def mean(self) -> np.ndarray:
        return np.stack([s.mean for s in self.scalers.values()])  # (series, channels)

    @property
    def std(self) -> np.ndarray:
        return np.stack([s.std for s in self.scalers.values()])

    def for_item(self, item_id: Any) -> SeriesScaler | None:
        """The scaler of series ``item_id`` (compared as text), or None for a series the panel did not hold."""
        return self.scalers.get(str(item_id))

    def transform(self, x: Any) -> Any:
        raise TypeError("A panel has one scaler per series: use panel_scaler.for_item(item_id).transform(x).")

    inverse_transform = transform

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.FORMAT, "columns": self.columns,
                "series": {key: {"mean": s.mean.tolist(), "std": s.std.tolist()} for key, s in self.scalers.items()}}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> PanelScaler:
        columns = payload["columns"]
        return cls({key: SeriesScaler(stats["mean"], stats["std"], columns)
                    for key, stats in payload["series"].items()}, columns)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes ``<directory>/scaler.json``; returns its path."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.FILE_NAME
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"PanelScaler(series={len(self.scalers)}, columns={self.columns})"


def load_scaler(path: str | os.PathLike[str]) -> SeriesScaler | PanelScaler:
    """Reads a ``scaler.json`` (a folder or the file): a :class:`PanelScaler` if it holds one, else a
    :class:`~himtm_hf.data.SeriesScaler`."""
    file = Path(path)
    if file.is_dir() or file.suffix.lower() != ".json":
        file = file / SeriesScaler.FILE_NAME
    if file.is_file():
        try:
            payload = json.loads(file.read_text(encoding="utf-8"))
        except ValueError:
            payload = None
        if isinstance(payload, dict) and payload.get("format") == PanelScaler.FORMAT:
            try:
                return PanelScaler.from_dict(payload)
            except (KeyError, TypeError, ValueError) as error:
                raise ValueError(f"Panel scaler file {file} is not valid: {type(error).__name__}: {error}.") from error
    return SeriesScaler.load(file)


class PanelWindows(Dataset):
    """The windows of several series, concatenated in series order.

    Items are those of the series' window datasets plus ``series_mean`` / ``series_std`` ``(1, channels)`` float64:
    the statistics that standardised the window's series (for original-unit metrics and plots; the training loop
    passes only the model's inputs on).
    """

    def __init__(self, parts: Sequence[_SlidingWindows], scalers: Sequence[SeriesScaler], item_ids: Sequence[str],
                 name: str) -> None:
        self.parts, self.item_ids, self.name = list(parts), list(item_ids), name
        self.scalers = list(scalers)
        self.ends = np.cumsum([len(part) for part in self.parts]).tolist()
        self._means = [torch.as_tensor(s.mean, dtype=torch.float64).view(1, -1) for s in self.scalers]
        self._stds = [torch.as_tensor(s.std, dtype=torch.float64).view(1, -1) for s in self.scalers]
        self.context_length = self.parts[0].context_length
        self.prediction_length = self.parts[0].prediction_length
        self.num_channels = self.parts[0].num_channels

    def __len__(self) -> int:
        return int(self.ends[-1]) if self.ends else 0

    def locate(self, index: int) -> tuple[int, int]:
        """``(series position, window within the series)`` of item ``index``."""
        n = len(self)
        position = index + n if index < 0 else index
        if not 0 <= position < n:
            raise IndexError(f"window index out of range for the {self.name} split with {n} windows")
        part = bisect.bisect_right(self.ends, position)
        return part, position - (self.ends[part - 1] if part else 0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        part, window = self.locate(int(index))
        item = dict(self.parts[part][window])
        item["series_mean"], item["series_std"] = self._means[part], self._stds[part]
        return item

    def windows_per_series(self) -> dict[str, int]:
        return {key: len(part) for key, part in zip(self.item_ids, self.parts)}

    def last_fraction(self, fraction: float) -> PanelWindows:
        """Every series keeps the last ``fraction`` of its windows (see :func:`himtm_hf.data.few_shot_split`)."""
        return PanelWindows([p.last_fraction(fraction) for p in self.parts], self.scalers, self.item_ids, self.name)

    def __repr__(self) -> str:
        return (f"PanelWindows(name={self.name!r}, series={len(self.parts)}, channels={self.num_channels}, "
                f"context_length={self.context_length}, prediction_length={self.prediction_length}, "
                f"windows={len(self)})")


@dataclass
class PanelSplitData(SplitData):
    """A :class:`~himtm_hf.data.SplitData` over many series: ``train`` / ``val`` / ``test`` are
    :class:`PanelWindows`, ``scaler`` a :class:`PanelScaler`; ``series`` holds each kept series' own SplitData (named
    by its id) and ``skipped`` the ids of the series left out, with the reason."""

    series: list[SplitData] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    own_splits: bool = False

    @property
    def item_ids(self) -> list[str]:
        return [s.name for s in self.series]

    def __repr__(self) -> str:
        return (f"PanelSplitData(name={self.name!r}, series={len(self.series)}, skipped={len(self.skipped)}, "
                f"columns={self.columns}, windows={self.describe()['windows']})")

    def describe(self) -> dict[str, Any]:
        """Counts for logs and ``corpus.json``."""
        return {"series": len(self.series), "skipped": len(self.skipped), "own_splits": self.own_splits,
                "windows": {split: len(self[split]) for split in ("train", "val", "test")}}


# ----------------------------------------------------------------------------------------------------------------------
# Splitting
# ----------------------------------------------------------------------------------------------------------------------


def _protocol_sizes(
    series: _Series, protocol: str, split_fractions: Sequence[float] | None, split_dates: Sequence[Any] | None,
) -> tuple[int, int, int]:
    if series.sizes is not None:
        return series.sizes
    return _split_sizes(protocol, len(series.values), series.timestamps, split_fractions, split_dates)


def _short_reason(series: _Series, sizes: tuple[int, int, int] | None, needed: int, error: str | None) -> str | None:
    if error is not None:
        return error
    assert sizes is not None
    if sizes[0] < needed:
        return f"{len(series.values)} steps, {sizes[0]} in its train split; one window needs {needed}"
    return None


def panel_splits(
    loaded: datasets.DatasetDict | datasets.Dataset,
    source: _Source,
    context_length: int,
    prediction_length: int,
    timestamp_column: TimestampArg = None,
    target_columns: Sequence[str] | str | None = None,
    split_fractions: Sequence[float] | None = None,
    split_dates: Sequence[Any] | None = None,
    id_column: str | None = None,
    freq: str | None = None,
    short_series: Literal["skip", "error"] = "skip",
) -> SplitData:
    """The splits of a target-schema dataset (see the module docstring and :func:`himtm_hf.data.load_splits`).

    One series: its :class:`~himtm_hf.data.SplitData`, named after the dataset. Several: a :class:`PanelSplitData`.
    """
    series, channels = read_series(loaded, source, target_columns, timestamp_column, id_column, freq)
    return _splits_of_series(series, channels, source, context_length, prediction_length, split_fractions,
                             split_dates, short_series)


def long_table_splits(
    table: pa.Table,
    source: _Source,
    id_column: str,
    context_length: int,
    prediction_length: int,
    timestamp_column: TimestampArg = None,
    target_columns: Sequence[str] | str | None = None,
    split_fractions: Sequence[float] | None = None,
    split_dates: Sequence[Any] | None = None,
    sort_timestamps: bool = False,
    short_series: Literal["skip", "error"] = "skip",
) -> SplitData:
    """The splits of a wide table in long format: the rows of many series, told apart by ``id_column`` (e.g. a CSV
    ``store,date,sales``). Each id's rows are one series, read and checked like a wide table of its own (timestamps
    unique and increasing within the series, or sorted with ``sort_timestamps``); then as :func:`panel_splits`."""
    from .data import _series_from_table

    columns = [str(c) for c in table.column_names]
    if id_column not in columns:
        raise ValueError(f"id_column {id_column!r} is not a column of {source.describe()}; columns are {columns}.")
    ids = pd.Series(table.column(id_column).to_pandas())
    if ids.isna().any():
        row = int(np.argmax(ids.isna().to_numpy()))
        raise ValueError(f"{source.describe()}: the id column {id_column!r} is empty at row {row}; every row needs the "
                         f"id of its series.")
    rest = table.drop_columns([id_column])
    series, channels = [], []
    for key, rows in ids.astype(str).groupby(ids.astype(str), sort=False).indices.items():
        try:
            frame, stamps, _ = _series_from_table(rest.take(pa.array(rows)), source, timestamp_column,
                                                  target_columns, sort_timestamps)
        except ValueError as error:
            raise ValueError(f"Series {key!r} (rows where {id_column} = {key!r}): {error}") from error
        channels = [str(c) for c in frame.columns]
        series.append(_Series(str(key), frame.to_numpy(dtype=np.float64), stamps))
    return _splits_of_series(series, channels, source, context_length, prediction_length, split_fractions,
                             split_dates, short_series)


def _splits_of_series(
    series: list[_Series], channels: list[str], source: _Source, context_length: int, prediction_length: int,
    split_fractions: Sequence[float] | None, split_dates: Sequence[Any] | None, short_series: str,
) -> SplitData:
    if short_series not in ("skip", "error"):
        raise ValueError(f"short_series must be 'skip' or 'error', got {short_series!r}.")
    own = series[0].sizes is not None if series else False
    if own and (split_fractions is not None or split_dates is not None):
        raise ValueError(f"{source.describe()} has its own train/validation/test splits; leave out split_fractions "
                         f"and split_dates (or save it as one train split to split it yourself).")
    if not series:
        raise ValueError(f"{source.describe()} holds no series.")
    protocol = resolve_benchmark_name(source.name) or source.name
    hint = None
    if not own and (split_fractions is not None or (split_dates is None and protocol not in _ETT_NAMES)):
        hint = _check_fractions(split_fractions) if split_fractions is not None else _DEFAULT_FRACTIONS
    if len(series) == 1:
        frame = pd.DataFrame(series[0].values, columns=channels)
        sizes = _protocol_sizes(series[0], protocol, split_fractions, split_dates)
        return series_splits(frame, series[0].timestamps, source.name, sizes, context_length, prediction_length, hint)
    return _panel(series, channels, source, context_length, prediction_length, protocol, split_fractions, split_dates,
                  short_series, own)


def _panel(
    series: list[_Series], channels: list[str], source: _Source, context_length: int, prediction_length: int,
    protocol: str, split_fractions: Sequence[float] | None, split_dates: Sequence[Any] | None, short_series: str,
    own: bool,
) -> PanelSplitData:
    needed = context_length + prediction_length
    kept: list[SplitData] = []
    skipped: dict[str, str] = {}
    for entry in series:
        sizes, error = None, None
        try:
            sizes = _protocol_sizes(entry, protocol, split_fractions, split_dates)
        except ValueError as problem:  # e.g. a series shorter than the ETT borders
            error = str(problem)
        reason = _short_reason(entry, sizes, needed, error)
        if reason is not None:
            if short_series == "error":
                raise ValueError(
                    f"Series {entry.item_id!r} of {source.describe()} is too short: {reason}. Pass short_series='skip' "
                    f"(--short_series skip) to leave such series out, or use a smaller context_length / "
                    f"prediction_length."
                )
            skipped[entry.item_id] = reason
            continue
        assert sizes is not None
        frame = pd.DataFrame(entry.values, columns=channels)
        kept.append(series_splits(frame, entry.timestamps, entry.item_id, sizes, context_length, prediction_length,
                                  require_test=False))
    if not kept:
        raise ValueError(
            f"None of the {len(series)} series of {source.describe()} is long enough for one train window of "
            f"{needed} steps (e.g. {next(iter(skipped.items()))}). Use a smaller context_length / prediction_length."
        )
    if skipped:
        warnings.warn(
            f"{len(skipped)} of the {len(series)} series of {source.describe()} are too short for one train window "
            f"and are skipped (e.g. {', '.join(list(skipped)[:3])}); short_series='error' refuses them instead.",
            stacklevel=4,
        )
    return _combine(kept, skipped, channels, source.name, own)


def _combine(kept: list[SplitData], skipped: dict[str, str], channels: list[str], name: str,
             own: bool) -> PanelSplitData:
    scalers = [s.scaler for s in kept]
    ids = [s.name for s in kept]
    windows = {split: PanelWindows([s[split] for s in kept], scalers, ids, split) for split in ("train", "val", "test")}
    for split in ("val", "test"):
        if len(windows[split]) == 0:
            warnings.warn(f"No series of {name!r} is long enough for a {split} window.", stacklevel=5)
    return PanelSplitData(
        name=name, train=windows["train"], val=windows["val"], test=windows["test"],  # type: ignore[arg-type]
        scaler=PanelScaler(dict(zip(ids, scalers)), channels), columns=list(channels), timestamps=None, borders={},
        series=kept, skipped=skipped, own_splits=own,
    )


def single_series(
    loaded: datasets.DatasetDict | datasets.Dataset, source: _Source, timestamp_column: TimestampArg,
    target_columns: Sequence[str] | str | None, id_column: str | None, freq: str | None,
) -> tuple[pd.DataFrame, pd.Index | None, str]:
    """:func:`himtm_hf.data.load_series` for a target-schema dataset that holds one series."""
    series, channels = read_series(loaded, source, target_columns, timestamp_column, id_column, freq)
    if len(series) != 1:
        raise ValueError(
            f"{source.describe()} holds {len(series)} series; load_series returns one. Use load_splits, which windows "
            f"them as a panel."
        )
    return pd.DataFrame(series[0].values, columns=channels), series[0].timestamps, source.name
