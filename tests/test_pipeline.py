"""DataFrame forecasting on the tail of real ETTh2: timestamps, original units, scaler consistency, padding,
cutting, roll-out, clear errors for bad frames, and scripts/forecast.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from himtm_hf import HiMTMConfig, HiMTMForPrediction
from himtm_hf.data import SeriesScaler, load_splits
from himtm_hf.pipeline import HiMTMForecastPipeline, infer_time_axis

PROJECT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR", PROJECT.parent / "shared" / "data"))
ETTH2 = DATA_DIR / "ETTh2.csv.gz"
CONTEXT, HORIZON, PATCH = 64, 16, 8

pytestmark = pytest.mark.skipif(not ETTH2.is_file(), reason=f"{ETTH2} not available")


def tiny_model(**overrides) -> HiMTMForPrediction:
    torch.manual_seed(0)
    config = HiMTMConfig(context_length=CONTEXT, prediction_length=HORIZON, num_input_channels=7,
                         patch_length=PATCH, patch_stride=PATCH, num_hierarchies=2, d_model=16,
                         num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                         csa_num_attention_heads=2, **overrides)
    return HiMTMForPrediction(config).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest single-threaded (and do not stall when the CPU cores are shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def etth2() -> pd.DataFrame:
    return pd.read_csv(ETTH2)


@pytest.fixture(scope="module")
def scaler() -> SeriesScaler:
    """Fitted on ETTh2's train split, as training does."""
    return load_splits("ETTh2", data_dir=DATA_DIR, context_length=CONTEXT, prediction_length=HORIZON).scaler


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, scaler) -> Path:
    folder = tmp_path_factory.mktemp("model") / "etth2-tiny"
    tiny_model().save_pretrained(folder)
    scaler.save(folder)
    return folder


@pytest.fixture(scope="module")
def pipe(model_dir) -> HiMTMForecastPipeline:
    return HiMTMForecastPipeline.from_pretrained(model_dir)


@pytest.fixture
def tail(etth2) -> pd.DataFrame:
    return etth2.tail(200).reset_index(drop=True).copy()


def direct_forecast(model, scaler, frame: pd.DataFrame) -> np.ndarray:
    """The model called by hand on the last rows: standardise, left-pad with mask 0, run, inverse-transform."""
    values = frame[scaler.columns].to_numpy(dtype=np.float64)[-CONTEXT:]
    scaled = scaler.transform(values)
    mask = np.ones_like(scaled)
    if len(scaled) < CONTEXT:
        pad = CONTEXT - len(scaled)
        scaled = np.concatenate([np.zeros((pad, 7)), scaled])
        mask = np.concatenate([np.zeros((pad, 7)), mask])
    with torch.no_grad():
        out = model(past_values=torch.tensor(scaled, dtype=torch.float32)[None],
                    past_observed_mask=torch.tensor(mask, dtype=torch.float32)[None]).prediction_outputs[0]
    return scaler.inverse_transform(out.numpy().astype(np.float64))


# ---------------------------------------------------------------------------------------------------- happy paths


def test_forecast_continues_hourly_timestamps(pipe, tail):
    out = pipe(tail, timestamp_column="date")
    last = pd.Timestamp(tail["date"].iloc[-1])
    assert list(out.columns) == list(tail.columns)
    assert len(out) == HORIZON
    expected = pd.date_range(last + pd.Timedelta(hours=1), periods=HORIZON, freq="h")
    assert (pd.DatetimeIndex(out["date"]) == expected).all()
    assert np.isfinite(out.drop(columns="date").to_numpy()).all()


def test_forecast_is_in_original_units_and_uses_the_saved_scaler(pipe, model_dir, scaler, tail):
    out = pipe(tail)
    expected = direct_forecast(HiMTMForPrediction.from_pretrained(model_dir).eval(), scaler, tail)
    np.testing.assert_allclose(out[scaler.columns].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    # An untrained model's forecast stays on the scale of the recent history (original units, not standardised):
    recent = tail[scaler.columns].tail(CONTEXT)
    for column in scaler.columns:
        centre, spread = recent[column].mean(), recent[column].std() + 1e-6
        assert (np.abs(out[column] - centre) < 6 * spread).all(), column
    assert out["HUFL"].mean() > 10  # HUFL is around 40 in ETTh2; standardised values would be near 0


def test_scaler_loc_scale_consistency(scaler, tail):
    """Scaling (or shifting) every column of the frame and the scaler's statistics by the same factor scales
    (shifts) the forecast. Checked with scaling=None (no per-instance normalisation), where only the global
    scaler applied before and inverted after the model can make this hold."""
    model = tiny_model(scaling=None)
    base = HiMTMForecastPipeline(model, scaler)(tail)
    factor, shift = 3.7, 123.0
    scaled_frame = tail.copy()
    scaled_frame[scaler.columns] = scaled_frame[scaler.columns] * factor
    scaled_scaler = SeriesScaler(mean=scaler.mean * factor, std=scaler.std * factor, columns=scaler.columns)
    scaled = HiMTMForecastPipeline(model, scaled_scaler)(scaled_frame)
    np.testing.assert_allclose(scaled[scaler.columns].to_numpy(), base[scaler.columns].to_numpy() * factor,
                               rtol=1e-5, atol=1e-5)
    shifted_frame = tail.copy()
    shifted_frame[scaler.columns] = shifted_frame[scaler.columns] + shift
    shifted_scaler = SeriesScaler(mean=scaler.mean + shift, std=scaler.std, columns=scaler.columns)
    shifted = HiMTMForecastPipeline(model, shifted_scaler)(shifted_frame)
    np.testing.assert_allclose(shifted[scaler.columns].to_numpy(), base[scaler.columns].to_numpy() + shift,
                               rtol=1e-6, atol=1e-3)
    # ...and a scaler that does not match the data changes the forecast (the scaler is really used)
    wrong = HiMTMForecastPipeline(model, scaled_scaler)(tail)
    assert not np.allclose(wrong[scaler.columns].to_numpy(), base[scaler.columns].to_numpy(), rtol=1e-3)


def test_short_history_is_left_padded_with_mask_zero(pipe, model_dir, scaler, tail):
    short = tail.tail(20).reset_index(drop=True)  # < context_length (64), >= patch_length (8)
    out = pipe(short)
    assert len(out) == HORIZON and np.isfinite(out[scaler.columns].to_numpy()).all()
    expected = direct_forecast(HiMTMForPrediction.from_pretrained(model_dir).eval(), scaler, short)
    np.testing.assert_allclose(out[scaler.columns].to_numpy(), expected, rtol=1e-5, atol=1e-5)
    # the padded zeros are ignored: padding with other values (still masked) gives the same forecast
    values = scaler.transform(short[scaler.columns].to_numpy(dtype=np.float64))
    observed = np.ones_like(values)
    junk = np.full((CONTEXT - 20, 7), 50.0)
    padded = pipe.predict_scaled(np.concatenate([junk, values]),
                                 np.concatenate([np.zeros_like(junk), observed]), HORIZON)
    np.testing.assert_allclose(scaler.inverse_transform(padded), out[scaler.columns].to_numpy(), rtol=1e-5,
                               atol=1e-5)


def test_long_history_is_cut_to_context_length(pipe, etth2, tail):
    long = etth2.tail(1000).reset_index(drop=True)
    assert pipe(long).equals(pipe(long.tail(CONTEXT).reset_index(drop=True)))
    assert not pipe(long).drop(columns="date").equals(pipe(long.tail(CONTEXT + 1).head(CONTEXT)).drop(columns="date"))


def test_rollout_beyond_prediction_length(pipe, scaler, tail):
    horizon = 2 * HORIZON + 5
    out = pipe(tail, horizon=horizon)
    assert len(out) == horizon
    last = pd.Timestamp(tail["date"].iloc[-1])
    assert (pd.DatetimeIndex(out["date"]) == pd.date_range(last, periods=horizon + 1, freq="h")[1:]).all()
    first = pipe(tail)
    np.testing.assert_allclose(out[scaler.columns].to_numpy()[:HORIZON], first[scaler.columns].to_numpy())
    # step 2 = the model run on the history extended by the first forecast (fed back as observed input)
    extended = pd.concat([tail, first], ignore_index=True)
    extended["date"] = pd.to_datetime(extended["date"])
    second = pipe(extended)
    np.testing.assert_allclose(out[scaler.columns].to_numpy()[HORIZON:2 * HORIZON],
                               second[scaler.columns].to_numpy(), rtol=1e-4, atol=1e-4)


def test_column_order_and_missing_values(pipe, scaler, tail):
    shuffled = tail[["date", *reversed(scaler.columns)]]
    out = pipe(shuffled)
    assert list(out.columns) == list(shuffled.columns)
    np.testing.assert_allclose(out[scaler.columns].to_numpy(), pipe(tail)[scaler.columns].to_numpy())
    with_gaps = tail.copy()
    with_gaps.loc[150:160, "OT"] = np.nan  # missing values are masked, not an error
    assert np.isfinite(pipe(with_gaps)[scaler.columns].to_numpy()).all()


def test_datetime_index_and_other_frequencies(pipe, scaler, tail):
    indexed = tail.set_index(pd.to_datetime(tail["date"])).drop(columns="date")
    out = pipe(indexed, timestamp_column=None)
    assert isinstance(out.index, pd.DatetimeIndex) and out.index[0] == indexed.index[-1] + pd.Timedelta(hours=1)
    monthly = infer_time_axis(pd.Series(pd.date_range("2020-01-01", periods=12, freq="MS")), "date")
    assert list(monthly.future(2)) == [pd.Timestamp("2021-01-01"), pd.Timestamp("2021-02-01")]
    odd = infer_time_axis(pd.Series(pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(10) * 7, "min")), "t")
    assert odd.future(1)[0] == pd.Timestamp("2020-01-01 01:10:00")
    numeric = infer_time_axis(pd.Series([10, 15, 20, 25]), "step")
    assert list(numeric.future(2)) == [30, 35]


# ---------------------------------------------------------------------------------------------------- bad frames


def _unsorted(f):
    f = f.copy()
    f.loc[[10, 11], "date"] = f.loc[[11, 10], "date"].to_numpy()
    return f


def _duplicated(f):
    f = f.copy()
    f.loc[11, "date"] = f.loc[10, "date"]
    return f


def _non_numeric(f):
    f = f.copy()
    f["MULL"] = f["MULL"].astype(object)
    f.loc[42, "MULL"] = "n/a?"
    return f


BAD_FRAMES = {
    "no timestamp column": (lambda f: f.drop(columns="date"), r"No timestamp column 'date'.*columns are"),
    "unsorted": (_unsorted, r"not sorted in increasing order: row 11"),
    "duplicated": (_duplicated, r"duplicated timestamps"),
    "irregular": (lambda f: f.drop(index=100).reset_index(drop=True), r"irregular: the usual step is 0 days 01:00"),
    "unparsable timestamps": (lambda f: f.assign(date="yesterday"), r"could not be parsed as datetimes"),
    "non-numeric": (_non_numeric, r"Column 'MULL' has a non-numeric value 'n/a\?' at row 42"),
    "infinite": (lambda f: f.assign(OT=np.where(f.index == 5, np.inf, f["OT"])), r"Column 'OT' has an infinite"),
    "fewer rows than a patch": (lambda f: f.tail(PATCH - 1), r"fewer than one patch \(patch_length=8\)"),
    "missing column": (lambda f: f.drop(columns="OT"), r"missing \['OT'\]"),
    "extra column": (lambda f: f.assign(extra=1.0), r"unexpected \['extra'\]"),
    "missing and extra": (lambda f: f.rename(columns={"OT": "ot"}), r"missing \['OT'\]; unexpected \['ot'\]"),
    "all-missing column": (lambda f: f.assign(OT=np.nan), r"Column\(s\) \['OT'\] have no observed value"),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
def test_bad_frames_raise_clear_errors(pipe, tail, case):
    make, message = BAD_FRAMES[case]
    with pytest.raises(ValueError, match=message):
        pipe(make(tail))


def test_bad_arguments(pipe, tail):
    with pytest.raises(ValueError, match="Expected a pandas.DataFrame"):
        pipe(tail["OT"])
    with pytest.raises(ValueError, match="horizon must be a positive int"):
        pipe(tail, horizon=0)
    with pytest.raises(ValueError, match="DatetimeIndex"):
        pipe(tail, timestamp_column=None)


def test_channel_mismatch_between_model_and_scaler(scaler):
    small = SeriesScaler(mean=[0.0, 0.0], std=[1.0, 1.0], columns=["a", "b"])
    with pytest.raises(ValueError, match="num_input_channels=2"):
        HiMTMForecastPipeline(tiny_model(), small)


# ---------------------------------------------------------------------------------------------------- script


def test_forecast_script_writes_csv_and_plot(model_dir, tail, tmp_path):
    csv = tmp_path / "history.csv"
    tail.to_csv(csv, index=False)
    output = tmp_path / "out" / "forecast.csv"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "forecast.py"), str(csv), "--model", str(model_dir),
         "--horizon", "20", "--output", str(output)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    forecast = pd.read_csv(output, parse_dates=["date"])
    assert list(forecast.columns) == list(tail.columns) and len(forecast) == 20
    assert forecast["date"].iloc[0] == pd.Timestamp(tail["date"].iloc[-1]) + pd.Timedelta(hours=1)
    png = output.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
