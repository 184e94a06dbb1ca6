"""Tests for himtm_hf.pretraining_diagnostics and its use in pre-training runs (metrics.json, the PNG, log.jsonl).

Hand-built series with known answers for the trivial predictors, tiny models (L=64, patch 8, 2 hierarchies) and a
small synthetic hourly CSV for the runs; every test takes a few seconds on 2 cores.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from himtm_hf import HiMTMConfig
from himtm_hf.data import ForecastWindowDataset, LookbackWindowDataset
from himtm_hf.modeling_himtm import HiMTMForPretraining
from himtm_hf.output_folders import MARKER_FILE
from himtm_hf.pretraining_diagnostics import (
    diagnose_pretraining,
    flatten_diagnostics,
    linear_probe,
    plot_pretraining_diagnostics,
    seasonal_period,
    skill_score,
    trivial_predictions,
)
from himtm_hf.training import DataArguments, ModelArguments, PretrainArguments, pretrain, train_model

L, H, PERIOD = 64, 16, 24


def tiny_config(**overrides) -> HiMTMConfig:
    kwargs = dict(context_length=L, prediction_length=H, num_input_channels=2, patch_length=8, patch_stride=8,
                  num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                  csa_num_attention_heads=2, dropout=0.0)
    kwargs.update(overrides)
    return HiMTMConfig(**kwargs)


def synthetic_values(rows: int = 1000, seed: int = 0) -> np.ndarray:
    """Two learnable channels: a daily sine (+ noise) and a slower wave with a trend, standardised."""
    t = np.arange(rows, dtype=np.float64)
    rng = np.random.default_rng(seed)
    values = np.stack([np.sin(2 * np.pi * t / PERIOD) + 0.1 * rng.standard_normal(rows),
                       np.cos(2 * np.pi * t / 60.0) + t / rows + 0.1 * rng.standard_normal(rows)], axis=1)
    return (values - values.mean(axis=0)) / values.std(axis=0)


def write_csv(path: Path, rows: int = 1000) -> Path:
    values = synthetic_values(rows)
    frame = pd.DataFrame({"date": pd.date_range("2020-01-01", periods=rows, freq="h"),
                          "a": values[:, 0], "b": values[:, 1]})
    frame.to_csv(path, index=False)
    return path


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def masked_mse(prediction: torch.Tensor, values: torch.Tensor, masked: torch.Tensor) -> float:
    return float(((prediction - values) ** 2)[masked].mean())


# ----------------------------------------------------------------------------------------------------------------------
# Trivial predictors and skill
# ----------------------------------------------------------------------------------------------------------------------


def test_interpolation_is_exact_on_a_ramp_and_uses_the_nearest_value_at_the_edges():
    values = torch.arange(64, dtype=torch.float64).repeat(2, 1)
    masked = torch.zeros(2, 64, dtype=torch.bool)
    masked[:, 16:32] = True
    masked[1, 48:56] = True
    observed = torch.ones(2, 64, dtype=torch.bool)
    predictions = trivial_predictions(values, masked, observed)
    assert masked_mse(predictions["interpolation"], values, masked) == 0.0
    # The visible mean is the mean of the visible values only (not of the masked ones, not of the whole window).
    visible = values[0][~masked[0]]
    assert torch.allclose(predictions["visible_mean"][0], visible.mean().expand(64))
    assert masked_mse(predictions["visible_mean"], values, masked) > 100
    # A block at the window's end has no value after it: the last visible value is carried forward.
    edge = masked.clone()
    edge[0, 56:] = True
    predictions = trivial_predictions(values, edge, observed)
    assert predictions["interpolation"][0, 56:].tolist() == [55.0] * 8
    # An unobserved visible element is no anchor: the block is bridged from the next observed one.
    gaps = observed.clone()
    gaps[0, 32] = False
    predictions = trivial_predictions(values, masked, gaps)
    assert torch.allclose(predictions["interpolation"][0, 16:32], torch.linspace(15, 33, 19, dtype=torch.float64)[1:17])


def test_period_copy_is_exact_on_a_periodic_series_and_averages_both_neighbours():
    t = torch.arange(96, dtype=torch.float64)
    sine = torch.sin(2 * math.pi * t / PERIOD)[None]
    masked = torch.zeros(1, 96, dtype=torch.bool)
    masked[0, 32:48] = True  # shorter than the period: every element has a visible neighbour one period away
    observed = torch.ones(1, 96, dtype=torch.bool)
    predictions = trivial_predictions(sine, masked, observed, period=PERIOD)
    assert masked_mse(predictions["period_copy"], sine, masked) < 1e-24
    assert masked_mse(predictions["interpolation"], sine, masked) > 0.1  # a 16-step block of a sine is not linear
    assert bool(predictions["period_covered"][masked].all())
    # On a ramp, one period earlier is t - 24 and later t + 24: their average (both visible) is exact, one alone
    # is off by the period.
    ramp = t[None].clone()
    predictions = trivial_predictions(ramp, masked, observed, period=PERIOD)
    assert masked_mse(predictions["period_copy"], ramp, masked) < 1e-24
    later_masked = masked.clone()
    later_masked[0, 56:72] = True  # t + 24 of the first block is now masked: only t - 24 remains
    predictions = trivial_predictions(ramp, later_masked, observed, period=PERIOD)
    assert torch.allclose(predictions["period_copy"][0, 32:48], ramp[0, 32:48] - PERIOD)
    # Elements without a period neighbour fall back to the interpolation.
    long = torch.zeros(1, 96, dtype=torch.bool)
    long[0, 20:80] = True
    predictions = trivial_predictions(sine, long, observed, period=PERIOD)
    uncovered = long & ~predictions["period_covered"]
    assert bool(uncovered.any())
    assert torch.equal(predictions["period_copy"][uncovered], predictions["interpolation"][uncovered])
    assert "period_copy" not in trivial_predictions(sine, masked, observed, period=None)


def test_skill_score():
    assert skill_score(0.25, 1.0) == pytest.approx(0.75)
    assert skill_score(2.0, 1.0) == pytest.approx(-1.0)
    assert skill_score(1.0, 1.0) == 0.0
    assert math.isnan(skill_score(1.0, 0.0)) and math.isnan(skill_score(float("nan"), 1.0))


def test_seasonal_period_from_timestamps():
    def index(freq: str) -> pd.DatetimeIndex:
        return pd.date_range("2021-01-01", periods=50, freq=freq)

    assert seasonal_period(index("h")) == 24
    assert seasonal_period(index("15min")) == 96
    assert seasonal_period(index("10min")) == 144
    assert seasonal_period(index("30min")) == 48
    assert seasonal_period(index("D")) == 7
    assert seasonal_period(index("W")) is None
    gappy = index("h").delete([3, 17, 30])  # a few missing rows do not change the interval
    assert seasonal_period(gappy) == 24
    assert seasonal_period(pd.Index(np.arange(50))) is None
    assert seasonal_period(None) is None


# ----------------------------------------------------------------------------------------------------------------------
# diagnose_pretraining on a model
# ----------------------------------------------------------------------------------------------------------------------


def lookback_windows(rows: int = 400) -> LookbackWindowDataset:
    """Two noisy daily sines (phase-shifted)."""
    t = np.arange(rows)[:, None]
    values = np.sin(2 * np.pi * t / PERIOD + np.array([[0.0, 1.0]])) + 0.05 * np.random.default_rng(0).standard_normal((rows, 2))
    return LookbackWindowDataset(torch.from_numpy(values).float(), L, name="val")


def finest_reconstruction_loss(model: HiMTMForPretraining, windows: LookbackWindowDataset, seed: int) -> float:
    """The finest L_R over all windows at once, from the model's own reconstruction, with the same mask noise."""
    batch = torch.utils.data.default_collate([windows[i] for i in range(len(windows))])
    noise = torch.rand(len(windows), 2, model.config.num_masking_units, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        output = model(past_values=batch["past_values"], past_observed_mask=batch["past_observed_mask"],
                       mask_noise=noise)
    masked = output.mask.bool().unsqueeze(-1).expand_as(output.patch_input)
    return float(((output.reconstruction - output.patch_input) ** 2)[masked].double().mean())


def test_diagnostics_use_fixed_masks_and_score_the_models_own_elements():
    torch.manual_seed(0)
    model = HiMTMForPretraining(tiny_config())
    model.train()
    windows = lookback_windows()
    first = diagnose_pretraining(model, windows, num_windows=len(windows), seed=3, period=PERIOD, batch_size=32)
    again = diagnose_pretraining(model, windows, num_windows=len(windows), seed=3, period=PERIOD, batch_size=32)
    assert first == again  # the same masked elements every time: curves move only with the weights
    assert model.training  # the caller's mode is restored
    rebatched = diagnose_pretraining(model, windows, num_windows=len(windows), seed=3, period=PERIOD, batch_size=100)
    assert rebatched["hierarchy"][0]["reconstruction"] == pytest.approx(first["hierarchy"][0]["reconstruction"])
    assert rebatched["hierarchy"][0]["interpolation"] == pytest.approx(first["hierarchy"][0]["interpolation"])
    other = diagnose_pretraining(model, windows, num_windows=len(windows), seed=4, period=PERIOD, batch_size=32)
    assert other["hierarchy"][0]["reconstruction"] != first["hierarchy"][0]["reconstruction"]

    # The finest L_R is the element mean of the model's own errors over every masked element of every window.
    model.eval()
    assert first["hierarchy"][0]["reconstruction"] == pytest.approx(finest_reconstruction_loss(model, windows, 3),
                                                                    rel=1e-5)
    assert len(first["hierarchy"]) == 2 and len(first["student_spread"]) == len(first["teacher_spread"]) == 2
    assert first["num_windows"] == len(windows) and first["period"] == PERIOD
    for level in first["hierarchy"]:
        best = min(level[name] for name in ("visible_mean", "interpolation", "period_copy"))
        assert level["best_trivial"] == best
        assert level["skill"] == pytest.approx(1 - level["reconstruction"] / best)
    # On daily sines a copy from one period away beats both the visible mean and the interpolation.
    finest = first["hierarchy"][0]
    assert finest["best_trivial_predictor"] == "period_copy"
    assert finest["period_copy"] < 0.3 * min(finest["visible_mean"], finest["interpolation"])
    assert all(s > 0 for s in first["student_spread"] + first["teacher_spread"])

    flat = flatten_diagnostics(first)
    assert flat["diag_skill"] == flat["diag_skill_h0"] == first["skill"]
    assert {"diag_reconstruction_h1", "diag_student_spread_h1", "diag_teacher_spread_h0", "diag_period_copy"} <= set(flat)
    assert "diag_linear_probe_mse" not in flat  # no probe asked for


def test_collapsed_features_have_no_spread():
    torch.manual_seed(0)
    model = HiMTMForPretraining(tiny_config(teacher_type="ema"))
    for module in (model.model.encoder, model.hsd.teacher_encoder):
        for hierarchy in module.hierarchies:  # every token's features = the norm's bias: a collapsed encoder
            hierarchy.norm.weight.data.zero_()
            hierarchy.norm.bias.data.normal_()
    model.hsd.teacher_initialized.fill_(True)
    result = diagnose_pretraining(model, lookback_windows(), num_windows=64, period=PERIOD)
    assert result["student_spread"] == [0.0, 0.0] and result["teacher_spread"] == [0.0, 0.0]
    healthy = diagnose_pretraining(HiMTMForPretraining(tiny_config()), lookback_windows(), num_windows=64)
    assert min(healthy["student_spread"] + healthy["teacher_spread"]) > 0.05
    assert healthy["period_copy_coverage"] is None and healthy["hierarchy"][0]["period_copy"] is None


def test_linear_probe_beats_the_mean_on_a_learnable_series():
    values = torch.from_numpy(synthetic_values(1600, seed=1)).float()
    train = ForecastWindowDataset(values[:1200], L, H, name="train")
    val = ForecastWindowDataset(values[1200 - L:], L, H, name="val")
    torch.manual_seed(0)
    model = HiMTMForPretraining(tiny_config())
    result = linear_probe(model, train, val, train_windows=512, val_windows=128)
    assert result["linear_probe_train_windows"] == 512 and result["linear_probe_val_windows"] == 128
    mean = result["linear_probe_mean_mse"]
    assert mean > 0.3
    # A linear map of the look-back forecasts a noisy sine far better than its mean, and so do (even random)
    # encoder features.
    assert result["linear_probe_lookback_mse"] < 0.25 * mean
    assert result["linear_probe_mse"] < 0.6 * mean
    assert result["linear_probe_ridge"] is not None
    with_probe = diagnose_pretraining(model, lookback_windows(), num_windows=32, probe=(train, val),
                                      probe_train_windows=512)
    assert with_probe["linear_probe_mse"] < 0.6 * with_probe["linear_probe_mean_mse"]


def test_plot_needs_diagnostics(tmp_path):
    assert plot_pretraining_diagnostics([{"step": 1, "loss": 1.0}], tmp_path / "p.png") is None
    assert not (tmp_path / "p.png").exists()


# ----------------------------------------------------------------------------------------------------------------------
# In pre-training runs
# ----------------------------------------------------------------------------------------------------------------------

TINY_MODEL = dict(patch_length=8, num_hierarchies=2, d_model="16", num_attention_heads=2, ffn_dim="32",
                  decoder_num_attention_heads=2, csa_num_attention_heads=2)


def run_pretrain(tmp_path: Path, name: str, **train) -> Path:
    csv = tmp_path / "series.csv"
    if not csv.exists():
        write_csv(csv)
    data = DataArguments(dataset=str(csv), context_length=L, prediction_length=H, split_fractions="0.7,0.1,0.2")
    args = dict(output_dir=str(tmp_path / name), max_steps=6, eval_every_steps=3, per_device_train_batch_size=8,
                per_device_eval_batch_size=32, max_train_windows=48, logging_steps=1, disable_tqdm=True,
                use_cpu=True, seed=7, diagnostics_windows=32, early_stopping_patience=0)
    args.update(train)
    return pretrain(ModelArguments(**TINY_MODEL), data, PretrainArguments(**args))


def test_pretrain_writes_diagnostics_to_metrics_log_and_png(tmp_path, capsys):
    out = run_pretrain(tmp_path, "run")
    assert "finest skill" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["kind"] == "pretraining" and metrics["probe_prediction_length"] == H
    log = read_log(out / "log.jsonl")
    val = [r for r in log if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6]
    for record in val:  # the diagnostics join the validation records
        assert {"diag_skill", "diag_skill_h0", "diag_skill_h1", "diag_reconstruction_h0", "diag_interpolation",
                "diag_period_copy", "diag_student_spread_h1", "diag_teacher_spread_h0", "diag_linear_probe_mse",
                "diag_linear_probe_lookback_mse"} <= record.keys()
        assert all(math.isfinite(record[k]) for k in record if k.startswith("diag_"))
    assert metrics["history"] == val
    best = next(r for r in log if r["split"] == "best")
    assert (metrics["best_step"], metrics["best_val_loss"]) == (best["best_step"], best["best_val_loss"])
    diagnostics = metrics["diagnostics"]
    assert diagnostics["period"] == PERIOD  # inferred from the hourly timestamps
    assert len(diagnostics["hierarchy"]) == 2 and all("skill" in h for h in diagnostics["hierarchy"])
    # The kept weights are those of the best step, and the diagnostics are deterministic: the final numbers are
    # exactly those logged at that step.
    kept = next(r for r in val if r["step"] == metrics["best_step"])
    assert flatten_diagnostics(diagnostics) == {k: v for k, v in kept.items() if k.startswith("diag_")}
    assert metrics["diagnostics_seconds_per_evaluation"] > 0
    assert (out / "pretraining_diagnostics.png").stat().st_size > 10_000
    marker = json.loads((out / MARKER_FILE).read_text())
    assert {"metrics.json", "pretraining_diagnostics.png"} <= set(marker["written"])
    # --overwrite_output_dir removes both and writes them again.
    (out / "pretraining_diagnostics.png").write_bytes(b"stale")
    run_pretrain(tmp_path, "run", overwrite_output_dir=True, max_steps=3)
    assert (out / "pretraining_diagnostics.png").stat().st_size > 10_000
    assert json.loads((out / "metrics.json").read_text())["steps"] == 3


def test_diagnostics_do_not_change_training_and_can_be_turned_off(tmp_path):
    with_diag = run_pretrain(tmp_path, "with", diagnostics_period=12, diagnostics_windows=8)
    without = run_pretrain(tmp_path, "without", diagnostics_windows=0)
    a, b = load_file(str(with_diag / "model.safetensors")), load_file(str(without / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = [{k: v for k, v in r.items() if not k.startswith("diag_")} for r in read_log(with_diag / "log.jsonl")]
    assert strip == read_log(without / "log.jsonl")
    assert json.loads((with_diag / "metrics.json").read_text())["diagnostics"]["period"] == 12
    metrics = json.loads((without / "metrics.json").read_text())
    assert metrics["diagnostics"] is None and len(metrics["history"]) == 2
    assert not (without / "pretraining_diagnostics.png").exists()
    with pytest.raises(ValueError, match="diagnostics_windows"):
        PretrainArguments(output_dir=str(tmp_path / "x"), diagnostics_windows=-1)


def test_eval_callback_joins_the_val_record_and_leaves_training_alone(tmp_path):
    values = torch.from_numpy(synthetic_values(600)).float()
    train = LookbackWindowDataset(values[:400], L, name="train")
    val = LookbackWindowDataset(values[400:], L, name="val")

    def run(name: str, callback) -> dict[str, torch.Tensor]:
        args = PretrainArguments(output_dir=str(tmp_path / name), max_steps=4, eval_every_steps=2, seed=3,
                                 per_device_train_batch_size=8, max_train_windows=32, max_eval_windows=16,
                                 disable_tqdm=True, use_cpu=True, early_stopping_patience=0)
        torch.manual_seed(0)
        result = train_model(HiMTMForPretraining(tiny_config(dropout=0.2)), train, val, args, is_pretraining=True,
                             eval_callback=callback)
        return {k: v.clone() for k, v in result.model.state_dict().items()}

    calls = []

    def callback(model, step):
        calls.append(step)
        model.eval()  # the loop puts it back in training mode, so dropout stays on for the next steps
        return {"diag_step_twice": 2.0 * step}

    plain, called = run("plain", None), run("called", callback)
    assert calls == [2, 4]
    assert all(torch.equal(plain[k], called[k]) for k in plain)
    val_records = [r for r in read_log(tmp_path / "called" / "log.jsonl") if r["split"] == "val"]
    assert [r["diag_step_twice"] for r in val_records] == [4.0, 8.0]
    with pytest.raises(ValueError, match=r"eval_callback returned \['loss'\]"):
        run("clash", lambda model, step: {"loss": 0.0})
