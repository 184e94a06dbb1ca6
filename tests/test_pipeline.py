"""DataFrame forecasting on the tail of real ETTh2: timestamps, original units, scaler consistency, padding,
cutting, roll-out, clear errors for bad frames, and scripts/forecast.py; panels (long frames of many series with
`id_column`, a model fine-tuned on a panel with its PanelScaler)."""

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
from himtm_hf.panel import PanelScaler
from himtm_hf.pipeline import HiMTMForecastPipeline, infer_time_axis

PROJECT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR", PROJECT.parent / "shared" / "data"))
ETTH2 = DATA_DIR / "ETTh2.csv.gz"
CONTEXT, HORIZON, PATCH = 64, 16, 8

pytestmark = [
    pytest.mark.skipif(not ETTH2.is_file(), reason=f"{ETTH2} not available"),
    pytest.mark.usefixtures("one_thread"),  # conftest.py: tiny models run fastest single-threaded
]


def tiny_model(channels: int = 7, **overrides) -> HiMTMForPrediction:
    torch.manual_seed(0)
    config = HiMTMConfig(context_length=CONTEXT, prediction_length=HORIZON, num_input_channels=channels,
                         patch_length=PATCH, patch_stride=PATCH, num_hierarchies=2, d_model=16,
                         num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                         csa_num_attention_heads=2, **overrides)
    return HiMTMForPrediction(config).eval()


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


# ---------------------------------------------------------------------------------------------------- panels

PANEL_COLUMNS = ["load", "temp"]


def panel_series(key: str, rows: int, level: tuple[float, float], spread: tuple[float, float], start: str,
                 freq: str = "h", seed: int = 0) -> pd.DataFrame:
    """One series of a long frame: noisy daily sines around `level` with amplitude ~`spread`."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    values = {c: level[i] + spread[i] * (np.sin(2 * np.pi * t / 24 + i) + 0.3 * rng.standard_normal(rows))
              for i, c in enumerate(PANEL_COLUMNS)}
    return pd.DataFrame({"item_id": key, "date": pd.date_range(start, periods=rows, freq=freq), **values})


@pytest.fixture(scope="module")
def panel_scaler() -> PanelScaler:
    """Two series with very different statistics (as a panel fine-tuning run saves them)."""
    return PanelScaler({"north": SeriesScaler([100.0, 20.0], [10.0, 3.0], PANEL_COLUMNS),
                        "south": SeriesScaler([-5.0, 0.5], [0.5, 0.1], PANEL_COLUMNS)}, PANEL_COLUMNS)


@pytest.fixture(scope="module")
def panel_model() -> HiMTMForPrediction:
    """scaling=None: no per-instance normalisation, so the forecast depends on the scaler that standardises a
    series (with the default "std" scaling it would not: see the pipeline's module docstring)."""
    return tiny_model(channels=2, scaling=None)


def long_frame(*parts: pd.DataFrame) -> pd.DataFrame:
    """The series' rows interleaved by time (a long table sorted by date): no id's rows are contiguous."""
    return pd.concat(parts, ignore_index=True).sort_values("date", kind="stable").reset_index(drop=True)


@pytest.fixture(scope="module")
def north() -> pd.DataFrame:
    return panel_series("north", 150, (100.0, 20.0), (10.0, 3.0), "2021-01-01 05:00")


@pytest.fixture(scope="module")
def south() -> pd.DataFrame:
    # shorter than the context (left-padded) and half-hourly: each series keeps its own time axis
    return panel_series("south", 40, (-5.0, 0.5), (0.5, 0.1), "2021-01-01 00:00", freq="30min", seed=1)


def single(model, scaler, frame: pd.DataFrame, horizon: int | None = None) -> pd.DataFrame:
    """The single-series path on one id's rows."""
    return HiMTMForecastPipeline(model, scaler)(frame.drop(columns="item_id").reset_index(drop=True),
                                                horizon=horizon)


def test_panel_known_ids_use_their_saved_statistics(panel_model, panel_scaler, north, south):
    """(a) Each id of a long frame is forecast as if alone, standardised with its own saved statistics, whether the
    look-backs go through the model in one batch or one by one; rows of an id need not be contiguous, and ids come
    out in order of first appearance, each with its own future timestamps."""
    frame = long_frame(north, south)
    assert frame["item_id"].iloc[0] == "south" and not (frame["item_id"].iloc[:len(south)] == "south").all()
    pipe = HiMTMForecastPipeline(panel_model, panel_scaler)
    horizon = HORIZON + 5  # with a roll-out
    out = pipe(frame, horizon=horizon, id_column="item_id")
    assert list(out.columns) == ["item_id", "date", *PANEL_COLUMNS] and len(out) == 2 * horizon
    assert list(out["item_id"]) == ["south"] * horizon + ["north"] * horizon
    one_by_one = HiMTMForecastPipeline(panel_model, panel_scaler)
    one_by_one.batch_size = 1
    alone = one_by_one(frame, horizon=horizon, id_column="item_id")  # batching changes only float rounding
    assert alone[["item_id", "date"]].equals(out[["item_id", "date"]])
    np.testing.assert_allclose(alone[PANEL_COLUMNS].to_numpy(), out[PANEL_COLUMNS].to_numpy(), rtol=1e-5, atol=1e-5)
    for key, rows in (("north", north), ("south", south)):
        got = out[out["item_id"] == key].drop(columns="item_id").reset_index(drop=True)
        expected = single(panel_model, panel_scaler.for_item(key), rows, horizon)
        np.testing.assert_allclose(got[PANEL_COLUMNS].to_numpy(), expected[PANEL_COLUMNS].to_numpy(), rtol=1e-5,
                                   atol=1e-5)
        assert (pd.DatetimeIndex(got["date"]) == pd.DatetimeIndex(expected["date"])).all()
        # the saved statistics matter here (scaling=None): those of the own history give another forecast
        own = single(panel_model, SeriesScaler().fit(rows[PANEL_COLUMNS]), rows, horizon)
        assert not np.allclose(got[PANEL_COLUMNS].to_numpy(), own[PANEL_COLUMNS].to_numpy(), rtol=1e-3)
    assert pd.Timestamp(out["date"].iloc[0]) == south["date"].iloc[-1] + pd.Timedelta(minutes=30)
    assert pd.Timestamp(out["date"].iloc[horizon]) == north["date"].iloc[-1] + pd.Timedelta(hours=1)


def test_panel_unknown_id_uses_its_own_history(panel_model, panel_scaler, north):
    """(b) An id the panel did not hold, and a frame without id_column, are standardised with the mean/std of their
    own history; with a plain SeriesScaler every id uses that one scaler."""
    east = panel_series("east", 90, (50.0, -3.0), (4.0, 2.0), "2021-01-01", seed=2)
    pipe = HiMTMForecastPipeline(panel_model, panel_scaler)
    out = pipe(long_frame(north, east), id_column="item_id")
    got = out[out["item_id"] == "east"][PANEL_COLUMNS].to_numpy()
    own = SeriesScaler().fit(east[PANEL_COLUMNS].to_numpy(dtype=np.float64), columns=PANEL_COLUMNS)
    np.testing.assert_allclose(got, single(panel_model, own, east)[PANEL_COLUMNS].to_numpy(), rtol=1e-5, atol=1e-5)
    for known in ("north", "south"):
        other = single(panel_model, panel_scaler.for_item(known), east)[PANEL_COLUMNS].to_numpy()
        assert not np.allclose(got, other, rtol=1e-3)
    # no id_column with a panel scaler: the frame is one series the panel did not hold
    alone = pipe(east.drop(columns="item_id"))
    assert list(alone.columns) == ["date", *PANEL_COLUMNS]
    np.testing.assert_allclose(alone[PANEL_COLUMNS].to_numpy(), got, rtol=1e-5, atol=1e-5)
    # a plain SeriesScaler standardises every series of a long frame
    plain = panel_scaler.for_item("north")
    both = HiMTMForecastPipeline(panel_model, plain)(long_frame(north, east), id_column="item_id")
    for key, rows in (("north", north), ("east", east)):
        np.testing.assert_allclose(both[both["item_id"] == key][PANEL_COLUMNS].to_numpy(),
                                   single(panel_model, plain, rows)[PANEL_COLUMNS].to_numpy(), rtol=1e-5, atol=1e-5)


def test_own_history_statistics_are_sound_with_std_scaling(panel_scaler, north):
    """With the default per-instance "std" scaling the model removes any per-series affine standardisation, so the
    statistics of the series' own history forecast what the saved ones do (why unknown ids may use them)."""
    model = tiny_model(channels=2)
    saved = single(model, panel_scaler.for_item("north"), north)[PANEL_COLUMNS].to_numpy()
    own = single(model, SeriesScaler().fit(north[PANEL_COLUMNS]), north)[PANEL_COLUMNS].to_numpy()
    other = single(model, panel_scaler.for_item("south"), north)[PANEL_COLUMNS].to_numpy()
    np.testing.assert_allclose(own, saved, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(other, saved, rtol=1e-4, atol=1e-3)


def test_panel_model_folder_loads_with_from_pretrained(tmp_path, panel_model, panel_scaler, north, south):
    """(c) A folder with a model and a panel scaler.json (PanelScaler.save) loads and forecasts a panel."""
    folder = tmp_path / "panel-model"
    panel_model.save_pretrained(folder)
    panel_scaler.save(folder)
    pipe = HiMTMForecastPipeline.from_pretrained(folder)
    assert isinstance(pipe.scaler, PanelScaler) and pipe.columns == PANEL_COLUMNS
    assert pipe.scaler.item_ids == ["north", "south"] and "series=2" in repr(pipe)
    frame = long_frame(north, south)
    out = pipe(frame, id_column="item_id")
    expected = HiMTMForecastPipeline(panel_model, panel_scaler)(frame, id_column="item_id")
    assert list(out["item_id"].unique()) == ["south", "north"] and len(out) == 2 * HORIZON
    np.testing.assert_allclose(out[PANEL_COLUMNS].to_numpy(), expected[PANEL_COLUMNS].to_numpy(), rtol=1e-6)
    # the model's channel count must match the panel's columns
    with pytest.raises(ValueError, match="num_input_channels=2"):
        HiMTMForecastPipeline(tiny_model(), panel_scaler)


def test_panel_datetime_index_and_numeric_ids(panel_model, panel_scaler, north, south):
    """timestamp_column=None with a DatetimeIndex, and ids that are numbers (compared as text with the saved ids)."""
    frame = long_frame(north, south)
    indexed = frame.set_index("date")
    out = HiMTMForecastPipeline(panel_model, panel_scaler)(indexed, timestamp_column=None, id_column="item_id")
    assert isinstance(out.index, pd.DatetimeIndex) and list(out.columns) == ["item_id", *PANEL_COLUMNS]
    by_name = HiMTMForecastPipeline(panel_model, panel_scaler)(frame, id_column="item_id")
    np.testing.assert_allclose(out[PANEL_COLUMNS].to_numpy(), by_name[PANEL_COLUMNS].to_numpy())
    numbered = PanelScaler({"1": panel_scaler.for_item("north"), "2": panel_scaler.for_item("south")}, PANEL_COLUMNS)
    numeric = frame.assign(item_id=frame["item_id"].map({"north": 1, "south": 2}))
    got = HiMTMForecastPipeline(panel_model, numbered)(numeric, id_column="item_id")
    assert list(got["item_id"].unique()) == [2, 1]
    np.testing.assert_allclose(got[PANEL_COLUMNS].to_numpy(), by_name[PANEL_COLUMNS].to_numpy())


def _unsorted_south(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    rows = frame.index[frame["item_id"] == "south"][[10, 11]]
    frame.loc[rows, "date"] = frame.loc[rows[::-1], "date"].to_numpy()
    return frame


def _duplicate_in_north(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    rows = frame.index[frame["item_id"] == "north"]
    frame.loc[rows[5], "date"] = frame.loc[rows[4], "date"]
    return frame


PANEL_ERRORS = {
    "no id column": (lambda f: f, {"id_column": "store"}, r"No id column 'store' in the frame.*id_column=None"),
    "missing id": (lambda f: f.assign(item_id=f["item_id"].where(f.index != 7)), {},
                   r"id column 'item_id' is empty \(NaN\) at row 7.*dropna"),
    "id is the timestamp": (lambda f: f, {"id_column": "date"}, r"both 'date'"),
    "unsorted in one series": (_unsorted_south, {},
                               r"Series 'south' .*where item_id == 'south'.*not sorted in increasing order: row 11"),
    "duplicate in one series": (_duplicate_in_north, {}, r"Series 'north' .*duplicated timestamps"),
    "gap in one series": (lambda f: f.drop(index=f.index[f["item_id"] == "north"][3]), {},
                                r"Series 'north' .*irregular"),
    "too short series": (lambda f: f.drop(index=f.index[f["item_id"] == "south"][PATCH - 1:]), {},
                         r"Series 'south' .*fewer than one patch"),
    "unobserved column in an unknown series": (
        lambda f: f.assign(item_id=f["item_id"].replace("south", "west"),
                           temp=f["temp"].where(f["item_id"] != "south")), {},
        r"Series 'west' .*\['temp'\] have no observed value"),
    "ids equal as text": (lambda f: f.assign(item_id=f["item_id"].map({"north": 1, "south": "1"})), {},
                          r"same as text"),
    "missing value column": (lambda f: f.drop(columns="temp"), {}, r"missing \['temp'\].*and the id column 'item_id'"),
}


@pytest.mark.parametrize("case", list(PANEL_ERRORS))
def test_panel_errors_name_the_series(panel_model, panel_scaler, north, south, case):
    """(d) Errors of a long frame say which series is wrong and how to fix it."""
    make, kwargs, message = PANEL_ERRORS[case]
    pipe = HiMTMForecastPipeline(panel_model, panel_scaler)
    with pytest.raises(ValueError, match=message):
        pipe(make(long_frame(north, south)), **{"id_column": "item_id", **kwargs})


def test_id_column_hint_without_id_column(panel_model, panel_scaler, north):
    with pytest.raises(ValueError, match=r"unexpected \['item_id'\].*pass id_column='item_id'"):
        HiMTMForecastPipeline(panel_model, panel_scaler)(north)


def test_forecast_script_with_id_column(tmp_path, panel_model, panel_scaler, north, south):
    """(e) scripts/forecast.py --id_column: one forecast per id in the CSV, the plot shows the first 3 series."""
    folder = tmp_path / "panel-model"
    panel_model.save_pretrained(folder)
    panel_scaler.save(folder)
    extra = [panel_series(key, 80, (10.0 * i, 1.0), (1.0, 0.5), "2021-01-01", seed=i)
             for i, key in enumerate(("east", "west"), start=3)]
    frame = long_frame(north, south, *extra)
    csv = tmp_path / "history.csv"
    frame.to_csv(csv, index=False)
    output = tmp_path / "out" / "forecast.csv"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "forecast.py"), str(csv), "--model", str(folder),
         "--horizon", "20", "--output", str(output), "--id_column", "item_id"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "(4 series)" in result.stdout and "(3 of 4 series shown)" in result.stdout
    forecast = pd.read_csv(output, parse_dates=["date"])
    assert list(forecast.columns) == ["item_id", "date", *PANEL_COLUMNS] and len(forecast) == 4 * 20
    assert list(forecast["item_id"].unique()) == list(pd.unique(frame["item_id"])) == ["south", "east", "west",
                                                                                          "north"]
    expected = HiMTMForecastPipeline(panel_model, panel_scaler)(frame, horizon=20, id_column="item_id")
    np.testing.assert_allclose(forecast[PANEL_COLUMNS].to_numpy(), expected[PANEL_COLUMNS].to_numpy(), rtol=1e-5,
                               atol=1e-5)
    assert (forecast["date"] == pd.to_datetime(expected["date"])).all()
    png = output.with_suffix(".png")
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the output-safety rules hold with --id_column too: an existing output is kept without --overwrite
    again = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "forecast.py"), str(csv), "--model", str(folder),
         "--output", str(output), "--id_column", "item_id"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
    )
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert len(pd.read_csv(output)) == 4 * 20
