"""Tests for the shipped evaluate metric modules (loaded by path, offline) and himtm_hf.evaluation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from himtm_hf.evaluation import METRICS_DIR, compute_forecast_metrics, load_metric, metric_path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def metrics():
    return {name: load_metric(name) for name in ("mse", "mae", "mase")}


def np_mse(p, r, axis=None):
    return np.mean((np.asarray(p, np.float64) - np.asarray(r, np.float64)) ** 2, axis=axis)


def np_mae(p, r, axis=None):
    return np.mean(np.abs(np.asarray(p, np.float64) - np.asarray(r, np.float64)), axis=axis)


def np_mase(p, r, training, m=1):
    training = np.asarray(training, np.float64)
    return np_mae(p, r) / np.mean(np.abs(training[m:] - training[:-m]))


def test_metric_modules_are_shipped():
    assert METRICS_DIR == PROJECT_ROOT / "himtm_hf" / "metrics"
    for name in ("mse", "mae", "mase"):
        assert (metric_path(name) / f"{name}.py").is_file()
    with pytest.raises(ValueError, match="mse, mae, mase"):
        metric_path("smape")


def test_modules_load_by_path_with_hub_offline():
    """A fresh interpreter with HF_HUB_OFFLINE=1 loads all three modules by path and computes."""
    code = (
        "import json, evaluate\n"
        f"root = {str(METRICS_DIR)!r}\n"
        "out = {}\n"
        "out.update(evaluate.load(root + '/mse').compute(predictions=[2.5, 0.0, 2, 8], references=[3, -0.5, 2, 7]))\n"
        "out.update(evaluate.load(root + '/mae').compute(predictions=[2.5, 0.0, 2, 8], references=[3, -0.5, 2, 7]))\n"
        "out.update(evaluate.load(root + '/mase').compute(predictions=[2.5, 0.0, 2, 8, 1.25],"
        " references=[3, -0.5, 2, 7, 2], training=[5, 0.5, 4, 6, 3, 5, 2]))\n"
        "print(json.dumps(out))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    values = json.loads(result.stdout.strip().splitlines()[-1])
    assert values["mse"] == pytest.approx(0.375)
    assert values["mae"] == pytest.approx(0.5)
    assert values["mase"] == pytest.approx(0.18333333333333335)


def test_modules_agree_with_numpy_1d(metrics):
    rng = np.random.default_rng(0)
    predictions = rng.normal(size=5000)
    references = rng.normal(size=5000) * 2 + 0.3
    training = np.cumsum(rng.normal(size=800))
    mse = metrics["mse"].compute(predictions=predictions, references=references)["mse"]
    mae = metrics["mae"].compute(predictions=predictions, references=references)["mae"]
    assert mse == pytest.approx(np_mse(predictions, references), rel=1e-12)
    assert mae == pytest.approx(np_mae(predictions, references), rel=1e-12)
    rmse = metrics["mse"].compute(predictions=predictions, references=references, squared=False)["mse"]
    assert rmse == pytest.approx(np.sqrt(np_mse(predictions, references)), rel=1e-12)
    for period in (1, 24):
        mase = metrics["mase"].compute(
            predictions=predictions, references=references, training=training, periodicity=period
        )["mase"]
        assert mase == pytest.approx(np_mase(predictions, references, training, period), rel=1e-12)
    weights = rng.uniform(size=5000)
    weighted = metrics["mae"].compute(predictions=predictions, references=references, sample_weight=weights)
    expected = np.sum(weights * np.abs(predictions - references)) / np.sum(weights)
    assert weighted["mae"] == pytest.approx(expected, rel=1e-12)


def test_modules_agree_with_numpy_multioutput(metrics):
    rng = np.random.default_rng(1)
    predictions = rng.normal(size=(400, 3))
    references = rng.normal(size=(400, 3))
    raw = metrics["mse"].compute(predictions=predictions, references=references, multioutput="raw_values")[
        "mse"
    ]
    np.testing.assert_allclose(raw, np_mse(predictions, references, axis=0), rtol=1e-12)
    uniform = metrics["mae"].compute(predictions=predictions, references=references)["mae"]
    assert uniform == pytest.approx(np_mae(predictions, references), rel=1e-12)
    weighted = metrics["mae"].compute(
        predictions=predictions, references=references, multioutput=[0.2, 0.3, 0.5]
    )
    assert weighted["mae"] == pytest.approx(np.dot([0.2, 0.3, 0.5], np_mae(predictions, references, axis=0)))
    forced = load_metric("mse", "multilist").compute(
        predictions=predictions.tolist(), references=references.tolist()
    )
    assert forced["mse"] == pytest.approx(np_mse(predictions, references), rel=1e-12)


def test_mase_matches_canonical_examples(metrics):
    """The documented outputs of the canonical Hub 'mase' module (ratio of aggregated MAEs)."""
    mase = metrics["mase"]
    predictions = [[0, 2], [-1, 2], [8, -5]]
    references = [[0.5, 1], [-1, 1], [7, -6]]
    training = [[0.5, 1], [-1, 1], [7, -6]]
    result = mase.compute(predictions=predictions, references=references, training=training)
    assert result["mase"] == pytest.approx(0.18181818181818182)
    raw = mase.compute(
        predictions=predictions, references=references, training=training, multioutput="raw_values"
    )
    np.testing.assert_allclose(raw["mase"], [0.10526316, 0.28571429], rtol=1e-7)
    weighted = mase.compute(
        predictions=predictions, references=references, training=training, multioutput=[0.3, 0.7]
    )
    assert weighted["mase"] == pytest.approx(0.21935483870967742)
    p, r, t = np.array(predictions, float), np.array(references, float), np.array(training, float)
    for column in range(2):
        assert raw["mase"][column] == pytest.approx(np_mase(p[:, column], r[:, column], t[:, column]))


def test_compute_forecast_metrics_agrees_with_numpy_and_modules(metrics):
    rng = np.random.default_rng(2)
    shape = (64, 96, 7)  # (windows, prediction_length, channels)
    predictions = rng.normal(size=shape).astype(np.float32)
    references = rng.normal(size=shape).astype(np.float32)
    fast = compute_forecast_metrics(predictions, references)
    assert set(fast) == {"mse", "mae"}
    assert fast["mse"] == pytest.approx(np_mse(predictions, references), rel=1e-10)
    assert fast["mae"] == pytest.approx(np_mae(predictions, references), rel=1e-10)

    flat_p = predictions.reshape(-1).astype(np.float64)
    flat_r = references.reshape(-1).astype(np.float64)
    assert fast["mse"] == pytest.approx(
        metrics["mse"].compute(predictions=flat_p, references=flat_r)["mse"], rel=1e-10
    )
    assert fast["mae"] == pytest.approx(
        metrics["mae"].compute(predictions=flat_p, references=flat_r)["mae"], rel=1e-10
    )
    via_modules = compute_forecast_metrics(predictions, references, use_evaluate=True)
    assert via_modules == pytest.approx(fast, rel=1e-10)

    as_tensors = compute_forecast_metrics(torch.from_numpy(predictions), torch.from_numpy(references))
    assert as_tensors == pytest.approx(fast, rel=1e-12)


def test_compute_forecast_metrics_mask():
    rng = np.random.default_rng(3)
    predictions = rng.normal(size=(10, 24, 3))
    references = rng.normal(size=(10, 24, 3))
    mask = rng.uniform(size=(10, 24, 3)) > 0.3
    result = compute_forecast_metrics(predictions, references, mask=mask)
    assert result["mse"] == pytest.approx(np_mse(predictions[mask], references[mask]), rel=1e-12)
    assert result["mae"] == pytest.approx(np_mae(predictions[mask], references[mask]), rel=1e-12)
    assert compute_forecast_metrics(predictions, references, mask=mask, use_evaluate=True) == pytest.approx(
        result
    )
    assert compute_forecast_metrics(
        predictions, references, mask=torch.from_numpy(mask.astype(np.float32))
    ) == (pytest.approx(result))
    empty = compute_forecast_metrics(predictions, references, mask=np.zeros_like(mask))
    assert np.isnan(empty["mse"]) and np.isnan(empty["mae"])
    with pytest.raises(ValueError, match="differ in shape"):
        compute_forecast_metrics(predictions, references[:5])
    with pytest.raises(ValueError, match="mask"):
        compute_forecast_metrics(predictions, references, mask=mask[:5])
