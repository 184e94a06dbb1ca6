"""Zero-shot DataFrame forecasting with a pre-training checkpoint: `HiMTMForecastPipeline.from_pretrained` on a folder
(or Hub repo) saved from `HiMTMForPretraining` forecasts through `HiMTMForPretraining.forecast`, any value columns,
each standardised with its own history when the folder has no scaler.json; `scripts/forecast.py` does the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from himtm_hf import HiMTMConfig, HiMTMForPrediction, HiMTMForPretraining
from himtm_hf.data import SeriesScaler
from himtm_hf.hub import populate_hf_cache
from himtm_hf.pipeline import HiMTMForecastPipeline

PROJECT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR", PROJECT.parent / "shared" / "data"))
ETTH1 = DATA_DIR / "ETTh1.csv.gz"
BASE = PROJECT / "checkpoints" / "himtm-base"
WINDOW, HORIZON, PATCH = 64, 16, 8  # tiny model: 2 hierarchies, 16-step masking units -> look-back 48

pytestmark = [
    pytest.mark.skipif(not ETTH1.is_file(), reason=f"{ETTH1} not available"),
    pytest.mark.usefixtures("one_thread"),  # conftest.py: tiny models run fastest single-threaded
]


def tiny_pretraining(channels: int = 1) -> HiMTMForPretraining:
    torch.manual_seed(0)
    config = HiMTMConfig(context_length=WINDOW, prediction_length=HORIZON, num_input_channels=channels,
                         patch_length=PATCH, patch_stride=PATCH, num_hierarchies=2, d_model=16,
                         num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2, csa_num_attention_heads=2)
    return HiMTMForPretraining(config).eval()


@pytest.fixture(scope="module")
def etth1() -> pd.DataFrame:
    return pd.read_csv(ETTH1).iloc[:2000]


@pytest.fixture(scope="module")
def pretraining_dir(tmp_path_factory) -> Path:
    """A pre-training folder as `pretrain_base.py` leaves it for a corpus: weights and config, no scaler.json."""
    folder = tmp_path_factory.mktemp("pretraining") / "tiny-base"
    tiny_pretraining().save_pretrained(folder)
    return folder


def own_statistics_forecast(model: HiMTMForPretraining, frame: pd.DataFrame, columns: list[str], look_back: int,
                            horizon: int) -> np.ndarray:
    """`forecast` called by hand: each column standardised with its own history's mean/std (ddof 0, as the
    pipeline's scaler), the last `look_back` rows, one channel per call, back to original units."""
    values = frame[columns].to_numpy(dtype=np.float64)
    mean, std = values.mean(0), values.std(0)
    scaled = torch.tensor((values[-look_back:] - mean) / std, dtype=torch.float32)
    with torch.no_grad():
        out = model.forecast(scaled.T.unsqueeze(-1), horizon).prediction_outputs[..., 0].T.numpy()
    return out.astype(np.float64) * std + mean


def test_shipped_base_forecasts_any_columns_of_real_data(etth1):
    pipe = HiMTMForecastPipeline.from_pretrained(BASE)
    assert pipe.zero_shot and pipe.columns is None and pipe.model.config.num_input_channels == 1
    assert (pipe.look_back, pipe.prediction_length) == (384, 96) and "zero-shot" in repr(pipe)
    every = pipe(etth1, timestamp_column="date")
    columns = [c for c in etth1.columns if c != "date"]
    assert list(every.columns) == ["date", *columns] and len(every) == 96
    assert every["date"].iloc[0] == pd.Timestamp(etth1["date"].iloc[-1]) + pd.Timedelta(hours=1)
    model = HiMTMForPretraining.from_pretrained(BASE).eval()
    np.testing.assert_allclose(every[columns].to_numpy(), own_statistics_forecast(model, etth1, columns, 384, 96),
                               rtol=1e-4, atol=1e-4)
    # Channel-independent: a frame with two of the columns, in another order, gets the same two forecasts.
    two = pipe(etth1[["date", "OT", "HULL"]], timestamp_column="date")
    assert list(two.columns) == ["date", "OT", "HULL"]
    np.testing.assert_allclose(two[["OT", "HULL"]].to_numpy(), every[["OT", "HULL"]].to_numpy(), rtol=1e-5,
                               atol=1e-5)


def test_longer_horizon_rolls_out_and_a_longer_prediction_length_reads_a_shorter_look_back(pretraining_dir, etth1):
    frame = etth1[["date", "OT", "HUFL"]]
    pipe = HiMTMForecastPipeline.from_pretrained(pretraining_dir)
    model = HiMTMForPretraining.from_pretrained(pretraining_dir).eval()
    first = own_statistics_forecast(model, frame, ["OT", "HUFL"], 48, HORIZON)
    rolled = pipe(frame, timestamp_column="date", horizon=2 * HORIZON + 3)
    assert len(rolled) == 2 * HORIZON + 3
    np.testing.assert_allclose(rolled[["OT", "HUFL"]].to_numpy()[:HORIZON], first, rtol=1e-4, atol=1e-4)
    # Two masked units in one call: 32 steps from the last 32 rows, no roll-out.
    longer = HiMTMForecastPipeline.from_pretrained(pretraining_dir, prediction_length=2 * HORIZON)
    assert (longer.look_back, longer.prediction_length) == (32, 32)
    once = longer(frame, timestamp_column="date")
    np.testing.assert_allclose(once[["OT", "HUFL"]].to_numpy(),
                               own_statistics_forecast(model, frame, ["OT", "HUFL"], 32, 2 * HORIZON),
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="longest horizon it reconstructs is 48"):
        HiMTMForecastPipeline.from_pretrained(pretraining_dir, prediction_length=WINDOW)


def test_long_frame_series_are_forecast_each_with_its_own_statistics(pretraining_dir, etth1):
    pipe = HiMTMForecastPipeline.from_pretrained(pretraining_dir)
    north = etth1.iloc[:300][["date", "OT"]].assign(item_id="north")
    south = etth1.iloc[300:700][["date", "OT"]].assign(item_id="south")
    south = south.assign(OT=south["OT"] * 10 + 500)  # another level and scale
    both = pipe(pd.concat([north, south]), timestamp_column="date", id_column="item_id")
    assert list(both["item_id"].unique()) == ["north", "south"] and len(both) == 2 * HORIZON
    for key, part in (("north", north), ("south", south)):
        alone = pipe(part.drop(columns="item_id"), timestamp_column="date")
        np.testing.assert_allclose(both[both["item_id"] == key]["OT"].to_numpy(), alone["OT"].to_numpy(),
                                   rtol=1e-5, atol=1e-4)


def test_a_saved_scaler_fixes_the_columns(pretraining_dir, etth1, tmp_path):
    """A single-dataset pre-training saves its scaler.json: its columns are then the ones the frame must have."""
    folder = tmp_path / "with-scaler"
    tiny_pretraining().save_pretrained(folder)
    SeriesScaler().fit(etth1[["OT", "HUFL"]].to_numpy(), columns=["OT", "HUFL"]).save(folder)
    pipe = HiMTMForecastPipeline.from_pretrained(folder)
    assert pipe.columns == ["OT", "HUFL"] and pipe.model.config.num_input_channels == 1
    assert len(pipe(etth1[["date", "HUFL", "OT"]], timestamp_column="date")) == HORIZON
    with pytest.raises(ValueError, match="unexpected \\['HULL'\\]"):
        pipe(etth1[["date", "OT", "HUFL", "HULL"]], timestamp_column="date")


def test_errors_say_what_to_do(pretraining_dir, etth1):
    with pytest.raises(ValueError, match="scaler.json"):
        HiMTMForecastPipeline(HiMTMForPrediction(tiny_pretraining().config), None)
    with pytest.raises(ValueError, match="num_input_channels=1"):
        HiMTMForecastPipeline(tiny_pretraining(channels=3), None)
    pipe = HiMTMForecastPipeline.from_pretrained(pretraining_dir)
    with pytest.raises(ValueError, match="no value column besides the timestamp column 'date'"):
        pipe(etth1[["date"]], timestamp_column="date")
    with pytest.raises(ValueError, match="No timestamp column 'time'"):
        pipe(etth1, timestamp_column="time")


def test_hub_repo_without_scaler_loads_offline_from_the_cache(pretraining_dir, etth1, tmp_path):
    cache = tmp_path / "hub_cache"
    populate_hf_cache(pretraining_dir, "himtm-test/tiny-base", cache_dir=cache)
    pipe = HiMTMForecastPipeline.from_pretrained("himtm-test/tiny-base", cache_dir=str(cache))
    local = HiMTMForecastPipeline.from_pretrained(pretraining_dir)
    frame = etth1[["date", "OT"]]
    pd.testing.assert_frame_equal(pipe(frame, timestamp_column="date"), local(frame, timestamp_column="date"))


def test_forecast_script_forecasts_zero_shot_from_the_shipped_base(etth1, tmp_path):
    csv = tmp_path / "history.csv"
    etth1[["date", "OT", "HUFL"]].to_csv(csv, index=False)
    output = tmp_path / "forecast.csv"
    env = dict(os.environ, HF_HUB_OFFLINE="1", MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(PROJECT / "scripts" / "forecast.py"), str(csv), "--model", str(BASE), "--horizon", "24",
         "--output", str(output), "--no_plot"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    forecast = pd.read_csv(output, parse_dates=["date"])
    expected = HiMTMForecastPipeline.from_pretrained(BASE)(etth1[["date", "OT", "HUFL"]], timestamp_column="date",
                                                           horizon=24)
    assert list(forecast.columns) == ["date", "OT", "HUFL"] and len(forecast) == 24
    np.testing.assert_allclose(forecast[["OT", "HUFL"]].to_numpy(), expected[["OT", "HUFL"]].to_numpy(), rtol=1e-6)
    assert "zero-shot" in result.stdout
