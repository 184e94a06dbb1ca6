"""Tests for himtm_hf.data.

Expected split sizes, borders and scaler statistics are computed here independently from the raw
CSV files with pandas (not with the module's helpers).
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from himtm_hf.data import (
    BENCHMARKS,
    ForecastWindowDataset,
    SeriesScaler,
    default_data_dir,
    load_series,
    load_splits,
)

_FALLBACK_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR") or _FALLBACK_DATA_DIR)


def raw_csv(name: str) -> pd.DataFrame:
    """Read a benchmark CSV with pandas; fail (not skip) with a clear message if it is missing."""
    path = DATA_DIR / f"{name}.csv.gz"
    if not path.is_file():
        pytest.fail(
            f"Benchmark file {path} not found. Set HIMTM_DATA_DIR to the folder holding the "
            f"benchmark .csv.gz files (default: {_FALLBACK_DATA_DIR})."
        )
    return pd.read_csv(path)


@pytest.fixture(scope="module", autouse=True)
def _isolated_datasets_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep the Arrow cache written by datasets.load_dataset out of ~/.cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf_datasets_cache"))
        yield


@pytest.fixture(autouse=True)
def _data_dir_env(monkeypatch: pytest.MonkeyPatch):
    """Every test sees HIMTM_DATA_DIR pointing at the benchmark folder unless it changes it."""
    monkeypatch.setenv("HIMTM_DATA_DIR", str(DATA_DIR))


def expected_protocol(raw: pd.DataFrame, name: str, context_length: int):
    """Independent re-implementation of the split protocol from the raw frame."""
    n = len(raw)
    if name in ("ETTh1", "ETTh2"):
        n_train, n_val, n_test = 12 * 30 * 24, 4 * 30 * 24, 4 * 30 * 24
    elif name in ("ETTm1", "ETTm2"):
        n_train, n_val, n_test = 4 * 12 * 30 * 24, 4 * 4 * 30 * 24, 4 * 4 * 30 * 24
    else:
        n_train = int(n * 0.7)
        n_test = int(n * 0.2)
        n_val = n - n_train - n_test
    borders = {
        "train": (0, n_train),
        "val": (n_train - context_length, n_train + n_val),
        "test": (n_train + n_val - context_length, n_train + n_val + n_test),
    }
    values = raw.drop(columns=["date"]).to_numpy(dtype=np.float64)
    mean = values[:n_train].mean(axis=0)
    std = values[:n_train].std(axis=0, ddof=0)
    return borders, values, mean, std


# ----------------------------------------------------------------------------------------------
# Benchmarks
# ----------------------------------------------------------------------------------------------


def test_etth1_protocol_matches_independent_computation():
    raw = raw_csv("ETTh1")
    L, H = 512, 96
    splits = load_splits("ETTh1", context_length=L, prediction_length=H)
    borders, values, mean, std = expected_protocol(raw, "ETTh1", L)

    assert splits.name == "ETTh1"
    assert splits.borders == borders == {"train": (0, 8640), "val": (8128, 11520), "test": (11008, 14400)}
    assert splits.columns == list(raw.columns[1:])
    np.testing.assert_allclose(splits.mean, mean, rtol=1e-12)
    np.testing.assert_allclose(splits.std, std, rtol=1e-12)
    np.testing.assert_allclose(splits.scaler.mean, mean, rtol=1e-12)

    # Every window kept (stride 1, no drop_last).
    assert len(splits.test) == 2785
    assert len(splits.val) == 2785
    assert len(splits.train) == 8640 - L - H + 1
    for split, (start, end) in borders.items():
        assert len(splits[split]) == (end - start) - L - H + 1

    scaled = (values - mean) / std
    test_start = 12 * 30 * 24 + 4 * 30 * 24 - 512
    first = splits.test[0]
    assert first["past_values"].shape == (L, 7) and first["past_values"].dtype == torch.float32
    assert first["future_values"].shape == (H, 7)
    np.testing.assert_allclose(first["past_values"].numpy(), scaled[test_start : test_start + L], atol=1e-5)
    np.testing.assert_allclose(
        first["future_values"].numpy(), scaled[test_start + L : test_start + L + H], atol=1e-5
    )
    assert bool(first["past_observed_mask"].all()) and bool(first["future_observed_mask"].all())
    assert first["past_observed_mask"].shape == (L, 7) and first["future_observed_mask"].shape == (H, 7)

    # The last test window ends exactly at the end of the test split (row 14400).
    last = splits.test[len(splits.test) - 1]
    np.testing.assert_allclose(last["future_values"].numpy(), scaled[14400 - H : 14400], atol=1e-5)
    assert splits.test.window_start(-1) == 14400 - L - H
    first_val = splits.val[0]
    np.testing.assert_allclose(first_val["past_values"].numpy(), scaled[8128 : 8128 + L], atol=1e-5)

    expected_timestamps = pd.DatetimeIndex(pd.to_datetime(raw["date"]))
    assert splits.timestamps is not None
    assert (splits.timestamps == expected_timestamps).all()
    with pytest.raises(IndexError):
        splits.test[len(splits.test)]


@pytest.mark.parametrize(
    ("name", "context_length", "prediction_length"),
    [
        ("national_illness", 104, 24),
        ("national_illness", 512, 96),
        ("exchange_rate", 336, 96),
        ("weather", 512, 96),
    ],
)
def test_fraction_protocol_matches_independent_computation(name, context_length, prediction_length):
    raw = raw_csv(name)
    splits = load_splits(name, context_length=context_length, prediction_length=prediction_length)
    borders, values, mean, std = expected_protocol(raw, name, context_length)

    assert splits.name == name
    assert splits.borders == borders
    # Column names kept as in the file (weather has U+FFFD characters in its header).
    assert splits.columns == list(raw.columns[1:])
    np.testing.assert_allclose(splits.mean, mean, rtol=1e-10)
    np.testing.assert_allclose(splits.std, std, rtol=1e-10)
    for split, (start, end) in borders.items():
        assert len(splits[split]) == (end - start) - context_length - prediction_length + 1
        assert splits[split].start == start
    scaled = (values - mean) / std
    test_start = borders["test"][0]
    np.testing.assert_allclose(
        splits.test[0]["past_values"].numpy(), scaled[test_start : test_start + context_length], atol=1e-4
    )
    end = borders["test"][1]
    np.testing.assert_allclose(
        splits.test[-1]["future_values"].numpy(), scaled[end - prediction_length : end], atol=1e-4
    )


def test_weather_header_keeps_replacement_characters():
    frame, timestamps, name = load_series("weather")
    assert name == "weather"
    assert "SWDR (W/m\ufffd)" in frame.columns
    assert frame.shape == (52696, 21)
    assert timestamps is not None and len(timestamps) == 52696


@pytest.mark.parametrize(
    ("alias", "canonical"),
    [
        ("etth1", "ETTh1"),
        ("ETTH2", "ETTh2"),
        ("Weather", "weather"),
        ("exchange", "exchange_rate"),
        ("ili", "national_illness"),
    ],
)
def test_benchmark_aliases(alias, canonical):
    _, _, name = load_series(alias)
    assert name == canonical


def test_window_items_are_views_and_collate():
    splits = load_splits("national_illness", context_length=36, prediction_length=24)
    item = splits.train[3]
    storage = splits.train.values.untyped_storage().data_ptr()
    assert item["past_values"].untyped_storage().data_ptr() == storage
    assert item["future_values"].untyped_storage().data_ptr() == storage
    batch = next(iter(DataLoader(splits.test, batch_size=8)))
    assert batch["past_values"].shape == (8, 36, 7)
    assert batch["future_observed_mask"].shape == (8, 24, 7)
    assert splits.num_channels == 7 and splits.context_length == 36 and splits.prediction_length == 24


# ----------------------------------------------------------------------------------------------
# Data directory resolution
# ----------------------------------------------------------------------------------------------


def _synthetic_frame(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "date": pd.date_range("2020-01-01", periods=n, freq="h").strftime("%Y-%m-%d %H:%M:%S"),
            "a": rng.normal(size=n),
            "b": rng.normal(loc=5.0, scale=3.0, size=n),
            "OT": np.arange(n, dtype=np.float64),
        }
    )


def test_default_data_dir(monkeypatch):
    monkeypatch.delenv("HIMTM_DATA_DIR", raising=False)
    expected = _FALLBACK_DATA_DIR if _FALLBACK_DATA_DIR.is_dir() else None
    assert default_data_dir() == expected
    monkeypatch.setenv("HIMTM_DATA_DIR", "/some/where")
    assert default_data_dir() == Path("/some/where")


def test_env_var_data_dir_and_explicit_override(tmp_path, monkeypatch):
    frame = _synthetic_frame()
    env_dir = tmp_path / "env"
    env_dir.mkdir()
    frame.to_csv(env_dir / "weather.csv", index=False)
    monkeypatch.setenv("HIMTM_DATA_DIR", str(env_dir))
    values, timestamps, name = load_series("Weather")
    assert name == "weather"
    np.testing.assert_allclose(values["b"].to_numpy(), frame["b"].to_numpy(), rtol=0, atol=0)
    assert list(values.columns) == ["a", "b", "OT"]
    assert timestamps is not None and timestamps[0] == pd.Timestamp("2020-01-01")

    # An explicit data_dir wins over the environment variable.
    explicit = tmp_path / "explicit"
    explicit.mkdir()
    frame.assign(a=frame["a"] + 100).to_csv(explicit / "weather.csv", index=False)
    values2, _, _ = load_series("weather", data_dir=explicit)
    np.testing.assert_allclose(values2["a"].to_numpy(), frame["a"].to_numpy() + 100)


def test_missing_benchmark_file_lists_directory(tmp_path, monkeypatch):
    (tmp_path / "something_else.csv").write_text("date,x\n2020-01-01,1\n")
    monkeypatch.setenv("HIMTM_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_splits("traffic")
    message = str(info.value)
    assert "traffic.csv.gz" in message and "something_else.csv" in message
    assert "HIMTM_DATA_DIR" in message and str(tmp_path) in message


def test_missing_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HIMTM_DATA_DIR", str(tmp_path / "does_not_exist"))
    with pytest.raises(FileNotFoundError, match="does_not_exist.*HIMTM_DATA_DIR"):
        load_series("ETTh1")


def test_unknown_benchmark_name():
    with pytest.raises(ValueError) as info:
        load_series("ETTh3")
    message = str(info.value)
    assert "ETTh3" in message
    for name in BENCHMARKS:
        assert name in message


def test_missing_explicit_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_series(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        load_series(str(tmp_path / "nope.parquet"))


def test_unsupported_file_type(tmp_path):
    path = tmp_path / "series.txt"
    path.write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match=r"series\.txt.*\.csv"):
        load_series(path)


# ----------------------------------------------------------------------------------------------
# User files, splits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet"])
def test_load_explicit_path(tmp_path, suffix):
    frame = _synthetic_frame(300)
    path = tmp_path / f"mydata{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    splits = load_splits(path, context_length=32, prediction_length=8)
    assert splits.name == "mydata"
    assert splits.columns == ["a", "b", "OT"]
    n_train, n_test = int(0.7 * 300), int(0.2 * 300)
    assert splits.borders == {
        "train": (0, n_train),
        "val": (n_train - 32, 300 - n_test),
        "test": (300 - n_test - 32, 300),
    }
    values = frame[["a", "b", "OT"]].to_numpy()
    np.testing.assert_allclose(splits.mean, values[:n_train].mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(splits.std, values[:n_train].std(axis=0), rtol=1e-12)
    assert len(splits.test) == n_test + 32 - 32 - 8 + 1


def test_split_fractions_and_dates(tmp_path):
    frame = _synthetic_frame(400)
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)

    splits = load_splits(path, context_length=16, prediction_length=4, split_fractions=(0.6, 0.2, 0.2))
    assert splits.borders == {"train": (0, 240), "val": (224, 320), "test": (304, 400)}

    # Rows are hourly from 2020-01-01 00:00: 2020-01-06 = row 120, 2020-01-11 = row 240.
    splits = load_splits(
        path, context_length=16, prediction_length=4, split_dates=("2020-01-06", "2020-01-11")
    )
    assert splits.borders == {"train": (0, 120), "val": (104, 240), "test": (224, 400)}
    np.testing.assert_allclose(splits.mean, frame[["a", "b", "OT"]].to_numpy()[:120].mean(axis=0))


@pytest.mark.parametrize(
    "fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (-0.1, 0.4, 0.7), (0.8, 0.2, 0.0), ("a", 0.2, 0.1)]
)
def test_bad_split_fractions(tmp_path, fractions):
    path = tmp_path / "series.csv"
    _synthetic_frame(400).to_csv(path, index=False)
    with pytest.raises(ValueError, match="split_fractions"):
        load_splits(path, context_length=16, prediction_length=4, split_fractions=fractions)


def test_bad_split_dates(tmp_path):
    path = tmp_path / "series.csv"
    _synthetic_frame(400).to_csv(path, index=False)
    with pytest.raises(ValueError, match="not both"):
        load_splits(
            path,
            context_length=16,
            prediction_length=4,
            split_fractions=(0.7, 0.1, 0.2),
            split_dates=("2020-01-02", "2020-01-03"),
        )
    with pytest.raises(ValueError, match="timestamp"):
        load_splits(
            path,
            context_length=16,
            prediction_length=4,
            timestamp_column=False,
            split_dates=("2020-01-02", "2020-01-03"),
        )
    with pytest.raises(ValueError, match="non-empty"):
        load_splits(path, context_length=16, prediction_length=4, split_dates=("2019-01-01", "2020-01-03"))


def test_target_and_timestamp_columns(tmp_path):
    frame = _synthetic_frame(200).assign(label="x")
    path = tmp_path / "series.csv"
    frame.to_csv(path, index=False)
    values, _, _ = load_series(path)
    assert list(values.columns) == ["a", "b", "OT"]  # the text column "label" is not a target
    values, _, _ = load_series(path, target_columns=["OT"])
    assert list(values.columns) == ["OT"]
    values, timestamps, _ = load_series(path, target_columns="a", timestamp_column=False)
    assert list(values.columns) == ["a"] and timestamps is None
    with pytest.raises(ValueError, match=r"Target column\(s\) \['nope'\] not found.*'OT'"):
        load_series(path, target_columns=["OT", "nope"])
    with pytest.raises(ValueError, match="Timestamp column 'when' not found"):
        load_series(path, timestamp_column="when")
    with pytest.raises(ValueError, match="non-numeric value 'x'.*'label'|'label'.*non-numeric value 'x'"):
        load_series(path, target_columns=["label"])


# ----------------------------------------------------------------------------------------------
# Bad data
# ----------------------------------------------------------------------------------------------


def test_no_numeric_columns(tmp_path):
    path = tmp_path / "text.csv"
    path.write_text("date,name,city\n2020-01-01,ann,paris\n2020-01-02,bob,rome\n")
    with pytest.raises(ValueError, match=r"no numeric columns.*target_columns"):
        load_series(path)


def test_non_numeric_value_names_column_and_row(tmp_path):
    frame = _synthetic_frame(50).astype({"b": object})
    frame.loc[3, "b"] = "oops"
    path = tmp_path / "bad.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError) as info:
        load_splits(path, context_length=8, prediction_length=2)
    message = str(info.value)
    assert "'b'" in message and "'oops'" in message
    assert "row 3" in message and "line 5" in message and "bad.csv" in message


def test_infinite_values_rejected(tmp_path):
    frame = _synthetic_frame(50)
    frame.loc[7, "a"] = np.inf
    path = tmp_path / "inf.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"'a'.*non-finite.*row 7"):
        load_splits(path, context_length=8, prediction_length=2)


def test_series_too_short(tmp_path):
    path = tmp_path / "short.csv"
    _synthetic_frame(100).to_csv(path, index=False)
    with pytest.raises(ValueError) as info:
        load_splits(path, context_length=512, prediction_length=96)
    message = str(info.value)
    assert "608" in message and "test split" in message
    # 0.2 * n >= 96 and the train split must hold 608 rows: n >= 869.
    assert "at least 869 rows" in message
    # And that many rows is indeed enough.
    _synthetic_frame(869).to_csv(path, index=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the val split of this series has no window
        splits = load_splits(path, context_length=512, prediction_length=96)
    assert len(splits.train) == 1
    assert len(splits.test) == (int(0.2 * 869) + 512) - 608 + 1


def test_ett_file_too_short_for_fixed_protocol(tmp_path):
    path = tmp_path / "ETTh1.csv"
    _synthetic_frame(1000).to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"14400 rows.*split_fractions"):
        load_splits(path, context_length=16, prediction_length=4)
    assert load_splits(path, context_length=16, prediction_length=4, split_fractions=(0.7, 0.1, 0.2)).borders[
        "train"
    ] == (0, 700)


def test_nan_values_are_masked_and_zero_filled(tmp_path):
    n = 200
    frame = _synthetic_frame(n)
    nan_rows_a = [5, 17, 175, 190]  # train rows and test rows
    frame.loc[nan_rows_a, "a"] = np.nan
    path = tmp_path / "nan.csv"
    frame.to_csv(path, index=False)
    text = path.read_text()
    assert ",," in text  # NaNs are written as empty cells

    splits = load_splits(path, context_length=20, prediction_length=5)
    values = frame[["a", "b", "OT"]].to_numpy()
    n_train = int(0.7 * n)
    np.testing.assert_allclose(splits.mean, np.nanmean(values[:n_train], axis=0), rtol=1e-12)
    np.testing.assert_allclose(splits.std, np.nanstd(values[:n_train], axis=0), rtol=1e-12)

    item = splits.train[0]  # rows 0..19 past, 20..24 future
    mask = item["past_observed_mask"]
    assert mask.dtype == torch.bool
    assert not bool(mask[5, 0]) and not bool(mask[17, 0]) and bool(mask[5, 1])
    assert int((~mask).sum()) == 2
    assert float(item["past_values"][5, 0]) == 0.0
    assert not torch.isnan(item["past_values"]).any()

    test = splits.test
    for row in (175, 190):
        window = row - test.start - test.context_length  # window whose first future step is `row`
        item = test[window]
        assert not bool(item["future_observed_mask"][0, 0])
        assert float(item["future_values"][0, 0]) == 0.0
    for i in range(len(test)):
        assert not torch.isnan(test[i]["future_values"]).any()


def test_column_without_train_observations(tmp_path):
    frame = _synthetic_frame(100)
    frame.loc[:80, "b"] = np.nan
    path = tmp_path / "empty_col.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"\['b'\].*no observed"):
        load_splits(path, context_length=8, prediction_length=2)


def test_val_without_windows_warns(tmp_path):
    path = tmp_path / "series.csv"
    _synthetic_frame(400).to_csv(path, index=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        splits = load_splits(path, context_length=16, prediction_length=4, split_fractions=(0.8, 0.0, 0.2))
    assert len(splits.val) == 0
    assert any("val split" in str(w.message) for w in caught)


# ----------------------------------------------------------------------------------------------
# Scaler and window dataset
# ----------------------------------------------------------------------------------------------


def test_scaler_roundtrip_and_constant_column(tmp_path):
    rng = np.random.default_rng(1)
    values = np.column_stack([rng.normal(3, 2, 500), np.full(500, 7.0), rng.normal(size=500)])
    scaler = SeriesScaler().fit(values, ["x", "const", "\ufffd weird"])
    np.testing.assert_allclose(scaler.mean, values.mean(axis=0))
    np.testing.assert_allclose(scaler.std, [values[:, 0].std(), 1.0, values[:, 2].std()])
    scaled = scaler.transform(values)
    np.testing.assert_allclose(scaler.inverse_transform(scaled), values, rtol=1e-12)
    as_float32 = scaler.transform(values.astype(np.float32))
    assert as_float32.dtype == np.float32

    tensor = torch.tensor(values, dtype=torch.float32).reshape(5, 100, 3)
    out = scaler.transform(tensor)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    np.testing.assert_allclose(out.reshape(500, 3).numpy(), scaled, atol=1e-5)

    path = scaler.save(tmp_path / "model")
    assert path == tmp_path / "model" / "scaler.json"
    payload = json.loads(path.read_text(encoding="utf-8"))
    assert payload["columns"] == ["x", "const", "\ufffd weird"]
    loaded = SeriesScaler.load(tmp_path / "model")
    np.testing.assert_array_equal(loaded.mean, scaler.mean)
    np.testing.assert_array_equal(loaded.std, scaler.std)
    assert loaded.columns == scaler.columns
    with pytest.raises(ValueError, match="columns"):
        scaler.transform(np.zeros((4, 2)))
    with pytest.raises(FileNotFoundError, match="scaler.json"):
        SeriesScaler.load(tmp_path / "nothing")


def test_splits_scaler_matches_saved(tmp_path):
    splits = load_splits("national_illness", context_length=36, prediction_length=24)
    splits.scaler.save(tmp_path)
    loaded = SeriesScaler.load(tmp_path)
    np.testing.assert_array_equal(loaded.mean, splits.mean)
    assert loaded.columns == splits.columns


def test_forecast_window_dataset_direct():
    values = np.arange(30, dtype=np.float64).reshape(10, 3)
    values[4, 1] = np.nan
    ds = ForecastWindowDataset(values, context_length=4, prediction_length=2)
    assert len(ds) == 10 - 4 - 2 + 1
    item = ds[1]
    np.testing.assert_array_equal(item["past_values"].numpy(), np.nan_to_num(values[1:5]))
    np.testing.assert_array_equal(item["future_values"].numpy(), values[5:7])
    assert not bool(item["past_observed_mask"][3, 1])
    assert ForecastWindowDataset(np.zeros((5, 2)), 4, 2).__len__() == 0
    no_future_mask = ForecastWindowDataset(values, 4, 2, return_future_observed_mask=False)
    assert "future_observed_mask" not in no_future_mask[0]
