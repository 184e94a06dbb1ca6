"""Datasets in the Hub's target-sequence schema (one row per series) and panels of many series, read through the
real `datasets` library: local dataset folders laid out like Hub repositories, parquet/arrow files, and Hub repo ids
served from a populated offline cache (`HF_HUB_OFFLINE`), never a mock of `load_dataset`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hub_datasets import cache_as_hub_dataset, wide_to_target_table, write_dataset_repo

from himtm_hf import HiMTMConfig, HiMTMForPrediction
from himtm_hf.data import load_pretraining_corpus, load_series, load_splits
from himtm_hf.panel import PanelScaler, PanelSplitData, load_scaler
from himtm_hf.training import DataArguments, forecast_metrics

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR", ROOT.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh `datasets` cache per test, and the Hub offline (as in CI): only what a test caches can be loaded."""
    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HIMTM_DATA_DIR", str(DATA_DIR))
    return cache


def _series(length: int, seed: int, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    steps = np.arange(length)[:, None]
    return 10.0 * seed + (seed + 1) * np.sin(steps / 7.0 + np.arange(channels)) + rng.normal(0, 0.3, (length, channels))


def _panel_table(lengths: list[int], channels: int = 1, two_d: bool = True) -> pa.Table:
    values = [_series(n, i, channels) for i, n in enumerate(lengths)]
    target = [v.T.tolist() if channels > 1 or two_d else v[:, 0].tolist() for v in values]
    return pa.table({"item_id": [f"shop-{i}" for i in range(len(lengths))],
                     "start": [pd.Timestamp("2021-01-01")] * len(lengths), "target": target})


# ----------------------------------------------------------------------------------------------------------------------
# ETTh1 through the wide CSV and the target schema
# ----------------------------------------------------------------------------------------------------------------------


def _etth1_target_repo(root: Path) -> Path:
    frame = pd.read_csv(DATA_DIR / "ETTh1.csv.gz")
    return write_dataset_repo(root / "ETTh1", {"default": {"train": wide_to_target_table(frame, "ETTh1", "h")}})


def _tiny_model(channels: int, context: int, horizon: int) -> HiMTMForPrediction:
    torch.manual_seed(0)
    config = HiMTMConfig(context_length=context, prediction_length=horizon, num_input_channels=channels,
                         patch_length=8, patch_stride=8, num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32,
                         decoder_num_attention_heads=2, csa_num_attention_heads=2)
    return HiMTMForPrediction(config).eval()


def test_etth1_wide_csv_and_target_schema_give_identical_windows_and_metrics(tmp_path, _offline_cache):
    repo = _etth1_target_repo(tmp_path)
    cache_as_hub_dataset(repo, "ett-mirror/ETTh1", _offline_cache, ["default"])
    wide = load_splits("ETTh1", context_length=96, prediction_length=24)
    model = _tiny_model(7, 96, 24)
    reference = forecast_metrics(model, wide.test, wide.scaler, max_windows=300, disable_tqdm=True)
    for dataset in (str(repo), "ett-mirror/ETTh1"):  # the local folder and the Hub id from the offline cache
        target = load_splits(dataset, context_length=96, prediction_length=24)
        assert type(target) is type(wide) and target.name == "ETTh1"  # the name picks the ETT borders
        assert target.borders == wide.borders
        assert target.timestamps.equals(wide.timestamps)
        np.testing.assert_array_equal(target.scaler.mean, wide.scaler.mean)
        np.testing.assert_array_equal(target.scaler.std, wide.scaler.std)
        for split in ("train", "val", "test"):
            assert torch.equal(target[split].values, wide[split].values), split
            assert torch.equal(target[split].observed_mask, wide[split].observed_mask), split
        assert forecast_metrics(model, target.test, target.scaler, max_windows=300, disable_tqdm=True) == reference


def test_finetune_script_gives_identical_metrics_on_wide_csv_and_target_schema(tmp_path):
    repo = _etth1_target_repo(tmp_path)
    metrics = []
    for dataset in ("ETTh1", str(repo)):
        out = tmp_path / f"ft-{len(metrics)}"
        result = _script("finetune.py", "--dataset", dataset, *TINY, "--max_steps", "3", "--max_train_windows", "64",
                         "--max_eval_windows", "32", "--max_test_windows", "200", "--output_dir", str(out))
        assert result.returncode == 0, result.stderr[-3000:]
        metrics.append(json.loads((out / "metrics.json").read_text()))
    for split in ("test", "val"):
        assert metrics[0][split] == metrics[1][split], split


# ----------------------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------------------


def test_panel_windows_stay_inside_each_series_and_each_series_has_its_own_scaler(tmp_path):
    lengths = [400, 700, 260]
    path = tmp_path / "shops.parquet"
    pq.write_table(_panel_table(lengths, channels=2), path)
    panel = load_splits(path, context_length=64, prediction_length=16)
    assert isinstance(panel, PanelSplitData) and panel.item_ids == ["shop-0", "shop-1", "shop-2"]
    assert panel.columns == ["target_0", "target_1"] and panel.num_channels == 2
    for i, n in enumerate(lengths):
        raw = _series(n, i, 2)
        train_rows = int(0.7 * n)  # the long-term protocol, per series
        mean, std = raw[:train_rows].mean(0), raw[:train_rows].std(0)
        member = panel.series[i]
        np.testing.assert_allclose(member.scaler.mean, mean)
        np.testing.assert_allclose(member.scaler.std, std)
        assert panel.train.windows_per_series()[f"shop-{i}"] == train_rows - 80 + 1
        test_rows = int(0.2 * n)
        assert len(member.test) == test_rows + 64 - 80 + 1
    assert len(panel.train) == sum(int(0.7 * n) - 79 for n in lengths)
    # Item k of the concatenation: the right series, standardised by that series' train rows.
    first_of_second = panel.train.windows_per_series()["shop-0"]
    item = panel.train[first_of_second + 5]
    raw, train_rows = _series(700, 1, 2), int(0.7 * 700)  # 489: int() of 489.99999999999994, as load_splits
    expected = (raw[5:69] - raw[:train_rows].mean(0)) / raw[:train_rows].std(0)
    np.testing.assert_allclose(item["past_values"].numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(item["series_std"].numpy()[0], raw[:train_rows].std(0))
    assert item["past_values"].shape == (64, 2) and item["future_values"].shape == (16, 2)


def test_panel_metrics_in_original_units_use_each_window_series_statistics(tmp_path):
    path = tmp_path / "shops.parquet"
    pq.write_table(_panel_table([300, 500], two_d=False), path)
    panel = load_splits(path, context_length=64, prediction_length=16)
    model = _tiny_model(1, 64, 16)
    pooled = forecast_metrics(model, panel.test, panel.scaler, disable_tqdm=True)
    per_series = [forecast_metrics(model, s.test, s.scaler, disable_tqdm=True) for s in panel.series]
    values = sum(m["num_values"] for m in per_series)
    for key in ("mse", "mse_original_units", "mae_original_units"):
        expected = sum(m[key] * m["num_values"] for m in per_series) / values
        assert pooled[key] == pytest.approx(expected, rel=1e-9), key
    assert pooled["mse_original_units"] != pytest.approx(pooled["mse"], rel=1e-3)


def test_short_series_are_skipped_with_a_count_or_refused(tmp_path):
    path = tmp_path / "shops.parquet"
    pq.write_table(_panel_table([500, 50, 400, 90]), path)
    with pytest.warns(UserWarning, match=r"2 of the 4 series .* too short .*shop-1, shop-3"):
        panel = load_splits(path, context_length=64, prediction_length=16)
    assert panel.item_ids == ["shop-0", "shop-2"]
    assert set(panel.skipped) == {"shop-1", "shop-3"} and "one window needs 80" in panel.skipped["shop-1"]
    with pytest.raises(ValueError, match=r"Series 'shop-1' .* too short: 50 steps.*short_series='skip'"):
        load_splits(path, context_length=64, prediction_length=16, short_series="error")
    with pytest.raises(ValueError, match=r"None of the 4 series .* long enough"):
        load_splits(path, context_length=512, prediction_length=96)


def test_few_shot_split_keeps_the_last_windows_of_every_series(tmp_path):
    from himtm_hf.data import few_shot_split

    path = tmp_path / "shops.parquet"
    pq.write_table(_panel_table([400, 800]), path)
    panel = load_splits(path, context_length=64, prediction_length=16)
    cut = few_shot_split(panel, 0.1)
    full, kept = panel.train.windows_per_series(), cut.train.windows_per_series()
    assert kept == {key: int(np.ceil(0.1 * n)) for key, n in full.items()}
    last = cut.train[len(cut.train) - 1]["past_values"]
    assert torch.equal(last, panel.train[len(panel.train) - 1]["past_values"])
    assert cut.test is panel.test


# ----------------------------------------------------------------------------------------------------------------------
# The schema's variants
# ----------------------------------------------------------------------------------------------------------------------


def test_gluonts_2d_target_and_chronos_style_columns_give_the_same_panel(tmp_path):
    values = [_series(300, i, 2) for i in range(3)]
    gluonts = pa.table({"item_id": ["a", "b", "c"], "start": ["2020-01-01 00:00"] * 3, "freq": ["h"] * 3,
                        "target": [v.T.tolist() for v in values]})
    chronos = pa.table({
        "id": ["a", "b", "c"],
        "timestamp": [list(pd.date_range("2020-01-01", periods=300, freq="h")) for _ in values],
        "load": [v[:, 0].tolist() for v in values], "temperature": [v[:, 1].tolist() for v in values],
        "feat_dynamic_real": [[[0.0] * 300] for _ in values],  # a covariate: not a channel
    })
    pq.write_table(gluonts, tmp_path / "gluonts.parquet")
    write_dataset_repo(tmp_path / "chronos", {"default": {"train": chronos}}, file_format="arrow")
    a = load_splits(tmp_path / "gluonts.parquet", context_length=32, prediction_length=8)
    b = load_splits(tmp_path / "chronos", context_length=32, prediction_length=8)
    assert b.columns == ["load", "temperature"] and b.item_ids == ["a", "b", "c"]
    for split in ("train", "val", "test"):
        assert len(a[split]) == len(b[split])
        assert torch.equal(a[split][7]["past_values"], b[split][7]["past_values"])
    stamps = b.series[1].timestamps
    assert isinstance(stamps, pd.DatetimeIndex) and (np.diff(stamps) == pd.Timedelta("1h")).all()
    assert stamps.equals(a.series[1].timestamps)  # per-step timestamps = start + freq


def test_a_long_csv_with_an_id_column_is_the_same_panel_as_the_target_schema(tmp_path):
    lengths = [300, 260, 420]
    target = tmp_path / "shops.parquet"
    pq.write_table(_panel_table(lengths, two_d=False), target)
    rows = [pd.DataFrame({"date": pd.date_range("2021-01-01", periods=n, freq="D").astype(str),
                          "store": f"shop-{i}", "sales": _series(n, i)[:, 0]}) for i, n in enumerate(lengths)]
    long = pd.concat(rows).sample(frac=1.0, random_state=0)  # interleaved and shuffled rows
    long.to_csv(tmp_path / "long.csv", index=False)
    with pytest.raises(ValueError, match=r"Series 'shop-\d' \(rows where store = 'shop-\d'\): .*not .*increasing"):
        load_splits(tmp_path / "long.csv", context_length=32, prediction_length=8, id_column="store")
    panel = load_splits(tmp_path / "long.csv", context_length=32, prediction_length=8, id_column="store",
                        sort_timestamps=True)
    reference = load_splits(target, context_length=32, prediction_length=8)
    assert panel.item_ids == list(dict.fromkeys(long["store"]))  # in order of first appearance
    assert panel.columns == ["sales"]
    for member in panel.series:
        twin = reference.series[reference.item_ids.index(member.name)]
        assert member.borders == twin.borders
        torch.testing.assert_close(member.test.values, twin.test.values, rtol=0, atol=1e-6)
        assert member.timestamps[0] == pd.Timestamp("2021-01-01")


def test_start_with_a_frequency_argument_enables_split_dates(tmp_path):
    table = pa.table({"item_id": ["x", "y"], "start": ["2022-01-01", "2022-01-05"],
                      "target": [_series(240, 0)[:, 0].tolist(), _series(200, 1)[:, 0].tolist()]})
    pq.write_table(table, tmp_path / "daily.parquet")
    with pytest.raises(ValueError, match="split_dates needs a timestamp"):
        load_splits(tmp_path / "daily.parquet", context_length=16, prediction_length=4,
                    split_dates=["2022-05-01", "2022-06-01"])
    panel = load_splits(tmp_path / "daily.parquet", context_length=16, prediction_length=4, freq="D",
                        split_dates=["2022-05-01", "2022-06-01"])
    x, y = panel.series
    assert x.borders["train"] == (0, 120) and y.borders["train"] == (0, 116)  # Jan 1 + 120 days = May 1


def test_own_splits_follow_the_gluonts_convention(tmp_path):
    full = {key: _series(n, i)[:, 0] for i, (key, n) in enumerate({"a": 400, "b": 300}.items())}
    def table(cut: dict[str, int], repeat_test: bool = False) -> pa.Table:
        ids, targets = [], []
        for key, n in cut.items():
            if repeat_test:  # rolling evaluation entries: prefixes of the longest
                ids.append(key)
                targets.append(full[key][: n - 10].tolist())
            ids.append(key)
            targets.append(full[key][:n].tolist())
        return pa.table({"item_id": ids, "start": ["2020-01-01"] * len(ids), "target": targets})

    splits = {"train": table({"a": 300, "b": 200}), "validation": table({"a": 340, "b": 250}),
              "test": table({"a": 400, "b": 300}, repeat_test=True)}
    repo = write_dataset_repo(tmp_path / "shops", {"default": splits})
    panel = load_splits(repo, context_length=48, prediction_length=12)
    assert panel.own_splits
    a, b = panel.series
    assert a.borders == {"train": (0, 300), "val": (252, 340), "test": (292, 400)}
    assert b.borders == {"train": (0, 200), "val": (152, 250), "test": (202, 300)}
    np.testing.assert_allclose(a.scaler.mean, full["a"][:300].mean())
    with pytest.raises(ValueError, match="own train/validation/test splits; leave out split_fractions"):
        load_splits(repo, context_length=48, prediction_length=12, split_fractions=[0.7, 0.1, 0.2])

    broken = dict(splits, test=pa.table({"item_id": ["a"], "start": ["2020-01-01"], "target": [(full["a"] + 1).tolist()]}))
    with pytest.raises(ValueError, match=r"Series 'a': its test entry .* does not start with the values"):
        load_splits(write_dataset_repo(tmp_path / "broken", {"default": broken}), context_length=48,
                    prediction_length=12)
    stranger = dict(splits, test=pa.table({"item_id": ["z"], "start": ["2020-01-01"], "target": [full["a"].tolist()]}))
    with pytest.raises(ValueError, match=r"\['z'\] of the test split .* are not in its train split"):
        load_splits(write_dataset_repo(tmp_path / "stranger", {"default": stranger}), context_length=48,
                    prediction_length=12)


def test_named_configurations_and_errors_that_say_what_to_do(tmp_path, _offline_cache):
    repo = write_dataset_repo(tmp_path / "retail", {
        "daily": {"train": _panel_table([300, 320])},
        "weekly": {"train": _panel_table([200, 210, 220])},
    })
    with pytest.raises(ValueError, match="dataset_config"):
        load_splits(repo, context_length=32, prediction_length=8)
    assert load_splits(repo, context_length=32, prediction_length=8, dataset_config="weekly").item_ids == [
        "shop-0", "shop-1", "shop-2"]
    cache_as_hub_dataset(repo, "acme/retail", _offline_cache, ["daily", "weekly"])
    assert len(load_splits("acme/retail", context_length=32, prediction_length=8, dataset_config="daily").series) == 2
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE is set.*local `datasets` cache"):
        load_splits("acme/not-cached", context_length=32, prediction_length=8)
    with pytest.raises(ValueError, match="id_column 'shop' is not a column"):
        load_splits(repo, context_length=32, prediction_length=8, dataset_config="daily", id_column="shop")
    with pytest.raises(ValueError, match="dataset_config='daily' names a configuration .* single file"):
        load_splits("ETTh1", context_length=32, prediction_length=8, dataset_config="daily")
    with pytest.raises(ValueError, match="freq applies to datasets in the target-sequence schema"):
        load_splits("ETTh1", context_length=32, prediction_length=8, freq="h")
    with pytest.raises(ValueError, match="id_column 'item_id' is not a column of file .*ETTh1"):
        load_splits("ETTh1", context_length=32, prediction_length=8, id_column="item_id")
    text = pa.table({"item_id": ["a"], "target": [["x"] * 50]})
    pq.write_table(text, tmp_path / "text.parquet")
    with pytest.raises(ValueError, match="must hold numbers"):
        load_splits(tmp_path / "text.parquet", context_length=8, prediction_length=2)


def test_wide_table_from_a_hub_repo_id_in_the_offline_cache(tmp_path, _offline_cache):
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=120, freq="h").astype(str),
                          "a": np.arange(120.0), "b": np.arange(120.0) ** 0.5})
    repo = write_dataset_repo(tmp_path / "my-series", {"default": {"train": pa.Table.from_pandas(frame)}})
    cache_as_hub_dataset(repo, "someone/my-series", _offline_cache, ["default"])
    values, timestamps, name = load_series("someone/my-series")
    assert name == "my-series" and list(values.columns) == ["a", "b"]
    np.testing.assert_array_equal(values["b"].to_numpy(), frame["b"].to_numpy())
    assert timestamps[-1] == pd.Timestamp("2020-01-05 23:00")


def test_load_series_returns_a_single_target_series_and_refuses_a_panel(tmp_path):
    pq.write_table(_panel_table([100], two_d=False), tmp_path / "one.parquet")
    frame, timestamps, name = load_series(tmp_path / "one.parquet")
    assert list(frame.columns) == ["target"] and len(frame) == 100 and name == "one" and timestamps is None
    pq.write_table(_panel_table([100, 120]), tmp_path / "two.parquet")
    with pytest.raises(ValueError, match="holds 2 series; load_series returns one. Use load_splits"):
        load_series(tmp_path / "two.parquet")


def test_scaler_of_a_panel_saves_and_loads(tmp_path):
    pq.write_table(_panel_table([300, 330]), tmp_path / "p.parquet")
    panel = load_splits(tmp_path / "p.parquet", context_length=32, prediction_length=8)
    panel.scaler.save(tmp_path / "model")
    loaded = load_scaler(tmp_path / "model")
    assert isinstance(loaded, PanelScaler) and loaded.item_ids == ["shop-0", "shop-1"]
    np.testing.assert_array_equal(loaded.mean, panel.scaler.mean)
    assert loaded.for_item("shop-1").std == pytest.approx(panel.series[1].scaler.std)
    assert loaded.for_item("unknown") is None
    with pytest.raises(TypeError, match="for_item"):
        loaded.inverse_transform(np.zeros((2, 1)))


def test_pretraining_corpus_mixes_a_panel_with_a_benchmark(tmp_path):
    pq.write_table(_panel_table([300, 500], channels=2), tmp_path / "shops.parquet")
    corpus = load_pretraining_corpus(f"ETTh1,{tmp_path / 'shops.parquet'}", context_length=64,
                                     max_windows_per_dataset=None)
    shops = corpus.members[1]
    assert len(shops.train) == 2 * sum(int(0.7 * n) - 63 for n in (300, 500))  # 2 channels, look-back-only windows
    record = corpus.to_dict()["datasets"][1]
    assert record["panel"]["series"] == 2 and record["scaler"]["format"] == "himtm-panel-scaler"
    assert corpus.train[len(corpus.train) - 1]["past_values"].shape == (64, 1)


def test_data_arguments_pass_the_panel_options():
    args = DataArguments(dataset="acme/retail", dataset_config="weekly", id_column="store", freq="W",
                         short_series="error")
    kwargs = args.load_kwargs()
    assert {k: kwargs[k] for k in ("dataset_config", "id_column", "freq", "short_series")} == {
        "dataset_config": "weekly", "id_column": "store", "freq": "W", "short_series": "error"}
    with pytest.raises(ValueError, match="--short_series must be 'skip' or 'error'"):
        DataArguments(short_series="drop").load_kwargs()


# ----------------------------------------------------------------------------------------------------------------------
# The scripts, end to end over a panel
# ----------------------------------------------------------------------------------------------------------------------


TINY = ["--context_length", "64", "--prediction_length", "16", "--patch_length", "8", "--num_hierarchies", "2",
        "--d_model", "16", "--num_attention_heads", "2", "--ffn_dim", "32", "--decoder_num_attention_heads", "2",
        "--csa_num_attention_heads", "2", "--per_device_train_batch_size", "16", "--disable_tqdm", "--use_cpu",
        "--seed", "5"]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg", HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT),
               HIMTM_DATA_DIR=str(DATA_DIR), HF_DATASETS_CACHE=str(datasets.config.HF_DATASETS_CACHE))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_pretrain_finetune_and_evaluate_over_a_panel_of_many_series(tmp_path, _offline_cache):
    lengths = [150 + 53 * i for i in range(14)] + [40]  # 15 shops of different lengths, the last too short
    repo = write_dataset_repo(tmp_path / "shops", {"default": {"train": _panel_table(lengths, channels=2)}})
    cache_as_hub_dataset(repo, "acme/shops", _offline_cache, ["default"])
    pretrained, finetuned, evaluated = tmp_path / "pt", tmp_path / "ft", tmp_path / "ev"
    result = _script("pretrain.py", "--dataset", "acme/shops", *TINY, "--max_steps", "6", "--output_dir",
                     str(pretrained))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1 of the 15 series" in result.stderr
    result = _script("finetune.py", "--dataset", "acme/shops", *TINY, "--max_steps", "6", "--pretrained_model_path",
                     str(pretrained), "--output_dir", str(finetuned))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((finetuned / "metrics.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        panel = load_splits(repo, context_length=64, prediction_length=16)
    expected_test = sum(int(0.2 * n) + 64 - 80 + 1 for n in lengths[:-1])
    assert metrics["test"]["num_windows"] == len(panel.test) == expected_test
    assert np.isfinite(metrics["test"]["mse_original_units"])
    scaler = load_scaler(finetuned)
    assert isinstance(scaler, PanelScaler) and scaler.item_ids == [f"shop-{i}" for i in range(14)]
    result = _script("evaluate.py", "--model_dir", str(finetuned), "--dataset", str(repo), "--output_dir",
                     str(evaluated), "--use_cpu", "--disable_tqdm")
    assert result.returncode == 0, result.stderr[-3000:]
    evaluation = json.loads((evaluated / "metrics.json").read_text())
    assert evaluation["scaler_matches_model_dir"] is True
    assert evaluation["test"]["mse"] == pytest.approx(metrics["test"]["mse"], rel=1e-6)
