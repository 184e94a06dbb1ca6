"""Data loading, standardisation and sliding-window datasets for long-term forecasting.

Everything goes through the ``datasets`` library (``load_dataset("csv" | "parquet", ...)`` for
local files, ``load_dataset(repo_id)`` for a Hub dataset repository) and is then turned into
numpy/pandas/torch objects.

Where the data comes from
-------------------------
``dataset`` may be

* an existing local file: ``.csv``, ``.csv.gz`` or ``.parquet``;
* a benchmark name (case-insensitive; aliases such as ``Weather``, ``exchange``, ``ili``,
  ``ecl``): ``ETTh1``, ``ETTh2``, ``ETTm1``, ``ETTm2``, ``weather``, ``exchange_rate``,
  ``national_illness``, ``electricity``, ``traffic``. The file ``<name>.csv.gz``,
  ``<name>.csv`` or ``<name>.parquet`` is looked up in the data directory: the ``data_dir``
  argument, else the environment variable ``HIMTM_DATA_DIR``, else ``../shared/data`` relative
  to the project root (the folder that contains the ``himtm_hf`` package) if it exists;
* an existing ``.arrow`` file, or a local dataset folder laid out like a Hub dataset repository
  (data files, optionally a ``README.md`` dataset card naming them per split and configuration);
* anything else containing a ``/`` (and not looking like a file path) is treated as a Hugging
  Face Hub dataset repository id (offline: from the local ``datasets`` cache);
  ``dataset_config`` names one of its configurations.

Two layouts are read: a **wide table** (one column per channel, one row per time step; of a folder
or Hub dataset its ``train`` split, or its only split), and the **target-sequence schema** (one row
per series with a ``target`` sequence: the GluonTS / Chronos layout of most Hub time-series
datasets, recognised by its sequence-valued columns; see :mod:`himtm_hf.panel`). A wide table with
``id_column`` is a **long table**: the rows of many series, told apart by that column. A dataset of
several series is a panel: :func:`load_splits` returns a :class:`himtm_hf.panel.PanelSplitData`.

Column roles
------------
``timestamp_column`` defaults to ``"date"`` when such a column exists, else to the first column
named like a time axis (``datetime``, ``time``, ``timestamp``, ``ts``, ``epoch``, ``step``, ...,
case-insensitive) or like a saved row index (``index``, ``Unnamed: 0``); pass ``False`` for "no
timestamp column". A timestamp column of numbers (epoch seconds, steps) is a numeric time axis.
``target_columns`` defaults to every numeric column except the timestamp; a numeric column named
like a time axis or row index that is not the timestamp column is then an error, not a channel
(name the channels with ``target_columns``). Column names are kept exactly as written in the file
(the weather header contains U+FFFD characters; they are not altered).

Timestamps
----------
Windows are consecutive rows, so every row needs a timestamp, and they must be unique and strictly
increasing: a duplicated, shuffled or reversed time axis is a ``ValueError`` naming the file and
the first offending rows (``sort_timestamps=True`` sorts the rows instead; duplicates stay an
error). Gaps are allowed. The one duplicate of the distributed weather file is accepted so the
benchmark protocol is unchanged (``_KNOWN_DUPLICATE_TIMESTAMPS``).

Malformed files
---------------
An empty, header-only, binary, non-UTF-8, ragged (a row with more or fewer fields than the
header) or truncated/corrupt gzip CSV, and an unreadable parquet file, raise a ``ValueError``
naming the file and the problem, instead of a pandas / datasets / gzip traceback or a silently
shifted or padded table.

Splits (the Informer / Autoformer / PatchTST protocol)
------------------------------------------------------
* ETTh1/ETTh2: train = first 12*30*24 rows, val = next 4*30*24, test = next 4*30*24.
* ETTm1/ETTm2: the same with 4x the rows (15-minute data).
* everything else (and user data by default): train = ``int(0.7 * n)``, test = ``int(0.2 * n)``,
  val = ``n - train - test``.
* ``split_fractions=(train, val, test)`` overrides the fractions (same ``int`` rounding for train
  and test, val gets the remainder); ``split_dates=(d1, d2)`` puts rows with timestamp < d1 in
  train, d1 <= timestamp < d2 in val, and the rest in test.

The protocol is chosen by the dataset's name (the benchmark name, a file's stem or the last part
of a Hub repo id), so a local ``ETTh1.csv`` gets the ETT split too.

The val and test splits start ``context_length`` rows early (never before row 0), so their first
window has a full look-back. Every column is standardised with the mean/std (``ddof=0``, zero std
replaced by 1) of the *train rows only*, and every window with stride 1 is kept (no
``drop_last``).

NaN policy
----------
Missing values (empty cells, ``NaN``, ``NA``, ...) in target columns are allowed:

* the scaler statistics are computed with NaN-aware functions (``np.nanmean``/``np.nanstd``)
  over the observed train values; a column with no observed value in the train split is an error;
* the observed masks (``past_observed_mask``/``future_observed_mask``) are ``False`` where the
  raw value was NaN and ``True`` elsewhere;
* after standardisation NaNs are replaced with 0 (the train mean), so tensors never contain NaN.

Infinite values (``inf``/``-inf``) are rejected with a ``ValueError`` naming the column and row,
as are non-numeric values in a target column. So are values whose scaler statistics overflow or do
not fit float32 (e.g. 1e300, whose square overflows float64; see ``SeriesScaler``), values that
overflow float32 once standardised, and a stretch of rows missing in every column that fills a
whole look-back window (the model refuses a window with nothing observed).

Pre-training windows and multi-domain corpora
---------------------------------------------
Pre-training reconstructs the look-back and never reads a future, so ``load_splits(...,
prediction_length=0)`` windows the same split rows into look-back-only windows of ``context_length``
rows (:class:`LookbackWindowDataset`): a split of ``rows`` rows has ``rows - context_length + 1``
windows instead of ``rows - context_length - prediction_length + 1``. Fine-tuning and evaluation keep
:class:`ForecastWindowDataset`.

:func:`load_pretraining_corpus` mixes several datasets channel-independently: each is split by its own
protocol and standardised with its *own* train statistics, every channel of every look-back window is a
univariate window (:class:`UnivariateWindowDataset`), train splits feed training and val splits
validation, optionally capped per dataset (``max_windows_per_dataset``, evenly strided) so that no
dataset dominates. ``PretrainingCorpus.save`` writes ``corpus.json`` (datasets, windows, scalers).
"""

from __future__ import annotations

import codecs
import copy
import csv
import gzip
import json
import math
import os
import re
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import torch
from torch.utils.data import ConcatDataset, Dataset

__all__ = [
    "BENCHMARKS",
    "CORPUS_FILE",
    "DATA_DIR_ENV",
    "CorpusMember",
    "ForecastWindowDataset",
    "LookbackWindowDataset",
    "PretrainingCorpus",
    "SeriesScaler",
    "SplitData",
    "UnivariateWindowDataset",
    "compute_borders",
    "default_data_dir",
    "few_shot_split",
    "load_pretraining_corpus",
    "load_series",
    "load_splits",
    "lookback_splits",
    "resolve_benchmark_name",
    "select_datasets",
    "series_splits",
    "split_dataset_list",
    "strided_indices",
]

DATA_DIR_ENV = "HIMTM_DATA_DIR"
"""Environment variable naming the folder that holds the benchmark files."""

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The folder that contains the ``himtm_hf`` package."""

BENCHMARKS: tuple[str, ...] = (
    "ETTh1",
    "ETTh2",
    "ETTm1",
    "ETTm2",
    "weather",
    "exchange_rate",
    "national_illness",
    "electricity",
    "traffic",
)
"""Canonical benchmark names (also the file stems looked up in the data directory)."""

_ALIASES: dict[str, str] = {
    **{name.lower(): name for name in BENCHMARKS},
    "exchange": "exchange_rate",
    "exchangerate": "exchange_rate",
    "exchange-rate": "exchange_rate",
    "ili": "national_illness",
    "illness": "national_illness",
    "national-illness": "national_illness",
    "nationalillness": "national_illness",
    "ecl": "electricity",
}

_FILE_SUFFIXES: tuple[str, ...] = (".csv.gz", ".csv", ".parquet", ".arrow")

# Fixed row counts (train, val, test) of the ETT protocol.
_ETT_HOUR_SPLITS = (12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24)
_ETT_MINUTE_SPLITS = tuple(4 * n for n in _ETT_HOUR_SPLITS)
_DEFAULT_FRACTIONS = (0.7, 0.1, 0.2)
_ETT_NAMES = ("ETTh1", "ETTh2", "ETTm1", "ETTm2")
_SPLITS = ("train", "val", "test")

TimestampArg = str | Literal[False] | None


# ----------------------------------------------------------------------------------------------
# Source resolution
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    kind: Literal["csv", "parquet", "arrow", "folder", "hub"]
    location: str
    name: str

    def describe(self) -> str:
        if self.kind == "hub":
            return f"Hub dataset {self.location!r}"
        return f"dataset folder {self.location}" if self.kind == "folder" else f"file {self.location}"


def resolve_benchmark_name(name: str) -> str | None:
    """Return the canonical benchmark name for ``name`` (case-insensitive, aliases), or None."""
    return _ALIASES.get(name.strip().lower())


def default_data_dir() -> Path | None:
    """The data directory used when no ``data_dir`` is given.

    ``$HIMTM_DATA_DIR`` if set, else ``<project root>/../shared/data`` if that folder exists,
    else None.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    candidate = PROJECT_ROOT.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None


def _file_kind(path: Path) -> Literal["csv", "parquet", "arrow"] | None:
    name = path.name.lower()
    if name.endswith(".csv") or name.endswith(".csv.gz"):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".arrow"):
        return "arrow"
    return None


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _FILE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _looks_like_path(text: str) -> bool:
    lowered = text.lower()
    return (
        lowered.endswith(_FILE_SUFFIXES)
        or text.startswith(("/", "./", "../", "~", "\\"))
        or (len(text) > 1 and text[1] == ":")  # Windows drive letter
    )


def _resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> tuple[Path | None, str]:
    if data_dir is not None:
        return Path(data_dir).expanduser(), "the data_dir argument"
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser(), f"${DATA_DIR_ENV}"
    return default_data_dir(), "the default <project>/../shared/data"


def _resolve_source(dataset: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None) -> _Source:
    text = os.fspath(dataset)
    path = Path(text).expanduser()
    if path.is_file():
        kind = _file_kind(path)
        if kind is None:
            raise ValueError(f"Unsupported file type for {path}: expected a .csv, .csv.gz, .parquet or .arrow file.")
        return _Source(kind, str(path), _stem(path))
    if path.is_dir():
        # A local dataset folder laid out like a Hub dataset repository (data files, optionally a dataset card);
        # like `datasets.load_dataset`, an existing folder wins over a Hub id of the same spelling.
        return _Source("folder", str(path), path.resolve().name)

    canonical = resolve_benchmark_name(text)
    if canonical is not None:
        directory, origin = _resolve_data_dir(data_dir)
        fix = (
            f"Pass data_dir=... or set the environment variable {DATA_DIR_ENV} to the folder that "
            f"holds {canonical}.csv.gz (or .csv / .parquet)."
        )
        if directory is None:
            raise FileNotFoundError(
                f"No data directory for benchmark {canonical!r}: no data_dir argument, "
                f"${DATA_DIR_ENV} is not set and {PROJECT_ROOT.parent / 'shared' / 'data'} "
                f"does not exist. {fix}"
            )
        if not directory.is_dir():
            raise FileNotFoundError(
                f"Data directory {directory} (from {origin}) does not exist or is not a folder. {fix}"
            )
        candidates = [canonical + suffix for suffix in _FILE_SUFFIXES]
        for candidate in candidates:
            if (directory / candidate).is_file():
                return _Source(
                    _file_kind(directory / candidate) or "csv", str(directory / candidate), canonical
                )
        # Case-insensitive fallback (e.g. Weather.csv).
        wanted = {c.lower() for c in candidates}
        existing = sorted(p.name for p in directory.iterdir() if p.is_file())
        for name in existing:
            if name.lower() in wanted:
                return _Source(_file_kind(directory / name) or "csv", str(directory / name), canonical)
        raise FileNotFoundError(
            f"Benchmark {canonical!r}: none of {candidates} is in {directory} (from {origin}). "
            f"Files there: {existing or 'none'}. {fix}"
        )

    if _looks_like_path(text):
        raise FileNotFoundError(
            f"Data file {path} does not exist. Pass an existing .csv/.csv.gz/.parquet/.arrow file or dataset folder, a "
            f"benchmark name ({', '.join(BENCHMARKS)}) or a Hub dataset repo id ('owner/name')."
        )
    if "/" in text:
        return _Source("hub", text, text.rstrip("/").split("/")[-1])
    raise ValueError(
        f"Unknown dataset {text!r}: it is not an existing file, not a known benchmark and not a Hub "
        f"repo id. Known benchmark names (case-insensitive): {', '.join(BENCHMARKS)} "
        f"(aliases: exchange, ili, illness, ecl). For your own data pass the path of a .csv, "
        f".csv.gz or .parquet file."
    )


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


_CHECKED_CSV_FILES: dict[tuple[str, int, int], None] = {}
"""CSV files that passed `_check_csv_file`, by (path, size, mtime): a file is scanned once per process."""

_HEAD_BYTES = 1 << 16


def _read_head(path: str) -> bytes:
    """The first bytes of the file's text (decompressed for ``.gz``); raises ValueError for a bad gzip stream."""
    try:
        if path.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read(_HEAD_BYTES)
        with open(path, "rb") as handle:
            return handle.read(_HEAD_BYTES)
    except gzip.BadGzipFile as error:
        raise ValueError(
            f"File {path} is not a gzip file although its name ends in .gz ({error}). Rename it to .csv if it is "
            f"plain text, or compress it again."
        ) from error
    except (EOFError, zlib.error) as error:
        raise ValueError(
            f"File {path} is a truncated or corrupt gzip file ({type(error).__name__}: {error}); it was probably cut "
            f"off while downloading or copying. Fetch or compress it again."
        ) from error


def _ragged_line(path: str) -> str:
    """Where the first row whose field count differs from the header's is (error path only: a Python scan)."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", newline="") as handle:  # type: ignore[operator]
        reader = csv.reader(handle)
        header = next(reader, [])
        for row in reader:
            if row and len(row) != len(header):
                return (
                    f"line {reader.line_num} has {len(row)} fields but the header (line 1) has {len(header)}"
                    f" ({','.join(row)[:80]!r})"
                )
    return "a row's field count differs from the header's"


def _check_csv_file(path: str) -> None:
    """Checks that ``path`` is readable CSV text with a header, at least one data row and the same number of fields
    on every row; raises a ValueError naming the file and the problem otherwise.

    Without it ``datasets``/pandas fail with their own tracebacks (``EmptyDataError``, "Instruction 'train'
    corresponds to no data", ``DatasetGenerationError``, ``EOFError``), or worse, read a ragged file silently: a row
    with too few fields gets empty (missing) trailing values, and a file whose rows all have one field more than the
    header is read with its first column as the index, shifting every column by one. The field count scan uses
    ``pyarrow.csv`` (fast, multi-threaded, no values converted), once per file and process.
    """
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key in _CHECKED_CSV_FILES:
        return
    head = _read_head(path)
    if not head.strip():
        raise ValueError(
            f"File {path} is empty: it has no header line and no data. Expected a CSV file whose first line names the "
            f"columns (e.g. date,a,b) followed by one line per time step."
        )
    if b"\0" in head:
        raise ValueError(
            f"File {path} looks like a binary file (it contains NUL bytes), not CSV text. Pass a .csv/.csv.gz text "
            f"file, or a .parquet file for binary tables."
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < _HEAD_BYTES)
    except UnicodeDecodeError as error:
        raise ValueError(
            f"File {path} is not UTF-8 text (byte {head[error.start]:#04x} at offset {error.start}). Save it as UTF-8 "
            f"(e.g. pandas: df.to_csv(path, encoding='utf-8'))."
        ) from error
    try:
        table = pa_csv.read_csv(
            path,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True),
            convert_options=pa_csv.ConvertOptions(include_columns=[]),
        )
    except pa.ArrowInvalid as error:
        if "Expected" in str(error) and "columns, got" in str(error):
            raise ValueError(
                f"File {path} has rows with the wrong number of fields: {_ragged_line(path)}. Every row needs exactly "
                f"one value per header column (leave a cell empty for a missing value; quote values that contain a "
                f"comma)."
            ) from error
        raise ValueError(f"File {path} could not be read as CSV: {error}.") from error
    except (OSError, EOFError) as error:  # pyarrow reports a truncated or corrupt gzip stream as OSError
        raise ValueError(
            f"File {path} could not be read to the end ({type(error).__name__}: {error}): a truncated or corrupt "
            f"compressed file? Fetch or compress it again."
        ) from error
    if table.num_rows == 0:
        header = head.decode("utf-8", errors="replace").splitlines()[0][:200]
        raise ValueError(
            f"File {path} has a header line ({header!r}) but no data rows. Add one line per time step below it."
        )
    _CHECKED_CSV_FILES[key] = None


def _load_dataset_file(source: _Source) -> datasets.Dataset:
    """``datasets.load_dataset`` for a local csv/parquet/arrow file; its errors are re-raised as ValueErrors naming
    the file (a last line of defence: `_check_csv_file` catches the common malformed CSVs first)."""
    try:
        if source.kind == "csv":
            # Read every column as text so that (a) no chunk-wise type inference can go wrong and
            # (b) non-numeric values can be reported with their column and row.
            header = pd.read_csv(source.location, nrows=0)
            features = datasets.Features({str(c): datasets.Value("string") for c in header.columns})
            return datasets.load_dataset("csv", data_files=source.location, split="train", features=features)
        return datasets.load_dataset(source.kind, data_files=source.location, split="train")
    except (ValueError, OSError, EOFError, UnicodeDecodeError, pa.ArrowException,
            datasets.exceptions.DatasetGenerationError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        cause = error.__cause__ or error.__context__ or error
        what = {"parquet": "a parquet file", "arrow": "an Arrow file"}.get(source.kind, "CSV")
        raise ValueError(
            f"File {source.location} could not be read as {what}: {type(cause).__name__}: {cause}. Check that the "
            f"file is complete and in that format."
        ) from error


def _load_repository(source: _Source, dataset_config: str | None) -> datasets.DatasetDict | datasets.Dataset:
    """``datasets.load_dataset`` for a Hub repo id or a local dataset folder, with errors that say what to do."""
    try:
        return datasets.load_dataset(source.location, name=dataset_config)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as error:
        offline = "HF_HUB_OFFLINE is set, so " if datasets.config.HF_HUB_OFFLINE else ""
        raise FileNotFoundError(
            f"{source.describe()} could not be loaded ({type(error).__name__}: {error}). {offline}A Hub dataset "
            f"must be in the local `datasets` cache ({datasets.config.HF_DATASETS_CACHE}) from an earlier online "
            f"load when offline; online, check the repo id (owner/name) and your access to it. A local folder must "
            f"hold data files (parquet, arrow, csv, json), optionally with a README.md dataset card naming them."
        ) from error
    except ValueError as error:
        if "config" not in str(error).lower():
            raise
        raise ValueError(
            f"{source.describe()}: {error} Name one of its configurations with --dataset_config (Python: "
            f"dataset_config=...)."
        ) from error


def _load_source(source: _Source, dataset_config: str | None = None) -> datasets.DatasetDict | datasets.Dataset:
    """Everything the source holds, through ``datasets``: a Dataset (one local file) or a DatasetDict (a Hub
    repository or local dataset folder, one entry per split)."""
    if dataset_config is not None and source.kind not in ("hub", "folder"):
        raise ValueError(
            f"dataset_config={dataset_config!r} names a configuration of a Hub dataset or dataset folder, but "
            f"{source.describe()} is a single file; leave dataset_config out."
        )
    if source.kind == "csv":
        _check_csv_file(source.location)
    if source.kind in ("csv", "parquet", "arrow"):
        return _load_dataset_file(source)
    return _load_repository(source, dataset_config)


def _wide_table(loaded: datasets.DatasetDict | datasets.Dataset, source: _Source) -> pa.Table:
    """The one wide table (one column per channel, one row per time step) of a loaded source: its ``train`` split,
    or its only split."""
    if isinstance(loaded, datasets.DatasetDict):
        if "train" in loaded:
            loaded = loaded["train"]
        elif len(loaded) == 1:
            loaded = next(iter(loaded.values()))
        else:
            raise ValueError(
                f"{source.describe()} has splits {list(loaded)} and none is called 'train'; save the series you "
                f"want as one split named 'train'."
            )
    return loaded.with_format("arrow")[:]


def _row_hint(source: _Source, row: int) -> str:
    if source.kind == "csv":
        return f"data row {row} (line {row + 2} of the file, the header being line 1)"
    return f"row {row}"


def _short_row_hint(source: _Source, row: int) -> str:
    return f"data row {row} (line {row + 2})" if source.kind == "csv" else f"row {row}"


def _parse_text_column(array: pa.ChunkedArray) -> tuple[np.ndarray, int | None]:
    """Parse a string column to float64. Returns (values, first unparsable row or None)."""
    try:
        return pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    text = pd.Series(array.to_pylist(), dtype=object)
    parsed = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    missing = text.isna().to_numpy()
    nan_text = text.astype(str).str.strip().str.lower().isin(["nan", "+nan", "-nan"]).to_numpy()
    bad = np.isnan(parsed) & ~missing & ~nan_text
    first_bad = int(np.argmax(bad)) if bad.any() else None
    return parsed, first_bad


class _ColumnParser:
    """Converts Arrow columns to float64 numpy arrays, caching results."""

    def __init__(self, table: pa.Table, source: _Source) -> None:
        self.table = table
        self.source = source
        self._cache: dict[str, tuple[np.ndarray, int | None]] = {}

    def parse(self, name: str) -> tuple[np.ndarray, int | None]:
        if name not in self._cache:
            array = self.table.column(name)
            kind = array.type
            if pa.types.is_string(kind) or pa.types.is_large_string(kind):
                self._cache[name] = _parse_text_column(array)
            elif pa.types.is_null(kind):
                self._cache[name] = (np.full(len(array), np.nan), None)
            elif (
                pa.types.is_integer(kind)
                or pa.types.is_floating(kind)
                or pa.types.is_decimal(kind)
                or pa.types.is_boolean(kind)
            ):
                values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False)
                self._cache[name] = (np.asarray(values, dtype=np.float64), None)
            else:
                self._cache[name] = (np.full(len(array), np.nan), 0)
        return self._cache[name]

    def is_numeric(self, name: str) -> bool:
        """True for numeric columns and for text columns where at least one value is a number
        (or that are empty); a text column with some bad values counts as numeric so that the
        bad value is reported rather than the column silently dropped."""
        values, first_bad = self.parse(name)
        if first_bad is None:
            return True
        kind = self.table.column(name).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            return False
        return bool(np.isfinite(values).any() or np.isinf(values).any())

    def values(self, name: str) -> np.ndarray:
        values, first_bad = self.parse(name)
        if first_bad is not None:
            kind = self.table.column(name).type
            shown = self.table.column(name)[first_bad].as_py()
            what = f"value {shown!r}" if not pa.types.is_string(kind) else f"non-numeric value {shown!r}"
            raise ValueError(
                f"Target column {name!r} of {self.source.describe()} has a {what} at "
                f"{_row_hint(self.source, first_bad)} (column type {kind}). Fix or remove the value "
                f"(an empty cell marks it as missing: it is masked out), or leave the column out "
                f"with target_columns=[...]."
            )
        infinite = np.isinf(values)
        if infinite.any():
            row = int(np.argmax(infinite))
            raise ValueError(
                f"Target column {name!r} of {self.source.describe()} has a non-finite value "
                f"({values[row]}) at {_row_hint(self.source, row)}. Infinite values are not allowed; "
                f"leave the cell empty (or NaN) to mark a missing value, which is masked out."
            )
        return values


_TIME_COLUMN_NAMES = frozenset(
    {"date", "datetime", "time", "timestamp", "ts", "time_idx", "time_index", "epoch", "step", "time_step", "timestep"}
)
"""Column names (case-insensitive) that name a time axis: such a column is the timestamp column when there is no
``date`` column, and never silently a forecast channel."""

_INDEX_COLUMN_NAME = re.compile(r"^(|index|idx|unnamed: \d+)$")
"""Names of a saved row index: pandas writes its index under an empty header, read back as ``Unnamed: 0``."""


def _is_time_like_name(name: str) -> bool:
    lowered = name.strip().lower()
    return lowered in _TIME_COLUMN_NAMES or bool(_INDEX_COLUMN_NAME.match(lowered))


def _choose_timestamp_column(columns: list[str], timestamp_column: TimestampArg, source: _Source) -> str | None:
    """The timestamp column: the one named, none for False, else (None) ``date`` if present, else the first column
    whose name is time-like (``_TIME_COLUMN_NAMES`` or a saved row index such as ``Unnamed: 0``)."""
    if timestamp_column is False:
        return None
    if timestamp_column is not None:
        name = str(timestamp_column)
        if name not in columns:
            raise ValueError(
                f"Timestamp column {name!r} not found in {source.describe()}; columns are {columns}. "
                f"Pass one of them, or timestamp_column=False for no timestamps."
            )
        return name
    if "date" in columns:
        return "date"
    return next((c for c in columns if _is_time_like_name(c)), None)


def _check_no_time_like_targets(targets: list[str], ts_col: str | None, source: _Source) -> None:
    """Raises when a numeric column picked as a channel by default is named like a time axis or a saved row index:
    an integer epoch or step column would otherwise be standardised and forecast as if it were a measurement."""
    suspicious = [c for c in targets if _is_time_like_name(c)]
    if not suspicious:
        return
    name = suspicious[0]
    now = f"the timestamp column is {ts_col!r}" if ts_col is not None else "timestamp_column=False was passed"
    raise ValueError(
        f"Column {name!r} of {source.describe()} is numeric and named like a time axis or a saved row index, but "
        f"{now}, so it would be forecast as a channel. Pass target_columns=[...] naming the channels to forecast "
        f"(list {name!r} there to forecast it anyway), or timestamp_column={name!r} to use it as the time axis."
    )


def _parse_timestamps(table: pa.Table, column: str, source: _Source) -> pd.Index:
    """The timestamp column as a DatetimeIndex, or as a numeric Index when every value is a number (epoch seconds,
    step counts: the forecast pipeline treats numeric time columns the same way)."""
    array = table.column(column)
    if pa.types.is_timestamp(array.type) or pa.types.is_date(array.type):
        return pd.DatetimeIndex(pd.to_datetime(array.to_pandas()), name=column)
    numeric = _numeric_timestamps(array)
    if numeric is not None:
        return pd.Index(numeric, name=column)
    raw = pd.Series(array.to_pylist(), dtype=object)
    try:
        parsed = pd.to_datetime(raw)
    except (ValueError, TypeError):
        try:
            parsed = pd.to_datetime(raw, format="mixed")
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"Timestamp column {column!r} of {source.describe()} could not be parsed as dates "
                f"({error}). Pass timestamp_column=<another column>, or timestamp_column=False to "
                f"load the series without timestamps."
            ) from error
    return pd.DatetimeIndex(parsed, name=column)


def _numeric_timestamps(array: pa.ChunkedArray) -> np.ndarray | None:
    """The column as numbers (int64 when every value is a whole number), or None if it is not all numbers."""
    kind = array.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)
            or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return None
    try:
        values = pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return None
    if finite.size == values.size and np.all(finite == np.round(finite)) and np.abs(finite).max() < 2**53:
        return values.astype(np.int64)
    return values


_KNOWN_DUPLICATE_TIMESTAMPS: dict[str, frozenset[str]] = {"weather": frozenset({"2020-05-12 06:00:00"})}
"""Duplicated timestamps of the benchmark files as distributed, accepted so that the published protocol (which
keeps every row) is reproduced: weather repeats the whole row at 2020-05-12 06:00:00 (data rows 19043 and
19044; see the data folder's README). Any other duplicate in a benchmark file is still an error."""


def _check_time_order(
    timestamps: pd.Index, source: _Source, sort_timestamps: bool
) -> np.ndarray | None:
    """Checks that every row has a timestamp, that none repeats and that they increase; returns the row order that
    sorts them when ``sort_timestamps`` (None: keep the file's order).

    The rule is the forecast pipeline's (``himtm_hf.pipeline.infer_time_axis``) minus its regular-step check:
    training windows are row-based, so a shuffled, reversed or duplicated time axis would train and evaluate on
    windows that are not consecutive in time without any sign of it. Gaps (a missing hour) are allowed, and so are
    the known duplicates of the benchmark files (``_KNOWN_DUPLICATE_TIMESTAMPS``).
    """
    column = timestamps.name
    missing = np.asarray(timestamps.isna())
    if missing.any():
        row = int(np.argmax(missing))
        raise ValueError(
            f"Timestamp column {column!r} of {source.describe()} has no value at {_short_row_hint(source, row)}; every "
            f"row needs a timestamp. Fill it in or drop the row."
        )
    duplicated = np.asarray(timestamps.duplicated(keep="first"))
    known = _KNOWN_DUPLICATE_TIMESTAMPS.get(resolve_benchmark_name(source.name) or "")
    if known and duplicated.any():
        duplicated &= ~np.asarray(timestamps.astype(str).isin(known))
    if duplicated.any():
        row = int(np.argmax(duplicated))
        first = int(np.flatnonzero(np.asarray(timestamps == timestamps[row]))[0])
        raise ValueError(
            f"Timestamp column {column!r} of {source.describe()} has duplicated timestamps: {timestamps[row]} is at "
            f"{_short_row_hint(source, first)} and again at {_short_row_hint(source, row)}. Aggregate or drop the duplicates "
            f"(e.g. df.drop_duplicates({column!r})); sort_timestamps=True does not remove them."
        )
    if timestamps.is_monotonic_increasing:
        return None
    values = np.asarray(timestamps)
    if sort_timestamps:
        return np.argsort(values, kind="stable")
    row = int(np.flatnonzero(values[1:] < values[:-1])[0]) + 1  # equal neighbours are known duplicates
    raise ValueError(
        f"Timestamp column {column!r} of {source.describe()} is not in increasing order: {_short_row_hint(source, row)} "
        f"({timestamps[row]}) comes after {_short_row_hint(source, row - 1)} ({timestamps[row - 1]}). Sort the file by "
        f"its timestamps (e.g. df.sort_values({column!r})), or pass sort_timestamps=True to sort the rows while "
        f"loading."
    )


def load_series(
    dataset: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    timestamp_column: TimestampArg = None,
    target_columns: Sequence[str] | str | None = None,
    sort_timestamps: bool = False,
    dataset_config: str | None = None,
    id_column: str | None = None,
    freq: str | None = None,
) -> tuple[pd.DataFrame, pd.Index | None, str]:
    """Load a multivariate series.

    Args:
        dataset: a file path (.csv, .csv.gz, .parquet, .arrow), a dataset folder, a benchmark name or a Hub repo
            id. A dataset in the target-sequence schema (see :mod:`himtm_hf.panel`) must hold one series here
            (several: :func:`load_splits` windows them as a panel).
        data_dir: folder holding the benchmark files (default: ``$HIMTM_DATA_DIR``, else
            ``<project>/../shared/data``).
        timestamp_column: name of the timestamp column; False means no timestamp column; None means
            ``"date"`` if present, else the first column named like a time axis (case-insensitive:
            ``datetime``, ``time``, ``timestamp``, ``ts``, ``time_idx``, ``epoch``, ``step``, ...) or like a
            saved row index (``index``, ``idx``, ``Unnamed: 0``, an empty header).
        target_columns: columns to forecast; None means every numeric column except the timestamp. A
            numeric column with a time-like or row-index name (see above) that is not the timestamp column
            is then an error rather than a channel (an epoch or step counter is not a measurement): name the
            channels with ``target_columns`` (listing it forecasts it anyway). Only names are used, not
            values: an increasing integer column with another name is a legitimate channel (a counter, a
            trend) and is kept.
        sort_timestamps: the timestamps must be unique and strictly increasing; by default rows out of
            order are an error naming the first one. True sorts the rows by timestamp instead (stable).
            Duplicated timestamps are an error either way.
        dataset_config, id_column, freq: for Hub datasets and dataset folders, see :func:`load_splits`.

    Returns:
        ``(values, timestamps, name)``: a float64 DataFrame (one column per target, NaN for
        missing values, RangeIndex over rows), the timestamps (a DatetimeIndex, or a numeric Index
        for a timestamp column of numbers such as epoch seconds) or None, and the dataset name.
    """
    source = _resolve_source(dataset, data_dir)
    loaded = _load_source(source, dataset_config)
    from .panel import is_target_schema, single_series

    if is_target_schema(loaded):
        return single_series(loaded, source, timestamp_column, target_columns, id_column, freq)
    _refuse_panel_options(source, id_column, freq)
    return _series_from_table(_wide_table(loaded, source), source, timestamp_column, target_columns, sort_timestamps)


def _refuse_panel_options(source: _Source, id_column: str | None, freq: str | None) -> None:
    if freq is not None:
        raise ValueError(
            f"freq applies to datasets in the target-sequence schema (one row per series with a `target` sequence and "
            f"a `start`), but {source.describe()} is a table with a row per time step (its timestamp column gives "
            f"the time axis); leave freq out."
        )
    if id_column is not None:
        raise ValueError(
            f"id_column names the series of a dataset of many series; load_series reads one series from "
            f"{source.describe()}. Use load_splits(..., id_column={id_column!r}), which windows them as a panel."
        )


def _series_from_table(
    table: pa.Table, source: _Source, timestamp_column: TimestampArg, target_columns: Sequence[str] | str | None,
    sort_timestamps: bool,
) -> tuple[pd.DataFrame, pd.Index | None, str]:
    """:func:`load_series` for a wide table (one column per channel, one row per time step)."""
    columns = [str(c) for c in table.column_names]
    if table.num_rows == 0:
        raise ValueError(f"{source.describe()} has no data rows (columns: {columns}).")
    ts_col = _choose_timestamp_column(columns, timestamp_column, source)

    parser = _ColumnParser(table, source)
    if target_columns is None:
        targets = [c for c in columns if c != ts_col and parser.is_numeric(c)]
        if not targets:
            raise ValueError(
                f"{source.describe()} has no numeric columns besides the timestamp column "
                f"{ts_col!r}; columns are {columns}. Pass target_columns=[...] naming the columns "
                f"to forecast."
            )
        _check_no_time_like_targets(targets, ts_col, source)
    else:
        targets = [target_columns] if isinstance(target_columns, str) else [str(c) for c in target_columns]
        if not targets:
            raise ValueError("target_columns is empty; pass at least one column name or None.")
        missing = [c for c in targets if c not in columns]
        if missing:
            raise ValueError(
                f"Target column(s) {missing} not found in {source.describe()}; columns are {columns}."
            )
        if ts_col is not None and ts_col in targets:
            raise ValueError(
                f"Column {ts_col!r} is both the timestamp column and a target column; pass "
                f"timestamp_column=False if it is really a numeric target."
            )
        if len(set(targets)) != len(targets):
            raise ValueError(f"target_columns has duplicates: {targets}.")

    frame = pd.DataFrame({c: parser.values(c) for c in targets}, columns=targets)
    timestamps = _parse_timestamps(table, ts_col, source) if ts_col is not None else None
    if timestamps is not None:
        order = _check_time_order(timestamps, source, sort_timestamps)
        if order is not None:
            frame = frame.iloc[order].reset_index(drop=True)
            timestamps = timestamps[order]
    return frame, timestamps, source.name


# ----------------------------------------------------------------------------------------------
# Scaler
# ----------------------------------------------------------------------------------------------


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_statistics(mean: np.ndarray, std: np.ndarray, names: Sequence[str], origin: str) -> None:
    """Raises unless every mean and std is finite, within float32's range, and every std is > 0.

    float32 because that is what the model, the stored windows and the original-unit forecasts
    (``inverse_transform`` of a float32 array) compute in: a std of 1e300 (or inf, from squares that
    overflow float64) would standardise the column to zeros and turn its forecasts into inf while the
    standardised test MSE still looked normal.
    """
    bad_mean = ~np.isfinite(mean) | (np.abs(mean) > _FLOAT32_MAX)
    bad_std = ~np.isfinite(std) | (std > _FLOAT32_MAX) | ~(std > 0)
    bad = np.flatnonzero(bad_mean | bad_std)
    if bad.size == 0:
        return
    listed = ", ".join(f"{names[i]!r} (mean={mean[i]:.3g}, std={std[i]:.3g})" for i in bad[:5])
    raise ValueError(
        f"{origin}: column(s) {listed} have statistics that are not finite, not positive (std) or beyond float32's "
        f"range ({_FLOAT32_MAX:.3g}), which the model computes in. Such values overflow (their squares exceed "
        f"float64's range above ~1e154): check the column for a wrong value, divide it by a power of ten before "
        f"loading, or leave it out with target_columns=[...]."
    )


class SeriesScaler:
    """Per-column standardisation (like ``sklearn.preprocessing.StandardScaler``).

    ``mean``/``std`` are float64 arrays with one value per column. ``std`` uses ``ddof=0``; a zero
    (constant column) std is replaced by 1. ``fit`` ignores NaNs. Statistics that are not finite or
    do not fit float32 (see ``_check_statistics``) are refused by ``fit``, the constructor and ``load``.
    """

    FILE_NAME = "scaler.json"

    def __init__(
        self,
        mean: Sequence[float] | np.ndarray | None = None,
        std: Sequence[float] | np.ndarray | None = None,
        columns: Sequence[str] | None = None,
    ) -> None:
        self.mean: np.ndarray | None = None if mean is None else np.asarray(mean, dtype=np.float64)
        self.std: np.ndarray | None = None if std is None else np.asarray(std, dtype=np.float64)
        self.columns: list[str] | None = None if columns is None else [str(c) for c in columns]
        if self.mean is not None and self.std is not None and self.mean.shape != self.std.shape:
            raise ValueError(f"mean {self.mean.shape} and std {self.std.shape} differ in shape.")
        if self.columns is not None and self.mean is not None and len(self.columns) != self.mean.size:
            raise ValueError(f"{len(self.columns)} column names for {self.mean.size} statistics.")
        if self.mean is not None and self.std is not None:
            names = self.columns or [str(i) for i in range(self.mean.size)]
            _check_statistics(self.mean.ravel(), self.std.ravel(), names, "SeriesScaler")

    @property
    def num_columns(self) -> int:
        self._check_fitted()
        assert self.mean is not None
        return int(self.mean.size)

    def fit(self, values: np.ndarray | pd.DataFrame, columns: Sequence[str] | None = None) -> SeriesScaler:
        """Fit on ``values`` of shape (rows, columns), ignoring NaNs."""
        if isinstance(values, pd.DataFrame):
            columns = list(values.columns) if columns is None else columns
            values = values.to_numpy(dtype=np.float64)
        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2:
            raise ValueError(f"fit expects a (rows, columns) array, got shape {array.shape}.")
        names = [str(c) for c in columns] if columns is not None else [str(i) for i in range(array.shape[1])]
        observed = (~np.isnan(array)).sum(axis=0)
        empty = [names[i] for i in np.flatnonzero(observed == 0)]
        if empty:
            raise ValueError(
                f"Column(s) {empty} have no observed (non-NaN) value in the rows used to fit the "
                f"scaler (the train split); leave them out with target_columns=[...]."
            )
        if np.isinf(array).any():
            raise ValueError("Cannot fit the scaler on infinite values.")
        with np.errstate(over="ignore", invalid="ignore"):  # overflow is reported by _check_statistics
            mean = np.nanmean(array, axis=0)
            std = np.nanstd(array, axis=0, ddof=0)
        tiny = std <= 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
        std = np.where(tiny, 1.0, std)
        _check_statistics(mean, std, names, "Cannot fit the scaler on the train rows")
        self.mean, self.std, self.columns = mean, std, names
        return self

    def _check_fitted(self) -> None:
        if self.mean is None or self.std is None:
            raise RuntimeError("SeriesScaler is not fitted: call fit() or load() first.")

    def _stats_like(self, x: Any) -> tuple[Any, Any]:
        self._check_fitted()
        assert self.mean is not None and self.std is not None
        if x.shape[-1] != self.mean.size:
            raise ValueError(
                f"Last dimension {x.shape[-1]} does not match the scaler's {self.mean.size} columns."
            )
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return (
                torch.as_tensor(self.mean, dtype=dtype, device=x.device),
                torch.as_tensor(self.std, dtype=dtype, device=x.device),
            )
        return self.mean, self.std

    def transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``(x - mean) / std`` over the last dimension. NaNs stay NaN. Floating numpy inputs
        keep their dtype; torch inputs keep dtype and device."""
        mean, std = self._stats_like(x)
        if isinstance(x, torch.Tensor):
            return (x.to(mean.dtype) - mean) / std
        array = np.asarray(x)
        out = (array.astype(np.float64, copy=False) - mean) / std
        return out.astype(array.dtype, copy=False) if np.issubdtype(array.dtype, np.floating) else out

    def inverse_transform(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """``x * std + mean`` over the last dimension (the inverse of :meth:`transform`)."""
        mean, std = self._stats_like(x)
        if isinstance(x, torch.Tensor):
            return x.to(mean.dtype) * std + mean
        array = np.asarray(x)
        out = array.astype(np.float64, copy=False) * std + mean
        return out.astype(array.dtype, copy=False) if np.issubdtype(array.dtype, np.floating) else out

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        assert self.mean is not None and self.std is not None
        return {"columns": self.columns, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> SeriesScaler:
        return cls(mean=payload["mean"], std=payload["std"], columns=payload.get("columns"))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``<directory>/scaler.json`` (columns, mean, std); returns its path. Statistics that are
        not finite are refused (they were once written as ``Infinity``)."""
        self._check_fitted()
        assert self.mean is not None and self.std is not None
        _check_statistics(self.mean.ravel(), self.std.ravel(), self.columns or [str(i) for i in range(self.mean.size)],
                          "SeriesScaler.save")
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / self.FILE_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> SeriesScaler:
        """Read ``<directory>/scaler.json`` (or the JSON file itself if a file path is given)."""
        path = Path(directory)
        if path.is_dir() or path.suffix.lower() != ".json":
            path = path / cls.FILE_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"No scaler file at {path}; it is written by SeriesScaler.save(directory)."
            )
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as error:  # JSONDecodeError is a ValueError
            raise ValueError(
                f"Scaler file {path} is not a valid scaler: {type(error).__name__}: {error}. It must hold the train "
                f"split's finite per-column 'mean' and 'std' (and 'columns'); re-create it by training again on "
                f"checked data, or with SeriesScaler().fit(train_values, columns).save(folder)."
            ) from error

    def __repr__(self) -> str:
        if self.mean is None:
            return "SeriesScaler(unfitted)"
        return f"SeriesScaler(columns={self.columns}, mean={self.mean}, std={self.std})"


# ----------------------------------------------------------------------------------------------
# Window dataset
# ----------------------------------------------------------------------------------------------


class _SlidingWindows(Dataset):
    """Stride-1 windows of ``window_length`` rows over one standardised split (the storage shared by the forecasting
    and the look-back-only windows)."""

    context_length: int
    prediction_length: int

    def _store(
        self,
        values: np.ndarray | torch.Tensor,
        observed_mask: np.ndarray | torch.Tensor | None,
        start: int,
        name: str,
    ) -> None:
        tensor = torch.as_tensor(values)
        if tensor.ndim != 2:
            raise ValueError(f"values must be (rows, channels), got shape {tuple(tensor.shape)}.")
        tensor = tensor.to(torch.float32)
        if observed_mask is None:
            mask = ~torch.isnan(tensor)
        else:
            mask = torch.as_tensor(observed_mask).to(torch.bool)
            if mask.shape != tensor.shape:
                raise ValueError(f"observed_mask {tuple(mask.shape)} != values {tuple(tensor.shape)}.")
        if torch.isnan(tensor).any():
            tensor = torch.nan_to_num(tensor, nan=0.0)
        self.values = tensor.contiguous() if not tensor.is_contiguous() else tensor
        self.observed_mask = mask
        self.start = int(start)
        self.name = name

    @property
    def window_length(self) -> int:
        """Rows per window: ``context_length + prediction_length``."""
        return self.context_length + self.prediction_length

    @property
    def num_rows(self) -> int:
        return int(self.values.shape[0])

    @property
    def num_channels(self) -> int:
        return int(self.values.shape[1])

    def __len__(self) -> int:
        return max(0, self.num_rows - self.window_length + 1)

    def window_start(self, index: int) -> int:
        """Row index, in the full series, of the first look-back row of window ``index``."""
        return self.start + self._check_index(index)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"window index out of range for {self.name} split with {n} windows")
        return index

    def last_fraction(self, fraction: float) -> _SlidingWindows:
        """The same kind of dataset over the last ``max(1, ceil(fraction * N))`` of its N windows (the most recent
        ones; the rule of :func:`few_shot_split`); ``fraction`` 1 returns ``self``."""
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"The train fraction must be a number in (0, 1], got {fraction!r}.")
        total = len(self)
        if float(fraction) == 1.0 or total == 0:
            return self
        keep = min(total, max(1, math.ceil(round(float(fraction) * total, 9))))
        offset = total - keep
        clone = copy.copy(self)
        clone.values, clone.observed_mask = self.values[offset:], self.observed_mask[offset:]
        clone.start = self.start + offset
        return clone


class ForecastWindowDataset(_SlidingWindows):
    """Sliding windows (stride 1) over one standardised split.

    Item ``i`` covers rows ``[i, i + context_length + prediction_length)`` of the split and is a
    dict with ``past_values`` (context_length, C) float32, ``future_values``
    (prediction_length, C) float32 and the boolean ``past_observed_mask`` /
    ``future_observed_mask`` of the same shapes. All are views into one stored tensor.

    Args:
        values: (rows, C) standardised values; NaNs (if any) are treated as missing.
        context_length: look-back length L.
        prediction_length: horizon H.
        observed_mask: (rows, C) booleans, True where observed; default: ``~isnan(values)``.
        start: row index of the split's first row in the full series (for bookkeeping).
        name: split name.
        return_future_observed_mask: set False for models whose forward() does not accept
            ``future_observed_mask``.
    """

    def __init__(
        self,
        values: np.ndarray | torch.Tensor,
        context_length: int,
        prediction_length: int,
        observed_mask: np.ndarray | torch.Tensor | None = None,
        start: int = 0,
        name: str = "split",
        return_future_observed_mask: bool = True,
    ) -> None:
        if context_length < 1 or prediction_length < 1:
            raise ValueError(
                f"context_length and prediction_length must be >= 1, got {context_length}, {prediction_length} "
                f"(look-back-only windows for pre-training: LookbackWindowDataset)."
            )
        self._store(values, observed_mask, start, name)
        self.context_length = int(context_length)
        self.prediction_length = int(prediction_length)
        self.return_future_observed_mask = return_future_observed_mask

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self._check_index(int(index))
        mid = i + self.context_length
        end = mid + self.prediction_length
        item = {
            "past_values": self.values[i:mid],
            "future_values": self.values[mid:end],
            "past_observed_mask": self.observed_mask[i:mid],
        }
        if self.return_future_observed_mask:
            item["future_observed_mask"] = self.observed_mask[mid:end]
        return item

    def __repr__(self) -> str:
        return (
            f"ForecastWindowDataset(name={self.name!r}, rows={self.num_rows}, channels={self.num_channels}, "
            f"context_length={self.context_length}, prediction_length={self.prediction_length}, "
            f"windows={len(self)}, start={self.start})"
        )


class LookbackWindowDataset(_SlidingWindows):
    """Look-back-only windows (stride 1) over one standardised split, for pre-training.

    Pre-training reconstructs the look-back and never reads a future, so a window needs ``context_length`` rows, not
    ``context_length + prediction_length``: a split of ``rows`` rows has ``rows - context_length + 1`` windows.
    Item ``i`` covers rows ``[i, i + context_length)`` and is a dict with ``past_values`` (context_length, C) float32
    and the boolean ``past_observed_mask`` (views into one stored tensor). ``prediction_length`` is 0.

    Args:
        values: (rows, C) standardised values; NaNs (if any) are treated as missing.
        context_length: look-back length L.
        observed_mask: (rows, C) booleans, True where observed; default: ``~isnan(values)``.
        start: row index of the split's first row in the full series (for bookkeeping).
        name: split name.
    """

    prediction_length = 0

    def __init__(
        self,
        values: np.ndarray | torch.Tensor,
        context_length: int,
        observed_mask: np.ndarray | torch.Tensor | None = None,
        start: int = 0,
        name: str = "split",
    ) -> None:
        if context_length < 1:
            raise ValueError(f"context_length must be >= 1, got {context_length}.")
        self._store(values, observed_mask, start, name)
        self.context_length = int(context_length)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = self._check_index(int(index))
        end = i + self.context_length
        return {"past_values": self.values[i:end], "past_observed_mask": self.observed_mask[i:end]}

    def __repr__(self) -> str:
        return (
            f"LookbackWindowDataset(name={self.name!r}, rows={self.num_rows}, channels={self.num_channels}, "
            f"context_length={self.context_length}, windows={len(self)}, start={self.start})"
        )


# ----------------------------------------------------------------------------------------------
# Splits
# ----------------------------------------------------------------------------------------------


@dataclass
class SplitData:
    """The three window datasets of one series plus the scaler and bookkeeping.

    The splits are :class:`ForecastWindowDataset` s, or :class:`LookbackWindowDataset` s when the series was loaded
    with ``prediction_length=0`` (pre-training).
    """

    name: str
    train: ForecastWindowDataset | LookbackWindowDataset
    val: ForecastWindowDataset | LookbackWindowDataset
    test: ForecastWindowDataset | LookbackWindowDataset
    scaler: SeriesScaler
    columns: list[str]
    timestamps: pd.Index | None  # a DatetimeIndex, or a numeric Index for a numeric time column
    borders: dict[str, tuple[int, int]] = field(default_factory=dict)

    @property
    def mean(self) -> np.ndarray:
        assert self.scaler.mean is not None
        return self.scaler.mean

    @property
    def std(self) -> np.ndarray:
        assert self.scaler.std is not None
        return self.scaler.std

    @property
    def num_channels(self) -> int:
        return len(self.columns)

    @property
    def context_length(self) -> int:
        return self.train.context_length

    @property
    def prediction_length(self) -> int:
        return self.train.prediction_length

    def __getitem__(self, split: str) -> ForecastWindowDataset | LookbackWindowDataset:
        if split not in _SPLITS:
            raise KeyError(f"unknown split {split!r}; use one of {_SPLITS}")
        return getattr(self, split)


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split_fractions)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"split_fractions must be three numbers (train, val, test), got {split_fractions!r}."
        ) from error
    if len(fractions) != 3:
        raise ValueError(
            f"split_fractions must be three numbers (train, val, test), got {split_fractions!r}."
        )
    train, val, test = fractions
    if not all(math.isfinite(f) for f in fractions) or train <= 0 or test <= 0 or val < 0:
        raise ValueError(
            f"split_fractions {split_fractions!r} invalid: train and test must be > 0 and val >= 0, e.g. (0.7, 0.1, 0.2)."
        )
    if abs(train + val + test - 1.0) > 1e-6:
        raise ValueError(
            f"split_fractions {split_fractions!r} must sum to 1 (they sum to {train + val + test:g}), e.g. (0.7, 0.1, 0.2)."
        )
    return train, val, test


def _split_points(split_dates: Sequence[Any], timestamps: pd.Index) -> tuple[Any, Any]:
    """``split_dates`` as two values comparable with the timestamps: dates for a datetime axis, numbers for
    a numeric one (e.g. epoch seconds)."""
    if isinstance(timestamps, pd.DatetimeIndex):
        first, second = (pd.Timestamp(d) for d in split_dates)
        return first, second
    try:
        first, second = (float(d) for d in split_dates)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"The timestamp column {timestamps.name!r} holds numbers, so split_dates must be two numbers on the "
            f"same axis, got {split_dates!r}."
        ) from error
    return first, second


def _split_sizes(
    name: str,
    n: int,
    timestamps: pd.Index | None,
    split_fractions: Sequence[float] | None,
    split_dates: Sequence[Any] | None,
) -> tuple[int, int, int]:
    if split_fractions is not None and split_dates is not None:
        raise ValueError("Pass either split_fractions or split_dates, not both.")
    if split_dates is not None:
        if timestamps is None:
            raise ValueError(
                "split_dates needs a timestamp column; the series has none (pass timestamp_column=...)."
            )
        if len(split_dates) != 2:
            raise ValueError(f"split_dates must be two dates (train end, val end), got {split_dates!r}.")
        first, second = _split_points(split_dates, timestamps)
        if second < first:
            raise ValueError(f"split_dates must be in order, got {first} after {second}.")
        if timestamps.hasnans or not timestamps.is_monotonic_increasing:
            raise ValueError(
                "split_dates needs timestamps sorted in increasing order without missing values."
            )
        stamps = timestamps
        if isinstance(timestamps, pd.DatetimeIndex) and timestamps.tz is not None:
            stamps = timestamps.tz_localize(None)
        train = int(stamps.searchsorted(first, side="left"))
        val_end = int(stamps.searchsorted(second, side="left"))
        sizes = (train, val_end - train, n - val_end)
        if sizes[0] == 0 or sizes[2] == 0:
            raise ValueError(
                f"split_dates {split_dates!r} give train/val/test sizes {sizes} for timestamps "
                f"{timestamps[0]} .. {timestamps[-1]}; train and test must be non-empty."
            )
        return sizes
    if split_fractions is None:
        if name in ("ETTh1", "ETTh2"):
            fixed = _ETT_HOUR_SPLITS
        elif name in ("ETTm1", "ETTm2"):
            fixed = _ETT_MINUTE_SPLITS
        else:
            fixed = None
        if fixed is not None:
            if n < sum(fixed):
                raise ValueError(
                    f"The standard {name} split uses the first {sum(fixed)} rows "
                    f"(train/val/test = {fixed}) but the series has {n} rows. Use the full file or "
                    f"pass split_fractions=(0.7, 0.1, 0.2)."
                )
            return fixed
        fractions = _DEFAULT_FRACTIONS
    else:
        fractions = _check_fractions(split_fractions)
    train = int(fractions[0] * n)
    test = int(fractions[2] * n)
    return train, n - train - test, test


def compute_borders(sizes: tuple[int, int, int], context_length: int) -> dict[str, tuple[int, int]]:
    """Row ranges ``[start, end)`` of train/val/test; val and test start ``context_length`` early."""
    train, val, test = sizes
    return {
        "train": (0, train),
        "val": (max(0, train - context_length), train + val),
        "test": (max(0, train + val - context_length), train + val + test),
    }


def _min_rows_needed(fractions: tuple[float, float, float], context_length: int, needed: int) -> int | None:
    """Smallest series length whose train and test splits both hold ``needed`` rows."""
    n = needed
    limit = needed * 1000 + 10_000
    while n <= limit:
        train, test = int(fractions[0] * n), int(fractions[2] * n)
        borders = compute_borders((train, n - train - test, test), context_length)
        if all(borders[s][1] - borders[s][0] >= needed for s in ("train", "test")):
            return n
        n += 1
    return None


def _check_float32(
    scaled32: np.ndarray, raw: np.ndarray, scaler: SeriesScaler, columns: list[str], name: str
) -> None:
    """Raises when a standardised value overflows float32 (the windows' dtype): a value far outside the
    train rows' range (e.g. 1e300 in the test rows of a column whose train std is 1) would become inf."""
    finite = np.isfinite(scaled32)
    if finite.all():
        return
    row, column = (int(i[0]) for i in np.nonzero(~finite))
    assert scaler.mean is not None and scaler.std is not None
    raise ValueError(
        f"Series {name!r}: the value {raw[row, column]:.6g} of column {columns[column]!r} at row {row} is "
        f"{abs(raw[row, column] - scaler.mean[column]) / scaler.std[column]:.3g} train standard deviations from the "
        f"train mean (mean {scaler.mean[column]:.6g}, std {scaler.std[column]:.6g}); standardised it overflows "
        f"float32. Check the value (a unit or typing error?), or leave the cell empty to mark it missing."
    )


def _check_lookbacks_observed(
    observed: np.ndarray, borders: dict[str, tuple[int, int]], context_length: int, prediction_length: int, name: str
) -> None:
    """Raises when some window's look-back has no observed value in any column.

    The model refuses such a window (it has nothing to forecast from), so a training run would stop at
    the first batch that holds one; saying so at loading names the rows. A single column with a long
    gap is fine: the model forecasts that channel from its instance mean.
    """
    if observed.all():
        return
    any_observed = observed.any(axis=1)
    for split, (start, end) in borders.items():
        windows = end - start - context_length - prediction_length + 1
        if windows <= 0:
            continue
        counts = np.concatenate([[0], np.cumsum(any_observed[start:end])])
        empty = np.flatnonzero(counts[context_length : context_length + windows] - counts[:windows] == 0)
        if empty.size:
            first = start + int(empty[0])
            raise ValueError(
                f"Series {name!r}: rows {first} to {first + context_length - 1} have no observed value in any "
                f"column, so the {split} window that looks back over them has nothing to forecast from. Drop or "
                f"fill those rows (e.g. interpolate), or use a context_length longer than the gap."
            )


def _window_rows_text(context_length: int, prediction_length: int) -> str:
    """How many rows one window needs, in words (for the too-short messages)."""
    if prediction_length == 0:
        return f"context_length = {context_length} rows (a look-back-only pre-training window)"
    return (f"context_length + prediction_length = {context_length} + {prediction_length} = "
            f"{context_length + prediction_length} rows")


def load_splits(
    dataset: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    context_length: int = 512,
    prediction_length: int = 96,
    timestamp_column: TimestampArg = None,
    target_columns: Sequence[str] | str | None = None,
    split_fractions: Sequence[float] | None = None,
    split_dates: Sequence[Any] | None = None,
    sort_timestamps: bool = False,
    dataset_config: str | None = None,
    id_column: str | None = None,
    freq: str | None = None,
    short_series: Literal["skip", "error"] = "skip",
) -> SplitData:
    """Load a series (or a panel of many), split it by rows, standardise with train statistics, and window it.

    See the module docstring for the data sources, the split protocol and the NaN policy, and :mod:`himtm_hf.panel`
    for datasets in the target-sequence schema (one row per series).

    Args:
        dataset: file path, dataset folder, benchmark name or Hub repo id.
        data_dir: folder with the benchmark files (default ``$HIMTM_DATA_DIR`` or
            ``<project>/../shared/data``).
        context_length: look-back length L (val/test start L rows early).
        prediction_length: horizon H; 0 gives look-back-only windows of L rows
            (:class:`LookbackWindowDataset`, for pre-training) over the same split rows.
        timestamp_column: None = ``"date"`` if present (else a column named like a time axis, see
            :func:`load_series`), False = none, or a column name.
        target_columns: None = all numeric columns except the timestamp (and except none named like
            a time axis or row index: that is an error, see :func:`load_series`).
        split_fractions: optional (train, val, test) fractions summing to 1.
        split_dates: optional (train_end, val_end) dates; each split ends before its date (numbers
            for a numeric time column).
        sort_timestamps: sort the rows by timestamp instead of refusing rows out of order; windows
            are consecutive rows, so the timestamps must be unique and increasing either way.
        dataset_config: the configuration (``name``) of a Hub dataset or dataset folder that has several.
        id_column: target-sequence schema: the column naming each series (default ``item_id`` or ``id``).
        freq: target-sequence schema: the pandas frequency of ``start`` when the dataset has no ``freq`` column.
        short_series: target-sequence schema with several series: ``"skip"`` drops a series with no train window
            (with a warning that counts them), ``"error"`` refuses it.

    Returns:
        A :class:`SplitData`; for a dataset of several series a :class:`himtm_hf.panel.PanelSplitData`.
    """
    if int(context_length) < 1 or int(prediction_length) < 0:
        raise ValueError(
            f"context_length must be >= 1 and prediction_length >= 1 (or 0 for look-back-only pre-training "
            f"windows), got {context_length}, {prediction_length}."
        )
    context_length, prediction_length = int(context_length), int(prediction_length)
    source = _resolve_source(dataset, data_dir)
    loaded = _load_source(source, dataset_config)
    from .panel import is_target_schema, panel_splits

    if is_target_schema(loaded):
        return panel_splits(
            loaded, source, context_length, prediction_length, timestamp_column=timestamp_column,
            target_columns=target_columns, split_fractions=split_fractions, split_dates=split_dates,
            id_column=id_column, freq=freq, short_series=short_series,
        )
    if id_column is not None:  # a long table: the rows of many series, told apart by the id column
        from .panel import long_table_splits

        _refuse_panel_options(source, None, freq)
        return long_table_splits(_wide_table(loaded, source), source, id_column, context_length, prediction_length,
                                 timestamp_column, target_columns, split_fractions, split_dates, sort_timestamps,
                                 short_series)
    _refuse_panel_options(source, id_column, freq)
    frame, timestamps, name = _series_from_table(_wide_table(loaded, source), source, timestamp_column,
                                                 target_columns, sort_timestamps)
    protocol = resolve_benchmark_name(name) or name
    sizes = _split_sizes(protocol, len(frame), timestamps, split_fractions, split_dates)
    hint_fractions = None
    if split_fractions is not None or (split_dates is None and protocol not in _ETT_NAMES):
        hint_fractions = _check_fractions(split_fractions) if split_fractions is not None else _DEFAULT_FRACTIONS
    return series_splits(frame, timestamps, name, sizes, context_length, prediction_length, hint_fractions)


def _check_long_enough(
    name: str, n: int, borders: dict[str, tuple[int, int]], context_length: int, prediction_length: int,
    hint_fractions: tuple[float, float, float] | None, require_test: bool,
) -> None:
    """Raises when the train (or test) split of a series holds no window; warns when the val split holds none."""
    needed = context_length + prediction_length
    for split in ("test", "train") if require_test else ("train",):
        start, end = borders[split]
        if end - start < needed:
            hint = ""
            if hint_fractions is not None:
                minimum = _min_rows_needed(hint_fractions, context_length, needed)
                if minimum is not None:
                    hint = f" With these split fractions the series needs at least {minimum} rows in total."
            raise ValueError(
                f"Series {name!r} ({n} rows) is too short: its {split} split covers rows [{start}, {end}) "
                f"({end - start} rows) but one window needs {_window_rows_text(context_length, prediction_length)}"
                f".{hint} Use a longer series "
                f"or a smaller context_length / prediction_length."
            )
    val_rows = borders["val"][1] - borders["val"][0]
    if val_rows < needed and require_test:
        warnings.warn(
            f"The val split of {name!r} has {val_rows} rows, fewer than the "
            f"{_window_rows_text(context_length, prediction_length)} of one window: it has no windows.",
            stacklevel=3,
        )


def series_splits(
    frame: pd.DataFrame,
    timestamps: pd.Index | None,
    name: str,
    sizes: tuple[int, int, int],
    context_length: int,
    prediction_length: int,
    hint_fractions: tuple[float, float, float] | None = None,
    require_test: bool = True,
) -> SplitData:
    """One series' :class:`SplitData` from its values and split sizes: the core of :func:`load_splits`.

    Args:
        frame: ``(rows, channels)`` float64 values, NaN for missing ones (column names are the channel names).
        timestamps: the rows' timestamps, or None.
        name: the series' name (in messages and ``SplitData.name``).
        sizes: ``(train, val, test)`` rows; val and test windows look back into the rows before them.
        context_length, prediction_length: L and H (0 = look-back-only windows).
        hint_fractions: the split fractions, to say how long a too-short series must be.
        require_test: a test split without a window is an error (else allowed: a short member of a panel).
    """
    n = len(frame)
    borders = compute_borders(sizes, context_length)
    _check_long_enough(name, n, borders, context_length, prediction_length, hint_fractions, require_test)
    raw = frame.to_numpy(dtype=np.float64)
    columns = [str(c) for c in frame.columns]
    scaler = SeriesScaler().fit(raw[: borders["train"][1]], columns)
    observed = ~np.isnan(raw)
    scaled = np.asarray(scaler.transform(raw), dtype=np.float64)
    scaled[~observed] = 0.0
    with np.errstate(over="ignore"):  # an overflow to inf is reported by _check_float32
        scaled32 = scaled.astype(np.float32)
    _check_float32(scaled32, raw, scaler, columns, name)
    _check_lookbacks_observed(observed, borders, context_length, prediction_length, name)
    values = torch.from_numpy(scaled32)
    mask = torch.from_numpy(observed)

    splits = {
        split: (
            ForecastWindowDataset(values[start:end], context_length, prediction_length, observed_mask=mask[start:end],
                                  start=start, name=split)
            if prediction_length > 0
            else LookbackWindowDataset(values[start:end], context_length, observed_mask=mask[start:end], start=start,
                                       name=split)
        )
        for split, (start, end) in borders.items()
    }
    return SplitData(
        name=name,
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        scaler=scaler,
        columns=columns,
        timestamps=timestamps,
        borders=borders,
    )


# ----------------------------------------------------------------------------------------------
# Multi-domain pre-training corpora (channel-independent)
# ----------------------------------------------------------------------------------------------


CORPUS_FILE = "corpus.json"
"""What a multi-domain pre-training run writes into its folder: the corpus (see :meth:`PretrainingCorpus.to_dict`)."""

CORPUS_FORMAT = "himtm-pretraining-corpus"


def split_dataset_list(datasets: str | os.PathLike[str] | Sequence[str]) -> list[str]:
    """The dataset entries of ``--dataset``: ``"ETTh1, ETTh2,weather"`` -> ``["ETTh1", "ETTh2", "weather"]``.

    A string naming an existing file stays one entry even if its name holds a comma; a list is taken as it is (each
    item stripped). Empty entries (``"ETTh1,,ETTh2"``) are an error rather than silently dropped.
    """
    if isinstance(datasets, (str, os.PathLike)):
        text = os.fspath(datasets).strip()
        if Path(text).expanduser().is_file():
            return [text]
        entries = [part.strip() for part in text.split(",")]
    else:
        entries = [os.fspath(part).strip() for part in datasets]
    if not entries or any(not entry for entry in entries):
        raise ValueError(
            f"--dataset {datasets!r} has an empty entry; give one dataset or several separated by commas, e.g. "
            f"ETTh1,ETTh2,weather."
        )
    return entries


def _entry_name(entry: str) -> str:
    """The name a dataset entry gets without reading it: the canonical benchmark name, a file's stem or the last part
    of a Hub id (the name :func:`load_series` gives the series)."""
    canonical = resolve_benchmark_name(entry)
    if canonical is not None:
        return canonical
    if _looks_like_path(entry) or Path(entry).expanduser().exists():
        return _stem(Path(entry))
    return entry.rstrip("/").split("/")[-1]


def _matches_entry(wanted: str, entry: str) -> bool:
    """Whether a ``--leave_out`` item names ``entry``: the entry as written, or its name (case-insensitive)."""
    key = wanted.strip().lower()
    canonical = resolve_benchmark_name(wanted)
    return key in (entry.lower(), _entry_name(entry).lower()) or (
        canonical is not None and canonical == resolve_benchmark_name(entry)
    )


def select_datasets(
    datasets: str | os.PathLike[str] | Sequence[str], leave_out: str | Sequence[str] | None = None
) -> list[str]:
    """The entries of ``datasets`` (see :func:`split_dataset_list`) without the ones ``leave_out`` names.

    ``leave_out`` (comma-separated or a list) is for leave-one-out pre-training: each item must name exactly one
    entry, by the entry as written or its name (benchmark names case-insensitively, with aliases; a file's stem).

    Raises:
        ValueError: an entry given twice, a ``leave_out`` item that is not in the list (or names several entries),
            or nothing left.
    """
    entries = split_dataset_list(datasets)
    seen: dict[str, str] = {}
    for entry in entries:
        name = _entry_name(entry).lower()
        if name in seen:
            raise ValueError(
                f"--dataset names {_entry_name(entry)!r} twice ({seen[name]!r} and {entry!r}); give each dataset once."
            )
        seen[name] = entry
    if leave_out is None or (isinstance(leave_out, str) and not leave_out.strip()):
        return entries
    wanted_items = split_dataset_list(leave_out) if isinstance(leave_out, str) else [str(w) for w in leave_out]
    removed: set[str] = set()
    for wanted in wanted_items:
        hits = [entry for entry in entries if _matches_entry(wanted, entry)]
        if len(hits) != 1:
            problem = "is not among" if not hits else f"matches {len(hits)} of"
            raise ValueError(
                f"--leave_out {wanted!r} {problem} the datasets {', '.join(entries)}; give the name of one of them "
                f"(benchmark names are case-insensitive, a file is named by its stem or its path as given)."
            )
        removed.add(hits[0])
    remaining = [entry for entry in entries if entry not in removed]
    if not remaining:
        raise ValueError(
            f"--leave_out {leave_out!r} removes every dataset of {', '.join(entries)}; nothing is left to train on."
        )
    return remaining


def strided_indices(total: int, max_items: int | None) -> np.ndarray:
    """``range(total)``, or at most ``max_items`` evenly strided indices of it (first and last included): the rule
    of ``himtm_hf.training.cap_windows``, so a capped dataset covers its whole time range."""
    if max_items is None or max_items >= total:
        return np.arange(total, dtype=np.int64)
    return np.unique(np.linspace(0, total - 1, num=int(max_items)).round().astype(np.int64))


class UnivariateWindowDataset(Dataset):
    """Every channel of every window of a multivariate window dataset as a 1-channel window (channel-independent
    pre-training), optionally an evenly strided subset of them.

    Item ``k`` of the full set is channel ``k // n`` of window ``k % n`` (``n`` windows): channel-major, so an
    evenly strided subset keeps every channel about equally often and spread over the whole split (a window-major
    order would, for a stride that is a multiple of the channel count, pick a single channel). Items are dicts of
    ``(context_length, 1)`` tensors with the keys of the underlying windows (``past_values``,
    ``past_observed_mask``).

    Args:
        windows: e.g. a :class:`LookbackWindowDataset`.
        max_windows: keep at most this many univariate windows (evenly strided); None = all.
        name: for messages and ``repr``.
    """

    def __init__(self, windows: _SlidingWindows, max_windows: int | None = None, name: str = "split") -> None:
        self.windows = windows
        self.num_windows = len(windows)
        self.num_channels = windows.num_channels
        self.available = self.num_windows * self.num_channels
        self.indices = strided_indices(self.available, max_windows)
        self.name = name

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        n = len(self)
        position = int(index) + n if int(index) < 0 else int(index)
        if not 0 <= position < n:
            raise IndexError(f"window index out of range for {self.name} with {n} univariate windows")
        channel, window = divmod(int(self.indices[position]), self.num_windows)
        item = self.windows[window]
        return {key: value[:, channel : channel + 1] for key, value in item.items()}

    def __repr__(self) -> str:
        return (f"UnivariateWindowDataset(name={self.name!r}, windows={self.num_windows}, "
                f"channels={self.num_channels}, used={len(self)} of {self.available})")


@dataclass
class CorpusMember:
    """One dataset of a :class:`PretrainingCorpus`: its look-back splits (standardised by its own train split) and the
    univariate train/val windows it contributes."""

    entry: str
    source: str
    splits: SplitData
    train: UnivariateWindowDataset
    val: UnivariateWindowDataset

    @property
    def name(self) -> str:
        return self.splits.name

    def to_dict(self) -> dict[str, Any]:
        borders = self.splits.borders
        panel = getattr(self.splits, "describe", None)  # a dataset of many series (himtm_hf.panel.PanelSplitData)
        return {
            **({"panel": panel()} if panel is not None else {}),
            "name": self.name,
            "entry": self.entry,
            "source": self.source,
            "num_channels": self.splits.num_channels,
            "rows": {split: int(end - start) for split, (start, end) in borders.items()},
            "borders": {split: [int(start), int(end)] for split, (start, end) in borders.items()},
            "windows": {
                split: {
                    "lookback_windows": int(part.num_windows),
                    "available": int(part.available),
                    "used": len(part),
                }
                for split, part in (("train", self.train), ("val", self.val))
            },
            "scaler": self.splits.scaler.to_dict(),
        }


@dataclass
class PretrainingCorpus:
    """Several datasets mixed channel-independently for pre-training (see :func:`load_pretraining_corpus`).

    ``train`` / ``val`` concatenate the members' univariate windows; a model pre-trained on it has
    ``num_input_channels = 1`` and is fine-tuned on C channels with
    ``HiMTMForPrediction.from_pretrained(folder, num_input_channels=C, prediction_length=H)``.
    """

    members: list[CorpusMember]
    context_length: int
    max_windows_per_dataset: int | None = None
    left_out: list[str] = field(default_factory=list)
    train_fraction: float = 1.0

    num_channels = 1

    def __post_init__(self) -> None:
        self.train = ConcatDataset([m.train for m in self.members])
        self.val = ConcatDataset([m.val for m in self.members])

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``corpus.json``."""
        cap = self.max_windows_per_dataset
        return {
            "format": CORPUS_FORMAT,
            "version": 1,
            "channel_independent": True,
            "num_input_channels": 1,
            "context_length": int(self.context_length),
            "window": "look-back only: context_length rows, stride 1; every channel a univariate series",
            "sampling": {
                "rule": "concatenate" if cap is None else "evenly_strided_cap_per_dataset",
                "max_windows_per_dataset": cap,
                "unit": "univariate window (one channel of one look-back window)",
                "applies_to": ["train", "val"],
            },
            "datasets": [m.to_dict() for m in self.members],
            "left_out": list(self.left_out),
            "train_fraction": float(self.train_fraction),
            "total_windows": {"train": len(self.train), "val": len(self.val)},
        }

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Writes ``<directory>/corpus.json``; returns its path."""
        path = Path(directory) / CORPUS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def load_pretraining_corpus(
    datasets: str | os.PathLike[str] | Sequence[str],
    data_dir: str | os.PathLike[str] | None = None,
    context_length: int = 512,
    leave_out: str | Sequence[str] | None = None,
    max_windows_per_dataset: int | None = None,
    timestamp_column: TimestampArg = None,
    split_fractions: Sequence[float] | None = None,
    sort_timestamps: bool = False,
    train_fraction: float = 1.0,
    id_column: str | None = None,
    freq: str | None = None,
    short_series: Literal["skip", "error"] = "skip",
) -> PretrainingCorpus:
    """Loads several datasets for channel-independent pre-training.

    Every entry of ``datasets`` (benchmark names, files or Hub ids; see :func:`select_datasets` for ``leave_out``)
    is loaded with :func:`load_splits` at ``prediction_length=0`` (look-back-only windows of ``context_length``
    rows), split by its own protocol and standardised with the statistics of its *own* train split. Every channel
    of every window is a univariate series (channel counts may differ). Training uses the train splits only,
    validation the val splits.

    Sampling: without ``max_windows_per_dataset`` the members' univariate windows are concatenated (a dataset weighs
    by its windows x channels: weather's 21 channels and ETTm's 15-minute rows outweigh ETTh); with it, each member
    contributes at most that many univariate windows per split, an evenly strided subset over its windows and
    channels, so no dataset dominates while each still covers its whole time range. ``train_fraction`` < 1 keeps
    only the last fraction of each member's train windows (before the cap; see ``DataArguments.train_fraction``).
    A member may be a dataset of many series (:mod:`himtm_hf.panel`): its windows are those of all its series, each
    standardised by its own train rows; ``id_column``, ``freq`` and ``short_series`` apply to such members.
    """
    if max_windows_per_dataset is not None and int(max_windows_per_dataset) < 1:
        raise ValueError(f"--max_windows_per_dataset must be >= 1 (or not given), got {max_windows_per_dataset}.")
    cap = None if max_windows_per_dataset is None else int(max_windows_per_dataset)
    all_entries = split_dataset_list(datasets)
    entries = select_datasets(all_entries, leave_out)
    members = []
    for entry in entries:
        splits = load_splits(entry, data_dir, context_length, 0, timestamp_column=timestamp_column,
                             split_fractions=split_fractions, sort_timestamps=sort_timestamps, id_column=id_column,
                             freq=freq, short_series=short_series)
        if train_fraction != 1.0:
            splits = few_shot_split(splits, train_fraction)
        source = _resolve_source(entry, data_dir).location
        members.append(CorpusMember(
            entry=entry, source=source, splits=splits,
            train=UnivariateWindowDataset(splits.train, cap, name=f"{splits.name} train"),
            val=UnivariateWindowDataset(splits.val, cap, name=f"{splits.name} val"),
        ))
    left_out = [entry for entry in all_entries if entry not in entries]
    return PretrainingCorpus(members, int(context_length), cap, left_out, float(train_fraction))


def lookback_splits(load_kwargs: dict[str, Any], train_fraction: float = 1.0) -> SplitData:
    """One series' look-back-only splits for pre-training: :func:`load_splits` with ``prediction_length=0`` (the
    other ``load_kwargs`` as given), the train split cut to its last ``train_fraction`` of windows."""
    splits = load_splits(**{**load_kwargs, "prediction_length": 0})
    return few_shot_split(splits, train_fraction)


def few_shot_split(splits: SplitData, fraction: float) -> SplitData:
    """`splits` with only the last `fraction` of its train windows: ``max(1, ceil(fraction * N))`` of the N.

    The kept windows are the most recent ones, those that end closest to the val split: what a user with a short
    history has (the latest months of a series), unlike an evenly strided subset, which still spans the whole train
    period and its seasons. Val and test are unchanged, and so is the scaler: it stays fitted on the full train
    split, so every metric is in the same standardised units as the full-data runs and tables (a scaler refitted
    on a few weeks of rows would change the units the test MSE is measured in, not only what the model learns
    from). The returned train split is a shallow copy of the original window dataset over the kept rows (its
    `start` and `borders["train"]` say where they begin); `fraction` 1 returns `splits` itself.
    """
    train = splits.train.last_fraction(fraction)  # checks `fraction`; the same dataset when nothing is cut
    if train is splits.train:
        return splits
    borders = dict(splits.borders)
    if "train" in borders:
        borders["train"] = (borders["train"][0] + train.start - splits.train.start, borders["train"][1])
    return replace(splits, train=train, borders=borders)
