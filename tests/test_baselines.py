"""The closed-form baselines (`himtm_hf.benchmarks.baselines`), their records and table rows, and the few-shot train
split (`himtm_hf.data.few_shot_split`).

Expected numbers are worked out here by hand or by brute force over the windows, not with the module's helpers.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from record_checks import absolute_paths
from script_loading import load_script

from himtm_hf.benchmarks.baselines import (
    LastValueLinearForecaster,
    fit_linear_ridge,
    linear_ridge,
    naive_last_value,
)
from himtm_hf.data import (
    ForecastWindowDataset,
    SeriesScaler,
    SplitData,
    compute_borders,
    default_data_dir,
    few_shot_split,
    load_splits,
)


def make_splits(values: np.ndarray, context_length: int, prediction_length: int,
                sizes: tuple[int, int, int]) -> SplitData:
    """Splits of `values` (rows, channels) as `load_splits` builds them, with an identity scaler (values are already
    in 'standardised' units)."""
    values = np.asarray(values, dtype=np.float32)
    borders = compute_borders(sizes, context_length)
    channels = values.shape[1]
    windows = {split: ForecastWindowDataset(values[start:end], context_length, prediction_length, start=start,
                                            name=split) for split, (start, end) in borders.items()}
    columns = [f"c{i}" for i in range(channels)]
    return SplitData(name="synthetic", train=windows["train"], val=windows["val"], test=windows["test"],
                     scaler=SeriesScaler(np.zeros(channels), np.ones(channels), columns), columns=columns,
                     timestamps=None, borders=borders)


def brute_force_naive(dataset: ForecastWindowDataset) -> tuple[float, float, int]:
    """MSE, MAE and window count of the last-value forecast, window by window (all values observed)."""
    errors = []
    for i in range(len(dataset)):
        item = dataset[i]
        forecast = item["past_values"][-1:].expand_as(item["future_values"])
        errors.append((forecast - item["future_values"]).double().numpy())
    error = np.stack(errors)
    return float((error ** 2).mean()), float(np.abs(error).mean()), len(errors)


# ----------------------------------------------------------------------------------------------------------------------
# Naive last value
# ----------------------------------------------------------------------------------------------------------------------


def test_naive_on_a_step_and_a_constant_gives_the_known_error():
    """Channel 0 steps from 0 to 1 at row 80, channel 1 is constant. Test rows 62..99 (L = 8 early), 27 windows of
    8 + 4 rows: window i looks back over rows 62+i..69+i and forecasts 70+i..73+i. Windows 7..10 see 1, 2, 3, 4
    horizon steps past the step while their look-back ends before it: 10 errors of 1 among 27 x 4 x 2 values."""
    values = np.zeros((100, 2))
    values[80:, 0] = 1.0
    values[:, 1] = 2.0
    splits = make_splits(values, 8, 4, (60, 10, 30))
    metrics = naive_last_value(splits)
    assert metrics["num_windows"] == 27 == len(splits.test)
    assert metrics["num_values"] == 27 * 4 * 2 and metrics["full_test_split"] is True
    assert metrics["mse"] == pytest.approx(10 / 216) and metrics["mae"] == pytest.approx(10 / 216)
    assert metrics["mse_original_units"] == pytest.approx(10 / 216)  # identity scaler


def test_naive_repeats_the_last_observed_value_of_each_channel():
    past = torch.tensor([[[1.0, 5.0], [2.0, 6.0], [3.0, 0.0]]])  # (1, L=3, 2); channel 1's last step is missing
    mask = torch.tensor([[[True, True], [True, True], [True, False]]])
    forecast = LastValueLinearForecaster.naive(3, 2)(past, mask).prediction_outputs
    assert forecast.tolist() == [[[3.0, 6.0], [3.0, 6.0]]]
    nothing = LastValueLinearForecaster.naive(3, 2)(past, torch.zeros_like(mask)).prediction_outputs
    assert nothing.abs().sum() == 0  # no observed value: the train mean (0 in standardised units)


def test_naive_on_etth1_matches_the_published_repeat_baseline():
    """Zeng et al. (2023), Table 2, 'Repeat' on ETTh1 at H = 96: MSE 1.295, MAE 0.713 (the look-back length does not
    matter to it; L = 512 only sets where the test windows start)."""
    metrics = naive_last_value(load_splits("ETTh1", context_length=512, prediction_length=96))
    assert metrics["num_windows"] == 2785 and metrics["full_test_split"]
    assert metrics["mse"] == pytest.approx(1.295, abs=1e-3) and metrics["mae"] == pytest.approx(0.713, abs=1e-3)


def test_baselines_are_scored_on_every_test_window_by_the_networks_metric_code():
    """The same numbers as the accuracy benchmark's evaluation of a network (`benchmarks.runs._evaluate`: `predict` +
    `compute_forecast_metrics`) and as a brute-force loop over every test window."""
    from himtm_hf.benchmarks import budget_by_name
    from himtm_hf.benchmarks.runs import _evaluate

    rng = np.random.default_rng(0)
    splits = make_splits(np.cumsum(rng.normal(size=(300, 3)), axis=0) / 10, 16, 8, (200, 40, 60))
    metrics = naive_last_value(splits)
    network_path = _evaluate(LastValueLinearForecaster.naive(16, 8), splits, budget_by_name("full"))
    mse, mae, windows = brute_force_naive(splits.test)
    assert metrics["num_windows"] == network_path["num_test_windows"] == windows == len(splits.test) == 53
    assert network_path["full_test_split"] and metrics["full_test_split"]
    assert metrics["mse"] == pytest.approx(network_path["mse"], rel=1e-9) == pytest.approx(mse, rel=1e-6)
    assert metrics["mae"] == pytest.approx(network_path["mae"], rel=1e-9) == pytest.approx(mae, rel=1e-6)
    ridge = linear_ridge(splits)
    assert ridge["num_windows"] == windows and ridge["num_values"] == metrics["num_values"] == 53 * 8 * 3


# ----------------------------------------------------------------------------------------------------------------------
# Linear ridge
# ----------------------------------------------------------------------------------------------------------------------


def test_ridge_recovers_a_linear_trend_exactly():
    """x_t = a_c t + b_c per channel: after subtracting the last value, future step k is a_c (k + 1) and look-back
    step j is a_c (j - L + 1), one linear map shared by every channel; the naive forecast misses the whole trend."""
    t = np.arange(400, dtype=np.float64)[:, None]
    values = t * np.array([0.01, -0.02, 0.005]) + np.array([0.5, 3.0, -1.0])
    splits = make_splits(values, 16, 8, (280, 40, 80))
    ridge, naive = linear_ridge(splits), naive_last_value(splits)
    assert ridge["mse"] < 1e-7 and ridge["ridge_lambda"] == 1e-4  # the least shrinkage of the grid
    assert naive["mse"] == pytest.approx(np.mean([(a * k) ** 2 for a in (0.01, -0.02, 0.005) for k in range(1, 9)]),
                                         rel=1e-3)
    assert ridge["train_windows"] == len(splits.train) and ridge["train_samples"] == 3 * len(splits.train)


def test_ridge_beats_naive_on_a_noisy_sine_and_chooses_its_lambda_on_val():
    rng = np.random.default_rng(1)
    t = np.arange(1200)[:, None]
    values = np.sin(2 * np.pi * t / 24 + np.array([0.0, 1.0])) + 0.1 * rng.normal(size=(1200, 2))
    splits = make_splits(values, 48, 24, (800, 160, 240))
    fit = fit_linear_ridge(splits)
    assert set(fit.val_mse_by_lambda) == {1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0}
    assert fit.ridge_lambda == min(fit.val_mse_by_lambda, key=fit.val_mse_by_lambda.get)
    ridge, naive = linear_ridge(splits), naive_last_value(splits)
    assert ridge["mse"] < 0.2 * naive["mse"] and ridge["mse"] < 0.03  # the noise alone is 0.01
    assert linear_ridge(splits) == ridge  # deterministic


def test_ridge_val_mse_from_the_normal_equations_equals_scoring_the_val_windows():
    """The lambda is chosen by a closed-form val MSE; it must be the MSE of actually forecasting the val windows."""
    from himtm_hf.benchmarks.baselines import evaluate_forecaster

    rng = np.random.default_rng(2)
    splits = make_splits(np.cumsum(rng.normal(size=(500, 2)), axis=0) / 5, 24, 12, (300, 100, 100))
    for ridge_lambda in (1e-3, 10.0):
        fit = fit_linear_ridge(splits, lambdas=(ridge_lambda,))
        scored = evaluate_forecaster(fit.model, splits.val)
        assert fit.val_mse_by_lambda[ridge_lambda] == pytest.approx(scored["mse"], rel=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Records and tables
# ----------------------------------------------------------------------------------------------------------------------


def _fake_baseline(dataset: str, context_length: int, horizon: int, naive: float, linear: float,
                   windows: int = 2785) -> dict:
    def metrics(mse: float) -> dict:
        return {"mse": mse, "mae": mse + 0.01, "num_windows": windows}

    return {"kind": "baselines", "dataset": dataset, "context_length": context_length, "prediction_length": horizon,
            "naive": metrics(naive), "linear_ridge": {**metrics(linear), "ridge_lambda": 0.1},
            "command": "python scripts/benchmark_baselines.py", "git_commit": "b45e", "settings": {}}


def test_tables_show_the_baselines_of_each_cell_and_a_dash_where_there_is_none(tmp_path):
    from himtm_hf.benchmarks import HIMTM_DEFAULTS_VERSION, regenerate_results_md, write_record
    from himtm_hf.benchmarks.baselines import baseline_record_path

    results = tmp_path / "results"
    common = {"budget": "cpu", "budget_detail": {"name": "cpu"}, "device": "CPU", "device_kind": "cpu",
              "git_commit": "abc", "command": "cmd", "seed": 1, "context_length": 512, "num_test_windows": 2785}
    himtm = {"model": "himtm", "himtm_defaults": HIMTM_DEFAULTS_VERSION}
    for dataset, horizon, fields, mse in (("ETTh1", 96, himtm, 0.38), ("ETTh1", 96, {"model": "patchtst_supervised"},
                                          0.37), ("ETTh2", 96, himtm, 0.29)):
        write_record(results, "accuracy", {**common, **fields, "dataset": dataset, "prediction_length": horizon,
                                           "mse": mse, "mae": 0.4})
    write_record(results, "ablation", {**common, **himtm, "dataset": "ETTh1", "prediction_length": 96,
                                       "variant": "full", "overrides": {}, "mse": 0.38, "mae": 0.4})
    transfer = {"source_dataset": "ETTm1", "target_dataset": "ETTh1", "context_length": 512, "prediction_length": 96,
                "protocol": "finetune", "fraction": 1.0, "seed": 0, "budget": "cpu", "device": "cpu", "mse": 0.39,
                "mae": 0.41, "git_commit": "abc", "command": "cmd", "test_windows": 2785}
    for model in ("himtm", "patchtst"):
        path = results / "transfer" / "cpu" / f"{model}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**transfer, "model": model, **(himtm if model == "himtm" else {})}))
    path = baseline_record_path(results, "ETTh1", 512, 96)  # ETTh1 only: ETTh2 has no baseline record
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_fake_baseline("ETTh1", 512, 96, 1.2944, 0.3640)))
    # a record at another look-back must not be taken for L = 512
    baseline_record_path(results, "ETTh2", 336, 96).write_text(json.dumps(_fake_baseline("ETTh2", 336, 96, 9, 9)))

    text = regenerate_results_md(results, tmp_path / "results.md").read_text()
    accuracy = text[text.index("## Accuracy"):text.index("## Ablation")]
    assert "| naive (last value) MSE / MAE | linear (ridge) MSE / MAE |" in accuracy
    assert "| ETTh1 | 96 | 0.3800 / 0.4000 | 0.3700 / 0.4000 | 1.2944 / 1.3044 | 0.3640 / 0.3740 |" in accuracy
    assert "| ETTh1 | avg | **0.3800** | **0.3700** | 1.2944 | 0.3640 |" in accuracy
    assert "| ETTh2 | 96 | 0.2900 / 0.4000 | – | – | – |" in accuracy and "9.0000" not in text
    assert "Baselines: commands `python scripts/benchmark_baselines.py`. Commits: b45e." in accuracy
    head = text[:text.index("## Accuracy")]
    assert "| `cpu` | CPU | ETTh1 | 96 | 0.3800 (1) | 0.3700 (1) | – | 1.027 (missed) | – | 1.2944 | 0.3640 |" in head
    assert "| `cpu` | CPU | ETTh2 | 96 | 0.2900 (1) | – | – | – | – | – | – |" in head
    ablation = text[text.index("## Ablation"):text.index("## Transfer")]
    assert "| naive (last value) | closed form, no training | – | – | 1.2944 | – | 1.3044 |" in ablation
    assert "| linear (ridge) | closed form, no training, ridge lambda 0.1 chosen on val | – | – | 0.3640 | – | 0.3740 |" in ablation
    transfer_table = text[text.index("## Transfer"):text.index("## Speed")]
    # transfer records carry their own closed-form rows (fitted on the row's few-shot windows); these have none
    assert "| pair | H | fraction | seed | HiMTM finetune | PatchTST finetune |" in transfer_table
    assert "| ETTm1->ETTh1 | 96 | 1 | 0 | 0.3900 | 0.3900 |" in transfer_table and "Commit(s): abc." in transfer_table
    assert "†" not in text

    # networks scored on fewer test windows than the baselines (a capped budget): the baseline cells say so
    write_record(results, "accuracy", {**common, **himtm, "budget": "quick", "dataset": "ETTh1",
                                       "prediction_length": 96, "mse": 0.9, "mae": 0.7, "num_test_windows": 64})
    text = regenerate_results_md(results, tmp_path / "results.md").read_text()
    assert "| ETTh1 | 96 | 0.9000 / 0.7000 | 1.2944 / 1.3044 † | 0.3640 / 0.3740 † |" in text
    assert "†: the networks of that row were scored on a subset of the test windows" in text


def test_benchmark_baselines_script_writes_records_keeps_them_and_recomputes_on_other_settings(tmp_path, capsys):
    script = load_script("benchmark_baselines")
    results = tmp_path / "results"
    # the data folder named by its absolute path: the record must still name no machine's folder
    args = script.BaselineArguments(datasets=["ETTh1"], horizons=[8], context_lengths=[32],
                                    results_dir=str(results), data_dir=str(default_data_dir().resolve()))
    script.main(args)
    path = results / "baselines" / "ETTh1-L32-H8.json"
    record = json.loads(path.read_text())
    for field in ("naive", "linear_ridge", "settings", "command", "git_commit", "device", "data", "timestamp"):
        assert field in record, field
    assert record["settings"]["context_length"] == 32 and record["settings"]["ridge_lambdas"]
    assert not absolute_paths(record), absolute_paths(record)
    assert record["data"]["data_dir"] and record["data"]["dataset"] == "ETTh1"
    # ETTh1's 2880 test rows plus the 32 look-back rows before them, windows of 32 + 8 rows
    assert record["naive"]["num_windows"] == record["data"]["test_windows"] == 2880 + 32 - (32 + 8) + 1
    assert record["linear_ridge"]["mse"] < record["naive"]["mse"]
    assert "| naive (last value) MSE / MAE |" not in (tmp_path / "results.md").read_text()  # no network table yet

    written = path.read_text()
    capsys.readouterr()
    args.regenerate = False
    script.main(args)
    assert path.read_text() == written and "baselines up to date" in capsys.readouterr().out
    stale = {**record, "settings": {**record["settings"], "baselines_version": 0}, "naive": {"mse": 0}}
    path.write_text(json.dumps(stale))
    script.main(args)
    assert json.loads(path.read_text())["naive"] == record["naive"]  # recomputed: other settings


# ----------------------------------------------------------------------------------------------------------------------
# Few-shot train split
# ----------------------------------------------------------------------------------------------------------------------


def test_few_shot_split_keeps_the_most_recent_train_windows_only():
    rng = np.random.default_rng(3)
    splits = make_splits(rng.normal(size=(400, 2)), 16, 8, (250, 50, 100))
    total = len(splits.train)  # 250 - 24 + 1
    few = few_shot_split(splits, 0.1)
    keep = math.ceil(0.1 * total)
    assert len(few.train) == keep == 23
    for i in (0, keep - 1):
        for key, value in few.train[i].items():
            assert torch.equal(value, splits.train[total - keep + i][key]), key
    assert few.train.window_start(0) == splits.train.window_start(total - keep)
    assert few.train[keep - 1]["future_values"][-1].tolist() == splits.train[total - 1]["future_values"][-1].tolist()
    assert few.val is splits.val and few.test is splits.test and few.scaler is splits.scaler
    assert few.borders["train"] == (total - keep, 250) and splits.borders["train"] == (0, 250)
    assert len(splits.train) == total  # the input is left as it was
    assert few_shot_split(splits, 1.0) is splits
    assert len(few_shot_split(splits, 1e-9).train) == 1


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5, float("nan"), True, "0.5"])
def test_few_shot_split_refuses_fractions_outside_zero_to_one(fraction):
    splits = make_splits(np.zeros((200, 1)), 8, 4, (120, 40, 40))
    with pytest.raises(ValueError, match=r"fraction must be a number in \(0, 1\]"):
        few_shot_split(splits, fraction)


def test_train_fraction_of_data_arguments_cuts_the_train_split_and_is_checked_first():
    from transformers import HfArgumentParser

    from himtm_hf.training import DataArguments

    full = DataArguments(dataset="ETTh1", context_length=64, prediction_length=16).load()
    few = DataArguments(dataset="ETTh1", context_length=64, prediction_length=16, train_fraction=0.1).load()
    assert len(few.train) == math.ceil(0.1 * len(full.train)) and len(few.test) == len(full.test)
    assert torch.equal(few.train[len(few.train) - 1]["past_values"], full.train[len(full.train) - 1]["past_values"])
    assert np.array_equal(few.scaler.mean, full.scaler.mean)
    (parsed,) = HfArgumentParser(DataArguments).parse_args_into_dataclasses(["--train_fraction", "0.25"])
    assert parsed.train_fraction == 0.25
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match=r"--train_fraction must be a number in \(0, 1\]"):
            DataArguments(dataset="NoSuchSet", train_fraction=bad).load()  # before the dataset is looked for
