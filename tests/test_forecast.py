"""Tests for forecasting with a pre-training model by masked reconstruction (`HiMTMForPretraining.forecast`).

Tiny models (L=64, patch 8, 2 hierarchies: 16-step masking units), and the shipped himtm-base on real ETTh1 test
windows; every test takes a few seconds on 2 cores.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from test_modeling import BLOCK_HIMTM

from himtm_hf import HiMTMConfig
from himtm_hf.data import load_splits
from himtm_hf.modeling_himtm import HiMTMForPretraining
from himtm_hf.training.loop import cap_windows

L, UNIT = 64, 16
PROJECT = Path(__file__).resolve().parents[1]
SHIPPED_BASE = PROJECT / "checkpoints" / "himtm-base"
DATA_DIR = Path(os.environ.get("HIMTM_DATA_DIR", PROJECT.parent / "shared" / "data"))


def tiny_config(**overrides) -> HiMTMConfig:
    kwargs = dict(context_length=L, prediction_length=20, num_input_channels=2, patch_length=8, patch_stride=8,
                  num_hierarchies=2, d_model=16, num_attention_heads=2, ffn_dim=32, decoder_num_attention_heads=2,
                  csa_num_attention_heads=2, dropout=0.0)
    kwargs.update(overrides)
    return HiMTMConfig(**kwargs)


def tiny_model(**overrides) -> HiMTMForPretraining:
    torch.manual_seed(0)
    return HiMTMForPretraining(tiny_config(**overrides)).eval()


def series(batch: int = 3, length: int = L, channels: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(length, dtype=torch.float32)
    phase = torch.rand(batch, 1, channels, generator=generator) * 6.28
    return 5.0 + 3.0 * torch.sin(2 * math.pi * t[None, :, None] / 12 + phase) + 0.1 * torch.randn(
        batch, length, channels, generator=generator)


def test_forecast_is_the_pretraining_reconstruction_of_masked_final_units():
    # With statistics from the visible patches (no floor from the masked ones), the pre-training forward that masks
    # the last 2 units reconstructs exactly what `forecast` returns for a 20-step horizon (2 units of 16 steps).
    model = tiny_model(mask_ratio=0.5, pretraining_scaling_statistics="visible", pretraining_visible_scale_floor=0.0)
    window = series()
    noise = torch.ones(3, 2, model.config.num_masking_units)
    noise[..., -2:] = 0.0  # the last two of the four units are masked
    with torch.no_grad():
        out = model(past_values=window, mask_noise=noise)
        forecast = model.forecast(window[:, : L - 2 * UNIT], prediction_length=20, hierarchy=0)
    # reconstruction: (batch, channels, num_patches, patch_length) in scaled space
    reconstructed = out.reconstruction.flatten(2).transpose(1, 2)[:, L - 2 * UNIT : L - 2 * UNIT + 20]
    torch.testing.assert_close(forecast.prediction_outputs, reconstructed * out.scale + out.loc)
    assert out.mask.flatten(2)[:, :, -2 * UNIT // 8 :].bool().all()


def test_forecast_reads_only_the_last_look_back_steps_and_pads_a_short_history():
    model = tiny_model()
    assert model.forecast_look_back(20) == L - 2 * UNIT
    assert model.forecast_look_back(16) == L - UNIT
    history = series(length=100)
    with torch.no_grad():
        full = model.forecast(history).prediction_outputs
        cut = model.forecast(history[:, -32:]).prediction_outputs
        changed_old = history.clone()
        changed_old[:, :68] = -50.0  # older than the 32 steps the model reads
        assert torch.equal(model.forecast(changed_old).prediction_outputs, full)
        short = model.forecast(history[:, -10:]).prediction_outputs
        padded = torch.cat([torch.zeros(3, 22, 2), history[:, -10:]], dim=1)
        mask = torch.cat([torch.zeros(3, 22, 2), torch.ones(3, 10, 2)], dim=1)
        explicit = model.forecast(padded, past_observed_mask=mask).prediction_outputs
    assert full.shape == (3, 20, 2)
    torch.testing.assert_close(cut, full)
    torch.testing.assert_close(short, explicit)
    assert torch.isfinite(short).all()


def test_forecast_is_in_input_units_and_its_loss_is_the_mse_of_observed_targets():
    model = tiny_model()
    history, future = series(length=32), series(length=20, seed=1)
    shifted = history * 10.0 + 100.0
    future_mask = torch.ones_like(future)
    future_mask[0, :5] = 0.0
    with torch.no_grad():
        out = model.forecast(history, future_values=future, future_observed_mask=future_mask)
        moved = model.forecast(shifted).prediction_outputs
    # Per-instance scaling: an affine change of the input moves the forecast with it.
    torch.testing.assert_close(moved, out.prediction_outputs * 10.0 + 100.0, rtol=1e-4, atol=1e-3)
    expected = ((out.prediction_outputs - future) ** 2 * future_mask).sum() / future_mask.sum()
    torch.testing.assert_close(out.loss, expected)
    assert out.loc.shape == out.scale.shape == (3, 1, 2)
    torch.testing.assert_close(out.loc, history.mean(dim=1, keepdim=True))


def test_default_forecast_is_the_mean_over_hierarchies():
    model = tiny_model()
    history = series(length=32)
    with torch.no_grad():
        mean = model.forecast(history).prediction_outputs
        levels = [model.forecast(history, hierarchy=i).prediction_outputs for i in range(2)]
    torch.testing.assert_close(mean, (levels[0] + levels[1]) / 2)
    assert not torch.allclose(levels[0], levels[1])


@pytest.mark.parametrize("overrides", [{"use_ded": False}, {"use_hmt": False}, {"context_length": 56},
                                       {"context_padding": "drop", "context_length": 70}])
def test_forecast_runs_for_every_architecture_variant(overrides):
    model = tiny_model(**overrides)
    look_back = model.forecast_look_back(12)
    with torch.no_grad():
        out = model.forecast(series(length=look_back + 5), prediction_length=12)
    assert out.prediction_outputs.shape == (3, 12, 2)
    assert torch.isfinite(out.prediction_outputs).all()


def test_forecast_trains_the_student_path_and_never_the_teacher():
    model = tiny_model()
    model.train()
    out = model.forecast(series(length=32), future_values=series(length=20, seed=1))
    out.loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads["ded.levels.0.mask_query"] is not None and grads["ded.levels.1.mask_query"] is not None
    assert grads["model.embedding.projection.weight"].abs().sum() > 0
    assert all(not name.startswith("hsd.") for name in grads)


def test_forecast_refuses_bad_horizons_hierarchies_and_empty_look_backs():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"longest horizon it reconstructs is 48 steps"):
        model.forecast(series(length=16), prediction_length=49)
    with pytest.raises(ValueError, match="positive int"):
        model.forecast(series(length=16), prediction_length=0)
    with pytest.raises(ValueError, match=r"`hierarchy` must be None \(the mean\) or an int in \[0, 2\)"):
        model.forecast(series(length=32), hierarchy=2)
    history = series(length=60)
    mask = torch.ones_like(history)
    mask[:, -32:] = 0.0  # observed only before the 32 steps the model reads
    with pytest.raises(ValueError, match="0 everywhere in batch row"):
        model.forecast(history, past_observed_mask=mask)
    with pytest.raises(ValueError, match="3 channels but config.num_input_channels=2"):
        model.forecast(series(length=32, channels=3))
    with pytest.raises(ValueError, match=r"`past_values` must be a torch.Tensor of shape \(batch, 32, 2\)"):
        model.forecast([[1.0, 2.0]])


def test_a_briefly_pretrained_model_forecasts_a_periodic_series_zero_shot():
    # What the method is for: after pre-training on masked reconstruction alone, the model extrapolates a periodic
    # series far better than its look-back mean (what an untrained reconstruction returns).
    torch.manual_seed(0)
    model = HiMTMForPretraining(tiny_config(num_input_channels=1, use_hsd=False))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(150):
        window = series(batch=32, channels=1, seed=step)
        loss = model(past_values=window).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    full = series(batch=64, length=52, channels=1, seed=999)
    history, future = full[:, :32], full[:, 32:]
    with torch.no_grad():
        mse = model.forecast(history, future_values=future).loss.item()
    mean_mse = ((history.mean(dim=1, keepdim=True) - future) ** 2).mean().item()
    assert mse < 0.3 * mean_mse, (mse, mean_mse)


@pytest.mark.skipif(not (DATA_DIR / "ETTh1.csv.gz").is_file(), reason=f"ETTh1 not in {DATA_DIR}")
def test_shipped_himtm_base_forecasts_etth1_zero_shot_with_and_without_this_package(tmp_path):
    """The committed himtm-base forecasts real data with no training: on 128 evenly strided ETTh1 test windows
    (H = 96) its error is a third of the last value's (0.3988 against 1.2944 over the whole test split); loaded from
    the folder's own code (`trust_remote_code`, without this package) it gives the same forecast."""
    splits = load_splits("ETTh1", data_dir=DATA_DIR, context_length=512, prediction_length=96)
    windows = list(cap_windows(splits.test, 128))
    past = torch.stack([w["past_values"] for w in windows])
    future = torch.stack([w["future_values"] for w in windows])
    model = HiMTMForPretraining.from_pretrained(SHIPPED_BASE, num_input_channels=7).eval()
    with torch.no_grad():
        out = model.forecast(past, prediction_length=96, future_values=future)
    naive = ((past[:, -1:] - future) ** 2).mean().item()
    assert out.loss.item() < 0.45 and out.loss.item() < 0.4 * naive, (out.loss.item(), naive)

    torch.save({"past": past, "prediction": out.prediction_outputs}, tmp_path / "io.pt")
    script = BLOCK_HIMTM + textwrap.dedent(
        f"""
        import torch
        from transformers import AutoModelForPreTraining
        io = torch.load({str(tmp_path / "io.pt")!r})
        model = AutoModelForPreTraining.from_pretrained({str(SHIPPED_BASE)!r}, trust_remote_code=True,
                                                        num_input_channels=7).eval()
        assert type(model).__module__.startswith("transformers_modules")
        with torch.no_grad():
            prediction = model.forecast(io["past"], prediction_length=96).prediction_outputs
        torch.testing.assert_close(prediction, io["prediction"])
        print("REMOTE_FORECAST_OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "REMOTE_FORECAST_OK" in result.stdout
